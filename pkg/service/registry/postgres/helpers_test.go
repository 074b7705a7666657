package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperNode())
	}
	code := pgtest.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// node opens a Store on dsn through a pool of its own, as a separate serve
// process would.
func node(t testing.TB, dsn, name string, opt postgres.Options) *postgres.Store {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	opt.Node = name
	s, err := postgres.New(t.Context(), pool, opt)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func create(t testing.TB, s *postgres.Store, id, pair string, st registry.Status) {
	t.Helper()
	rec := registry.Record{ID: id, Pair: pair, Status: st, Spec: []byte(`{"id":"` + id + `"}`)}
	if err := s.Create(t.Context(), &rec, 0); err != nil {
		t.Fatal(err)
	}
}

// claimWithin polls s.Claim until it returns a job, for at most d.
func claimWithin(t testing.TB, s *postgres.Store, d time.Duration) *postgres.Claim {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	for {
		c, err := s.Claim(ctx)
		if err == nil {
			return c
		}
		if !errors.Is(err, postgres.ErrNoJob) {
			t.Fatalf("claim on %s: %v", s.Node(), err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s claimed nothing within %s", s.Node(), d)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// all returns every job in the given states, a page at a time.
func all(t testing.TB, s *postgres.Store, statuses ...registry.Status) ([]registry.Record, error) {
	t.Helper()
	var out []registry.Record
	opt := registry.ListOptions{Statuses: statuses, Limit: 1000}
	for {
		p, err := s.List(t.Context(), opt)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Jobs...)
		if p.NextCursor == "" {
			return out, nil
		}
		opt.Cursor = p.NextCursor
	}
}

// pgxQueryRow runs one query on a connection of its own.
func pgxQueryRow(t testing.TB, dsn, sql string, dst ...any) error {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		return err
	}
	defer conn.Close(t.Context())
	return conn.QueryRow(t.Context(), sql).Scan(dst...)
}
