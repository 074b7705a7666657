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
// a new owner appends after the checkpoint's length, which drops what a
// runner logged after it; the old owner can no longer append.
func TestFailureLogFollowsTheJob(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a := node(t, dsn, "a", postgres.Options{LeaseTTL: time.Hour})
	b := node(t, dsn, "b", postgres.Options{LeaseTTL: time.Hour})
	create(t, a, "job1", "", registry.StatusQueued)
	ca := claimWithin(t, a, 10*time.Second)
	if n, err := a.AppendFailed(t.Context(), ca.Job, 0, failures(1, 3)); err != nil || n != 3 {
		t.Fatalf("append: %d, %v", n, err)
	}
	if err := a.SaveCheckpoint(t.Context(), ca.Job, checkpoint.Checkpoint{JobID: "job1", Seq: 1, FailedRecords: 3}); err != nil {
		t.Fatal(err)
	}
	// Failures of the next batch, whose checkpoint never comes.
	if n, err := a.AppendFailed(t.Context(), ca.Job, 3, failures(4, 5)); err != nil || n != 5 {
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
	if _, err := a.AppendFailed(t.Context(), ca.Job, 5, failures(9, 9)); !errors.Is(err, postgres.ErrLeaseLost) {
		t.Errorf("old owner's append: got %v, want ErrLeaseLost", err)
	}
	if n, err := b.AppendFailed(t.Context(), cb.Job, cp.Failed, failures(4, 4)); err != nil || n != 4 {
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
	// A writer whose count runs ahead of the log is refused, not gapped.
	if _, err := b.AppendFailed(t.Context(), cb.Job, 7, failures(8, 8)); !errors.Is(err, postgres.ErrFailedGap) {
		t.Errorf("append after record 7 of 4: got %v, want ErrFailedGap", err)
	}
	// A commit cuts records its checkpoint does not count.
	if _, err := b.AppendFailed(t.Context(), cb.Job, 4, failures(5, 6)); err != nil {
		t.Fatal(err)
	}
	if err := b.SaveCheckpoint(t.Context(), cb.Job, checkpoint.Checkpoint{JobID: "job1", Seq: 2, FailedRecords: 5}); err != nil {
		t.Fatal(err)
	}
	if recs, _, err := b.FailedItems(t.Context(), "job1", 0, 100); err != nil || len(recs) != 5 {
		t.Errorf("after a commit of 5 records: %d records (%v)", len(recs), err)
	}
}
