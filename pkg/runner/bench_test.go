package runner_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/runner"
	"github.com/memvisor/memvisor/plugin"
)

// BenchmarkGuardCheck measures what the memory guard costs a write (an
// atomic add and a compare, and every 1024th write a non-blocking poke)
// and one measurement of RSS, which its own goroutine makes.
func BenchmarkGuardCheck(b *testing.B) {
	p := runner.NewGuardProbe()
	defer p.Close()
	const n = 10_000_000
	start := time.Now()
	for range n {
		p.AfterWrite()
	}
	perWrite := float64(time.Since(start).Nanoseconds()) / n
	const m = 20_000
	start = time.Now()
	for range m {
		if p.Usage() == 0 {
			b.Fatal("no RSS reading")
		}
	}
	perMeasure := float64(time.Since(start).Nanoseconds()) / m
	benchfmt.Report(b, "guard_check_ns", perWrite, "ns/write")
	benchfmt.Report(b, "guard_measure_us", perMeasure/1000, "us")
}

// BenchmarkDrainLatencySlowTarget drains a job whose every write takes
// 50 ms (batch 500, concurrency 5: a batch takes 5 s) in the middle of a
// batch, five times, each from the previous drain's checkpoint, and
// reports how long Drain took to return the committed checkpoint.
func BenchmarkDrainLatencySlowTarget(b *testing.B) {
	dir := b.TempDir()
	s := job.Default()
	s.ID = "drainbench"
	s.StateDir = dir + "/state"
	s.Source = job.Endpoint{Type: job.TypeSynthetic, Count: 100_000, Seed: 1}
	s.Target = job.Endpoint{Type: job.TypeJSONL, Path: dir + "/target.jsonl"}
	s.Match = job.Match{SourceField: "email", TargetField: "email"}
	s.BatchSize = 500
	s.Concurrency = 5
	s.Inject.SlowWrite = job.Duration(50 * time.Millisecond)
	if err := s.Validate(); err != nil {
		b.Fatal(err)
	}
	data, _ := json.Marshal(s)
	var took []float64
	var last plugin.Checkpoint
	for range 5 {
		h := runner.New(zerolog.Nop())
		if err := h.Start(b.Context(), plugin.StartRequest{Job: data, Resume: true}); err != nil {
			b.Fatal(err)
		}
		time.Sleep(400 * time.Millisecond) // about 40 writes into the batch
		start := time.Now()
		cp, err := h.Drain(b.Context(), time.Now().Add(30*time.Second))
		took = append(took, float64(time.Since(start).Microseconds())/1000)
		h.Close()
		if err != nil {
			b.Fatal(err)
		}
		if cp.Progress.Processed-last.Progress.Processed >= int64(s.BatchSize) {
			b.Fatalf("the drain finished the batch: %d items since the last drain", cp.Progress.Processed-last.Progress.Processed)
		}
		last = cp
	}
	slices.Sort(took)
	benchfmt.Report(b, "drain_latency_ms_slow_target", took[len(took)/2], "ms")
	benchfmt.Report(b, "drain_latency_ms_slow_target_max", took[len(took)-1], "ms")
}
