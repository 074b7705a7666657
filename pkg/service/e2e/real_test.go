package e2e_test

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestServeRestartResumesRealJobExactlyOnce runs a real job under
// bin/supervisor serve with the real runner, stops serve twice while
// the job runs, once with SIGTERM (a drain) and once with SIGKILL (the
// runner is orphaned and reaped by the next start), and checks that the
// job resumes each time and that the target holds every item exactly once.
func TestServeRestartResumesRealJobExactlyOnce(t *testing.T) {
	state := t.TempDir()
	target := filepath.Join(t.TempDir(), "target.jsonl")
	const count = 6000
	spec := map[string]any{
		"id":         "real",
		"source":     map[string]any{"type": "synthetic", "count": count, "seed": 11},
		"target":     map[string]any{"type": "jsonl", "path": target},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 100,
		"memory":     map[string]any{"limit": "512MiB"},
		"inject":     map[string]any{"slow_batch": "40ms"},
	}
	p := startSupervisor(t, state, "")
	if code, body := p.do("POST", "/v1/jobs", spec); code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	progressed := func(min int64) func(jobView) bool {
		return func(v jobView) bool {
			if v.Status == "failed" || v.Status == "completed" {
				return true
			}
			return v.Status == "running" && v.Progress.Processed >= min
		}
	}
	v := p.wait("real", 60*time.Second, progressed(500))
	if v.Status != "running" {
		t.Fatalf("before the first stop: %+v\n%s", v, p.stderr.String())
	}
	if err := p.stop(syscall.SIGTERM, 60*time.Second); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, p.stderr.String())
	}

	p2 := startSupervisor(t, state, "")
	v = p2.wait("real", 60*time.Second, progressed(v.Progress.Processed+500))
	if v.Status != "running" || v.Runs != 2 {
		t.Fatalf("after the SIGTERM restart: %+v, want running in its 2nd run\n%s", v, p2.stderr.String())
	}
	if err := p2.stop(syscall.SIGKILL, 10*time.Second); err == nil {
		t.Fatal("SIGKILL: the process exited cleanly")
	}

	p3 := startSupervisor(t, state, "")
	v = p3.wait("real", 120*time.Second, func(v jobView) bool { return v.Status != "running" && v.Status != "queued" })
	if v.Status != "completed" || v.Progress.Processed != count || v.Runs != 3 {
		t.Fatalf("after the SIGKILL restart: %+v, want completed, %d processed, 3 runs\n%s", v, count, p3.stderr.String())
	}
	// Every source item exactly once in the target.
	exactlyOnce(t, target, count)
	if err := p3.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Errorf("final stop: %v", err)
	}
}
