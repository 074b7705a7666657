package bench_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/plugin"
)

// BenchmarkSupervisedLeak runs the leaking job of the PM2 comparison under
// the supervisor and reports the peak RSS of its runners over the budget.
func BenchmarkSupervisedLeak(b *testing.B) {
	runner := testbin.Path(b, "runner")
	sup := testbin.Path(b, "supervisor")
	dir := b.TempDir()
	jobPath := leakJob(b, dir, "memvisor")
	summary := filepath.Join(dir, "summary.json")
	s := sampleRSS(runner, 50*time.Millisecond)
	cmd := exec.Command(sup, "run", jobPath, "--summary", summary, "--runner", runner, "--log-level", "warn")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	time.Sleep(30 * time.Second)
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			b.Fatalf("supervisor: %v", err)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		b.Fatal("the supervisor did not stop within 60 s of SIGTERM")
	}
	peak := s.Stop()
	var sum struct {
		Restarts   map[string]int `json:"restarts"`
		GCRequests int            `json:"gc_requests"`
	}
	data, _ := os.ReadFile(summary)
	json.Unmarshal(data, &sum)

	benchfmt.Report(b, "supervise_real_runner_peak_rss_over_budget", float64(peak)/leakBudget, "ratio")
	benchfmt.Report(b, "supervise_real_runner_graceful_restarts_30s", float64(sum.Restarts["graceful"]), "restarts")
	benchfmt.Report(b, "supervise_real_runner_kills_30s", float64(sum.Restarts["kill"]), "restarts")
	benchfmt.Report(b, "supervise_real_runner_leak_rate_mb_per_s", leakRate(s), "MB/s")
}

// throughputJob is a plain 1M-item job, without faults.
func throughputJob(t testing.TB, dir, name string) string {
	p := filepath.Join(dir, name+".yaml")
	spec := fmt.Sprintf(`id: %s
state_dir: ./state
source: {type: synthetic, count: 1000000, seed: 1, payload_bytes: 150, duplicate_rate: 0.02}
target: {type: jsonl, path: %s-target.jsonl}
match: {source_field: email, target_field: email}
memory: {limit: 512MiB}
`, name, name)
	if err := os.WriteFile(p, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// BenchmarkSupervisedVsStandalone runs the same 1M-item job with the runner
// alone and under the supervisor, alternating, five times each, and
// reports the ratio of the median throughputs.
func BenchmarkSupervisedVsStandalone(b *testing.B) {
	runner := testbin.Path(b, "runner")
	sup := testbin.Path(b, "supervisor")
	dir := b.TempDir()
	const rounds = 5
	var alone, supervised []time.Duration
	for i := range rounds {
		for _, mode := range []string{"alone", "supervised"} {
			name := fmt.Sprintf("%s%d", mode, i)
			jobPath := throughputJob(b, dir, name)
			var cmd *exec.Cmd
			if mode == "alone" {
				cmd = exec.Command(runner, "run", jobPath, "--log-level", "warn")
			} else {
				cmd = exec.Command(sup, "run", jobPath, "--runner", runner, "--log-level", "warn")
			}
			cmd.Dir = dir
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%s: %v\n%s", mode, err, out)
			}
			if mode == "alone" {
				alone = append(alone, time.Since(start))
			} else {
				supervised = append(supervised, time.Since(start))
			}
			os.RemoveAll(filepath.Join(dir, "state", name))
			os.Remove(filepath.Join(dir, name+"-target.jsonl"))
		}
	}
	a, s := median(alone), median(supervised)
	benchfmt.Report(b, "standalone_items_per_s_1M", 1e6/a.Seconds(), "items/s")
	benchfmt.Report(b, "supervised_items_per_s_1M", 1e6/s.Seconds(), "items/s")
	benchfmt.Report(b, "supervised_vs_standalone_throughput", a.Seconds()/s.Seconds(), "ratio")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkGracefulRestartPause drives two real runners over the plugin
// RPC, as the supervisor does: the first migrates until its cache holds 1M
// entries and is drained; the second resumes. The pause is from the Drain
// call to the second runner's first committed batch.
func BenchmarkGracefulRestartPause(b *testing.B) {
	runnerPath := testbin.Path(b, "runner")
	dir := b.TempDir()
	s := job.Default()
	s.ID = "pause"
	s.StateDir = filepath.Join(dir, "state")
	s.Source = job.Endpoint{Type: job.TypeSynthetic, Count: 1_300_000, Seed: 3, PayloadBytes: 20}
	s.Target = job.Endpoint{Type: job.TypeJSONL, Path: filepath.Join(dir, "target.jsonl")}
	s.Match = job.Match{SourceField: "email", TargetField: "email"}
	if err := s.Validate(); err != nil {
		b.Fatal(err)
	}
	spec, _ := json.Marshal(s)
	ctx := context.Background()
	start := func() *plugin.Client {
		c, err := plugin.Start(ctx, plugin.ClientOptions{Path: runnerPath, Logger: zerolog.Nop()})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Runner().Start(ctx, plugin.StartRequest{Job: spec, Resume: true}); err != nil {
			c.Kill()
			b.Fatal(err)
		}
		return c
	}
	first := start()
	deadline := time.Now().Add(3 * time.Minute)
	var entries int64
	for time.Now().Before(deadline) {
		st, err := first.Runner().Stats(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if entries = st.CacheEntries; entries >= 1_000_000 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if entries < 1_000_000 {
		b.Fatalf("the cache reached only %d entries", entries)
	}
	t0 := time.Now()
	cp, err := first.Runner().Drain(ctx, time.Now().Add(30*time.Second))
	if err != nil {
		b.Fatal(err)
	}
	drained := time.Since(t0)
	first.Kill()
	second := start()
	defer second.Kill()
	var firstBatch time.Duration
	err = second.Runner().Watch(ctx, func(ev plugin.Event) error {
		if ev.Progress.Batches > cp.Batches {
			firstBatch = time.Since(t0)
			return context.Canceled
		}
		if ev.Kind == plugin.EventDone {
			return fmt.Errorf("the second runner ended (%s) before a batch: %s", ev.State, ev.Error)
		}
		return nil
	})
	if firstBatch == 0 {
		b.Fatalf("no batch from the second runner: %v", err)
	}
	benchfmt.Report(b, "supervise_graceful_restart_pause_ms", float64(firstBatch.Microseconds())/1000, "ms")
	benchfmt.Report(b, "supervise_graceful_drain_ms", float64(drained.Microseconds())/1000, "ms")
	benchfmt.Report(b, "supervise_graceful_restart_cache_entries", float64(entries), "entries")
}
