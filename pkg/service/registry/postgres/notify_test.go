package postgres_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

func receive(t *testing.T, l *postgres.Listener, kind string) postgres.Notice {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case n := <-l.C():
			if n.Kind == kind {
				return n
			}
		case <-timeout:
			t.Fatalf("no %s notice within 30s", kind)
		}
	}
}

func TestNoticesReachOtherNodes(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a, b := node(t, dsn, "a", postgres.Options{}), node(t, dsn, "b", postgres.Options{})
	l, err := b.Listen(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := a.Notify(t.Context(), postgres.Notice{JobID: "job1", Kind: "pause", Data: json.RawMessage(`{"by":"api"}`)}); err != nil {
		t.Fatal(err)
	}
	n := receive(t, l, "pause")
	if n.JobID != "job1" || n.Node != "a" || string(n.Data) != `{"by":"api"}` {
		t.Errorf("got %+v, want job1's pause from node a", n)
	}
	big := postgres.Notice{JobID: "job1", Kind: "event", Data: json.RawMessage(`"` + strings.Repeat("x", 9000) + `"`)}
	if err := a.Notify(t.Context(), big); !errors.Is(err, postgres.ErrNoticeTooLarge) {
		t.Errorf("9 KB notice: got %v, want ErrNoticeTooLarge", err)
	}

	// The listener's connection is killed: it reconnects, says so with a
	// resync notice, and receives notices again.
	var killed int
	if err := pgxQueryRow(t, dsn, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`, &killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d listening backends (%v), want 1", killed, err)
	}
	receive(t, l, postgres.NoticeResync)
	if err := a.Notify(t.Context(), postgres.Notice{JobID: "job2", Kind: "cancel"}); err != nil {
		t.Fatal(err)
	}
	if n := receive(t, l, "cancel"); n.JobID != "job2" {
		t.Errorf("after the reconnect: got %+v", n)
	}
}
