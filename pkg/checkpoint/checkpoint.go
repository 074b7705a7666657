package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/memvisor/memvisor/internal/atomicfile"
	"github.com/memvisor/memvisor/pkg/connector"
)

// FileName is the checkpoint's name in the job's state directory.
const FileName = "checkpoint.json"

const (
	format = "memvisor-checkpoint"
	// version 2 adds Partial. A checkpoint without it is still written as
	// version 1, so a build that reads only version 1 can read it; one
	// with it is version 2, which such a build refuses rather than
	// redoing the items the partial batch already wrote.
	version        = 2
	versionPartial = 2
	versionPlain   = 1
)

// Errors.
var (
	// ErrNotExist means the job has no checkpoint: it never committed a
	// batch.
	ErrNotExist = errors.New("no checkpoint")
	// ErrCorrupt means the checkpoint exists but cannot be trusted.
	ErrCorrupt = errors.New("checkpoint is corrupt")
)

// CorruptError says which file is corrupt and why.
type CorruptError struct {
	Path   string
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("checkpoint %s is corrupt (%s); the job will not guess where to resume: "+
		"restore the file from a backup, or run again with --reset-checkpoint to move it aside and "+
		"start over from the first item (items already in the target are found and skipped)", e.Path, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Counters count items processed by the job so far.
type Counters struct {
	Processed  int64            `json:"processed"`
	Created    int64            `json:"created"`
	Updated    int64            `json:"updated"`
	Skipped    int64            `json:"skipped"`
	Failed     int64            `json:"failed"`
	ByCategory map[string]int64 `json:"by_category,omitempty"`
}

// Snapshot names a cache snapshot and the target position it reflects.
type Snapshot struct {
	File    string         `json:"file"`
	Target  connector.Mark `json:"target"`
	Entries int64          `json:"entries"`
}

// Checkpoint is one commit.
type Checkpoint struct {
	JobID string `json:"job_id"`
	// SpecHash identifies the source, target, match and mode the job
	// started with; a resume with different ones is refused.
	SpecHash string `json:"spec_hash"`
	// Seq counts committed batches.
	Seq    int64            `json:"seq"`
	Source connector.Cursor `json:"source"`
	// Target is the target's Mark after the batch's writes were synced.
	Target connector.Mark `json:"target"`
	// FailedBytes is the size of failed.jsonl at the commit.
	FailedBytes int64 `json:"failed_bytes"`
	// FailedRecords is the number of lines of failed.jsonl at the commit:
	// a fleet's database numbers failure records, not bytes. Checkpoints
	// written before it existed have 0 with FailedBytes > 0.
	FailedRecords int64     `json:"failed_records,omitempty"`
	Counters      Counters  `json:"counters"`
	Snapshot      *Snapshot `json:"snapshot,omitempty"`
	// Partial, when set, says which items of the batch at Source were
	// written before a drain stopped it; a resume does only the others.
	Partial *Partial `json:"partial,omitempty"`
	// Done is set by the last commit of a job that read its whole source.
	Done bool      `json:"done"`
	Time time.Time `json:"time"`
}

// Partial records a batch that a drain stopped part way (see
// docs/design.md, "Graceful restart protocol"). The batch starts at the
// checkpoint's Source cursor and holds Len records; bit i of Done (least
// significant bit first) is set when record i of the batch is done:
// written, skipped or logged as failed, and counted in Counters.
type Partial struct {
	Len  int    `json:"len"`
	Done []byte `json:"done"`
}

// NewPartial returns a Partial for a batch of n records, none done.
func NewPartial(n int) *Partial { return &Partial{Len: n, Done: make([]byte, (n+7)/8)} }

// IsDone reports whether record i of the batch is done.
func (p *Partial) IsDone(i int) bool {
	if p == nil || i < 0 || i >= p.Len || i/8 >= len(p.Done) {
		return false
	}
	return p.Done[i/8]&(1<<(i%8)) != 0
}

// Set marks record i of the batch done.
func (p *Partial) Set(i int) {
	if i >= 0 && i < p.Len {
		p.Done[i/8] |= 1 << (i % 8)
	}
}

// Count returns how many records of the batch are done.
func (p *Partial) Count() int {
	n := 0
	for i := 0; i < p.Len; i++ {
		if p.IsDone(i) {
			n++
		}
	}
	return n
}

// Clone returns a copy that shares nothing with p.
func (p *Partial) Clone() *Partial {
	if p == nil {
		return nil
	}
	return &Partial{Len: p.Len, Done: append([]byte(nil), p.Done...)}
}

type envelope struct {
	Format  string          `json:"format"`
	Version int             `json:"version"`
	SHA256  string          `json:"sha256"`
	Body    json.RawMessage `json:"body"`
}

// maxPartialLen bounds a partial batch: job.Spec allows batches of at
// most 10,000 records.
const maxPartialLen = 1 << 20

// Path returns the checkpoint's path in dir.
func Path(dir string) string { return filepath.Join(dir, FileName) }

// Save commits cp durably to dir.
func Save(dir string, cp Checkpoint) error {
	p, err := Prepare(dir, cp)
	if err != nil {
		return err
	}
	return p.Commit()
}

// Pending is a checkpoint written and fsynced to a temporary file, not yet
// in place. The runner prepares it while the target's writes reach the
// disk, and commits it only after they have.
type Pending struct {
	p *atomicfile.Pending
}

// Prepare writes cp to a temporary file in dir and fsyncs it.
func Prepare(dir string, cp Checkpoint) (*Pending, error) {
	body, err := json.Marshal(cp)
	if err != nil {
		return nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	sum := sha256.Sum256(body)
	v := versionPlain
	if cp.Partial != nil {
		v = versionPartial
	}
	data, err := json.MarshalIndent(envelope{Format: format, Version: v, SHA256: hex.EncodeToString(sum[:]), Body: body}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	data = append(data, '\n')
	p, err := atomicfile.Prepare(Path(dir), 0o644, data)
	if err != nil {
		return nil, fmt.Errorf("write checkpoint: %w", err)
	}
	return &Pending{p: p}, nil
}

// Commit renames the checkpoint into place and fsyncs the directory.
func (p *Pending) Commit() error {
	if err := p.p.Commit(); err != nil {
		return fmt.Errorf("commit checkpoint: %w", err)
	}
	return nil
}

// Abort removes the temporary file.
func (p *Pending) Abort() { p.p.Abort() }

// Load reads the checkpoint in dir. It returns ErrNotExist when there is
// none, and a *CorruptError when there is one that cannot be trusted.
func Load(dir string) (Checkpoint, error) {
	path := Path(dir)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Checkpoint{}, ErrNotExist
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("read checkpoint: %w", err)
	}
	return Decode(path, data)
}

// Decode checks and decodes a checkpoint file's bytes. path is for errors.
func Decode(path string, data []byte) (Checkpoint, error) {
	corrupt := func(format string, args ...any) (Checkpoint, error) {
		return Checkpoint{}, &CorruptError{Path: path, Reason: fmt.Sprintf(format, args...)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return corrupt("the file is empty")
	}
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return corrupt("not valid JSON, probably torn or truncated: %v", err)
	}
	if env.Format != format {
		return corrupt("not a memvisor checkpoint (format %q)", env.Format)
	}
	if env.Version < 1 || env.Version > version {
		return corrupt("unsupported version %d (this build reads versions 1 to %d)", env.Version, version)
	}
	// The file is indented for people; the checksum covers the compact body.
	var body bytes.Buffer
	if err := json.Compact(&body, env.Body); err != nil {
		return corrupt("bad body: %v", err)
	}
	sum := sha256.Sum256(body.Bytes())
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return corrupt("checksum mismatch: the body was changed or damaged")
	}
	return decodeBody(path, body.Bytes(), env.Version)
}

// DecodeBody checks and decodes a checkpoint's JSON body, as
// json.Marshal of a Checkpoint gives it, with no envelope: a fleet
// runner sends its commits so. source names where it came from, for
// errors.
func DecodeBody(source string, data []byte) (Checkpoint, error) {
	return decodeBody(source, data, version)
}

func decodeBody(path string, body []byte, ver int) (Checkpoint, error) {
	corrupt := func(format string, args ...any) (Checkpoint, error) {
		return Checkpoint{}, &CorruptError{Path: path, Reason: fmt.Sprintf(format, args...)}
	}
	var cp Checkpoint
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cp); err != nil {
		return corrupt("bad body: %v", err)
	}
	if dec.More() {
		return corrupt("bad body: data after the checkpoint")
	}
	if cp.Seq < 0 || cp.Source.Index < 0 || cp.Target < 0 || cp.FailedBytes < 0 || cp.FailedRecords < 0 {
		return corrupt("negative position")
	}
	if p := cp.Partial; p != nil {
		if ver < versionPartial {
			return corrupt("a partial batch in a version %d checkpoint", ver)
		}
		if p.Len < 1 || p.Len > maxPartialLen || len(p.Done) != (p.Len+7)/8 {
			return corrupt("bad partial batch: %d records with a %d-byte bitmap", p.Len, len(p.Done))
		}
	}
	return cp, nil
}

// MoveAside renames a checkpoint out of the way, for --reset-checkpoint,
// and returns its new name.
func MoveAside(dir string, now time.Time) (string, error) {
	to := Path(dir) + ".reset-" + now.UTC().Format("20060102T150405Z")
	if err := os.Rename(Path(dir), to); err != nil {
		return "", fmt.Errorf("move checkpoint aside: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return "", err
	}
	return to, nil
}
