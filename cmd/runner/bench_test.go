package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/connector/jsonl"
	"github.com/memvisor/memvisor/pkg/connector/synthetic"
)

const (
	benchItems   = 1_000_000
	benchPayload = 150 // with email, name and n, about 200 B per target line
)

// BenchmarkRunner1M runs the real runner on 1M synthetic items into a jsonl
// target, and a bare generate-encode-write loop over the same items, in
// the same run.
func BenchmarkRunner1M(b *testing.B) {
	bin := testbin.Path(b, "runner")
	dir := b.TempDir()
	job := filepath.Join(dir, "job.yaml")
	os.WriteFile(job, []byte(`id: bench
state_dir: ./state
source: {type: synthetic, count: 1000000, seed: 1, payload_bytes: 150, duplicate_rate: 0.02}
target: {type: jsonl, path: target.jsonl}
match: {source_field: email, target_field: email}
batch_size: 500
concurrency: 5
memory: {limit: 512MiB}
`), 0o644)

	cmd := exec.Command(bin, "run", job, "--progress-interval", "100ms", "--log-level", "info")
	stderr, _ := cmd.StderrPipe()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	type point struct{ processed, rss, cache float64 }
	var points []point
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var l struct {
			Context   string  `json:"context"`
			Processed float64 `json:"processed"`
			RSS       float64 `json:"rssMB"`
			Cache     float64 `json:"cacheMB"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Context == "progress" {
			points = append(points, point{l.Processed, l.RSS, l.Cache})
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("runner: %v", err)
	}
	elapsed := time.Since(start)
	peakMB := float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024
	runnerRate := benchItems / elapsed.Seconds()

	// RSS at 25% and at 100%, each without the cache's own bytes.
	var at25, at100 point
	for _, p := range points {
		if at25.processed == 0 && p.processed >= benchItems/4 {
			at25 = p
		}
		if p.processed >= benchItems {
			at100 = p
		}
	}
	if at25.processed == 0 || at100.processed == 0 {
		b.Fatalf("progress lines did not cover 25%% and 100%%: %v", points)
	}
	growth := (at100.rss - at100.cache) / (at25.rss - at25.cache)

	baseRate := bareCopy(b, filepath.Join(dir, "bare.jsonl"))

	benchfmt.Report(b, "runner_items_per_s_1M", runnerRate, "items/s")
	benchfmt.Report(b, "baseline_copy_items_per_s_1M", baseRate, "items/s")
	benchfmt.Report(b, "runner_vs_baseline_copy_1M", runnerRate/baseRate, "ratio")
	benchfmt.Report(b, "runner_peak_rss_mb_1M", peakMB, "MB")
	benchfmt.Report(b, "runner_cache_mb_1M", at100.cache, "MB")
	benchfmt.Report(b, "runner_peak_rss_minus_cache_mb_1M", peakMB-at100.cache, "MB")
	benchfmt.Report(b, "runner_rss_growth_ratio_1M", growth, "ratio")
}

// bareCopy is the floor: the same items generated, encoded as target lines
// and written through a buffer, with one fsync at the end; no dedup, no
// checkpoints, no concurrency.
func bareCopy(b *testing.B, path string) float64 {
	src := synthetic.New(synthetic.Options{Count: benchItems, Seed: 1, PayloadBytes: benchPayload, DuplicateRate: 0.02})
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 256<<10)
	start := time.Now()
	var line []byte
	cur := connector.Cursor{}
	for {
		recs, next, err := src.Read(context.Background(), cur, 500)
		if len(recs) == 0 || err != nil {
			break
		}
		for _, r := range recs {
			line = jsonl.AppendLine(line[:0], r.Item.ID, connector.ExternalID(r.Item.ID), r.Item.Fields)
			w.Write(line)
		}
		cur = next
	}
	w.Flush()
	f.Sync()
	return benchItems / time.Since(start).Seconds()
}

// BenchmarkGuardThroughput runs the runner on the same 400,000 synthetic
// items with the memory guard on and off, alternating, twice each, and
// reports the ratio of the best runs: what the guard costs the runner.
func BenchmarkGuardThroughput(b *testing.B) {
	bin := testbin.Path(b, "runner")
	const items = 400_000
	run := func(guard bool) float64 {
		dir := b.TempDir()
		job := filepath.Join(dir, "job.yaml")
		os.WriteFile(job, []byte(`id: guardbench
state_dir: ./state
source: {type: synthetic, count: 400000, seed: 1, payload_bytes: 150, duplicate_rate: 0.02}
target: {type: jsonl, path: target.jsonl}
match: {source_field: email, target_field: email}
batch_size: 500
concurrency: 5
memory: {limit: 512MiB}
`), 0o644)
		cmd := exec.Command(bin, "run", job, "--log-level", "warn", "--guard="+strconv.FormatBool(guard))
		cmd.Dir = dir
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("runner: %v\n%s", err, out)
		}
		return items / time.Since(start).Seconds()
	}
	var on, off float64
	for range 2 {
		off = max(off, run(false))
		on = max(on, run(true))
	}
	benchfmt.Report(b, "guard_off_items_per_s", off, "items/s")
	benchfmt.Report(b, "guard_on_items_per_s", on, "items/s")
	benchfmt.Report(b, "guard_throughput_ratio", on/off, "ratio")
}
