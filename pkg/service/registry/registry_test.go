package registry_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/memvisor/memvisor/pkg/service/registry"
)

func open(t *testing.T, path string) *registry.DB {
	t.Helper()
	db, err := registry.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	db, err := registry.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rec := registry.Record{ID: "a", Pair: "p", Status: registry.StatusRunning, Spec: []byte(`{"id":"a"}`)}
	if err := db.Create(t.Context(), &rec, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Update(t.Context(), "a", func(r *registry.Record) error { r.Counts.Processed = 42; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = open(t, path)
	got, err := db.Get(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != registry.StatusRunning || got.Counts.Processed != 42 || string(got.Spec) != `{"id":"a"}` {
		t.Errorf("got %+v after reopen", got)
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	open(t, path)
	_, err := registry.Open(path, 100*time.Millisecond)
	if !errors.Is(err, registry.ErrLocked) {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
}

func TestCreateConflicts(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "r.db"))
	mk := func(id, pair string, st registry.Status) error {
		return db.Create(t.Context(), &registry.Record{ID: id, Pair: pair, Status: st}, 0)
	}
	if err := mk("a", "src>dst", registry.StatusQueued); err != nil {
		t.Fatal(err)
	}
	if err := mk("a", "other", registry.StatusQueued); !errors.Is(err, registry.ErrExists) {
		t.Errorf("same id: got %v, want ErrExists", err)
	}
	err := mk("b", "src>dst", registry.StatusQueued)
	var ce *registry.ConflictError
	if !errors.As(err, &ce) || ce.ID != "a" || !errors.Is(err, registry.ErrActivePair) {
		t.Errorf("same pair while active: got %v, want a ConflictError naming a", err)
	}
	if _, err := db.Update(t.Context(), "a", func(r *registry.Record) error { r.Status = registry.StatusCompleted; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := mk("b", "src>dst", registry.StatusQueued); err != nil {
		t.Errorf("same pair after the first finished: %v", err)
	}
}

func TestCreateRaceHasOneWinner(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "r.db"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if db.Create(t.Context(), &registry.Record{ID: fmt.Sprint("j", i), Pair: "same", Status: registry.StatusQueued}, 0) == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("got %d winners for one pair, want 1", wins)
	}
}

func TestListPagesAndFilters(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "r.db"))
	for i := range 7 {
		st := registry.StatusCompleted
		if i%2 == 0 {
			st = registry.StatusQueued
		}
		if err := db.Create(t.Context(), &registry.Record{ID: fmt.Sprintf("j%d", i), Status: st}, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Delete(t.Context(), "j3"); err != nil {
		t.Fatal(err)
	}
	var ids []string
	opt := registry.ListOptions{Limit: 2}
	for range 10 {
		p, err := db.List(t.Context(), opt)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range p.Jobs {
			ids = append(ids, r.ID)
		}
		if p.NextCursor == "" {
			break
		}
		opt.Cursor = p.NextCursor
	}
	if got, want := fmt.Sprint(ids), "[j0 j1 j2 j4 j5 j6]"; got != want {
		t.Errorf("pages: got %s, want %s", got, want)
	}
	queued, err := db.List(t.Context(), registry.ListOptions{Statuses: []registry.Status{registry.StatusQueued}})
	if err != nil {
		t.Fatal(err)
	}
	if len(queued.Jobs) != 4 || queued.Jobs[0].ID != "j0" || queued.Jobs[3].ID != "j6" {
		t.Errorf("queued: got %+v", queued.Jobs)
	}
	if _, err := db.List(t.Context(), registry.ListOptions{Cursor: "x"}); !errors.Is(err, registry.ErrBadCursor) {
		t.Errorf("bad cursor: got %v", err)
	}
	if err := db.Delete(t.Context(), "j3"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("delete twice: got %v", err)
	}
	n, err := db.Count(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n[registry.StatusQueued] != 4 || n[registry.StatusCompleted] != 2 {
		t.Errorf("count: got %v", n)
	}
}

func TestQueueBound(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "r.db"))
	for i := range 3 {
		if err := db.Create(t.Context(), &registry.Record{ID: fmt.Sprint("q", i), Status: registry.StatusQueued}, 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Create(t.Context(), &registry.Record{ID: "q3", Status: registry.StatusQueued}, 3); !errors.Is(err, registry.ErrQueueFull) {
		t.Fatalf("fourth queued job with a bound of 3: got %v, want ErrQueueFull", err)
	}
	if _, err := db.Update(t.Context(), "q0", func(r *registry.Record) error { r.Status = registry.StatusRunning; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.Create(t.Context(), &registry.Record{ID: "q3", Status: registry.StatusQueued}, 3); err != nil {
		t.Errorf("after one left the queue: %v", err)
	}
}

func TestUpdateRefusesASecondActiveJobOnAPair(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "r.db"))
	if err := db.Create(t.Context(), &registry.Record{ID: "old", Pair: "p", Status: registry.StatusFailed}, 0); err != nil {
		t.Fatal(err)
	}
	if err := db.Create(t.Context(), &registry.Record{ID: "new", Pair: "p", Status: registry.StatusQueued}, 0); err != nil {
		t.Fatal(err)
	}
	_, err := db.Update(t.Context(), "old", func(r *registry.Record) error { r.Status = registry.StatusQueued; return nil })
	var ce *registry.ConflictError
	if !errors.As(err, &ce) || ce.ID != "new" {
		t.Fatalf("reactivating old while new holds the pair: got %v, want a ConflictError naming new", err)
	}
	if got, _ := db.Get(t.Context(), "old"); got.Status != registry.StatusFailed {
		t.Errorf("refused update was written: status %s", got.Status)
	}
	if err := db.Delete(t.Context(), "new"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Update(t.Context(), "old", func(r *registry.Record) error { r.Status = registry.StatusQueued; return nil }); err != nil {
		t.Errorf("reactivating after the holder was deleted: %v", err)
	}
}

// TestCreateDoesNotReadOtherRecords proves that a create, and the
// scheduler's page of queued jobs, do not decode the other stored jobs: a
// corrupt record of a finished job does not stop them.
func TestCreateDoesNotReadOtherRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	db, err := registry.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Create(t.Context(), &registry.Record{ID: "done", Pair: "old", Status: registry.StatusCompleted}, 0); err != nil {
		t.Fatal(err)
	}
	if err := db.Create(t.Context(), &registry.Record{ID: "a", Pair: "p", Status: registry.StatusQueued}, 0); err != nil {
		t.Fatal(err)
	}
	db.Close()
	raw, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("jobs")).Put([]byte("done"), []byte("not json")) }); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	db = open(t, path)
	if err := db.Create(t.Context(), &registry.Record{ID: "b", Pair: "q", Status: registry.StatusQueued}, 0); err != nil {
		t.Errorf("create beside a corrupt record: %v", err)
	}
	if err := db.Create(t.Context(), &registry.Record{ID: "c", Pair: "p", Status: registry.StatusQueued}, 0); !errors.Is(err, registry.ErrActivePair) {
		t.Errorf("same pair as a: got %v, want ErrActivePair", err)
	}
	p, err := db.List(t.Context(), registry.ListOptions{Statuses: []registry.Status{registry.StatusQueued}, Limit: 1})
	if err != nil || len(p.Jobs) != 1 || p.Jobs[0].ID != "a" || p.NextCursor == "" {
		t.Errorf("oldest queued job beside a corrupt finished one: %+v, %v", p, err)
	}
	p, err = db.List(t.Context(), registry.ListOptions{Statuses: []registry.Status{registry.StatusQueued}, Cursor: p.NextCursor})
	if err != nil || len(p.Jobs) != 1 || p.Jobs[0].ID != "b" || p.NextCursor != "" {
		t.Errorf("second page of queued jobs: %+v, %v", p, err)
	}
}

// TestOpenIndexesAnOldFile: a registry written before the indexes existed
// gets them at its first open.
func TestOpenIndexesAnOldFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	db, err := registry.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range []registry.Status{registry.StatusQueued, registry.StatusCompleted, registry.StatusQueued} {
		if err := db.Create(t.Context(), &registry.Record{ID: fmt.Sprint("j", i), Pair: fmt.Sprint("p", i), Status: st}, 0); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	raw, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{"pairs", "counts", "by-status"} {
			if err := tx.DeleteBucket([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	db = open(t, path)
	n, err := db.Count(t.Context())
	if err != nil || n[registry.StatusQueued] != 2 || n[registry.StatusCompleted] != 1 {
		t.Errorf("counts after reindexing: %v, %v", n, err)
	}
	if err := db.Create(t.Context(), &registry.Record{ID: "x", Pair: "p0", Status: registry.StatusQueued}, 0); !errors.Is(err, registry.ErrActivePair) {
		t.Errorf("pair of an active job after reindexing: %v", err)
	}
	p, err := db.List(t.Context(), registry.ListOptions{Statuses: []registry.Status{registry.StatusQueued}})
	if err != nil || len(p.Jobs) != 2 {
		t.Errorf("queued jobs after reindexing: %+v, %v", p.Jobs, err)
	}
}
