package supervise_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/supervise"
)

const jobEnv = "MEMVISOR_SUPERVISE_TEST_JOB"

// supervisorMain is the test binary as a supervisor process, for the
// tests that signal or kill one: it supervises the job in the JSON file
// named by $MEMVISOR_SUPERVISE_TEST_JOB, drains on SIGTERM or SIGINT, and
// prints the summary on stdout.
func supervisorMain() int {
	data, err := os.ReadFile(os.Getenv(jobEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	spec, err := job.ParseJSON(data)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	sup, err := supervise.New(spec, supervise.Options{
		RunnerPath:  exe,
		Env:         runnerEnv(),
		Logger:      zerolog.New(os.Stderr),
		BudgetBytes: 512 * mib,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	sum, err := sup.Run(ctx, supervise.StartMode{Resume: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(sum); err != nil {
		return 2
	}
	if sum.Status == supervise.StatusFailed {
		return 1
	}
	return 0
}

// startSupervisorProcess runs the test binary as a supervisor of spec.
func startSupervisorProcess(t testing.TB, spec job.Spec) (*exec.Cmd, *bytes.Buffer, *syncBuffer) {
	t.Helper()
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "job.json")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=supervisor", jobEnv+"="+file)
	stdout, stderr := &bytes.Buffer{}, &syncBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("supervisor process stderr:\n%s", stderr.String())
		}
	})
	return cmd, stdout, stderr
}

// checkpointOffset reads the fake runner's committed offset.
func checkpointOffset(spec job.Spec) int64 {
	data, err := os.ReadFile(filepath.Join(spec.Dir(), "fake-checkpoint"))
	if err != nil {
		return 0
	}
	var cp struct {
		Offset int64 `json:"offset"`
	}
	_ = json.Unmarshal(data, &cp)
	return cp.Offset
}

func waitCheckpoint(t testing.TB, spec job.Spec, n int64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for checkpointOffset(spec) < n {
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint at %d after 60s, want %d", checkpointOffset(spec), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readRunnerPID(t testing.TB, spec job.Spec) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(spec.Dir(), supervise.PIDFile))
	if err != nil {
		t.Fatalf("read runner pidfile: %v", err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(data))[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// processGone reports whether pid is gone or a zombie.
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func TestSIGTERMDrainsAndExitsZero(t *testing.T) {
	spec := slowJob(t)
	cmd, stdout, _ := startSupervisorProcess(t, spec)
	waitCheckpoint(t, spec, 50)
	runner := readRunnerPID(t, spec)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("supervisor after SIGTERM: %v, want exit status 0", err)
	}
	var sum supervise.Summary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		t.Fatalf("summary %q: %v", stdout.String(), err)
	}
	if sum.Status != supervise.StatusPaused || sum.Processed < 50 || sum.Processed >= 400 {
		t.Errorf("summary after SIGTERM: %+v, want paused part way", sum)
	}
	if got := checkpointOffset(spec); got != sum.Processed {
		t.Errorf("checkpoint at %d, summary says %d: the drain did not commit what it reported", got, sum.Processed)
	}
	if !processGone(runner) {
		t.Errorf("runner %d still alive after the supervisor exited", runner)
	}
	h := newHarness(t, spec, 512*mib)
	if sum := h.run(t, t.Context(), supervise.StartMode{Resume: true}); sum.Status != supervise.StatusCompleted {
		t.Fatalf("second run: %+v", sum)
	}
	checkExactlyOnce(t, spec)
}

func TestSIGKILLedSupervisorsOrphanIsReaped(t *testing.T) {
	spec := slowJob(t)
	cmd, _, _ := startSupervisorProcess(t, spec)
	waitCheckpoint(t, spec, 50)
	orphan := readRunnerPID(t, spec)
	t.Cleanup(func() { _ = syscall.Kill(orphan, syscall.SIGKILL) })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	time.Sleep(100 * time.Millisecond)
	if processGone(orphan) {
		t.Fatalf("runner %d died with its supervisor; nothing to reap", orphan)
	}
	h := newHarness(t, spec, 512*mib)
	sum := h.run(t, t.Context(), supervise.StartMode{Resume: true})
	if sum.Status != supervise.StatusCompleted {
		t.Fatalf("second run: %+v", sum)
	}
	if !processGone(orphan) {
		t.Errorf("orphaned runner %d still alive", orphan)
	}
	lines := h.logs.messages(t, "killed the runner a previous supervisor left behind")
	if len(lines) != 1 || lines[0]["orphan_pid"] != float64(orphan) {
		t.Errorf("reap log lines: %v, want one naming pid %d", lines, orphan)
	}
	checkExactlyOnce(t, spec)
}

func TestPidfileOfAnotherProgramIsLeftAlone(t *testing.T) {
	spec := newSpec(t, 20, 10, nil)
	sleeper := exec.Command("sleep", "30")
	if err := sleeper.Start(); err != nil {
		t.Skipf("no sleep(1): %v", err)
	}
	t.Cleanup(func() {
		_ = sleeper.Process.Kill()
		_ = sleeper.Wait()
	})
	if err := os.MkdirAll(spec.Dir(), 0o755); err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(spec.Dir(), supervise.PIDFile)
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(sleeper.Process.Pid)+" 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, spec, 512*mib)
	if sum := h.run(t, t.Context(), supervise.StartMode{}); sum.Status != supervise.StatusCompleted {
		t.Fatalf("run: %+v", sum)
	}
	if processGone(sleeper.Process.Pid) {
		t.Error("the supervisor killed a process that was not its runner")
	}
	if n := len(h.logs.messages(t, "killed the runner a previous supervisor left behind")); n != 0 {
		t.Errorf("%d reap lines, want 0", n)
	}
}
