package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

func TestMigrateIsVersionedAndIdempotent(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ms, err := postgres.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	// Nodes starting at once: each migration is applied exactly once.
	var mu sync.Mutex
	var applied []int
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := postgres.Migrate(t.Context(), pool)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			applied = append(applied, v...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(applied) != len(ms) {
		t.Errorf("concurrent migrations applied %v, want each of %d versions once", applied, len(ms))
	}
	again, err := postgres.Migrate(t.Context(), pool)
	if err != nil || len(again) != 0 {
		t.Errorf("second Migrate: applied %v, err %v; want nothing", again, err)
	}
	var n, top int
	if err := pool.QueryRow(t.Context(), "SELECT count(*), max(version) FROM schema_migrations").Scan(&n, &top); err != nil {
		t.Fatal(err)
	}
	if n != len(ms) || top != ms[len(ms)-1].Version {
		t.Errorf("schema_migrations: %d rows up to %d, want %d up to %d", n, top, len(ms), ms[len(ms)-1].Version)
	}

	// A database at version 1 with a job in it is brought up to date, and
	// keeps its job.
	s, err := postgres.New(t.Context(), pool, postgres.Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	create(t, s, "old", "", registry.StatusQueued)
	// Back to version 1, by hand, with a quota key in version 1's column.
	if _, err := pool.Exec(t.Context(), `DROP TABLE snapshot_chunks; DROP TABLE snapshots;
		DROP TABLE failed_items; ALTER TABLE checkpoints DROP COLUMN failed;
		ALTER TABLE jobs DROP COLUMN quota_keys; ALTER TABLE jobs ADD COLUMN quota_key text NOT NULL DEFAULT '';
		UPDATE jobs SET quota_key = 'K';
		DELETE FROM schema_migrations WHERE version > 1`); err != nil {
		t.Fatal(err)
	}
	up, err := postgres.Migrate(t.Context(), pool)
	if err != nil || fmt.Sprint(up) != "[2 3 4]" {
		t.Errorf("upgrade from version 1: applied %v (%v), want [2 3 4]", up, err)
	}
	if _, err := s.Get(t.Context(), "old"); err != nil {
		t.Errorf("the job after the upgrade: %v", err)
	}
	var keys []string
	if err := pool.QueryRow(t.Context(), "SELECT quota_keys FROM jobs WHERE id = 'old'").Scan(&keys); err != nil || fmt.Sprint(keys) != "[K]" {
		t.Errorf("quota keys after the upgrade: %v (%v), want [K]", keys, err)
	}

	// A database migrated by a newer memvisor is refused, not misread.
	if _, err := pool.Exec(t.Context(), "INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_future.sql')"); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.New(t.Context(), pool, postgres.Options{Node: "a"}); !errors.Is(err, postgres.ErrSchemaNewer) {
		t.Errorf("newer schema: got %v, want ErrSchemaNewer", err)
	}
}

func TestOpenRejectsBadInput(t *testing.T) {
	if _, err := postgres.Open(t.Context(), "postgres://u:hunter2@[bad", postgres.Options{Node: "a"}); err == nil {
		t.Error("a bad URL was accepted")
	} else if want := "postgres_url"; !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("bad URL: got %q, want it to name %s and not print the password", err, want)
	}
	dsn := pgtest.NewDatabase(t)
	if _, err := postgres.Open(t.Context(), dsn, postgres.Options{}); err == nil {
		t.Error("an empty node id was accepted")
	}
}

func TestSurvivesReopen(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	s, err := postgres.Open(t.Context(), dsn, postgres.Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	rec := registry.Record{ID: "a", Pair: "p", Status: registry.StatusRunning, Spec: []byte(`{"id":"a"}`)}
	if err := s.Create(t.Context(), &rec, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(t.Context(), "a", func(r *registry.Record) error { r.Counts.Processed = 42; return nil }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = node(t, dsn, "b", postgres.Options{})
	got, err := s.Get(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != registry.StatusRunning || got.Counts.Processed != 42 || string(got.Spec) != `{"id":"a"}` || got.Seq != rec.Seq {
		t.Errorf("got %+v after reopen", got)
	}
	if _, err := s.Get(t.Context(), "nope"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("missing job: got %v, want ErrNotFound", err)
	}
}

func TestCreateConflictsAcrossNodes(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a, b := node(t, dsn, "a", postgres.Options{}), node(t, dsn, "b", postgres.Options{})
	mk := func(s *postgres.Store, id, pair string) error {
		return s.Create(t.Context(), &registry.Record{ID: id, Pair: pair, Status: registry.StatusQueued}, 0)
	}
	if err := mk(a, "a", "src>dst"); err != nil {
		t.Fatal(err)
	}
	// The same job id posted to a second node: ErrExists (HTTP 409).
	if err := mk(b, "a", "other"); !errors.Is(err, registry.ErrExists) {
		t.Errorf("same id: got %v, want ErrExists", err)
	}
	err := mk(b, "b", "src>dst")
	var ce *registry.ConflictError
	if !errors.As(err, &ce) || ce.ID != "a" || !errors.Is(err, registry.ErrActivePair) {
		t.Errorf("same pair while active: got %v, want a ConflictError naming a", err)
	}
	if _, err := a.Update(t.Context(), "a", func(r *registry.Record) error { r.Status = registry.StatusFailed; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := mk(b, "b", "src>dst"); err != nil {
		t.Errorf("same pair after the first finished: %v", err)
	}
	// Resuming the failed job now conflicts with b, which holds the pair.
	_, err = a.Update(t.Context(), "a", func(r *registry.Record) error { r.Status = registry.StatusQueued; return nil })
	if !errors.As(err, &ce) || ce.ID != "b" {
		t.Errorf("reactivate onto a held pair: got %v, want a ConflictError naming b", err)
	}
	if got, _ := a.Get(t.Context(), "a"); got.Status != registry.StatusFailed {
		t.Errorf("after the refused reactivation: status %s, want failed", got.Status)
	}
	// An error from fn writes nothing.
	boom := errors.New("boom")
	if _, err := a.Update(t.Context(), "b", func(r *registry.Record) error { r.Reason = "x"; return boom }); !errors.Is(err, boom) {
		t.Errorf("fn error: got %v", err)
	}
	if got, _ := a.Get(t.Context(), "b"); got.Reason != "" {
		t.Errorf("fn error wrote %q", got.Reason)
	}
	if _, err := a.Update(t.Context(), "b", func(r *registry.Record) error { r.Status = "bogus"; return nil }); err == nil {
		t.Error("an unknown status was written")
	}
}

func TestCreateRaceHasOneWinner(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	nodes := []*postgres.Store{node(t, dsn, "a", postgres.Options{}), node(t, dsn, "b", postgres.Options{})}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := nodes[i%2].Create(t.Context(), &registry.Record{ID: fmt.Sprint("j", i), Pair: "same", Status: registry.StatusQueued}, 0)
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, registry.ErrActivePair) {
				t.Errorf("loser: got %v, want ErrActivePair", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("got %d winners for one pair, want 1", wins)
	}
}

func TestListPagesAndFilters(t *testing.T) {
	s := node(t, pgtest.NewDatabase(t), "a", postgres.Options{})
	for i := range 7 {
		st := registry.StatusCompleted
		if i%2 == 0 {
			st = registry.StatusQueued
		}
		create(t, s, fmt.Sprintf("j%d", i), "", st)
	}
	if err := s.Delete(t.Context(), "j3"); err != nil {
		t.Fatal(err)
	}
	var ids []string
	opt := registry.ListOptions{Limit: 2}
	for range 10 {
		p, err := s.List(t.Context(), opt)
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
	queued, err := all(t, s, registry.StatusQueued)
	if err != nil {
		t.Fatal(err)
	}
	if len(queued) != 4 || queued[0].ID != "j0" || queued[3].ID != "j6" {
		t.Errorf("queued: got %+v", queued)
	}
	for _, c := range []string{"x", "0", "-1"} {
		if _, err := s.List(t.Context(), registry.ListOptions{Cursor: c}); !errors.Is(err, registry.ErrBadCursor) {
			t.Errorf("cursor %q: got %v, want ErrBadCursor", c, err)
		}
	}
	if err := s.Delete(t.Context(), "j3"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("delete twice: got %v", err)
	}
	n, err := s.Count(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n[registry.StatusQueued] != 4 || n[registry.StatusCompleted] != 2 {
		t.Errorf("count: got %v", n)
	}
}

// registryContract is the method set of pkg/service's Registry interface
// (see the wiring notes in doc.go); the Store must keep it.
type registryContract interface {
	Create(ctx context.Context, rec *registry.Record, maxQueued int) error
	Get(ctx context.Context, id string) (registry.Record, error)
	Update(ctx context.Context, id string, fn func(*registry.Record) error) (registry.Record, error)
	Delete(ctx context.Context, id string) error
	List(ctx context.Context, opt registry.ListOptions) (registry.Page, error)
	Count(ctx context.Context) (map[registry.Status]int, error)
	Close() error
}

var _ registryContract = (*postgres.Store)(nil)

// TestQueueBoundAcrossNodes: nodes creating queued jobs at once never
// queue more than maxQueued; the id and pair checks come first.
func TestQueueBoundAcrossNodes(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	nodes := []*postgres.Store{node(t, dsn, "a", postgres.Options{}), node(t, dsn, "b", postgres.Options{})}
	const maxQueued = 3
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, full := 0, 0
	var created string
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := nodes[i%2].Create(t.Context(), &registry.Record{ID: fmt.Sprint("q", i), Status: registry.StatusQueued}, maxQueued)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
				created = fmt.Sprint("q", i)
			case errors.Is(err, postgres.ErrQueueFull):
				full++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok != maxQueued || full != 10-maxQueued {
		t.Errorf("%d created and %d refused as full, want %d and %d", ok, full, maxQueued, 10-maxQueued)
	}
	if n, _ := nodes[0].Count(t.Context()); n[registry.StatusQueued] != maxQueued {
		t.Errorf("queued: %d, want %d", n[registry.StatusQueued], maxQueued)
	}
	// A taken id is ErrExists even with the queue full; a running job is
	// not bounded by the queue.
	if err := nodes[1].Create(t.Context(), &registry.Record{ID: created, Status: registry.StatusQueued}, maxQueued); !errors.Is(err, registry.ErrExists) {
		t.Errorf("taken id on a full queue: got %v, want ErrExists", err)
	}
	if err := nodes[1].Create(t.Context(), &registry.Record{ID: "r", Status: registry.StatusRunning}, maxQueued); err != nil {
		t.Errorf("running job on a full queue: %v", err)
	}
}
