package batcher_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/batcher"
	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/job"
)

// memRemote is a fleet's database in memory: the failure records by
// number and the last checkpoint, with the same rules as PostgreSQL's
// store (append after a position, a commit cuts to its count).
type memRemote struct {
	mu      sync.Mutex
	records []string
	cp      *checkpoint.Checkpoint
	commits int
	// refuse makes every call fail, as a lost lease does.
	refuse atomic.Bool
}

var errRefused = errors.New("refused: lease lost")

func (r *memRemote) AppendFailures(_ context.Context, after int64, lines [][]byte) error {
	if r.refuse.Load() {
		return errRefused
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if after > int64(len(r.records)) {
		return fmt.Errorf("append after %d of %d records", after, len(r.records))
	}
	r.records = r.records[:after]
	for _, l := range lines {
		if !json.Valid(l) {
			return fmt.Errorf("record %q is not JSON", l)
		}
		r.records = append(r.records, string(l))
	}
	return nil
}

func (r *memRemote) Commit(_ context.Context, cp checkpoint.Checkpoint) error {
	if r.refuse.Load() {
		return errRefused
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if cp.FailedRecords > int64(len(r.records)) {
		return fmt.Errorf("commit counts %d records, the log has %d", cp.FailedRecords, len(r.records))
	}
	r.records = r.records[:cp.FailedRecords]
	r.cp = &cp
	r.commits++
	return nil
}

// TestRemoteGetsEveryCommit: a fleet job's commits and failure records
// reach the Remote, numbered as the local log; a refused commit stops the
// job at its next commit, with the local checkpoint at most one ahead.
func TestRemoteGetsEveryCommit(t *testing.T) {
	var src strings.Builder
	for i := 1; i <= 40; i++ {
		if i%6 == 0 {
			src.WriteString("{broken\n")
			continue
		}
		src.WriteString(line(i, fmt.Sprintf("u%d@x.io", i), ""))
	}
	f := newFixture(t, src.String())
	r := &memRemote{}
	res, err := f.run(t.Context(), func(o *batcher.Options) { o.Remote = r })
	if err != nil {
		t.Fatal(err)
	}
	local, err := checkpoint.Load(f.spec.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if r.cp == nil || r.cp.Seq != local.Seq || !r.cp.Time.Equal(local.Time) || !r.cp.Done {
		t.Fatalf("remote checkpoint %+v, local %+v: want the same final commit", r.cp, local)
	}
	// 6 batches of 7, a first commit before any write, and the last.
	if r.commits < 7 {
		t.Errorf("remote got %d commits, want one per batch", r.commits)
	}
	fails := f.failures()
	if len(fails) != 6 || len(r.records) != 6 || local.FailedRecords != 6 || res.Checkpoint.Counters.Failed != 6 {
		t.Fatalf("failures: local %d, remote %d, counted %d, checkpoint %d; want 6", len(fails), len(r.records), local.FailedRecords, res.Checkpoint.Counters.Failed)
	}
	for i, rec := range r.records {
		var e struct {
			Line int64 `json:"line"`
		}
		if err := json.Unmarshal([]byte(rec), &e); err != nil || e.Line != fails[i].Line {
			t.Errorf("remote record %d is %s, local line %d", i+1, rec, fails[i].Line)
		}
	}

	// A retry replaces the log in the Remote too. The source is fixed.
	fixed := strings.ReplaceAll(src.String(), "{broken\n", `{"item_id": 999, "fields": {"email": "fixed@x.io"}}`+"\n")
	os.WriteFile(f.spec.Source.Path, []byte(fixed), 0o644)
	if _, err := f.run(t.Context(), func(o *batcher.Options) { o.Remote, o.RetryFailed = r, true }); err != nil {
		t.Fatal(err)
	}
	if len(r.records) != 0 || r.cp.FailedRecords != 0 {
		t.Errorf("after the retry the remote holds %d records, checkpoint %d; want 0", len(r.records), r.cp.FailedRecords)
	}

	// A refused commit: the job stops before a second local commit.
	g := newFixture(t, src.String())
	h := &memRemote{}
	_, err = g.run(t.Context(), func(o *batcher.Options) {
		o.Remote = refuseAfter{h, 3}
	})
	if !errors.Is(err, errRefused) {
		t.Fatalf("run with a refusing remote: %v, want the refusal", err)
	}
	now, _ := checkpoint.Load(g.spec.Dir())
	if h.commits != 3 || now.Seq != h.cp.Seq+1 {
		t.Errorf("local checkpoint %d at %d, remote's last %d at %d after %d commits: the local one must be one ahead at most",
			now.Seq, now.Source.Index, h.cp.Seq, h.cp.Source.Index, h.commits)
	}
}

// refuseAfter accepts n commits, then refuses.
type refuseAfter struct {
	*memRemote
	n int
}

func (r refuseAfter) Commit(ctx context.Context, cp checkpoint.Checkpoint) error {
	r.mu.Lock()
	full := r.commits >= r.n
	r.mu.Unlock()
	if full {
		return errRefused
	}
	return r.memRemote.Commit(ctx, cp)
}

// countingTarget counts the writes that reach the target.
type countingTarget struct {
	connector.Target
	n      atomic.Int64
	onSend func(n int64)
}

func (c *countingTarget) Create(ctx context.Context, ext string, f connector.Fields) (int64, error) {
	n := c.n.Add(1)
	if c.onSend != nil {
		c.onSend(n)
	}
	return c.Target.Create(ctx, ext, f)
}

// TestFenceStopsWritesAtOnce: once Fence fails, no write is sent, nothing
// is committed, and Run ends with ErrFenced; a later run with its lease
// back resumes exactly once.
func TestFenceStopsWritesAtOnce(t *testing.T) {
	var src strings.Builder
	for i := 1; i <= 60; i++ {
		src.WriteString(line(i, fmt.Sprintf("u%d@x.io", i), ""))
	}
	f := newFixture(t, src.String())
	r := &memRemote{}
	var lost atomic.Bool
	lostAt := int64(-1)
	ct := &countingTarget{}
	ct.onSend = func(n int64) {
		// The lease is lost while write 17 is being sent.
		if n == 17 {
			lost.Store(true)
			lostAt = n
		}
	}
	_, err := f.run(t.Context(), func(o *batcher.Options) {
		ct.Target = o.Target
		o.Target, o.Remote = ct, r
		o.Fence = func() error {
			if lost.Load() {
				return errRefused
			}
			return nil
		}
	})
	if !errors.Is(err, batcher.ErrFenced) || !errors.Is(err, errRefused) {
		t.Fatalf("run: %v, want ErrFenced wrapping the fence's error", err)
	}
	// Writes already sent when the lease went may complete (at most the
	// concurrency); none is sent after.
	if sent := ct.n.Load(); sent > lostAt+int64(f.spec.Concurrency)-1 {
		t.Errorf("%d writes sent; the lease was lost at write %d with concurrency %d", sent, lostAt, f.spec.Concurrency)
	}
	// The commit of the batch before the fence may have been on its way
	// to the Remote when the fence fell: it is refused then, and the local
	// checkpoint is one ahead. Nothing after it was committed anywhere.
	committed := r.cp.Seq
	local, _ := checkpoint.Load(f.spec.Dir())
	if local.Seq != committed && local.Seq != committed+1 {
		t.Errorf("local checkpoint %d, remote %d: a fenced commit must not happen", local.Seq, committed)
	}
	if got := local.Source.Index; got > lostAt {
		t.Errorf("local checkpoint at item %d: the batch the fence stopped (write %d) was committed", got, lostAt)
	}
	// The next owner (here the same directory) resumes exactly once.
	res, err := f.run(t.Context(), func(o *batcher.Options) { o.Remote = r })
	if err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, f, res, 60, 60, 0)
	if _, err := os.Stat(filepath.Join(f.spec.Dir(), batcher.FailedFile)); err != nil {
		t.Fatal(err)
	}
}

// TestSpecHashIgnoresQuotaShare: a fleet sets quota_share per run, so it
// must not make a resume look like another migration; the app does.
func TestSpecHashIgnoresQuotaShare(t *testing.T) {
	s := job.Default()
	s.ID = "h"
	s.Source = job.Endpoint{Type: job.TypePodio, Podio: &job.Podio{AppID: 1}}
	s.Target = job.Endpoint{Type: job.TypePodio, Podio: &job.Podio{AppID: 2}}
	base := batcher.SpecHash(s)
	shared := s
	p := *s.Target.Podio
	p.QuotaShare = 3
	shared.Target.Podio = &p
	if got := batcher.SpecHash(shared); got != base {
		t.Errorf("quota_share changed the spec hash: %s, was %s", got, base)
	}
	if s.Target.Podio.QuotaShare != 0 {
		t.Error("SpecHash changed the spec it hashed")
	}
	other := s
	q := *s.Target.Podio
	q.AppID = 3
	other.Target.Podio = &q
	if batcher.SpecHash(other) == base {
		t.Error("another target app has the same spec hash")
	}
}

// TestPeriodicSnapshotServesAKilledRunner: with snapshot_interval, the
// commits of a run that is then killed (not drained) name a cache
// snapshot, and the next run restores it instead of reading the whole
// target, and still writes every item exactly once. Without it, the killed
// run's checkpoint names none.
func TestPeriodicSnapshotServesAKilledRunner(t *testing.T) {
	var src strings.Builder
	for i := 1; i <= 100; i++ {
		src.WriteString(line(i, fmt.Sprintf("u%d@x.io", i), ""))
	}
	for _, every := range []job.Duration{0, 1} {
		f := newFixture(t, src.String())
		f.spec.SnapshotInterval = every // 1 ns: at every commit
		f.spec.Concurrency = 1
		ctx, cancel := context.WithCancel(t.Context())
		_, err := f.run(ctx, func(o *batcher.Options) {
			k := &killingTarget{Target: o.Target, cancel: cancel}
			k.left.Store(40)
			o.Target = k
		})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("interval %d: the killed run: %v", every, err)
		}
		cp, err := checkpoint.Load(f.spec.Dir())
		if err != nil {
			t.Fatal(err)
		}
		if every == 0 {
			if cp.Snapshot != nil {
				t.Errorf("no interval: the killed run's checkpoint names snapshot %s", cp.Snapshot.File)
			}
			continue
		}
		if cp.Snapshot == nil {
			t.Fatal("the killed run's checkpoint names no snapshot")
		}
		main, _ := batcher.SnapshotFiles(f.spec.Dir(), cp.Snapshot.File)
		if _, err := os.Stat(main); err != nil {
			t.Fatalf("the named snapshot: %v", err)
		}
		if snaps, _ := filepath.Glob(filepath.Join(f.spec.Dir(), "cache-*.ext.snap")); len(snaps) != 1 {
			t.Errorf("snapshot files left: %v, want only the named one", snaps)
		}
		var logs bytes.Buffer
		res, err := f.run(t.Context(), func(o *batcher.Options) { o.Logger = zerolog.New(&logs) })
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), "Cache restored from snapshot") {
			t.Errorf("the resumed run did not restore the snapshot:\n%s", logs.String())
		}
		checkExactlyOnce(t, f, res, 100, 100, 0)
	}
}
