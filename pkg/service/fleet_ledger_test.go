package service

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/batcher"
	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
	"github.com/memvisor/memvisor/plugin"
)

func openStore(t *testing.T, dsn, node string, ttl time.Duration) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), dsn, postgres.Options{Node: node, LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func claimJob(t *testing.T, s *postgres.Store) *postgres.Claim {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := s.Claim(t.Context())
		if err == nil {
			return c
		}
		if !errors.Is(err, postgres.ErrNoJob) || time.Now().After(deadline) {
			t.Fatalf("claim: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func commitThrough(t *testing.T, l plugin.Ledger, cp checkpoint.Checkpoint) error {
	t.Helper()
	data, err := json.Marshal(cp)
	if err != nil {
		t.Fatal(err)
	}
	return l.Commit(t.Context(), data, cp.FailedRecords)
}

// TestFleetLedgerMovesAJobBetweenStateDirs: node a's runner commits
// through its ledger and a stores a cache snapshot; node b, with a state
// directory of its own, takes the job over and gets a's checkpoint,
// failure records and snapshot, byte for byte, and no stale file;
// a's ledger is fenced from then on; a node whose local checkpoint is the
// fleet's keeps it, snapshot included.
func TestFleetLedgerMovesAJobBetweenStateDirs(t *testing.T) {
	dsn := pgtest.Start(t).NewDatabase(t)
	a := openStore(t, dsn, "node-a", 2*time.Second)
	b := openStore(t, dsn, "node-b", 2*time.Second)
	rec := registry.Record{ID: "job1", Pair: "p", Status: registry.StatusQueued, Spec: []byte(`{"id":"job1"}`)}
	if err := a.Create(t.Context(), &rec, 0); err != nil {
		t.Fatal(err)
	}
	ca := claimJob(t, a)
	la := &fleetLedger{store: a, claim: ca, id: "job1"}
	if d, err := la.Lease(t.Context()); err != nil || d <= 0 || d > 2*time.Second {
		t.Fatalf("lease of a fresh claim: %s %v", d, err)
	}
	// Hostile commits are refused before they reach the database.
	if err := la.Commit(t.Context(), []byte(`{"job_id":"job1","seq":1,"extra":1}`), 0); err == nil {
		t.Error("a checkpoint with an unknown field was accepted")
	}
	if err := commitThrough(t, la, checkpoint.Checkpoint{JobID: "job2", Seq: 1}); err == nil {
		t.Error("another job's checkpoint was accepted")
	}
	if err := la.AppendFailures(t.Context(), 0, [][]byte{[]byte(`{"n":1}`), []byte(`not json`)}); err == nil {
		t.Error("a failure record that is not JSON was accepted")
	}

	if err := la.AppendFailures(t.Context(), 0, [][]byte{[]byte(`{"n":1}`), []byte(`{"n":2}`), []byte(`{"n":3}`)}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	cp := checkpoint.Checkpoint{JobID: "job1", SpecHash: "h", Seq: 4, Source: connector.Cursor{Index: 40}, FailedBytes: 999, FailedRecords: 2, Time: now,
		Snapshot: &checkpoint.Snapshot{File: "cache-00000004.snap"}}
	if err := commitThrough(t, la, cp); err != nil {
		t.Fatal(err)
	}
	// a's snapshot, stored in the fleet: a 3 MiB index, in pieces.
	index := make([]byte, 3<<20+17)
	rand.Read(index)
	snap := checkpoint.Snapshot{File: "cache-00000004.snap", Target: 123, Entries: 9}
	if err := a.SaveSnapshot(t.Context(), ca.Job, snap, [2]io.Reader{bytes.NewReader(index), strings.NewReader("ext")}); err != nil {
		t.Fatal(err)
	}

	// Node a's own directory: its checkpoint is the fleet's, so nothing
	// changes and its snapshot stays.
	dirA := filepath.Join(t.TempDir(), "job1")
	os.MkdirAll(dirA, 0o755)
	if err := checkpoint.Save(dirA, cp); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dirA, "cache-00000004.snap"), []byte("snap"), 0o644)
	os.WriteFile(filepath.Join(dirA, batcher.FailedFile), []byte("{\"n\":1}\n{\"n\":2}\n"), 0o644)
	if err := syncStateDir(t.Context(), a, "job1", dirA, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dirA, "cache-00000004.snap")); err != nil {
		t.Errorf("the snapshot of the node's own commit was removed: %v", err)
	}

	// a's lease runs out (it stops renewing); b takes the job over.
	// No renewals: the keeper is not running.
	time.Sleep(2500 * time.Millisecond)
	cb := claimJob(t, b)
	if cb.Job.Epoch() <= ca.Job.Epoch() {
		t.Fatalf("b's epoch %d, a's %d", cb.Job.Epoch(), ca.Job.Epoch())
	}
	if err := commitThrough(t, la, checkpoint.Checkpoint{JobID: "job1", Seq: 5}); !errors.Is(err, plugin.ErrFenced) {
		t.Errorf("a's commit after b took over: %v, want ErrFenced", err)
	}
	if d, _ := la.Lease(t.Context()); d != 0 {
		t.Errorf("a's lease after b took over: %s, want 0", d)
	}

	// b's directory holds a stale checkpoint of its own and a snapshot.
	dirB := filepath.Join(t.TempDir(), "job1")
	os.MkdirAll(dirB, 0o755)
	stale := checkpoint.Checkpoint{JobID: "job1", SpecHash: "h", Seq: 1, Time: now.Add(-time.Hour), Snapshot: &checkpoint.Snapshot{File: "cache-00000001.snap"}}
	checkpoint.Save(dirB, stale)
	os.WriteFile(filepath.Join(dirB, "cache-00000001.snap"), []byte("old"), 0o644)
	os.WriteFile(filepath.Join(dirB, batcher.FailedFile), []byte("{\"old\":1}\n"), 0o644)
	lb, err := (&Manager{fleet: &fleet{store: b}}).ledgerFor(&activeJob{id: "job1", claim: cb}, dirB)(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got, err := checkpoint.Load(dirB)
	if err != nil {
		t.Fatal(err)
	}
	want := "{\"n\":1}\n{\"n\":2}\n"
	failed, _ := os.ReadFile(filepath.Join(dirB, batcher.FailedFile))
	if got.Seq != 4 || got.Snapshot == nil || *got.Snapshot != snap || got.FailedRecords != 2 || got.FailedBytes != int64(len(want)) || string(failed) != want {
		t.Errorf("b's state dir: checkpoint seq %d snapshot %v records %d bytes %d, failed.jsonl %q; want a's commit, snapshot %v, %q",
			got.Seq, got.Snapshot, got.FailedRecords, got.FailedBytes, failed, snap, want)
	}
	main, ext := batcher.SnapshotFiles(dirB, snap.File)
	if data, err := os.ReadFile(main); err != nil || !bytes.Equal(data, index) {
		t.Errorf("b's snapshot index: %d bytes (%v), want a's %d", len(data), err, len(index))
	}
	if data, err := os.ReadFile(ext); err != nil || string(data) != "ext" {
		t.Errorf("b's snapshot external ids: %q (%v)", data, err)
	}
	if snaps, _ := filepath.Glob(filepath.Join(dirB, "cache-*")); len(snaps) != 2 {
		t.Errorf("snapshot files in b's dir: %v, want only the fleet's two", snaps)
	}
	if err := a.SaveSnapshot(t.Context(), ca.Job, snap, [2]io.Reader{strings.NewReader("x"), strings.NewReader("y")}); !errors.Is(err, postgres.ErrLeaseLost) {
		t.Errorf("a's snapshot after b took over: %v, want ErrLeaseLost", err)
	}
	// b goes on: its first append comes after a's committed records,
	// which drops a's uncommitted third one.
	if err := lb.AppendFailures(t.Context(), 2, [][]byte{[]byte(`{"n":"b"}`)}); err != nil {
		t.Fatal(err)
	}
	recs, _, err := b.FailedItems(t.Context(), "job1", 0, 10)
	if err != nil || len(recs) != 3 || !bytes.Equal(recs[2], []byte(`{"n":"b"}`)) {
		t.Errorf("failure records after b's append: %s (%v)", recs, err)
	}

	// A job with no checkpoint in the fleet: a local one is moved aside.
	dirC := filepath.Join(t.TempDir(), "job9")
	os.MkdirAll(dirC, 0o755)
	checkpoint.Save(dirC, stale)
	if err := syncStateDir(context.Background(), b, "job9", dirC, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if _, err := checkpoint.Load(dirC); !errors.Is(err, checkpoint.ErrNotExist) {
		t.Errorf("a local checkpoint the fleet does not have: %v, want moved aside", err)
	}
}

// TestWithQuotaShares: a job claimed under podio_quota_shares N gets 1/N
// of each set of credentials per end, 1/(2N) per end when both ends share
// one set, never less than it asked for itself.
func TestWithQuotaShares(t *testing.T) {
	user := func(name string) *job.Podio {
		return &job.Podio{AppID: 7, Auth: &job.PodioAuth{Flow: "password", ClientID: "c", UsernameEnv: name}}
	}
	t.Setenv("QS_ALICE", "alice")
	t.Setenv("QS_BOB", "bob")
	spec := func(src, tgt *job.Podio) job.Spec {
		s := job.Default()
		s.Source = job.Endpoint{Type: job.TypePodio, Podio: src}
		s.Target = job.Endpoint{Type: job.TypePodio, Podio: tgt}
		return s
	}
	shares := func(s job.Spec) [2]int { return [2]int{s.Source.Podio.QuotaShare, s.Target.Podio.QuotaShare} }
	if got := shares(withQuotaShares(spec(user("QS_ALICE"), user("QS_BOB")), 1)); got != [2]int{0, 0} {
		t.Errorf("one share: %v, want the job's own", got)
	}
	if got := shares(withQuotaShares(spec(user("QS_ALICE"), user("QS_BOB")), 3)); got != [2]int{3, 3} {
		t.Errorf("3 shares, two users: %v, want [3 3]", got)
	}
	if got := shares(withQuotaShares(spec(user("QS_ALICE"), user("QS_ALICE")), 3)); got != [2]int{6, 6} {
		t.Errorf("3 shares, one user at both ends: %v, want [6 6]", got)
	}
	own := user("QS_BOB")
	own.QuotaShare = 10
	in := spec(user("QS_ALICE"), own)
	if got := shares(withQuotaShares(in, 3)); got != [2]int{3, 10} {
		t.Errorf("3 shares, target asking for 10: %v, want [3 10]", got)
	}
	if in.Source.Podio.QuotaShare != 0 {
		t.Error("withQuotaShares changed the spec it was given")
	}
	j := job.Default()
	j.Source = job.Endpoint{Type: job.TypeJSONL, Path: "/x"}
	j.Target = job.Endpoint{Type: job.TypePodio, Podio: user("QS_BOB")}
	if got := withQuotaShares(j, 2); got.Target.Podio.QuotaShare != 2 || got.Source.Podio != nil {
		t.Errorf("jsonl to Podio, 2 shares: target %d", got.Target.Podio.QuotaShare)
	}
}
