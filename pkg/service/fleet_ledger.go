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
	"time"

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
	return fenced(l.store.SaveCheckpoint(ctx, l.claim.Job, cp))
}

func (l *fleetLedger) Lease(context.Context) (time.Duration, error) {
	return l.claim.Remaining(), nil
}

// ledgerFor returns the StartMode.Ledger of a claimed job: before every
// runner it brings the job's state directory in step with the fleet's
// checkpoint, and hands the runner a fleetLedger.
func (m *Manager) ledgerFor(aj *activeJob, dir string) func(context.Context) (plugin.Ledger, error) {
	return func(ctx context.Context) (plugin.Ledger, error) {
		if err := aj.claim.Fence(); err != nil {
			return nil, err
		}
		if err := syncStateDir(ctx, m.fleet.store, aj.id, dir); err != nil {
			return nil, err
		}
		return &fleetLedger{store: m.fleet.store, claim: aj.claim, id: aj.id}, nil
	}
}

// syncStateDir makes the job's state directory on this node hold the
// fleet's last checkpoint of job id. When the local checkpoint is that
// commit (this node wrote it), nothing changes, and the cache snapshot it
// names is used. Otherwise the failure log is written from the fleet's
// records, the checkpoint from the fleet's, naming no snapshot, and the
// local snapshots are removed: the runner rebuilds its cache from the
// target. With no checkpoint in the fleet, a local one (of an earlier job
// with this id) is moved aside, so the job starts from the beginning.
func syncStateDir(ctx context.Context, store *postgres.Store, id, dir string) error {
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
	return checkpoint.Save(dir, cp)
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
