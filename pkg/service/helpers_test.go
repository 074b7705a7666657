package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// syncBuffer collects log lines from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// server is a service running in the test process.
type server struct {
	t      *testing.T
	base   string
	token  string
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
	routes []service.Route
	// bodies holds every response body, for the secret test.
	mu     sync.Mutex
	bodies bytes.Buffer
}

type serverOpts struct {
	cfg     func(*service.Config)
	sim     servicetest.Options
	token   string
	options []service.Option
}

func testConfig(t *testing.T, stateDir string) service.Config {
	t.Helper()
	cfg := service.Default()
	cfg.StateDir = stateDir
	cfg.Listen = "127.0.0.1:0"
	// The test's t.TempDir directories share this parent: jobs may use
	// any of them.
	cfg.AllowedRoots = []string{filepath.Dir(stateDir)}
	return cfg
}

func start(t *testing.T, stateDir string, so serverOpts) *server {
	t.Helper()
	cfg := testConfig(t, stateDir)
	if so.cfg != nil {
		so.cfg(&cfg)
	}
	if so.token != "" {
		cfg = cfg.WithToken(so.token)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	s := &server{t: t, base: "http://" + ln.Addr().String(), token: so.token, logs: logs, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	ready := make(chan struct{})
	opts := append([]service.Option{
		service.WithLogger(zerolog.New(logs).Level(zerolog.DebugLevel).With().Timestamp().Logger()),
		service.WithFactory(servicetest.Factory(so.sim)),
		service.WithListener(ln),
		service.OnListen(func(net.Addr) { close(ready) }),
		service.OnRoutes(func(r []service.Route) { s.routes = r }),
		service.WithHeartbeat(200 * time.Millisecond),
		service.WithTick(50 * time.Millisecond),
	}, so.options...)
	go func() { s.done <- service.Serve(ctx, cfg, opts...) }()
	select {
	case <-ready:
	case err := <-s.done:
		t.Fatalf("serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("service did not become ready")
	}
	t.Cleanup(func() { s.stop() })
	if s.token == "" {
		// With no token configured, the service made one.
		if data, err := os.ReadFile(filepath.Join(stateDir, "api-token")); err == nil {
			s.token = strings.TrimSpace(string(data))
		}
	}
	return s
}

// stop shuts the service down and waits for it.
func (s *server) stop() error {
	s.cancel()
	select {
	case err, ok := <-s.done:
		if ok {
			close(s.done)
			return err
		}
		return nil
	case <-time.After(30 * time.Second):
		s.t.Fatal("service did not stop")
		return nil
	}
}

type response struct {
	code int
	body []byte
	hdr  http.Header
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// errorFields returns the field names of an error response.
func (r response) errorFields(t *testing.T) []string {
	t.Helper()
	var e struct {
		Error struct {
			Code   string `json:"code"`
			Fields []struct{ Field, Message string }
		} `json:"error"`
	}
	r.json(t, &e)
	var out []string
	for _, f := range e.Error.Fields {
		out = append(out, f.Field)
	}
	return out
}

func (s *server) do(method, path string, body any) response {
	s.t.Helper()
	return s.doAuth(method, path, body, s.token)
}

func (s *server) doAuth(method, path string, body any, token string) response {
	s.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			s.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, s.base+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.bodies.Write(data)
	s.bodies.WriteByte('\n')
	s.mu.Unlock()
	return response{code: resp.StatusCode, body: data, hdr: resp.Header}
}

func (s *server) responses() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bodies.String()
}

// jobView is the part of GET /v1/jobs/{id} the tests read.
type jobView struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Reason   string `json:"reason"`
	Runs     int    `json:"runs"`
	Progress struct {
		Total, Processed, Created, Failed int64
		Percent                           float64
	} `json:"progress"`
	Memory struct {
		RSS, Budget uint64
		Level       string
	} `json:"memory"`
	Throughput struct {
		ItemsPerSec float64  `json:"items_per_s"`
		ETA         *float64 `json:"eta"`
	} `json:"throughput"`
}

func (s *server) get(id string) jobView {
	s.t.Helper()
	r := s.do("GET", "/v1/jobs/"+id, nil)
	if r.code != http.StatusOK {
		s.t.Fatalf("GET job %s: %d %s", id, r.code, r.body)
	}
	var v jobView
	r.json(s.t, &v)
	return v
}

// waitStatus polls until the job has one of the states.
func (s *server) waitStatus(id string, timeout time.Duration, want ...string) jobView {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := s.get(id)
		for _, w := range want {
			if v.Status == w {
				return v
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("job %s: status %s after %s, want %v", id, v.Status, timeout, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) create(spec map[string]any) string {
	s.t.Helper()
	r := s.do("POST", "/v1/jobs", spec)
	if r.code != http.StatusCreated {
		s.t.Fatalf("POST /v1/jobs: %d %s", r.code, r.body)
	}
	var out struct{ ID, Status string }
	r.json(s.t, &out)
	if out.ID == "" || out.Status == "" {
		s.t.Fatalf("POST /v1/jobs: got %s, want id and status", r.body)
	}
	return out.ID
}

// spec is a synthetic job; each call gets its own target, so jobs do not
// share a pair unless the test wants them to.
func spec(t *testing.T, id string, count int, extra map[string]any) map[string]any {
	m := map[string]any{
		"source":     map[string]any{"type": "synthetic", "count": count, "seed": 1},
		"target":     map[string]any{"type": "jsonl", "path": t.TempDir() + "/target.jsonl"},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 50,
	}
	if id != "" {
		m["id"] = id
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func eventually(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")

func notYet(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errNotYet}, args...)...)
}
