package service

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/atomicfile"
	"github.com/memvisor/memvisor/pkg/batcher"
	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
	"github.com/memvisor/memvisor/plugin"
)

// fleetLedger is a claimed job's plugin.Ledger: the runner commits its
// checkpoints and failure records through it into PostgreSQL, under the
// claim's lease epoch, and learns from it how long it may still write
// (docs/design.md, "Growing past one host").
type fleetLedger struct {
	store *postgres.Store
	claim *postgres.Claim
	id    string
	// snapshot is called with each new cache snapshot a commit names,
	// after the commit; nil stores none.
	snapshot func(checkpoint.Snapshot)
}

var _ plugin.Ledger = (*fleetLedger)(nil)

// fenced turns a lost lease into the answer the runner stops on.
func fenced(err error) error {
	if errors.Is(err, postgres.ErrLeaseLost) {
		return fmt.Errorf("%w: %w", plugin.ErrFenced, err)
	}
	return err
}

func (l *fleetLedger) AppendFailures(ctx context.Context, after int64, lines [][]byte) error {
	if err := l.claim.Fence(); err != nil {
		return fenced(err)
	}
	recs := make([]json.RawMessage, len(lines))
	for i, line := range lines {
		// The runner is a separate process: what it sends is checked
		// before it reaches the database and the API.
		if !json.Valid(line) {
			return fmt.Errorf("failure record %d of job %s: not JSON", after+int64(i)+1, l.id)
		}
		recs[i] = line
	}
	_, err := l.store.AppendFailed(ctx, l.claim.Job, after, recs)
	return fenced(err)
}

func (l *fleetLedger) Commit(ctx context.Context, data []byte, failedRecords int64) error {
	if err := l.claim.Fence(); err != nil {
		return fenced(err)
	}
	cp, err := checkpoint.DecodeBody("the runner's commit", data)
	if err != nil {
		return fmt.Errorf("commit of job %s: %w", l.id, err)
	}
	if cp.JobID != l.id || cp.FailedRecords != failedRecords {
		return fmt.Errorf("commit of job %s: the checkpoint is job %q's with %d failure records, not %d", l.id, cp.JobID, cp.FailedRecords, failedRecords)
	}
	if err := l.store.SaveCheckpoint(ctx, l.claim.Job, cp); err != nil {
		return fenced(err)
	}
	if cp.Snapshot != nil && l.snapshot != nil {
		l.snapshot(*cp.Snapshot)
	}
	return nil
}

func (l *fleetLedger) Lease(context.Context) (time.Duration, error) {
	return l.claim.Remaining(), nil
}

// ledgerFor returns the StartMode.Ledger of a claimed job: before every
// runner it brings the job's state directory in step with the fleet's
// checkpoint, and hands the runner a fleetLedger.
func (m *Manager) ledgerFor(aj *activeJob, dir string) func(context.Context) (plugin.Ledger, error) {
	up := &snapshotUploader{m: m, aj: aj, dir: dir}
	aj.snapshots = up
	return func(ctx context.Context) (plugin.Ledger, error) {
		if err := aj.claim.Fence(); err != nil {
			return nil, err
		}
		if err := syncStateDir(ctx, m.fleet.store, aj.id, dir, aj.log); err != nil {
			return nil, err
		}
		return &fleetLedger{store: m.fleet.store, claim: aj.claim, id: aj.id, snapshot: up.start}, nil
	}
}

// snapshotUploader stores a run's cache snapshots in the fleet, one at a
// time and in the background: a drain does not wait for it. A job that
// moves before its last snapshot is stored restores an older one and
// replays the target's writes after it, which is as correct, only slower.
type snapshotUploader struct {
	m   *Manager
	aj  *activeJob
	dir string

	mu   sync.Mutex
	busy bool
	next *checkpoint.Snapshot
	last string
	// running counts the upload goroutine, for wait.
	running sync.WaitGroup
}

// wait returns once no upload runs: the claim is released only after, so
// the node that takes the job next finds the last snapshot.
func (u *snapshotUploader) wait() { u.running.Wait() }

func (u *snapshotUploader) start(meta checkpoint.Snapshot) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if meta.File == u.last {
		return
	}
	u.next = &meta
	if u.busy {
		return // the running upload takes it next
	}
	u.busy = true
	u.m.wg.Add(1)
	u.running.Add(1)
	go func() {
		defer u.m.wg.Done()
		defer u.running.Done()
		for {
			u.mu.Lock()
			meta := u.next
			u.next = nil
			if meta == nil {
				u.busy = false
				u.mu.Unlock()
				return
			}
			u.mu.Unlock()
			if err := u.upload(*meta); err != nil {
				u.aj.log.Warn().Err(err).Str("snapshot", meta.File).Msg("store the cache snapshot in the fleet; a node that takes the job over uses an older one or reads the target")
				continue
			}
			u.mu.Lock()
			u.last = meta.File
			u.mu.Unlock()
		}
	}()
}

func (u *snapshotUploader) upload(meta checkpoint.Snapshot) error {
	main, ext := batcher.SnapshotFiles(u.dir, meta.File)
	f0, err := os.Open(main)
	if err != nil {
		return err
	}
	defer f0.Close()
	f1, err := os.Open(ext)
	if err != nil {
		return err
	}
	defer f1.Close()
	// Not the Manager's context: a drain at shutdown stores its snapshot
	// before the claim is released. The lease bounds it too.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := u.m.fleet.store.SaveSnapshot(ctx, u.aj.claim.Job, meta, [2]io.Reader{f0, f1}); err != nil {
		return err
	}
	u.aj.log.Info().Str("snapshot", meta.File).Int64("entries", meta.Entries).Dur("took", time.Since(start)).Msg("cache snapshot stored in the fleet")
	return nil
}

// syncStateDir makes the job's state directory on this node hold the
// fleet's last checkpoint of job id. When the local checkpoint is that
// commit (this node wrote it), nothing changes, and the cache snapshot it
// names is used. Otherwise the failure log is written from the fleet's
// records, the checkpoint from the fleet's, naming no snapshot, and the
// local snapshots are removed: the runner rebuilds its cache from the
// target. With no checkpoint in the fleet, a local one (of an earlier job
// with this id) is moved aside, so the job starts from the beginning.
func syncStateDir(ctx context.Context, store *postgres.Store, id, dir string, log zerolog.Logger) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	st, err := store.LoadCheckpoint(ctx, id)
	local, lerr := checkpoint.Load(dir)
	if errors.Is(err, checkpoint.ErrNotExist) {
		if lerr == nil || !errors.Is(lerr, checkpoint.ErrNotExist) {
			if _, err := checkpoint.MoveAside(dir, time.Now()); err != nil {
				return err
			}
		}
		return clearLocal(dir)
	}
	if err != nil {
		return err
	}
	if lerr == nil && sameCommit(local, st) {
		return nil
	}
	if err := clearLocal(dir); err != nil {
		return err
	}
	size, err := writeFailures(ctx, store, id, st.Failed, filepath.Join(dir, batcher.FailedFile))
	if err != nil {
		return err
	}
	cp := st.Checkpoint
	cp.FailedBytes, cp.FailedRecords, cp.Snapshot = size, st.Failed, nil
	switch meta, err := restoreSnapshot(ctx, store, id, dir); {
	case err == nil:
		cp.Snapshot = &meta
	case !errors.Is(err, checkpoint.ErrNotExist):
		log.Warn().Err(err).Msg("restore the fleet's cache snapshot; the runner reads the target instead")
	}
	return checkpoint.Save(dir, cp)
}

// restoreSnapshot writes job id's snapshot from the fleet into dir. It
// may be older than the checkpoint: the runner replays the target's writes
// after the snapshot's mark.
func restoreSnapshot(ctx context.Context, store *postgres.Store, id, dir string) (checkpoint.Snapshot, error) {
	var tmps [2]*os.File
	defer func() {
		for _, f := range tmps {
			if f != nil {
				f.Close()
				os.Remove(f.Name())
			}
		}
	}()
	var ws [2]io.Writer
	for i := range tmps {
		f, err := os.CreateTemp(dir, ".snapshot-*")
		if err != nil {
			return checkpoint.Snapshot{}, err
		}
		tmps[i], ws[i] = f, f
	}
	meta, err := store.LoadSnapshot(ctx, id, ws)
	if err != nil {
		return checkpoint.Snapshot{}, err
	}
	if meta.File != filepath.Base(meta.File) || !strings.HasPrefix(meta.File, "cache-") || !strings.HasSuffix(meta.File, ".snap") {
		return checkpoint.Snapshot{}, fmt.Errorf("the fleet's snapshot of job %s has a bad file name %q", id, meta.File)
	}
	main, ext := batcher.SnapshotFiles(dir, meta.File)
	for i, name := range []string{main, ext} {
		if err := tmps[i].Sync(); err != nil {
			return checkpoint.Snapshot{}, err
		}
		if err := os.Rename(tmps[i].Name(), name); err != nil {
			return checkpoint.Snapshot{}, err
		}
	}
	return meta, atomicfile.SyncDir(dir)
}

// sameCommit reports whether the local checkpoint is the fleet's.
func sameCommit(local checkpoint.Checkpoint, st postgres.Stored) bool {
	return local.JobID == st.JobID && local.SpecHash == st.SpecHash && local.Seq == st.Seq &&
		local.Time.Equal(st.Time) && local.FailedRecords == st.Failed
}

// clearLocal removes what the fleet's checkpoint supersedes: the failure
// log and the cache snapshots.
func clearLocal(dir string) error {
	if err := os.Remove(filepath.Join(dir, batcher.FailedFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return batcher.RemoveSnapshots(dir)
}

// writeFailures writes the first n failure records of job id to path, one
// line each, and returns the file's size.
func writeFailures(ctx context.Context, store *postgres.Store, id string, n int64, path string) (int64, error) {
	var size int64
	err := atomicfile.Write(path, 0o644, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 64<<10)
		var after int64
		for after < n {
			recs, last, err := store.FailedItems(ctx, id, after, 1000)
			if err != nil {
				return err
			}
			if len(recs) == 0 {
				return fmt.Errorf("the fleet holds %d failure records of job %s, its checkpoint counts %d", after, id, n)
			}
			for i, r := range recs {
				if after+int64(i) >= n {
					break
				}
				k, _ := bw.Write(r)
				bw.WriteByte('\n')
				size += int64(k) + 1
			}
			after = last
		}
		return bw.Flush()
	})
	if err != nil {
		return 0, fmt.Errorf("write job %s's failure log from the fleet: %w", id, err)
	}
	return size, nil
}

// hasFailedItems reports whether job id's failure log has a record: in
// the fleet's database in a fleet, else in its state directory.
func (m *Manager) hasFailedItems(id string) bool {
	if m.fleet != nil {
		st, err := m.fleet.store.LoadCheckpoint(bg, id)
		return err == nil && st.Failed > 0
	}
	st, err := os.Stat(filepath.Join(m.jobsDir, id, batcher.FailedFile))
	return err == nil && st.Size() > 0
}

// failedFleet writes a page of job id's failure records from the fleet's
// database, after record number after. A fleet's cursors count records,
// not bytes; the page has the bounds of the file-backed one.
func (a *api) failedFleet(w http.ResponseWriter, r *http.Request, id string, after int64, limit int) {
	st, err := a.m.fleet.store.LoadCheckpoint(r.Context(), id)
	if errors.Is(err, checkpoint.ErrNotExist) {
		writeJSON(w, http.StatusOK, map[string]any{"items": []any{}, "next_cursor": nil})
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// Only committed records: those after the checkpoint belong to a
	// batch that may be redone.
	limit = int(min(int64(limit), max(st.Failed-after, 0)))
	var recs []json.RawMessage
	if limit > 0 {
		if recs, _, err = a.m.fleet.store.FailedItems(r.Context(), id, after, limit); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	items := make([]json.RawMessage, 0, len(recs))
	written := 0
	pos := after
	for _, rec := range recs {
		item := rec
		if len(item) > maxFailedLine {
			item, _ = json.Marshal(map[string]any{"clipped_line": string(bytes.ToValidUTF8(item[:maxFailedLine], nil)), "record": pos + 1, "bytes": len(rec)})
		}
		if len(items) > 0 && written+len(item) > maxFailedPage {
			break
		}
		items = append(items, item)
		written += len(item) + 1
		pos++
	}
	var next any
	if pos < st.Failed {
		next = strconv.FormatInt(pos, 10)
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": items, "next_cursor": next, "end_offset": pos})
}
