package main_test

import (
	"bufio"
	"bytes"
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

	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/supervise"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// supervisor builds bin/supervisor and bin/runner side by side, so the
// supervisor finds its runner as it does after `make build`.
func supervisor(t *testing.T) string {
	t.Helper()
	testbin.Path(t, "runner")
	return testbin.Path(t, "supervisor")
}

type result struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(supervisor(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, out.String(), errb.String()}
}

func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     string
		stderr     string
		noStdout   bool
		noStderrOK bool
	}{
		{args: []string{"--version"}, stdout: "supervisor "},
		{args: []string{"version"}, stdout: "supervisor "},
		{args: nil, code: 2, stderr: "Commands:\n    run "},
		{args: []string{"help"}, stdout: "supervisor COMMAND [flags] [args]"},
		{args: []string{"frob"}, code: 2, stderr: `unknown command "frob"`},
		{args: []string{"run", "--help"}, stdout: "Usage: supervisor run [flags] JOB.yaml"},
		{args: []string{"run"}, code: 2, stderr: "want one job file, got 0 arguments"},
		{args: []string{"run", "a.yaml", "b.yaml"}, code: 2, stderr: "want one job file, got 2 arguments"},
		{args: []string{"run", "--frob", "a.yaml"}, code: 2, stderr: "flag provided but not defined: -frob"},
		{args: []string{"run", "--log-level", "loud", "a.yaml"}, code: 2, stderr: `unknown level "loud"`},
		{args: []string{"run", "/nonexistent/job.yaml"}, code: 1, stderr: "open job file"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runCLI(t, tc.args...)
			if r.code != tc.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", r.code, tc.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, tc.stdout) {
				t.Errorf("stdout %q does not contain %q", r.stdout, tc.stdout)
			}
			if !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tc.stderr)
			}
		})
	}
}

func TestBadJobFileNamesTheField(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "job.yaml")
	if err := os.WriteFile(file, []byte("id: x\nsource: {type: synthetic, count: 0}\ntarget: {type: jsonl, path: t.jsonl}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "run", file)
	if r.code != 1 || !strings.Contains(r.stderr, "source.count") {
		t.Errorf("got exit %d, stderr %q; want 1 and the bad field named", r.code, r.stderr)
	}
}

// writeJob writes a job file for count synthetic items into a jsonl
// target, in its own directory, and returns its path.
func writeJob(t *testing.T, count int, extra string) string {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "job.yaml")
	body := fmt.Sprintf(`id: e2e
state_dir: ./state
source: {type: synthetic, count: %d, seed: 1}
target: {type: jsonl, path: ./target.jsonl}
batch_size: 500
%s`, count, extra)
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// checkExactlyOnce reads the jsonl target (the last line of an item_id
// wins) and checks that every source item 1..count is there once.
func checkExactlyOnce(t *testing.T, jobFile string, count int) {
	t.Helper()
	f, err := os.Open(filepath.Join(filepath.Dir(jobFile), "target.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	last := map[int64]string{} // item_id -> external_id
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			ItemID     int64           `json:"item_id"`
			ExternalID string          `json:"external_id"`
			Fields     json.RawMessage `json:"fields"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("target line %q: %v", sc.Text(), err)
		}
		last[l.ItemID] = l.ExternalID
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, ext := range last {
		seen[ext]++
	}
	missing, dup := 0, 0
	for i := 1; i <= count; i++ {
		switch seen[fmt.Sprint(i)] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	if missing != 0 || dup != 0 || len(seen) != count {
		t.Errorf("target: %d items missing, %d duplicated, %d distinct external ids; want each of %d once", missing, dup, len(seen), count)
	}
}

func readSummary(t *testing.T, path string) supervise.Summary {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatalf("summary %s: %v", data, err)
	}
	for _, k := range []string{"status", "items", "restarts", "gc_requests", "peak_rss_bytes", "budget_bytes", "duration_s"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("summary has no %q: %s", k, data)
		}
	}
	var s supervise.Summary
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// superviseJob runs `supervisor run JOB --summary` to its end.
func superviseJob(t *testing.T, jobFile string) (result, supervise.Summary) {
	t.Helper()
	sumFile := filepath.Join(t.TempDir(), "summary.json")
	r := runCLI(t, "run", jobFile, "--summary", sumFile)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("supervisor stderr:\n%s", r.stderr)
		}
	})
	return r, readSummary(t, sumFile)
}

func TestRunScenarios(t *testing.T) {
	const n = 20000
	for _, tc := range []struct {
		name  string
		extra string
		check func(t *testing.T, s supervise.Summary)
	}{
		// About 20 MB/s of leak, against a policy quick enough to drain
		// the runner well before the kill ceiling.
		{"leak is restarted gracefully and completes", `memory: {limit: 128MiB, warning_percent: 60, critical_percent: 70, kill_percent: 95,
  sample_interval: 100ms, gc_cooldown: 300ms, critical_samples: 2}
inject: {leak_bytes_per_item: 4KB, slow_batch: 100ms}
`, func(t *testing.T, s supervise.Summary) {
			if s.Restarts.Graceful < 1 || s.Restarts.Crash != 0 || s.Restarts.Hang != 0 {
				t.Errorf("restarts: %+v, want graceful ones", s.Restarts)
			}
			if s.PeakRSSBytes >= s.BudgetBytes {
				t.Errorf("peak RSS %d over the budget %d", s.PeakRSSBytes, s.BudgetBytes)
			}
		}},
		// gc_percent 99 keeps the batcher's periodic GC out of the way. The
		// spike crosses the guard's GC and drain lines (170 and 180 MiB);
		// one collection cures it, either the runner's guard or the
		// supervisor's request, whichever comes first, and no runner is
		// restarted for it.
		{"spike is cured by one GC", `memory: {limit: 200MiB, gc_percent: 99}
inject: {spike_bytes: 160MiB, spike_at_item: 5000, slow_batch: 20ms}
`, func(t *testing.T, s supervise.Summary) {
			if s.GCRequests > 1 || s.Restarts.Total() != 0 {
				t.Errorf("gc_requests %d, restarts %+v; want at most one GC request and no restart", s.GCRequests, s.Restarts)
			}
		}},
		{"crash resumes from the checkpoint", `inject: {crash_at_item: 5000, slow_batch: 5ms}
`, func(t *testing.T, s supervise.Summary) {
			if s.Restarts != (supervise.Restarts{Crash: 1}) {
				t.Errorf("restarts: %+v, want one crash", s.Restarts)
			}
		}},
		{"hang is killed after the deadline and resumes", `memory: {rpc_timeout: 1s}
inject: {hang_at_item: 5000, slow_batch: 5ms}
`, func(t *testing.T, s supervise.Summary) {
			if s.Restarts != (supervise.Restarts{Hang: 1}) {
				t.Errorf("restarts: %+v, want one hang", s.Restarts)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := writeJob(t, n, tc.extra)
			r, s := superviseJob(t, file)
			if r.code != 0 || s.Status != supervise.StatusCompleted {
				t.Fatalf("exit %d, summary %+v; want 0 and completed", r.code, s)
			}
			if s.Items.Created != n || s.Processed != n || s.BudgetBytes == 0 || s.PeakRSSBytes == 0 {
				t.Errorf("summary: %+v", s)
			}
			if !strings.Contains(r.stdout, fmt.Sprintf("job e2e completed: %d items", n)) {
				t.Errorf("stdout: %q", r.stdout)
			}
			tc.check(t, s)
			checkExactlyOnce(t, file, n)

			// Running a finished job again changes nothing.
			r2, s2 := superviseJob(t, file)
			if r2.code != 0 || s2.Status != supervise.StatusCompleted {
				t.Errorf("second run: exit %d, %+v", r2.code, s2)
			}
			checkExactlyOnce(t, file, n)
		})
	}
}

func TestRunCrashLoopFailsWithReason(t *testing.T) {
	file := writeJob(t, 1000, `memory: {restart_budget: {max: 2, window: 1m}}
inject: {crash_on_start: true}
`)
	r, s := superviseJob(t, file)
	if r.code != 1 || s.Status != supervise.StatusFailed || s.Restarts.Crash != 2 {
		t.Fatalf("exit %d, summary %+v; want 1, failed after 2 crash restarts", r.code, s)
	}
	want := "runner failed 3 times in 1m0s without committing a checkpoint"
	if !strings.Contains(s.Reason, want) || !strings.Contains(r.stderr, "job e2e failed: "+want) {
		t.Errorf("reason %q, stderr tail %q; want %q", s.Reason, tail(r.stderr), want)
	}
}

func tail(s string) string {
	if len(s) > 400 {
		return s[len(s)-400:]
	}
	return s
}

// startRun starts `supervisor run` without waiting for it.
func startRun(t *testing.T, jobFile, sumFile string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(supervisor(t), "run", jobFile, "--summary", sumFile)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, &errb
}

func waitTargetLines(t *testing.T, jobFile string, n int) {
	t.Helper()
	path := filepath.Join(filepath.Dir(jobFile), "target.jsonl")
	deadline := time.Now().Add(60 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		if bytes.Count(data, []byte("\n")) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("target has %d lines after 60s, want %d", bytes.Count(data, []byte("\n")), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const slowJob = `inject: {slow_batch: 50ms}
`

func TestSIGTERMDrainsAndRunAgainResumes(t *testing.T) {
	const n = 20000
	file := writeJob(t, n, slowJob)
	sumFile := filepath.Join(t.TempDir(), "summary.json")
	cmd, stderr := startRun(t, file, sumFile)
	waitTargetLines(t, file, 2000)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("supervisor after SIGTERM: %v, want exit 0\n%s", err, tail(stderr.String()))
	}
	s := readSummary(t, sumFile)
	if s.Status != supervise.StatusPaused || s.Processed < 2000 || s.Processed >= n {
		t.Fatalf("summary after SIGTERM: %+v, want paused part way", s)
	}
	if !strings.Contains(stderr.String(), "run the same command again to resume") {
		t.Errorf("stderr does not say how to resume: %q", tail(stderr.String()))
	}
	r, s2 := superviseJob(t, file)
	if r.code != 0 || s2.Status != supervise.StatusCompleted || s2.Processed != n {
		t.Fatalf("second run: exit %d, %+v", r.code, s2)
	}
	checkExactlyOnce(t, file, n)
}

func TestSIGKILLThenRunAgainResumes(t *testing.T) {
	const n = 20000
	file := writeJob(t, n, slowJob)
	cmd, _ := startRun(t, file, filepath.Join(t.TempDir(), "summary.json"))
	waitTargetLines(t, file, 2000)
	pidData, err := os.ReadFile(filepath.Join(filepath.Dir(file), "state", "e2e", supervise.PIDFile))
	if err != nil {
		t.Fatal(err)
	}
	var runnerPID int
	fmt.Sscan(string(pidData), &runnerPID)
	t.Cleanup(func() { _ = syscall.Kill(runnerPID, syscall.SIGKILL) })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	r, s := superviseJob(t, file)
	if r.code != 0 || s.Status != supervise.StatusCompleted || s.Processed != n {
		t.Fatalf("run after SIGKILL: exit %d, %+v", r.code, s)
	}
	// The orphaned runner either died by itself (its stderr pipe broke)
	// or was reaped by the second supervisor; either way it is gone, and
	// the reaping, if any, was logged.
	if err := syscall.Kill(runnerPID, 0); err == nil {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", runnerPID))
		if !strings.Contains(string(stat), ") Z ") {
			t.Errorf("orphaned runner %d still alive", runnerPID)
		}
	}
	t.Logf("reaped: %v", strings.Contains(r.stderr, "killed the runner a previous supervisor left behind"))
	checkExactlyOnce(t, file, n)
}
