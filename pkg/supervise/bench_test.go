package supervise_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/shirou/gopsutil/v4/process"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/supervise"
)

// BenchmarkLeakReaction supervises a fake runner that leaks about 50 MB/s
// under a 150 MiB budget with the default policy (250ms samples), and
// reports, from inside each runner, how long after its RSS crossed the
// critical level the GC request arrived (supervise_reaction_ms, 0 when it
// came before the crossing, as the policy's projection asks for it; the
// slowest of the runners), and the highest RSS any runner reached, over
// the budget (supervise_peak_rss_over_budget). It runs once, whatever
// b.N is.
func BenchmarkLeakReaction(b *testing.B) {
	const budget = 150 * mib
	reports := b.TempDir()
	spec := newSpec(b, 600, 1, func(s *job.Spec) {
		s.Memory = job.DefaultMemory()
		s.Inject.LeakBytesPerItem = 580 << 10 // with the batch overhead, about 50 MB/s
		s.Inject.SlowBatch = job.Duration(10 * time.Millisecond)
	})
	critical := uint64(float64(budget) * spec.Memory.CriticalPercent / 100)
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	sup, err := supervise.New(spec, supervise.Options{
		RunnerPath: exe,
		Env: append(runnerEnv(),
			"MEMVISOR_FAKE_REPORT_DIR="+reports,
			"MEMVISOR_FAKE_CRITICAL_BYTES="+strconv.FormatUint(critical, 10)),
		Logger:      zerolog.Nop(),
		BudgetBytes: budget,
	})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	sum, err := sup.Run(b.Context(), supervise.StartMode{})
	if err != nil || sum.Status != supervise.StatusCompleted {
		b.Fatalf("run: %+v, %v", sum, err)
	}
	elapsed := time.Since(start)

	files, _ := filepath.Glob(filepath.Join(reports, "*.json"))
	var reactions, rates []float64
	var peak int64
	noGC := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		var r struct {
			Crossed  int64 `json:"crossed_unix_nano"`
			GC       int64 `json:"gc_unix_nano"`
			PeakRSS  int64 `json:"peak_rss"`
			First    int64 `json:"first_unix_nano"`
			FirstRSS int64 `json:"first_rss"`
		}
		if err := json.Unmarshal(data, &r); err != nil {
			b.Fatal(err)
		}
		peak = max(peak, r.PeakRSS)
		switch {
		case r.Crossed == 0:
			// The runner finished the job, or was drained, below the
			// critical level: the policy's projection acted first.
		case r.GC == 0:
			noGC++
		default:
			// A GC asked for before the crossing (the projection from
			// the warning level) is a reaction of 0.
			reactions = append(reactions, max(0, float64(r.GC-r.Crossed)/1e6))
		}
		if r.Crossed > r.First {
			rates = append(rates, float64(int64(critical)-r.FirstRSS)/(float64(r.Crossed-r.First)/1e9)/1e6)
		}
	}
	if sum.Restarts.Kill > 0 {
		b.Errorf("%d runners were killed: %+v", sum.Restarts.Kill, sum.Restarts)
	}
	if len(reactions) == 0 {
		// No runner crossed critical and waited for a GC request: every
		// one was handled below it, or drained by its own guard.
		b.Logf("no runner crossed the critical level and then got a GC request (%d runners, %d crossed without one)", len(files), noGC)
		reactions = []float64{0}
	}
	slices.Sort(reactions)
	b.Logf("%d runners in %v, restarts %+v, reactions (ms) %v, %d runners crossed critical without a GC request; leak rates up to critical (MB/s) %v",
		len(files), elapsed.Round(time.Millisecond), sum.Restarts, reactions, noGC, rates)
	benchfmt.Report(b, "supervise_reaction_ms", reactions[len(reactions)-1], "ms")
	benchfmt.Report(b, "supervise_peak_rss_over_budget", float64(peak)/float64(budget), "ratio")
}

// supervisorBinary is the bin/supervisor that `make bench` has just built
// (stripped, as shipped; the Makefile exports MEMVISOR_BIN), else one
// built for this test process.
func supervisorBinary(b *testing.B) string {
	if dir := os.Getenv("MEMVISOR_BIN"); dir != "" {
		p := filepath.Join(dir, "supervisor")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	return testbin.Path(b, "supervisor")
}

// BenchmarkSupervisorOverhead measures the supervisor itself while it
// supervises a fake runner at the default 4 Hz for 30 s: its peak RSS
// (supervisor_rss_mb) and its CPU time over wall time
// (supervisor_cpu_percent, of one core). The supervisor is the real
// bin/supervisor, not this test binary, whose own code would inflate
// the figures (a Go binary's resident set includes most of its text);
// the runner is this test binary's fake.
func BenchmarkSupervisorOverhead(b *testing.B) {
	const window = 30 * time.Second
	spec := newSpec(b, 100000, 1, func(s *job.Spec) {
		s.Memory = job.DefaultMemory()
		s.Inject.SlowBatch = job.Duration(50 * time.Millisecond)
	})
	data, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	jobFile := filepath.Join(b.TempDir(), "job.yaml") // JSON is YAML
	if err := os.WriteFile(jobFile, data, 0o644); err != nil {
		b.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	bin := supervisorBinary(b)
	b.Logf("measuring %s", bin)
	cmd := exec.Command(bin, "run", jobFile, "--runner", exe, "--log-format", "json")
	cmd.Env = runnerEnv() // passed on to the runner, which is this binary's fake
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	waitCheckpoint(b, spec, 5)
	time.Sleep(2 * time.Second) // past start-up
	p := &process.Process{Pid: int32(cmd.Process.Pid)}
	t0, err := p.Times()
	if err != nil {
		b.Fatal(err)
	}
	wall0 := time.Now()
	var peak uint64
	tick := time.NewTicker(250 * time.Millisecond)
	for time.Since(wall0) < window {
		<-tick.C
		if mi, err := p.MemoryInfo(); err == nil {
			peak = max(peak, mi.RSS)
		}
	}
	tick.Stop()
	t1, err := p.Times()
	if err != nil {
		b.Fatal(err)
	}
	wall := time.Since(wall0).Seconds()
	cpu := (t1.User + t1.System) - (t0.User + t0.System)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("supervisor after SIGTERM: %v", err)
	}
	benchfmt.Report(b, "supervisor_rss_mb", float64(peak)/1e6, "MB")
	benchfmt.Report(b, "supervisor_cpu_percent", cpu/wall*100, "%")
}
