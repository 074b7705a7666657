package jsonl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/connector"
)

// Target is an append-only JSONL log of
// {"item_id": <target id>, "external_id": "<source id>", "fields": {...}}
// lines. The last line for an item_id wins. New ids are one more than the
// highest id in the file.
//
// Writes are buffered and become durable on Sync, which the runner calls
// before it commits a checkpoint. A kill can leave a torn last line; Open
// detects it, cuts it off and logs that.
type Target struct {
	path string
	log  zerolog.Logger

	mu     sync.Mutex
	f      *os.File
	w      *bufio.Writer
	size   int64 // bytes in the file, buffered ones included
	maxID  int64
	line   []byte
	closed bool

	// byID maps item ids to the offset of their last line. It is built
	// on the first Get, which only a dry run needs.
	byID []idOffset
}

type idOffset struct{ id, off int64 }

// TargetMarker is the first line of a target that the service created for
// a job that came through its API. The service appends only to files that
// start with it, so that a job cannot truncate or extend a file that is
// not a memvisor target. Readers skip it; a target without it (one that
// `supervisor run` created) reads as before.
const TargetMarker = `{"memvisor":"jsonl-target","version":1}` + "\n"

var (
	_ connector.Target       = (*Target)(nil)
	_ connector.Flusher      = (*Target)(nil)
	_ connector.Sequential   = (*Target)(nil)
	_ connector.FieldEncoder = (*Target)(nil)
)

// OpenTarget opens or creates a JSONL target, repairing a torn last line.
func OpenTarget(path string, log zerolog.Logger) (*Target, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open target: %w", err)
	}
	t := &Target{path: path, log: log, f: f}
	if err := t.repair(); err != nil {
		f.Close()
		return nil, err
	}
	if err := t.scanMaxID(); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(t.size, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("seek target %s: %w", path, err)
	}
	t.w = bufio.NewWriterSize(f, 256<<10)
	return t, nil
}

// repair cuts off a last line that has no newline: a write torn by a kill
// or a crash. Such a write was never confirmed, so no checkpoint covers it.
func (t *Target) repair() error {
	fi, err := t.f.Stat()
	if err != nil {
		return fmt.Errorf("stat target %s: %w", t.path, err)
	}
	size := fi.Size()
	if size == 0 {
		return nil
	}
	// Find the last newline, reading backwards in blocks.
	const block = 64 << 10
	end := size
	buf := make([]byte, block)
	keep := int64(0)
	found := false
	for end > 0 && !found {
		start := max(end-block, 0)
		n, err := t.f.ReadAt(buf[:end-start], start)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read target %s: %w", t.path, err)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			keep = start + int64(i) + 1
			found = true
		}
		end = start
	}
	if keep == size {
		t.size = size
		return nil
	}
	if err := t.f.Truncate(keep); err != nil {
		return fmt.Errorf("cut torn last line of target %s: %w", t.path, err)
	}
	if err := t.f.Sync(); err != nil {
		return fmt.Errorf("fsync target %s: %w", t.path, err)
	}
	t.log.Warn().Str("path", t.path).Int64("bytes_cut", size-keep).Int64("size", keep).
		Msg("target had a torn last line from an interrupted write; cut it off")
	t.size = keep
	return nil
}

func (t *Target) scanMaxID() error {
	_, err := t.scan(context.Background(), 0, t.size, func(id, _ int64, _ []byte) error {
		t.maxID = max(t.maxID, id)
		return nil
	})
	return err
}

// scan reads lines in [from, to) and calls fn with each line's item id,
// its offset and the line. It returns the offset after the last line.
func (t *Target) scan(ctx context.Context, from, to int64, fn func(id, off int64, line []byte) error) (int64, error) {
	r := bufio.NewReaderSize(io.NewSectionReader(t.f, from, to-from), 256<<10)
	off := from
	var long []byte
	for n := 0; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return off, err
			}
		}
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = r.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if len(line) == 0 && errors.Is(err, io.EOF) {
			return off, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return off, fmt.Errorf("read target %s at byte %d: %w", t.path, off, err)
		}
		if off == 0 && string(line) == TargetMarker {
			off += int64(len(line))
			if errors.Is(err, io.EOF) {
				return off, nil
			}
			continue
		}
		body := bytes.TrimSpace(line)
		if len(body) > 0 {
			id, ok := quickID(body)
			if !ok {
				var l struct {
					ItemID int64 `json:"item_id"`
				}
				if jerr := json.Unmarshal(body, &l); jerr != nil || l.ItemID <= 0 {
					return off, fmt.Errorf("target %s: line at byte %d is not a target item: %.80q", t.path, off, body)
				}
				id = l.ItemID
			}
			if err := fn(id, off, body); err != nil {
				return off, err
			}
		}
		off += int64(len(line))
		if errors.Is(err, io.EOF) {
			return off, nil
		}
	}
}

// quickID reads the item id of a line in the form this package writes.
func quickID(line []byte) (int64, bool) {
	const prefix = `{"item_id":`
	if !bytes.HasPrefix(line, []byte(prefix)) {
		return 0, false
	}
	rest := line[len(prefix):]
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == 0 || i >= len(rest) || rest[i] != ',' {
		return 0, false
	}
	id, err := strconv.ParseInt(string(rest[:i]), 10, 64)
	return id, err == nil && id > 0
}

type targetLine struct {
	ItemID     int64            `json:"item_id"`
	ExternalID string           `json:"external_id"`
	Fields     connector.Fields `json:"fields"`
}

// Scan calls fn for every line written at or after the byte offset since.
func (t *Target) Scan(ctx context.Context, since connector.Mark, fn func(connector.TargetItem) error) (connector.Mark, error) {
	t.mu.Lock()
	if err := t.flushLocked(); err != nil {
		t.mu.Unlock()
		return since, err
	}
	end := t.size
	t.mu.Unlock()
	if int64(since) > end {
		return since, fmt.Errorf("scan target %s from byte %d: the file has only %d bytes; it was truncated or replaced since the checkpoint", t.path, since, end)
	}
	off, err := t.scan(ctx, int64(since), end, func(id, off int64, line []byte) error {
		var l targetLine
		if err := json.Unmarshal(line, &l); err != nil {
			return fmt.Errorf("decode target %s line at byte %d: %w", t.path, off, err)
		}
		return fn(connector.TargetItem{ID: id, ExternalID: l.ExternalID, Fields: l.Fields})
	})
	return connector.Mark(off), err
}

// Create appends a new item and returns its id.
func (t *Target) Create(ctx context.Context, externalID string, f connector.Fields) (int64, error) {
	return t.CreateEncoded(ctx, externalID, AppendFields(nil, f))
}

// CreateEncoded is Create with fields encoded by EncodeFields.
func (t *Target) CreateEncoded(_ context.Context, externalID string, fields []byte) (int64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, connector.ErrClosed
	}
	id := t.maxID + 1
	if err := t.appendLocked(id, externalID, fields); err != nil {
		return 0, err
	}
	t.maxID = id
	return id, nil
}

// Update appends a line for an existing item: {"item_id": id, "fields":
// {...}}, without external_id. The last line for an item_id holds its
// fields; its external_id is the one of its create line.
func (t *Target) Update(ctx context.Context, id int64, f connector.Fields) error {
	return t.UpdateEncoded(ctx, id, AppendFields(nil, f))
}

// UpdateEncoded is Update with fields encoded by EncodeFields.
func (t *Target) UpdateEncoded(_ context.Context, id int64, fields []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return connector.ErrClosed
	}
	return t.appendLocked(id, "", fields)
}

// EncodeFields encodes fields as a target line holds them.
func (t *Target) EncodeFields(dst []byte, f connector.Fields) []byte { return AppendFields(dst, f) }

func (t *Target) appendLocked(id int64, externalID string, fields []byte) error {
	t.line = appendLineEncoded(t.line[:0], id, externalID, fields)
	n, err := t.w.Write(t.line)
	if err != nil {
		// A partial write leaves a torn line in the buffer or the file;
		// nothing after it can be trusted, so refuse further writes.
		t.closed = true
		return fmt.Errorf("write target %s: %w", t.path, err)
	}
	if t.byID != nil {
		t.indexLocked(id, t.size)
	}
	t.size += int64(n)
	return nil
}

// SequentialWrites reports true: writes to one file are serialized.
func (t *Target) SequentialWrites() bool { return true }

// Flush hands buffered writes to the OS and returns the file size.
func (t *Target) Flush(context.Context) (connector.Mark, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.flushLocked(); err != nil {
		return 0, err
	}
	return connector.Mark(t.size), nil
}

// Sync flushes and fsyncs every write so far and returns the file size.
func (t *Target) Sync(context.Context) (connector.Mark, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.flushLocked(); err != nil {
		return 0, err
	}
	if err := t.f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync target %s: %w", t.path, err)
	}
	return connector.Mark(t.size), nil
}

func (t *Target) flushLocked() error {
	if t.w == nil {
		return nil
	}
	if err := t.w.Flush(); err != nil {
		t.closed = true
		return fmt.Errorf("write target %s: %w", t.path, err)
	}
	return nil
}

// Get returns the fields of an item's last line. The first call indexes
// the file (16 bytes per item); only dry runs call it.
func (t *Target) Get(ctx context.Context, id int64) (connector.Fields, error) {
	t.mu.Lock()
	if err := t.flushLocked(); err != nil {
		t.mu.Unlock()
		return nil, err
	}
	if t.byID == nil {
		t.byID = make([]idOffset, 0, 1024)
		if _, err := t.scan(ctx, 0, t.size, func(id, off int64, _ []byte) error {
			t.indexLocked(id, off)
			return nil
		}); err != nil {
			t.byID = nil
			t.mu.Unlock()
			return nil, err
		}
	}
	i, ok := slices.BinarySearchFunc(t.byID, id, func(e idOffset, id int64) int { return cmpInt(e.id, id) })
	if !ok {
		t.mu.Unlock()
		return nil, connector.ErrNotFound
	}
	off := t.byID[i].off
	t.mu.Unlock()
	var got connector.Fields
	_, err := t.scan(ctx, off, t.sizeNow(), func(_, _ int64, line []byte) error {
		var l targetLine
		if err := json.Unmarshal(line, &l); err != nil {
			return err
		}
		got = l.Fields
		return io.EOF
	})
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return got, nil
}

func (t *Target) sizeNow() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.size
}

func (t *Target) indexLocked(id, off int64) {
	i, ok := slices.BinarySearchFunc(t.byID, id, func(e idOffset, id int64) int { return cmpInt(e.id, id) })
	if ok {
		t.byID[i].off = off
		return
	}
	t.byID = slices.Insert(t.byID, i, idOffset{id, off})
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// LookupExternal scans the file for an item with externalID. It reads the
// whole file; the runner does not need it on its hot path.
func (t *Target) LookupExternal(ctx context.Context, externalID string) (int64, bool, error) {
	var found int64
	_, err := t.Scan(ctx, 0, func(it connector.TargetItem) error {
		if it.ExternalID == externalID {
			found = it.ID
			return io.EOF
		}
		return nil
	})
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, false, err
	}
	return found, found != 0, nil
}

// Close flushes, fsyncs and closes the file.
func (t *Target) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return nil
	}
	ferr := t.flushLocked()
	serr := t.f.Sync()
	cerr := t.f.Close()
	t.f = nil
	t.closed = true
	return errors.Join(ferr, serr, cerr)
}
