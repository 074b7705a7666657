package postgres_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

func failures(from, to int) []json.RawMessage {
	var out []json.RawMessage
	for i := from; i <= to; i++ {
		out = append(out, json.RawMessage(fmt.Sprintf(`{"item":%d}`, i)))
	}
	return out
}

// TestFailureLogFollowsTheJob: the failure log lives beside the checkpoint;
// a new owner cuts it back to the checkpoint's length and goes on; the old
// owner can no longer append.
func TestFailureLogFollowsTheJob(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a := node(t, dsn, "a", postgres.Options{LeaseTTL: time.Hour})
	b := node(t, dsn, "b", postgres.Options{LeaseTTL: time.Hour})
	create(t, a, "job1", "", registry.StatusQueued)
	ca := claimWithin(t, a, 10*time.Second)
	if n, err := a.AppendFailed(t.Context(), ca.Job, failures(1, 3)); err != nil || n != 3 {
		t.Fatalf("append: %d, %v", n, err)
	}
	if err := a.SaveCheckpoint(t.Context(), ca.Job, checkpoint.Checkpoint{JobID: "job1", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	// Failures of the next batch, whose checkpoint never comes.
	if n, err := a.AppendFailed(t.Context(), ca.Job, failures(4, 5)); err != nil || n != 5 {
		t.Fatalf("append: %d, %v", n, err)
	}
	// a releases (as a drain would, or as its lease running out would).
	if err := ca.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	cb := claimWithin(t, b, 10*time.Second)
	cp, err := b.LoadCheckpoint(t.Context(), "job1")
	if err != nil || cp.Failed != 3 {
		t.Fatalf("checkpoint: failed %d (%v), want 3", cp.Failed, err)
	}
	if err := b.TruncateFailed(t.Context(), cb.Job, cp.Failed); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AppendFailed(t.Context(), ca.Job, failures(9, 9)); !errors.Is(err, postgres.ErrLeaseLost) {
		t.Errorf("old owner's append: got %v, want ErrLeaseLost", err)
	}
	if n, err := b.AppendFailed(t.Context(), cb.Job, failures(4, 4)); err != nil || n != 4 {
		t.Errorf("new owner's append: %d, %v; want 4", n, err)
	}
	var got []string
	after := int64(0)
	for range 10 {
		recs, last, err := a.FailedItems(t.Context(), "job1", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			got = append(got, string(r))
		}
		after = last
	}
	if fmt.Sprint(got) != `[{"item":1} {"item":2} {"item":3} {"item":4}]` {
		t.Errorf("failure log: %v", got)
	}
}
