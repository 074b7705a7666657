package postgres_test

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

// TestFailoverFencesThePausedNode is the lease's whole story with two
// nodes: a holds the job and checkpoints; a is paused (stops renewing) past
// lease_ttl; b waits the lease out and takes the job with a higher epoch;
// a's fence, renewal and checkpoint write are all refused afterwards.
func TestFailoverFencesThePausedNode(t *testing.T) {
	const ttl = 3 * time.Second
	dsn := pgtest.NewDatabase(t)
	a := node(t, dsn, "a", postgres.Options{LeaseTTL: ttl})
	b := node(t, dsn, "b", postgres.Options{LeaseTTL: ttl})
	create(t, a, "job1", "src>dst", registry.StatusQueued)

	ca := claimWithin(t, a, 10*time.Second)
	if ca.Record.ID != "job1" || ca.Record.Status != registry.StatusRunning || ca.Job.Epoch() != 1 {
		t.Fatalf("a claimed %s (%s) at epoch %d, want job1 running at epoch 1", ca.Record.ID, ca.Record.Status, ca.Job.Epoch())
	}
	if err := a.SaveCheckpoint(t.Context(), ca.Job, checkpoint.Checkpoint{JobID: "job1", Seq: 1}); err != nil {
		t.Fatalf("a's checkpoint while it holds the lease: %v", err)
	}
	if owner, live, _ := b.Owner(t.Context(), "job1"); owner != "a" || !live {
		t.Errorf("owner seen from b: %q live=%v, want a, live", owner, live)
	}
	// While a's lease is live, b can neither claim the job nor take it.
	if _, err := b.Claim(t.Context()); !errors.Is(err, postgres.ErrNoJob) {
		t.Errorf("b claims while a holds the job: got %v, want ErrNoJob", err)
	}
	_, err := b.AcquireJob(t.Context(), "job1")
	var he *postgres.HeldError
	if !errors.As(err, &he) || he.Node != "a" || he.Epoch != 1 || he.Remaining <= 0 || he.Remaining > ttl {
		t.Errorf("b acquires a's live lease: got %v, want a HeldError naming a with 0 < remaining <= %s", err, ttl)
	}

	// a is paused: nothing renews its lease. b waits it out.
	cb := claimWithin(t, b, 30*time.Second)
	if cb.Record.ID != "job1" || cb.Job.Epoch() != 2 {
		t.Fatalf("b took over %s at epoch %d, want job1 at epoch 2", cb.Record.ID, cb.Job.Epoch())
	}
	k := b.Keep(cb.Leases()...)
	defer k.Close()
	cp, err := b.LoadCheckpoint(t.Context(), "job1")
	epoch := cp.Epoch
	if err != nil || cp.Seq != 1 || epoch != 1 {
		t.Errorf("b resumes from checkpoint seq %d epoch %d (%v), want a's seq 1 epoch 1", cp.Seq, epoch, err)
	}

	// a wakes up. Its first fence check stops it before any target write.
	if err := ca.Fence(); !errors.Is(err, postgres.ErrLeaseLost) {
		t.Errorf("a's fence after the takeover: got %v, want ErrLeaseLost", err)
	}
	if err := a.SaveCheckpoint(t.Context(), ca.Job, checkpoint.Checkpoint{JobID: "job1", Seq: 99}); !errors.Is(err, postgres.ErrLeaseLost) {
		t.Errorf("a's checkpoint after the takeover: got %v, want ErrLeaseLost", err)
	}
	if err := ca.Job.Renew(t.Context()); !errors.Is(err, postgres.ErrLeaseLost) {
		t.Errorf("a's renewal after the takeover: got %v, want ErrLeaseLost", err)
	}
	select {
	case <-ca.Job.Lost():
	default:
		t.Error("a's Lost channel is open after the takeover")
	}
	if err := b.SaveCheckpoint(t.Context(), cb.Job, checkpoint.Checkpoint{JobID: "job1", Seq: 2}); err != nil {
		t.Errorf("b's checkpoint: %v", err)
	}
	cp, err = a.LoadCheckpoint(t.Context(), "job1")
	epoch = cp.Epoch
	if err != nil || cp.Seq != 2 || epoch != 2 {
		t.Errorf("checkpoint after both wrote: seq %d epoch %d (%v), want b's seq 2 epoch 2", cp.Seq, epoch, err)
	}
	if owner, live, _ := a.Owner(t.Context(), "job1"); owner != "b" || !live {
		t.Errorf("owner after the takeover: %q live=%v, want b, live", owner, live)
	}
}

// TestSQLFenceHoldsWhenTheLocalClockLies gives the old owner a clock that
// never moves, so its local fence never fires: its checkpoint write must
// still be refused by the database once the job has a new owner, be it
// another node or a restarted process with the same node id.
func TestSQLFenceHoldsWhenTheLocalClockLies(t *testing.T) {
	for _, newOwner := range []string{"b", "a"} {
		t.Run("new owner "+newOwner, func(t *testing.T) {
			const ttl = time.Second
			dsn := pgtest.NewDatabase(t)
			frozen := time.Now()
			a := node(t, dsn, "a", postgres.Options{LeaseTTL: ttl, Now: func() time.Time { return frozen }})
			b := node(t, dsn, newOwner, postgres.Options{LeaseTTL: ttl})
			create(t, a, "job1", "", registry.StatusQueued)
			ca := claimWithin(t, a, 10*time.Second)
			cb := claimWithin(t, b, 30*time.Second)
			if cb.Job.Epoch() <= ca.Job.Epoch() {
				t.Fatalf("new owner's epoch %d, want above the old one's %d", cb.Job.Epoch(), ca.Job.Epoch())
			}
			if err := ca.Fence(); err != nil {
				t.Fatalf("the frozen clock should keep the old owner's local fence open, got %v", err)
			}
			if err := a.SaveCheckpoint(t.Context(), ca.Job, checkpoint.Checkpoint{JobID: "job1", Seq: 7}); !errors.Is(err, postgres.ErrLeaseLost) {
				t.Errorf("stale-epoch checkpoint: got %v, want ErrLeaseLost from the database", err)
			}
			if _, err := b.LoadCheckpoint(t.Context(), "job1"); !errors.Is(err, checkpoint.ErrNotExist) {
				t.Errorf("after the refused write: got %v, want no checkpoint", err)
			}
			// Refused once, the old owner knows it: its local fence is
			// closed too.
			if err := ca.Fence(); !errors.Is(err, postgres.ErrLeaseLost) {
				t.Errorf("fence after the refusal: got %v", err)
			}
			if err := ca.Job.Renew(t.Context()); !errors.Is(err, postgres.ErrLeaseLost) {
				t.Errorf("renewal by the old owner: got %v", err)
			}
			if err := b.SaveCheckpoint(t.Context(), cb.Job, checkpoint.Checkpoint{JobID: "job1", Seq: 1}); err != nil {
				t.Errorf("new owner's checkpoint: %v", err)
			}
			// A checkpoint of another job under this lease is refused.
			if err := b.SaveCheckpoint(t.Context(), cb.Job, checkpoint.Checkpoint{JobID: "other"}); err == nil {
				t.Error("a checkpoint of another job was written under job1's lease")
			}
		})
	}
}

// TestKeeperHoldsTheLease: a renewed lease outlives many TTLs, and is
// taken over only after the keeper stops.
func TestKeeperHoldsTheLease(t *testing.T) {
	const ttl = 3 * time.Second
	dsn := pgtest.NewDatabase(t)
	a := node(t, dsn, "a", postgres.Options{LeaseTTL: ttl})
	b := node(t, dsn, "b", postgres.Options{LeaseTTL: ttl})
	create(t, a, "job1", "", registry.StatusQueued)
	ca := claimWithin(t, a, 10*time.Second)
	k := a.Keep(ca.Leases()...)
	deadline := time.Now().Add(3 * ttl)
	for time.Now().Before(deadline) {
		if _, err := b.Claim(t.Context()); !errors.Is(err, postgres.ErrNoJob) {
			k.Close()
			t.Fatalf("b claimed a kept lease: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := ca.Fence(); err != nil {
		t.Errorf("a kept lease fails its fence: %v", err)
	}
	k.Close()
	cb := claimWithin(t, b, 30*time.Second)
	if cb.Job.Epoch() != 2 {
		t.Errorf("b's epoch %d, want 2", cb.Job.Epoch())
	}
}

// TestReleaseHandsOverAtOnce: a released lease is taken without waiting,
// with a higher epoch, and the old holder is fenced.
func TestReleaseHandsOverAtOnce(t *testing.T) {
	const ttl = time.Hour
	dsn := pgtest.NewDatabase(t)
	a := node(t, dsn, "a", postgres.Options{LeaseTTL: ttl})
	b := node(t, dsn, "b", postgres.Options{LeaseTTL: ttl})
	create(t, a, "job1", "", registry.StatusQueued)
	ca := claimWithin(t, a, 10*time.Second)
	if err := ca.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := ca.Fence(); !errors.Is(err, postgres.ErrLeaseLost) {
		t.Errorf("fence after release: got %v", err)
	}
	cb, err := b.Claim(t.Context())
	if err != nil {
		t.Fatalf("claim after release, with a one-hour TTL: %v", err)
	}
	if cb.Job.Epoch() != 2 {
		t.Errorf("epoch after release: %d, want 2", cb.Job.Epoch())
	}
	// The same node id does not get a live lease back either.
	if _, err := b.AcquireJob(t.Context(), "job1"); !errors.Is(err, postgres.ErrHeld) {
		t.Errorf("re-acquire by the holder's own node id: got %v, want ErrHeld", err)
	}
}

// TestClaimTakesEachJobOnce: three nodes drain a queue at once; every job
// is claimed by exactly one node.
func TestClaimTakesEachJobOnce(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	const jobs = 24
	var nodes []*postgres.Store
	for i := range 3 {
		nodes = append(nodes, node(t, dsn, fmt.Sprint("n", i), postgres.Options{LeaseTTL: time.Hour}))
	}
	for i := range jobs {
		create(t, nodes[0], fmt.Sprintf("j%02d", i), fmt.Sprint("p", i), registry.StatusQueued)
	}
	create(t, nodes[0], "paused", "", registry.StatusPaused)
	create(t, nodes[0], "done", "", registry.StatusCompleted)
	var mu sync.Mutex
	got := map[string]string{}
	var wg sync.WaitGroup
	var dups atomic.Int32
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := n.Claim(t.Context())
				if errors.Is(err, postgres.ErrNoJob) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if _, ok := got[c.Record.ID]; ok {
					dups.Add(1)
				}
				got[c.Record.ID] = n.Node()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if dups.Load() != 0 || len(got) != jobs {
		var ids []string
		for id := range got {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		t.Errorf("claimed %d distinct jobs with %d duplicates, want %d and 0: %v", len(got), dups.Load(), jobs, ids)
	}
	for id, n := range got {
		if owner, live, err := nodes[0].Owner(t.Context(), id); err != nil || owner != n || !live {
			t.Errorf("job %s: owner %q live=%v (%v), want %s", id, owner, live, err, n)
		}
	}
	running, err := all(t, nodes[1], registry.StatusRunning)
	if err != nil || len(running) != jobs {
		t.Errorf("running jobs: %d (%v), want %d", len(running), err, jobs)
	}
}
