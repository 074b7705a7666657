package service_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

// outsideDir is a directory outside the test's allowed root (the parent of
// its t.TempDir directories).
func outsideDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "memvisor-outside-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// wantRefused checks a 400 that names field.
func wantRefused(t *testing.T, r response, field string) {
	t.Helper()
	if r.code != http.StatusBadRequest {
		t.Fatalf("got %d %s, want 400 naming %s", r.code, r.body, field)
	}
	if got := r.errorFields(t); !slices.Contains(got, field) {
		t.Fatalf("fields %q, want %q among them (%s)", got, field, r.body)
	}
}

func jsonlJob(id, source, target string) map[string]any {
	return map[string]any{
		"id":     id,
		"source": map[string]any{"type": "jsonl", "path": source},
		"target": map[string]any{"type": "jsonl", "path": target},
	}
}

// TestAPIJobsAreConfined is findings 1 and 2 of the review: a job that
// comes through the API reads and writes only regular files under
// allowed_roots, never the service's own files, and never appends to a
// file that is not a memvisor target. A refused job leaves every file as
// it was.
func TestAPIJobsAreConfined(t *testing.T) {
	stateDir := t.TempDir()
	root := filepath.Dir(stateDir)
	s := start(t, stateDir, serverOpts{sim: servicetest.Options{Tick: time.Millisecond}})
	data := t.TempDir()
	src := filepath.Join(data, "source.jsonl")
	if err := os.WriteFile(src, []byte(`{"id":1,"email":"a@example.com"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := outsideDir(t)
	secret := filepath.Join(outside, "creds.yaml")
	if err := os.WriteFile(secret, []byte("client_secret: hush\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(data, "notes.txt")
	const notes = "my notes\nnot a target, no newline at the end"
	if err := os.WriteFile(plain, []byte(notes), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(data, "link.jsonl")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(data, "out")); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(data, "fifo.jsonl")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tgt := filepath.Join(data, "target.jsonl")
	registryDB := filepath.Join(stateDir, "registry.db")
	before, err := os.ReadFile(registryDB)
	if err != nil {
		t.Fatal(err)
	}
	_ = before
	cases := []struct {
		name, source, target, field string
	}{
		{"source outside the roots", secret, tgt, "source.path"},
		{"source in /proc", "/proc/self/environ", tgt, "source.path"},
		{"source of another process in /proc", fmt.Sprintf("/proc/%d/environ", os.Getpid()), tgt, "source.path"},
		{"source a symlink out of the root", filepath.Join(data, "link.jsonl"), tgt, "source.path"},
		{"source through a symlinked directory out of the root", filepath.Join(data, "out", "creds.yaml"), tgt, "source.path"},
		{"source a directory", data, tgt, "source.path"},
		{"source a fifo", fifo, tgt, "source.path"},
		{"source a relative path up", "../../../../etc/passwd", tgt, "source.path"},
		{"source the token file", filepath.Join(stateDir, "api-token"), tgt, "source.path"},
		{"target an existing file that is not a target", src, plain, "target.path"},
		{"target the registry", src, registryDB, "target.path"},
		{"target in the state dir", src, filepath.Join(stateDir, "jobs", "x.jsonl"), "target.path"},
		{"target outside the roots", src, filepath.Join(outside, "t.jsonl"), "target.path"},
		{"target through /proc/self/root", src, "/proc/self/root" + tgt, "target.path"},
		{"target in /dev", src, "/dev/null", "target.path"},
		{"target the source", src, src, "target.path"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantRefused(t, s.do("POST", "/v1/jobs", jsonlJob(fmt.Sprint("c", i), c.source, c.target)), c.field)
		})
	}
	if got, _ := os.ReadFile(plain); string(got) != notes {
		t.Errorf("a refused job changed a file that is not a target: %q", got)
	}
	if _, err := os.Stat(filepath.Join(outside, "t.jsonl")); err == nil {
		t.Errorf("a refused job created its target outside the roots")
	}
	if _, err := os.Stat(tgt); err == nil {
		t.Errorf("a refused job created its target")
	}
	// A job inside the root runs, and its target carries the marker that
	// lets a later job append to it.
	id := s.create(jsonlJob("ok", src, tgt))
	s.waitStatus(id, 10*time.Second, "completed")
	if r := s.do("POST", "/v1/jobs", jsonlJob("again", src, tgt)); r.code != http.StatusCreated {
		t.Errorf("a second job on a memvisor target: %d %s", r.code, r.body)
	}
	_ = root
}

// TestSameTargetByInode is the review's same-target finding: two spellings
// of one file (through a symlinked directory) are one target.
func TestSameTargetByInode(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: 50 * time.Millisecond}})
	data := t.TempDir()
	if err := os.Mkdir(filepath.Join(data, "real"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(data, "real"), filepath.Join(data, "alias")); err != nil {
		t.Fatal(err)
	}
	s.create(spec(t, "one", 100000, map[string]any{"target": map[string]any{"type": "jsonl", "path": filepath.Join(data, "real", "t.jsonl")}}))
	r := s.do("POST", "/v1/jobs", spec(t, "two", 100000, map[string]any{"target": map[string]any{"type": "jsonl", "path": filepath.Join(data, "alias", "t.jsonl")}}))
	if r.code != http.StatusConflict {
		t.Errorf("the same target through a symlinked directory: %d %s, want 409", r.code, r.body)
	}
}

// TestPodioEndpointsAndCredentialsAreAllowListed is finding 3: an API job
// names only the configured API bases and credentials.
func TestPodioEndpointsAndCredentialsAreAllowListed(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "creds.yaml")
	if err := os.WriteFile(creds, []byte("client_secret: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: time.Millisecond}, cfg: func(c *service.Config) {
		c.AllowedCredentials = []string{"PODIO_CLIENT_SECRET", "PODIO_APP_TOKEN"}
	}})
	podio := func(id string, target map[string]any) map[string]any {
		tg := map[string]any{"type": "podio", "app_id": 1,
			"auth": map[string]any{"flow": "app", "client_id": "m", "client_secret_env": "PODIO_CLIENT_SECRET", "app_token_env": "PODIO_APP_TOKEN"}}
		for k, v := range target {
			tg[k] = v
		}
		return spec(t, id, 10, map[string]any{"target": tg})
	}
	wantRefused(t, s.do("POST", "/v1/jobs", podio("u", map[string]any{"api_url": "http://127.0.0.1:9/"})), "target.api_url")
	wantRefused(t, s.do("POST", "/v1/jobs", podio("e", map[string]any{
		"auth": map[string]any{"flow": "app", "client_id": "m", "client_secret_env": "HOME", "app_token_env": "PODIO_APP_TOKEN"}})), "target.auth.client_secret_env")
	wantRefused(t, s.do("POST", "/v1/jobs", podio("f", map[string]any{
		"auth": map[string]any{"flow": "app", "client_id": "m", "credentials_file": creds}})), "target.auth.credentials_file")
	if r := s.do("POST", "/v1/jobs", podio("ok", nil)); r.code != http.StatusCreated {
		t.Errorf("allowed credentials and the default API: %d %s", r.code, r.body)
	}
}

// TestStrictKeys is finding 5: keys match exactly, so neither letter case
// nor Unicode folding slips past the service's own rules.
func TestStrictKeys(t *testing.T) {
	t.Setenv("PODIO_CLIENT_SECRET", "case-SECRET-1234")
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: time.Millisecond}})
	data := t.TempDir()
	for _, c := range []struct{ name, body, field string }{
		{"Source", `{"id":"a","Source":{"type":"synthetic","count":1},"target":{"type":"jsonl","path":"` + data + `/a.jsonl"}}`, "Source"},
		{"long s", `{"id":"b","\u017ftate_dir":"/tmp/elsewhere","source":{"type":"synthetic","count":1},"target":{"type":"jsonl","path":"` + data + `/b.jsonl"}}`, "ſtate_dir"},
		{"nested", `{"id":"c","source":{"type":"synthetic","Count":1},"target":{"type":"jsonl","path":"` + data + `/c.jsonl"}}`, "source.Count"},
		{"kelvin", `{"id":"d","source":{"type":"synthetic","count":1},"target":{"type":"jsonl","path":"` + data + `/d.jsonl"},"\u212aeep":1}`, "\u212aeep"},
		{"twice", `{"id":"e","source":{"type":"synthetic","count":1},"target":{"type":"jsonl","path":"` + data + `/e.jsonl"},"mode":"create","mode":"upsert"}`, "mode"},
		{"type", `{"id":"f","source":{"type":"synthetic","count":"many"},"target":{"type":"jsonl","path":"` + data + `/f.jsonl"}}`, "source.count"},
		{"env", `{"id":"g","source":{"type":"synthetic","count":1},"target":{"type":"jsonl","path":"` + data + `/${PODIO_CLIENT_SECRET}.jsonl"}}`, "target.path"},
	} {
		t.Run(c.name, func(t *testing.T) {
			wantRefused(t, s.do("POST", "/v1/jobs", c.body), c.field)
		})
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(s.logs.String()+s.responses(), "case-SECRET-1234") {
		t.Errorf("an environment variable was expanded into a log line or a response")
	}
}

// TestInjectionIsOffByDefault is finding 6.
func TestInjectionIsOffByDefault(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: time.Millisecond}})
	wantRefused(t, s.do("POST", "/v1/jobs", spec(t, "a", 10, map[string]any{"inject": map[string]any{"crash_on_start": true}})), "inject")
	on := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: time.Millisecond}, cfg: func(c *service.Config) { c.AllowInject = true }})
	wantRefused(t, on.do("POST", "/v1/jobs", spec(t, "b", 10, map[string]any{"inject": map[string]any{"spike_bytes": "100GiB", "spike_at_item": 1}})), "inject.spike_bytes")
	wantRefused(t, on.do("POST", "/v1/jobs", spec(t, "c", 10, map[string]any{"inject": map[string]any{"slow_batch": "1000h"}})), "inject.slow_batch")
	if r := on.do("POST", "/v1/jobs", spec(t, "d", 10, map[string]any{"inject": map[string]any{"spike_bytes": "1MiB", "spike_at_item": 1}})); r.code != http.StatusCreated {
		t.Errorf("a bounded injection with allow_inject: %d %s", r.code, r.body)
	}
}

// TestFailedPageIsBounded is finding 7: a page of huge lines is cut at
// 4 MiB, each line clipped, and the cursor lets the client go on.
func TestFailedPageIsBounded(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir, serverOpts{sim: servicetest.Options{Tick: time.Millisecond}})
	s.create(spec(t, "big", 10, nil))
	s.waitStatus("big", 10*time.Second, "completed")
	var b bytes.Buffer
	long := strings.Repeat("x", 100<<10)
	for i := range 100 {
		fmt.Fprintf(&b, `{"source_id":%d,"category":"validation","raw":%q}`+"\n", i+1, long)
	}
	if err := os.WriteFile(filepath.Join(dir, "jobs", "big", "failed.jsonl"), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	r := s.do("GET", "/v1/jobs/big/failed?limit=1000", nil)
	if r.code != http.StatusOK {
		t.Fatalf("failed page: %d %s", r.code, r.body[:min(len(r.body), 200)])
	}
	if len(r.body) > 4<<20+64<<10 {
		t.Errorf("a failure page of %d bytes, want at most 4 MiB", len(r.body))
	}
	var p struct {
		Items      []json.RawMessage `json:"items"`
		NextCursor *string           `json:"next_cursor"`
	}
	r.json(t, &p)
	if len(p.Items) == 0 || len(p.Items) >= 100 || p.NextCursor == nil {
		t.Errorf("got %d items, cursor %v: want a partial page with a cursor", len(p.Items), p.NextCursor)
	}
}

// TestQueueIsBounded is the review's queue finding.
func TestQueueIsBounded(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: 50 * time.Millisecond}, cfg: func(c *service.Config) { c.MaxQueuedJobs = 2 }})
	s.create(spec(t, "run", 100000, nil))
	s.waitStatus("run", 10*time.Second, "running")
	s.create(spec(t, "q1", 10, nil))
	s.create(spec(t, "q2", 10, nil))
	q3 := spec(t, "q3", 10, nil)
	if r := s.do("POST", "/v1/jobs", q3); r.code != http.StatusTooManyRequests {
		t.Errorf("third queued job with max_queued_jobs 2: %d %s, want 429", r.code, r.body)
	}
	// A refused job leaves nothing behind: the target it would have
	// created is not there.
	target := q3["target"].(map[string]any)["path"].(string)
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused job's new target %s: %v, want it not created", target, err)
	}
}
