package bench_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/internal/testbin"
)

// pm2Version is the PM2 the comparison installs from npm.
const pm2Version = "7.0.4"

const leakBudget = 150 << 20

// leakJob is the leaking job both supervisors run: about 50 MB/s of memory
// that no collection frees, against a 150 MiB budget, with a source too
// large to finish during the measurement.
func leakJob(t testing.TB, dir, name string) string {
	p := filepath.Join(dir, name+".yaml")
	spec := fmt.Sprintf(`id: %s
state_dir: ./state
source: {type: synthetic, count: 100000000, seed: 1, payload_bytes: 100}
target: {type: jsonl, path: %s-target.jsonl}
match: {source_field: email, target_field: email}
batch_size: 100
memory: {limit: 150MiB}
inject: {leak_bytes_per_item: 20KiB, slow_batch: 45ms}
`, name, name)
	if err := os.WriteFile(p, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// installPM2 installs the pinned PM2 from npm once, under bin/.
func installPM2(b *testing.B) string {
	root, err := testbin.ModuleRoot()
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(root, "bin", "pm2-"+pm2Version)
	bin := filepath.Join(dir, "node_modules", ".bin", "pm2")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if _, err := exec.LookPath("npm"); err != nil {
		b.Skip("npm is not installed; the PM2 comparison needs Node.js and npm")
	}
	os.MkdirAll(dir, 0o755)
	cmd := exec.Command("npm", "install", "--no-audit", "--no-fund", "--prefix", dir, "pm2@"+pm2Version)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("npm install pm2@%s: %v\n%s", pm2Version, err, out)
	}
	return bin
}

// BenchmarkPM2MaxMemoryRestart runs the leaking runner, standalone, under
// PM2 with max_memory_restart set to the budget, and reports the peak RSS
// over the budget.
func BenchmarkPM2MaxMemoryRestart(b *testing.B) {
	pm2 := installPM2(b)
	runner := testbin.Path(b, "runner")
	dir := b.TempDir()
	job := leakJob(b, dir, "pm2")
	env := append(os.Environ(), "PM2_HOME="+filepath.Join(dir, "pm2home"))
	pm := func(args ...string) {
		cmd := exec.Command(pm2, args...)
		cmd.Env, cmd.Dir = env, dir
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("pm2 %v: %v\n%s", args, err, out)
		}
	}
	defer pm("kill")
	const watch = 45 * time.Second
	s := sampleRSS(runner, 50*time.Millisecond)
	pm("start", runner, "--name", "leak", "--max-memory-restart", fmt.Sprintf("%dM", leakBudget>>20),
		"--", "run", job, "--log-level", "warn")
	time.Sleep(watch)
	peak := s.Stop()
	pm("delete", "leak")

	benchfmt.Report(b, "pm2_peak_rss_over_budget", float64(peak)/leakBudget, "ratio")
	benchfmt.Report(b, "pm2_peak_rss_mb", float64(peak)/(1<<20), "MB")
	benchfmt.Report(b, "leak_rate_mb_per_s", leakRate(s), "MB/s")
}

// leakRate is the steepest RSS growth over one second in the samples.
func leakRate(s *rssSampler) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	best := 0.0
	j := 0
	for i := range s.samples {
		for j < i && s.samples[i].t.Sub(s.samples[j].t) > time.Second {
			j++
		}
		if dt := s.samples[i].t.Sub(s.samples[j].t).Seconds(); dt > 0.5 && s.samples[i].rss > s.samples[j].rss {
			best = max(best, float64(s.samples[i].rss-s.samples[j].rss)/(1<<20)/dt)
		}
	}
	return best
}

// BenchmarkPM2LeakSweep runs the standalone runner on the points of the
// leak sweep under PM2 with max_memory_restart at the same 128 MiB
// budget, and reports PM2's restarts (each one SIGINT, then SIGKILL after
// kill_timeout) and the peak RSS over the budget. A point runs until its
// job ends or for pm2SweepWindow: PM2 checks memory every 30 s.
func BenchmarkPM2LeakSweep(b *testing.B) {
	pm2 := installPM2(b)
	runner := testbin.Path(b, "runner")
	dir := b.TempDir()
	env := append(os.Environ(), "PM2_HOME="+filepath.Join(dir, "pm2home"))
	pm := func(args ...string) []byte {
		cmd := exec.Command(pm2, args...)
		cmd.Env, cmd.Dir = env, dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("pm2 %v: %v\n%s", args, err, out)
		}
		return out
	}
	defer pm("kill")
	known, why := timeLeakKnown()
	only := os.Getenv("LEAK_SWEEP")
	restarts, worst, ran := 0, 0.0, 0
	for _, p := range sweepPoints {
		if only != "" && !strings.Contains(","+only+",", ","+p.name+",") {
			continue
		}
		if p.perSecond > 0 && !known {
			b.Logf("skipping the %s point: the job parser does not know inject.leak_bytes_per_second (%s)", p.name, why)
			continue
		}
		jobPath := sweepJob(b, dir, p)
		name := "sweep-" + p.name
		s := sampleRSS(runner, 50*time.Millisecond)
		// No autorestart: a runner that finished its job stays stopped;
		// PM2 still restarts one over max_memory_restart.
		pm("start", runner, "--name", name, "--no-autorestart", "--max-memory-restart", fmt.Sprintf("%dM", sweepBudget>>20),
			"--", "run", jobPath, "--log-level", "warn")
		deadline := time.Now().Add(pm2SweepWindow)
		n := 0
		for time.Now().Before(deadline) {
			time.Sleep(time.Second)
			var procs []struct {
				Name   string `json:"name"`
				PM2Env struct {
					Status      string `json:"status"`
					RestartTime int    `json:"restart_time"`
				} `json:"pm2_env"`
			}
			if err := json.Unmarshal(pm("jlist"), &procs); err != nil {
				b.Fatalf("pm2 jlist: %v", err)
			}
			stopped := false
			for _, pr := range procs {
				if pr.Name == name {
					n = pr.PM2Env.RestartTime
					stopped = pr.PM2Env.Status == "stopped" || pr.PM2Env.Status == "errored"
				}
			}
			if stopped {
				break
			}
		}
		peak := s.Stop()
		pm("delete", name)
		os.RemoveAll(filepath.Join(dir, "state", name))
		os.Remove(filepath.Join(dir, name+"-target.jsonl"))
		ran++
		over := float64(peak) / sweepBudget
		b.Logf("%s under PM2: %d restarts, peak %.0f MiB (%.2f of the budget)", p.name, n, float64(peak)/(1<<20), over)
		benchfmt.Report(b, "pm2_leak_sweep_"+p.name+"_restarts", float64(n), "restarts")
		benchfmt.Report(b, "pm2_leak_sweep_"+p.name+"_peak_over_budget", over, "ratio")
		restarts += n
		worst = max(worst, over)
	}
	if ran == 0 {
		b.Skip("no point of the sweep ran")
	}
	benchfmt.Report(b, "pm2_leak_sweep_restarts_total", float64(restarts), "restarts")
	benchfmt.Report(b, "pm2_leak_sweep_peak_over_budget_max", worst, "ratio")
}

// pm2SweepWindow bounds one point of the PM2 sweep: long enough for one
// of PM2's 30 s memory checks.
const pm2SweepWindow = 45 * time.Second
