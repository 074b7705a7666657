package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestRetentionPrunesFinishedJobs(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := start(t, dir, serverOpts{
		sim:     servicetest.Options{Tick: time.Millisecond},
		cfg:     func(c *service.Config) { c.Retention = service.Default().Retention },
		options: []service.Option{service.WithClock(clock.Now)},
	})
	s.create(spec(t, "old", 10, nil))
	s.waitStatus("old", 10*time.Second, "completed")
	s.create(spec(t, "paused", 100000, nil))
	if r := s.do("POST", "/v1/jobs/paused/pause", nil); r.code != http.StatusOK {
		t.Fatalf("pause: %d %s", r.code, r.body)
	}
	jobDir := filepath.Join(dir, "jobs", "old")
	if _, err := os.Stat(jobDir); err != nil {
		t.Fatalf("job dir before pruning: %v", err)
	}
	clock.Add(29 * 24 * time.Hour)
	time.Sleep(300 * time.Millisecond) // several main-loop ticks
	if r := s.do("GET", "/v1/jobs/old", nil); r.code != http.StatusOK {
		t.Fatalf("pruned before the retention: %d", r.code)
	}
	clock.Add(2 * 24 * time.Hour)
	eventually(t, 5*time.Second, "pruning", func() error {
		if r := s.do("GET", "/v1/jobs/old", nil); r.code != http.StatusNotFound {
			return notYet("old job still there: %d", r.code)
		}
		if _, err := os.Stat(jobDir); !os.IsNotExist(err) {
			return notYet("state dir of the pruned job: %v", err)
		}
		if !strings.Contains(s.logs.String(), "pruned finished jobs") {
			return notYet("no log line for the pruning")
		}
		return nil
	})
	// An unfinished job is never pruned.
	if v := s.get("paused"); v.Status != "paused" {
		t.Errorf("paused job: %s", v.Status)
	}
}

func TestServeOnUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "api.sock")
	cfg := service.Default()
	cfg.StateDir = t.TempDir()
	cfg.Listen = "unix:" + sock
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- service.Serve(ctx, cfg, service.WithFactory(servicetest.Factory(servicetest.Options{})),
			service.OnListen(func(net.Addr) { close(ready) }))
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := client.Get("http://memvisor/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	client.CloseIdleConnections()
	if resp.StatusCode != http.StatusOK || body["status"] != "ok" {
		t.Errorf("healthz over the socket: %d %v", resp.StatusCode, body)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("socket mode: %v %v", st.Mode(), err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestSecondServeOnSameStateDirFails(t *testing.T) {
	dir := t.TempDir()
	start(t, dir, serverOpts{})
	cfg := service.Default()
	cfg.StateDir = dir
	cfg.Listen = "127.0.0.1:0"
	err := service.Serve(t.Context(), cfg, service.WithFactory(servicetest.Factory(servicetest.Options{})))
	if err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second serve: %v, want the registry lock error", err)
	}
}

func TestLoggerFormats(t *testing.T) {
	var b bytes.Buffer
	l := service.NewLogger(&b, service.LogConfig{Level: "warn", Format: "json"})
	l.Info().Msg("hidden")
	l.Warn().Str("k", "v").Msg("shown")
	if strings.Contains(b.String(), "hidden") || !json.Valid(bytes.TrimSpace(b.Bytes())) {
		t.Errorf("json logger: %q", b.String())
	}
	b.Reset()
	l = service.NewLogger(&b, service.LogConfig{Level: "info", Format: "console"})
	l.Info().Str("k", "v").Msg("hello")
	if json.Valid(bytes.TrimSpace(b.Bytes())) || !strings.Contains(b.String(), "hello") || !strings.Contains(b.String(), "k=") {
		t.Errorf("console logger: %q", b.String())
	}
	b.Reset()
	// auto on something that is not a terminal is JSON.
	l = service.NewLogger(&b, service.LogConfig{Level: "info", Format: "auto"})
	l.Info().Msg("x")
	if !json.Valid(bytes.TrimSpace(b.Bytes())) {
		t.Errorf("auto logger off a terminal: %q", b.String())
	}
}
