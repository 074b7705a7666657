package bench_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/job"
)

// sweepBudget is the budget of every point of the leak sweep: the job file
// sets only memory.limit, as a new user would, so the default policy runs.
const sweepBudget = 128 << 20

// leakPoint is one leak of the sweep: per item, or per second.
type leakPoint struct {
	name      string
	perItem   int64 // bytes a item
	perSecond int64 // bytes a second, independent of items
}

var sweepPoints = []leakPoint{
	{name: "128B_item", perItem: 128},
	{name: "256B_item", perItem: 256},
	{name: "512B_item", perItem: 512},
	{name: "1KiB_item", perItem: 1 << 10},
	{name: "2KiB_item", perItem: 2 << 10},
	{name: "20MiB_s", perSecond: 20 << 20},
	{name: "80MiB_s", perSecond: 80 << 20},
}

// sweepWindow is how long a time-based leak point runs before SIGTERM; the
// per-item points end when their source does, or at sweepCap.
const (
	sweepWindow = 20 * time.Second
	sweepCap    = 2 * time.Minute
)

// sweepItems is the source size of a per-item point: enough items to leak
// about three budgets, so that the runner must restart, within 200k to
// 600k items.
func sweepItems(perItem int64) int64 {
	return min(600_000, max(200_000, 3*sweepBudget/perItem))
}

// sweepJob writes the job file of one point.
func sweepJob(t testing.TB, dir string, p leakPoint) string {
	var src, inject string
	if p.perItem > 0 {
		src = fmt.Sprintf("{type: synthetic, count: %d, seed: 7, payload_bytes: 100}", sweepItems(p.perItem))
		inject = fmt.Sprintf("{leak_bytes_per_item: %d}", p.perItem)
	} else {
		// A source that outlasts the window, at a pace that keeps the
		// target file small; the leak does not depend on items.
		src = "{type: synthetic, count: 100000000, seed: 7, payload_bytes: 20}"
		inject = fmt.Sprintf("{leak_bytes_per_second: %d, slow_batch: 20ms}", p.perSecond)
	}
	spec := fmt.Sprintf(`id: sweep-%s
state_dir: ./state
source: %s
target: {type: jsonl, path: sweep-%s-target.jsonl}
match: {source_field: email, target_field: email}
memory: {limit: 128MiB}
inject: %s
`, p.name, src, p.name, inject)
	path := filepath.Join(dir, "sweep-"+p.name+".yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// timeLeakKnown reports whether the job parser knows
// inject.leak_bytes_per_second, and if not, why.
func timeLeakKnown() (bool, string) {
	doc := `id: probe
source: {type: synthetic, count: 10}
target: {type: jsonl, path: probe.jsonl}
match: {source_field: email, target_field: email}
inject: {leak_bytes_per_second: 1MiB}
`
	if _, err := job.Parse(strings.NewReader(doc)); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// sweepResult is what one point measured.
type sweepResult struct {
	graceful, kills, other int
	peak                   uint64
	status                 string
}

// runSweepPoint runs one point under `supervisor run` and reads its
// summary; the peak is the larger of the supervisor's and an outside
// 20 Hz sampler's.
func runSweepPoint(b *testing.B, sup, runner, dir string, p leakPoint) sweepResult {
	jobPath := sweepJob(b, dir, p)
	summary := filepath.Join(dir, "sweep-"+p.name+".summary.json")
	s := sampleRSS(runner, 50*time.Millisecond)
	level := "warn"
	if os.Getenv("LEAK_SWEEP_LOGS") != "" {
		level = "info"
	}
	cmd := exec.Command(sup, "run", jobPath, "--summary", summary, "--runner", runner, "--log-level", level, "--log-format", "json")
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	limit := sweepCap
	if p.perSecond > 0 {
		limit = sweepWindow
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(limit):
		// Stop the point: the supervisor drains the runner and exits.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-done
			b.Fatalf("%s: the supervisor did not stop within a minute of SIGTERM", p.name)
		}
	}
	peak := s.Stop()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		b.Fatalf("%s: supervisor: %v\n%s", p.name, err, stderr.String())
	}
	var sum struct {
		Status       string         `json:"status"`
		Restarts     map[string]int `json:"restarts"`
		PeakRSSBytes uint64         `json:"peak_rss_bytes"`
	}
	data, rerr := os.ReadFile(summary)
	if rerr != nil {
		b.Fatalf("%s: no summary (%v); supervisor: %v\n%s", p.name, rerr, err, stderr.String())
	}
	if err := json.Unmarshal(data, &sum); err != nil {
		b.Fatalf("%s: summary: %v", p.name, err)
	}
	if logs := os.Getenv("LEAK_SWEEP_LOGS"); logs != "" {
		// Keep the supervisor's log of the point, to see why it restarted.
		os.WriteFile(filepath.Join(logs, "sweep-"+p.name+".log"), []byte(stderr.String()), 0o644)
	}
	if sum.Status != "completed" && sum.Status != "paused" {
		b.Fatalf("%s: the job ended %s; supervisor: %v\n%s", p.name, sum.Status, err, stderr.String())
	}
	// The target and state of a point are not needed after it.
	os.RemoveAll(filepath.Join(dir, "state", "sweep-"+p.name))
	os.Remove(filepath.Join(dir, "sweep-"+p.name+"-target.jsonl"))
	return sweepResult{
		graceful: sum.Restarts["graceful"],
		kills:    sum.Restarts["kill"],
		other:    sum.Restarts["crash"] + sum.Restarts["hang"],
		peak:     max(peak, sum.PeakRSSBytes),
		status:   sum.Status,
	}
}

// BenchmarkLeakSweep runs leaks of 128 B to 2 KiB per item and of 20 and
// 80 MiB/s under the supervisor's default policy and a 128 MiB budget,
// and reports the kills over every point, the share of restarts that were
// graceful, and the highest peak RSS over the budget. LEAK_SWEEP=name,...
// runs only the points named; LEAK_SWEEP_LOGS=DIR keeps each point's
// supervisor log there.
func BenchmarkLeakSweep(b *testing.B) {
	runner := testbin.Path(b, "runner")
	sup := testbin.Path(b, "supervisor")
	dir := b.TempDir()
	known, why := timeLeakKnown()
	only := os.Getenv("LEAK_SWEEP")
	var kills, graceful, restarts int
	var worst float64
	ran := 0
	for _, p := range sweepPoints {
		if only != "" && !strings.Contains(","+only+",", ","+p.name+",") {
			continue
		}
		if p.perSecond > 0 && !known {
			b.Logf("skipping the %s point: the job parser does not know inject.leak_bytes_per_second (%s)", p.name, why)
			continue
		}
		r := runSweepPoint(b, sup, runner, dir, p)
		ran++
		over := float64(r.peak) / sweepBudget
		b.Logf("%s: %s, %d graceful, %d kills, %d other restarts, peak %.0f MiB (%.2f of the budget)",
			p.name, r.status, r.graceful, r.kills, r.other, float64(r.peak)/(1<<20), over)
		benchfmt.Report(b, "leak_sweep_"+p.name+"_graceful", float64(r.graceful), "restarts")
		benchfmt.Report(b, "leak_sweep_"+p.name+"_kills", float64(r.kills), "restarts")
		benchfmt.Report(b, "leak_sweep_"+p.name+"_peak_over_budget", over, "ratio")
		kills += r.kills
		graceful += r.graceful
		restarts += r.graceful + r.kills + r.other
		worst = max(worst, over)
	}
	if ran == 0 {
		b.Skip("no point of the sweep ran")
	}
	share := 1.0 // no restart at all: none was anything but graceful
	if restarts > 0 {
		share = float64(graceful) / float64(restarts)
	}
	benchfmt.Report(b, "leak_sweep_kills_total", float64(kills), "restarts")
	benchfmt.Report(b, "leak_sweep_graceful_share", share, "ratio")
	benchfmt.Report(b, "leak_sweep_peak_over_budget_max", worst, "ratio")
}
