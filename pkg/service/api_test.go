package service_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

func TestJobRunsToCompletion(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: 2 * time.Millisecond}})
	id := s.create(spec(t, "first", 1000, nil))
	if id != "first" {
		t.Fatalf("id: got %q, want first", id)
	}
	v := s.waitStatus(id, 20*time.Second, "completed")
	if v.Progress.Processed != 1000 || v.Progress.Created != 1000 || v.Progress.Percent != 100 {
		t.Errorf("progress: got %+v, want 1000 processed and created, 100%%", v.Progress)
	}
	if v.Runs != 1 {
		t.Errorf("runs: got %d, want 1", v.Runs)
	}
	// A made-up id.
	id2 := s.create(spec(t, "", 10, nil))
	if !strings.HasPrefix(id2, "job-") {
		t.Errorf("generated id: got %q, want job-...", id2)
	}
	s.waitStatus(id2, 20*time.Second, "completed")

	var list struct {
		Jobs       []jobView `json:"jobs"`
		NextCursor *string   `json:"next_cursor"`
	}
	r := s.do("GET", "/v1/jobs?status=completed&limit=1", nil)
	if r.code != http.StatusOK {
		t.Fatalf("list: %d %s", r.code, r.body)
	}
	r.json(t, &list)
	if len(list.Jobs) != 1 || list.Jobs[0].ID != "first" || list.NextCursor == nil {
		t.Fatalf("list page 1: got %s", r.body)
	}
	r = s.do("GET", "/v1/jobs?status=completed&limit=1&cursor="+*list.NextCursor, nil)
	r.json(t, &list)
	if len(list.Jobs) != 1 || list.Jobs[0].ID != id2 || list.NextCursor != nil {
		t.Fatalf("list page 2: got %s", r.body)
	}
	r = s.do("GET", "/v1/jobs?status=running", nil)
	r.json(t, &list)
	if len(list.Jobs) != 0 {
		t.Errorf("running jobs: got %s, want none", r.body)
	}

	if r := s.do("DELETE", "/v1/jobs/first", nil); r.code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.code, r.body)
	}
	if r := s.do("GET", "/v1/jobs/first", nil); r.code != http.StatusNotFound {
		t.Errorf("get after delete: %d, want 404", r.code)
	}
}

func TestBadInput(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: 50 * time.Millisecond}})
	cases := []struct {
		name   string
		body   any
		code   int
		fields []string
	}{
		{"too large", bytes.Repeat([]byte(" "), 1<<20+10), http.StatusRequestEntityTooLarge, nil},
		{"not an object", `[1,2]`, http.StatusBadRequest, []string{""}},
		{"not json", `{"id":`, http.StatusBadRequest, []string{""}},
		{"unknown field", spec(t, "u", 10, map[string]any{"bogus": 1}), http.StatusBadRequest, []string{"bogus"}},
		{"bad values", spec(t, "b", 10, map[string]any{"batch_size": 0, "mode": "sideways"}), http.StatusBadRequest, []string{"mode", "batch_size"}},
		{"wrong type", spec(t, "w", 10, map[string]any{"batch_size": "many"}), http.StatusBadRequest, []string{"batch_size"}},
		{"bad size", spec(t, "s", 10, map[string]any{"memory": map[string]any{"limit": "lots"}}), http.StatusBadRequest, []string{"memory.limit"}},
		{"bad memory", spec(t, "m", 10, map[string]any{"memory": map[string]any{"warning_percent": 101}}), http.StatusBadRequest, []string{"memory.warning_percent"}},
		{"env in path", map[string]any{"id": "e", "source": map[string]any{"type": "jsonl", "path": "$HOME/x"}, "target": map[string]any{"type": "jsonl", "path": "/tmp/y"}},
			http.StatusBadRequest, []string{"source.path"}},
		{"bad id", spec(t, "../etc", 10, nil), http.StatusBadRequest, []string{"id"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := s.do("POST", "/v1/jobs", c.body)
			if r.code != c.code {
				t.Fatalf("got %d %s, want %d", r.code, r.body, c.code)
			}
			if ct := r.hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q", ct)
			}
			got := r.errorFields(t)
			for _, f := range c.fields {
				if !slices.Contains(got, f) {
					t.Errorf("fields: got %q, want %q among them (%s)", got, f, r.body)
				}
			}
		})
	}
	for _, q := range []string{"/v1/jobs?status=bogus", "/v1/jobs?limit=0", "/v1/jobs?cursor=zz"} {
		if r := s.do("GET", q, nil); r.code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", q, r.code)
		}
	}
}

func TestUnknownJobIs404(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{})
	for _, rt := range []struct{ method, path string }{
		{"GET", "/v1/jobs/nope"}, {"DELETE", "/v1/jobs/nope"},
		{"POST", "/v1/jobs/nope/pause"}, {"POST", "/v1/jobs/nope/resume"},
		{"POST", "/v1/jobs/nope/cancel"}, {"POST", "/v1/jobs/nope/retry-failed"},
		{"GET", "/v1/jobs/nope/failed"}, {"GET", "/v1/jobs/nope/dry-run"},
		{"GET", "/v1/jobs/nope/events"}, {"GET", "/v1/jobs/nope/heap-profile"},
		{"GET", "/v1/nothing-here"},
	} {
		r := s.do(rt.method, rt.path, nil)
		if r.code != http.StatusNotFound {
			t.Errorf("%s %s: got %d %s, want 404", rt.method, rt.path, r.code, r.body)
		}
		if !bytes.Contains(r.body, []byte(`"not_found"`)) {
			t.Errorf("%s %s: body %s is not a JSON not_found error", rt.method, rt.path, r.body)
		}
	}
}

func TestConflicts(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: 20 * time.Millisecond}})
	sp := spec(t, "long", 100000, nil)
	s.create(sp)
	s.waitStatus("long", 10*time.Second, "running")

	// The same id, and the same source and target under another id.
	if r := s.do("POST", "/v1/jobs", sp); r.code != http.StatusConflict {
		t.Errorf("same id: %d %s, want 409", r.code, r.body)
	}
	sp2 := spec(t, "other", 100000, nil)
	sp2["target"] = sp["target"]
	r := s.do("POST", "/v1/jobs", sp2)
	if r.code != http.StatusConflict || !bytes.Contains(r.body, []byte("active_pair")) || !bytes.Contains(r.body, []byte("long")) {
		t.Errorf("same pair: %d %s, want 409 naming job long", r.code, r.body)
	}
	for _, p := range []string{"/v1/jobs/long/resume", "/v1/jobs/long/retry-failed"} {
		if r := s.do("POST", p, nil); r.code != http.StatusConflict {
			t.Errorf("POST %s while running: %d %s, want 409", p, r.code, r.body)
		}
	}
	if r := s.do("DELETE", "/v1/jobs/long", nil); r.code != http.StatusConflict {
		t.Errorf("delete while running: %d %s, want 409", r.code, r.body)
	}
	if r := s.do("GET", "/v1/jobs/long/dry-run", nil); r.code != http.StatusNotFound {
		t.Errorf("dry-run of a normal job: %d, want 404", r.code)
	}
	if r := s.do("POST", "/v1/jobs/long/cancel", nil); r.code != http.StatusOK {
		t.Fatalf("cancel: %d %s", r.code, r.body)
	}
	if v := s.get("long"); v.Status != "cancelled" {
		t.Fatalf("after cancel: %s", v.Status)
	}
	for _, p := range []string{"/v1/jobs/long/pause", "/v1/jobs/long/cancel", "/v1/jobs/long/resume", "/v1/jobs/long/heap-profile"} {
		method := "POST"
		if strings.HasSuffix(p, "profile") {
			method = "GET"
		}
		if r := s.do(method, p, nil); r.code != http.StatusConflict {
			t.Errorf("%s %s when cancelled: %d %s, want 409", method, p, r.code, r.body)
		}
	}
	// The pair is free once the first job has ended.
	if r := s.do("POST", "/v1/jobs", sp2); r.code != http.StatusCreated {
		t.Errorf("same pair after cancel: %d %s, want 201", r.code, r.body)
	}
}

func TestPauseAndResumeContinueFromCheckpoint(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir, serverOpts{sim: servicetest.Options{Tick: 10 * time.Millisecond}})
	s.create(spec(t, "pr", 3000, nil))
	eventually(t, 10*time.Second, "progress", func() error {
		if v := s.get("pr"); v.Progress.Processed < 200 {
			return notYet("processed %d", v.Progress.Processed)
		}
		return nil
	})
	r := s.do("POST", "/v1/jobs/pr/pause", nil)
	if r.code != http.StatusOK || !bytes.Contains(r.body, []byte(`"status":"paused"`)) {
		t.Fatalf("pause: %d %s", r.code, r.body)
	}
	v := s.get("pr")
	if v.Status != "paused" || v.Progress.Processed == 0 || v.Progress.Processed >= 3000 {
		t.Fatalf("paused job: %+v", v)
	}
	onDisk, _, err := servicetest.Processed(filepath.Join(dir, "jobs", "pr"))
	if err != nil || onDisk != v.Progress.Processed {
		t.Fatalf("checkpoint on disk %d (%v), API says %d", onDisk, err, v.Progress.Processed)
	}
	if r := s.do("POST", "/v1/jobs/pr/pause", nil); r.code != http.StatusConflict {
		t.Errorf("pause twice: %d, want 409", r.code)
	}
	time.Sleep(50 * time.Millisecond)
	if again := s.get("pr"); again.Progress.Processed != v.Progress.Processed {
		t.Errorf("a paused job moved: %d -> %d", v.Progress.Processed, again.Progress.Processed)
	}
	if r := s.do("POST", "/v1/jobs/pr/resume", nil); r.code != http.StatusOK {
		t.Fatalf("resume: %d %s", r.code, r.body)
	}
	done := s.waitStatus("pr", 30*time.Second, "completed")
	if done.Progress.Processed != 3000 || done.Runs != 2 {
		t.Errorf("after resume: processed %d in %d runs, want 3000 in 2", done.Progress.Processed, done.Runs)
	}
}

func TestQueueWaitsForASlot(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: 5 * time.Millisecond}})
	s.create(spec(t, "a", 1500, nil))
	s.create(spec(t, "b", 100, nil))
	if v := s.get("b"); v.Status != "queued" {
		t.Fatalf("second job with max_concurrent_jobs 1: %s, want queued", v.Status)
	}
	// A queued job can be paused and resumed without running.
	if r := s.do("POST", "/v1/jobs/b/pause", nil); r.code != http.StatusOK {
		t.Fatalf("pause queued: %d %s", r.code, r.body)
	}
	if r := s.do("POST", "/v1/jobs/b/resume", nil); r.code != http.StatusOK {
		t.Fatalf("resume: %d %s", r.code, r.body)
	}
	s.waitStatus("a", 30*time.Second, "completed")
	s.waitStatus("b", 30*time.Second, "completed")
}

func TestFailedItemsPagesAndRetry(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: time.Millisecond, FailEvery: 7}})
	s.create(spec(t, "f", 700, nil))
	v := s.waitStatus("f", 20*time.Second, "completed")
	if v.Progress.Failed != 100 {
		t.Fatalf("failed: got %d, want 100", v.Progress.Failed)
	}
	var ids []int64
	cursor := ""
	for page := 0; page < 20; page++ {
		r := s.do("GET", "/v1/jobs/f/failed?limit=30"+cursor, nil)
		if r.code != http.StatusOK {
			t.Fatalf("failed page: %d %s", r.code, r.body)
		}
		var p struct {
			Items []struct {
				SourceID int64  `json:"source_id"`
				Category string `json:"category"`
			} `json:"items"`
			NextCursor *string `json:"next_cursor"`
		}
		r.json(t, &p)
		for _, it := range p.Items {
			if it.Category != "validation" {
				t.Errorf("category %q", it.Category)
			}
			ids = append(ids, it.SourceID)
		}
		if p.NextCursor == nil {
			break
		}
		cursor = "&cursor=" + *p.NextCursor
	}
	if len(ids) != 100 || ids[0] != 7 || ids[99] != 700 {
		t.Fatalf("failed ids: got %d, first %v", len(ids), ids[:min(3, len(ids))])
	}
	if r := s.do("GET", "/v1/jobs/f/failed?cursor=5", nil); r.code != http.StatusBadRequest {
		t.Errorf("cursor inside a line: %d, want 400", r.code)
	}
	if r := s.do("POST", "/v1/jobs/f/retry-failed", nil); r.code != http.StatusOK {
		t.Fatalf("retry-failed: %d %s", r.code, r.body)
	}
	v = s.waitStatus("f", 20*time.Second, "completed")
	if v.Progress.Failed != 0 || v.Progress.Created != 700 {
		t.Errorf("after retry: %+v", v.Progress)
	}
	if r := s.do("POST", "/v1/jobs/f/retry-failed", nil); r.code != http.StatusConflict {
		t.Errorf("retry with nothing failed: %d, want 409", r.code)
	}
}

func TestFailedPageStopsBeforeATornLine(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir, serverOpts{sim: servicetest.Options{Tick: time.Millisecond}})
	s.create(spec(t, "torn", 10, nil))
	s.waitStatus("torn", 10*time.Second, "completed")
	path := filepath.Join(dir, "jobs", "torn", "failed.jsonl")
	content := `{"source_id":1,"category":"network"}` + "\n" + `not json` + "\n" + `{"source_id":3,"cat`
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	r := s.do("GET", "/v1/jobs/torn/failed", nil)
	var p struct {
		Items      []map[string]any `json:"items"`
		NextCursor *string          `json:"next_cursor"`
		EndOffset  int64            `json:"end_offset"`
	}
	r.json(t, &p)
	if len(p.Items) != 2 || p.Items[1]["invalid_line"] != "not json" || p.NextCursor != nil {
		t.Errorf("got %s, want the two complete lines, the bad one marked", r.body)
	}
	if want := int64(strings.LastIndex(content, "\n") + 1); p.EndOffset != want {
		t.Errorf("end offset %d, want %d", p.EndOffset, want)
	}
}

func TestDryRunPreview(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: time.Millisecond}})
	s.create(spec(t, "dry", 100, map[string]any{"dry_run": true}))
	s.waitStatus("dry", 10*time.Second, "completed")
	r := s.do("GET", "/v1/jobs/dry/dry-run", nil)
	if r.code != http.StatusOK || !bytes.Contains(r.body, []byte(`"would_create":100`)) {
		t.Errorf("dry-run: %d %s", r.code, r.body)
	}
}

func TestHeapProfileOfARunningJob(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: 20 * time.Millisecond}})
	s.create(spec(t, "hp", 100000, nil))
	s.waitStatus("hp", 10*time.Second, "running")
	r := s.do("GET", "/v1/jobs/hp/heap-profile", nil)
	// A pprof profile is gzip-compressed protobuf.
	if r.code != http.StatusOK || len(r.body) < 2 || r.body[0] != 0x1f || r.body[1] != 0x8b {
		t.Errorf("heap profile: %d, %d bytes", r.code, len(r.body))
	}
}

func TestEventStream(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: 5 * time.Millisecond}})
	s.create(spec(t, "ev", 600, nil))
	req, _ := http.NewRequest("GET", s.base+"/v1/jobs/ev/events", nil)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	kinds := map[string]int{}
	var first, last string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if k, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			kinds[k]++
			if first == "" {
				first = k
			}
			last = k
		}
	}
	if first != "snapshot" || last != "done" {
		t.Errorf("stream: first %q, last %q, want snapshot ... done", first, last)
	}
	for _, k := range []string{"progress", "memory", "level", "gc"} {
		if kinds[k] == 0 {
			t.Errorf("no %s event in %v", k, kinds)
		}
	}
	// A finished job's stream is its snapshot and done.
	r := s.do("GET", "/v1/jobs/ev/events", nil)
	if got := strings.Count(string(r.body), "event: "); got != 2 || !strings.Contains(string(r.body), "event: done") {
		t.Errorf("finished stream: %s", r.body)
	}
}

func TestRestartResumesARunningJob(t *testing.T) {
	dir := t.TempDir()
	sim := servicetest.Options{Tick: 10 * time.Millisecond}
	s := start(t, dir, serverOpts{sim: sim})
	s.create(spec(t, "rs", 2000, nil))
	eventually(t, 10*time.Second, "progress", func() error {
		if v := s.get("rs"); v.Progress.Processed < 200 {
			return notYet("processed %d", v.Progress.Processed)
		}
		return nil
	})
	if err := s.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	at, done, err := servicetest.Processed(filepath.Join(dir, "jobs", "rs"))
	if err != nil || done || at == 0 {
		t.Fatalf("checkpoint after shutdown: %d done=%v %v", at, done, err)
	}
	s2 := start(t, dir, serverOpts{sim: sim})
	v := s2.waitStatus("rs", 30*time.Second, "completed")
	if v.Progress.Processed != 2000 || v.Runs != 2 {
		t.Errorf("after restart: processed %d in %d runs, want 2000 in 2", v.Progress.Processed, v.Runs)
	}
	if !strings.Contains(s2.logs.String(), "requeued") && !strings.Contains(s.logs.String(), "drained") {
		t.Logf("logs: %s", s.logs.String())
	}
}

func TestStartFailureMarksJobFailed(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{FailOnStart: "runner crashed 5 times in 1m0s without a checkpoint"}})
	s.create(spec(t, "cf", 10, nil))
	v := s.waitStatus("cf", 10*time.Second, "failed")
	if !strings.Contains(v.Reason, "crashed 5 times") {
		t.Errorf("reason %q", v.Reason)
	}
	// The service stays up and answers.
	if r := s.do("GET", "/healthz", nil); r.code != http.StatusOK {
		t.Errorf("healthz: %d", r.code)
	}
	if r := s.do("GET", "/readyz", nil); r.code != http.StatusOK {
		t.Errorf("readyz: %d", r.code)
	}
	_ = fmt.Sprint()
}
