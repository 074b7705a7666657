package service_test

import (
	"context"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

// stallingRegistry holds every Update of one job until it is released, as
// a slow disk would hold an fsync.
type stallingRegistry struct {
	*registry.DB
	id      string
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (s *stallingRegistry) Update(ctx context.Context, id string, fn func(*registry.Record) error) (registry.Record, error) {
	if id == s.id {
		s.once.Do(func() { close(s.entered) })
		<-s.release
	}
	return s.DB.Update(ctx, id, fn)
}

// TestStatusDoesNotWaitForARegistryWrite is the review's locking finding:
// while the registry write of one job's transition is stalled, the status
// of a running job still answers. It did not when the write ran under the
// manager's mutex.
func TestStatusDoesNotWaitForARegistryWrite(t *testing.T) {
	dir := t.TempDir()
	db, err := registry.Open(filepath.Join(dir, "stalling.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reg := &stallingRegistry{DB: db, id: "queued", entered: make(chan struct{}), release: make(chan struct{})}
	s := start(t, dir, serverOpts{sim: servicetest.Options{Tick: 20 * time.Millisecond}, options: []service.Option{service.WithRegistry(reg)}})
	s.create(spec(t, "busy", 1_000_000, nil))
	s.waitStatus("busy", 10*time.Second, "running")
	s.create(spec(t, "queued", 10, nil))
	if v := s.get("queued"); v.Status != "queued" {
		t.Fatalf("second job is %s, want queued behind the first", v.Status)
	}
	paused := make(chan response, 1)
	go func() { paused <- s.do("POST", "/v1/jobs/queued/pause", nil) }()
	select {
	case <-reg.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the pause never reached the registry")
	}
	got := make(chan int, 1)
	go func() { got <- s.do("GET", "/v1/jobs/busy", nil).code }()
	select {
	case code := <-got:
		if code != http.StatusOK {
			t.Errorf("GET a running job during a stalled write: %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Error("GET a running job waited for another job's registry write")
		close(reg.release)
		<-got
		return
	}
	close(reg.release)
	if r := <-paused; r.code != http.StatusOK {
		t.Errorf("pause: %d %s", r.code, r.body)
	}
}
