package supervise_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/memvisor/memvisor/internal/logkey"
	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/supervise"
	"github.com/memvisor/memvisor/plugin"
)

// helperEnv makes the test binary a fake runner ("runner") or a
// supervisor process ("supervisor"), as os/exec's tests do.
const helperEnv = "MEMVISOR_SUPERVISE_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "runner":
		log := plugin.NewRunnerLogger(os.Stderr).Level(zerolog.InfoLevel)
		plugin.Serve(newFakeRunner(log))
		os.Exit(0)
	case "supervisor":
		os.Exit(supervisorMain())
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		testbin.Cleanup()
		os.Exit(code)
	}))
}

const mib = 1 << 20

// newSpec returns a job of count items for the fake runner, with a quick
// memory policy, in its own state directory.
func newSpec(t testing.TB, count int64, batch int, mutate func(*job.Spec)) job.Spec {
	t.Helper()
	s := job.Default()
	s.ID = "fake-job"
	s.StateDir = t.TempDir()
	s.Source = job.Endpoint{Type: job.TypeSynthetic, Count: count, Seed: 1}
	s.Target = job.Endpoint{Type: job.TypeJSONL, Path: filepath.Join(s.StateDir, "target.jsonl")}
	s.BatchSize = batch
	s.Memory.SampleInterval = job.Duration(50 * time.Millisecond)
	s.Memory.RPCTimeout = job.Duration(3 * time.Second)
	s.Memory.DrainTimeout = job.Duration(10 * time.Second)
	s.Memory.GCCooldown = job.Duration(200 * time.Millisecond)
	s.Memory.CriticalSamples = 2
	if mutate != nil {
		mutate(&s)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

// syncBuffer collects log lines written from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// messages returns the log lines with message msg.
func (b *syncBuffer) messages(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(b.String(), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// events records a supervisor's events.
type events struct {
	mu  sync.Mutex
	all []supervise.Event
}

func (e *events) add(ev supervise.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

func (e *events) count(kind supervise.EventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.all {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

func (e *events) of(kind supervise.EventKind) []supervise.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []supervise.Event
	for _, ev := range e.all {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

type harness struct {
	sup    *supervise.Supervisor
	logs   *syncBuffer
	events *events
}

func runnerEnv() []string {
	return append(os.Environ(), helperEnv+"=runner")
}

func newHarness(t *testing.T, spec job.Spec, budget uint64) *harness {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{logs: &syncBuffer{}, events: &events{}}
	h.sup, err = supervise.New(spec, supervise.Options{
		RunnerPath:  exe,
		Env:         runnerEnv(),
		Logger:      zerolog.New(h.logs),
		OnEvent:     h.events.add,
		BudgetBytes: budget,
		Backoff:     supervise.BackoffConfig{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("supervisor log:\n%s", h.logs.String())
		}
	})
	return h
}

func (h *harness) run(t *testing.T, ctx context.Context, mode supervise.StartMode) supervise.Summary {
	t.Helper()
	sum, err := h.sup.Run(ctx, mode)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return sum
}

// checkExactlyOnce reads the fake runner's output and checks that every
// item of 0..count-1 is there once.
func checkExactlyOnce(t *testing.T, spec job.Spec) {
	t.Helper()
	f, err := os.Open(filepath.Join(spec.Dir(), "fake-output"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := make(map[int64]int)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n, err := strconv.ParseInt(sc.Text(), 10, 64)
		if err != nil {
			t.Fatalf("bad output line %q", sc.Text())
		}
		seen[n]++
	}
	var missing, dup int
	for i := range spec.Source.Count {
		switch seen[i] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	if missing != 0 || dup != 0 || len(seen) != int(spec.Source.Count) {
		t.Errorf("output: %d items missing, %d duplicated, %d distinct, want each of %d once", missing, dup, len(seen), spec.Source.Count)
	}
}

func TestCompletes(t *testing.T) {
	spec := newSpec(t, 200, 20, func(s *job.Spec) { s.Inject.SlowBatch = job.Duration(50 * time.Millisecond) })
	h := newHarness(t, spec, 512*mib)
	sum := h.run(t, t.Context(), supervise.StartMode{})
	if sum.Status != supervise.StatusCompleted || sum.Reason != "" {
		t.Fatalf("summary: got %+v, want completed", sum)
	}
	if sum.Items.Created != 200 || sum.Processed != 200 || sum.Restarts.Total() != 0 || sum.BudgetBytes != 512*mib {
		t.Errorf("summary: got %+v", sum)
	}
	if sum.PeakRSSBytes == 0 || sum.DurationS <= 0 {
		t.Errorf("summary: peak RSS %d, duration %v", sum.PeakRSSBytes, sum.DurationS)
	}
	checkExactlyOnce(t, spec)
	st := h.sup.Status()
	if st.State != supervise.StatusCompleted || st.RunnerPID != 0 || st.Progress.Processed != 200 {
		t.Errorf("status after Run: %+v", st)
	}
	if n := h.events.count(supervise.EventDone); n != 1 {
		t.Errorf("done events: %d, want 1", n)
	}
	if h.events.count(supervise.EventProgress) == 0 || h.events.count(supervise.EventMemory) == 0 {
		t.Error("no progress or memory events")
	}
	if _, err := os.Stat(filepath.Join(spec.Dir(), supervise.PIDFile)); !os.IsNotExist(err) {
		t.Errorf("runner.pid left behind: %v", err)
	}
	t.Logf("peak RSS of the fake runner: %.1f MiB", float64(sum.PeakRSSBytes)/mib)

	// The job is done: running it again is a no-op that completes.
	h2 := newHarness(t, spec, 512*mib)
	if sum := h2.run(t, t.Context(), supervise.StartMode{Resume: true}); sum.Status != supervise.StatusCompleted {
		t.Errorf("second run: got %+v", sum)
	}
	checkExactlyOnce(t, spec)
	if _, err := h.sup.Run(t.Context(), supervise.StartMode{}); !errors.Is(err, supervise.ErrAlreadyRun) {
		t.Errorf("second Run on one supervisor: got %v, want ErrAlreadyRun", err)
	}
}

// tightMemory is a policy for a 200 MiB budget with room between
// critical (140 MiB) and the kill ceiling (198 MiB), so that a leak of
// about 50 MB/s is drained gracefully rather than killed.
func tightMemory(s *job.Spec) {
	s.Memory.WarningPercent = 60
	s.Memory.CriticalPercent = 70
	s.Memory.KillPercent = 99
}

func TestLeakRestartsGracefully(t *testing.T) {
	spec := newSpec(t, 250, 5, func(s *job.Spec) {
		tightMemory(s)
		s.Inject.LeakBytesPerItem = 1 * mib
		s.Inject.SlowBatch = job.Duration(100 * time.Millisecond)
	})
	h := newHarness(t, spec, 200*mib)
	sum := h.run(t, t.Context(), supervise.StartMode{})
	if sum.Status != supervise.StatusCompleted {
		t.Fatalf("summary: got %+v, want completed", sum)
	}
	checkExactlyOnce(t, spec)
	t.Logf("leak: %+v", sum)
	r := sum.Restarts
	if r.Graceful < 1 || r.Crash != 0 || r.Hang != 0 || r.Kill != 0 {
		t.Errorf("restarts: got %+v, want graceful ones only", r)
	}
	if kill := uint64(float64(200*mib) * 0.99); sum.PeakRSSBytes >= kill {
		t.Errorf("peak RSS %d reached the kill ceiling %d", sum.PeakRSSBytes, kill)
	}
	restarts := h.events.of(supervise.EventRestart)
	// Either rule may drain a leak first: the growth projection, or
	// critical samples after a GC request.
	if len(restarts) != r.Graceful || restarts[0].RestartKind != supervise.RestartGraceful ||
		!(strings.Contains(restarts[0].Reason, "after a GC request") || strings.Contains(restarts[0].Reason, "climbing") ||
			restarts[0].Reason == string(plugin.DrainGuard)) {
		t.Errorf("restart events: got %+v", restarts)
	}
	if h.events.count(supervise.EventLevel) < 1 {
		t.Errorf("events: %d level", h.events.count(supervise.EventLevel))
	}
	// One log line per level change and restart, with the memory fields
	// of internal/logkey and a reason.
	for _, msg := range []string{"memory level warning", "restarting runner from its checkpoint"} {
		lines := h.logs.messages(t, msg)
		if len(lines) == 0 {
			t.Errorf("no log line %q", msg)
			continue
		}
		l := lines[0]
		for _, k := range []string{logkey.Context, logkey.HeapObjectsMB, logkey.TotalMappedMB, logkey.UsagePercent, logkey.RSSMB, logkey.BudgetMB, logkey.Reason} {
			if _, ok := l[k]; !ok {
				t.Errorf("log line %q has no %s: %v", msg, k, l)
			}
		}
	}
	if l := h.logs.messages(t, "memory level warning"); len(l) > 0 {
		if pct, _ := l[0][logkey.UsagePercent].(float64); pct < 60 || pct >= 99 {
			t.Errorf("%s on entering warning: %v, want between 60 and 99 (against the budget)", logkey.UsagePercent, l[0][logkey.UsagePercent])
		}
	}
}

// TestGuardDrainIsAGracefulRestart: a runner whose own memory guard
// drains it is restarted from its checkpoint and counted as a graceful
// restart with the reason "memory guard". The supervisor's own policy
// samples too seldom here to act first.
func TestGuardDrainIsAGracefulRestart(t *testing.T) {
	spec := newSpec(t, 250, 5, func(s *job.Spec) {
		tightMemory(s)
		s.Inject.LeakBytesPerItem = 1 * mib
		s.Inject.SlowBatch = job.Duration(50 * time.Millisecond)
		s.Memory.SampleInterval = job.Duration(5 * time.Second)
	})
	h := newHarness(t, spec, 200*mib)
	sum := h.run(t, t.Context(), supervise.StartMode{})
	if sum.Status != supervise.StatusCompleted {
		t.Fatalf("summary: got %+v, want completed", sum)
	}
	checkExactlyOnce(t, spec)
	r := sum.Restarts
	if r.Graceful < 1 || r.Crash+r.Hang+r.Kill != 0 {
		t.Errorf("restarts: got %+v, want graceful ones only", r)
	}
	for _, ev := range h.events.of(supervise.EventRestart) {
		if ev.RestartKind != supervise.RestartGraceful || ev.Reason != "memory guard" {
			t.Errorf("restart event: kind %s reason %q, want graceful with reason %q", ev.RestartKind, ev.Reason, "memory guard")
		}
	}
	lines := h.logs.messages(t, "runner started")
	if len(lines) < 2 {
		t.Fatalf("got %d runner starts, want at least 2", len(lines))
	}
	// Every Start carries the guard lines: GC at critical (70% of 200 MiB),
	// drain halfway to kill (84.5%).
	for _, l := range lines {
		if l[logkey.GuardGCMB] != 140.0 || l[logkey.GuardDrainMB] != 169.0 {
			t.Errorf("runner started with guard %v/%v MB, want 140/169", l[logkey.GuardGCMB], l[logkey.GuardDrainMB])
		}
	}
	if got := h.logs.messages(t, "the runner drained itself"); len(got) != r.Graceful {
		t.Errorf("got %d lines %q, want one per graceful restart (%d)", len(got), "the runner drained itself", r.Graceful)
	}
}

func TestSpikeCuredByOneGC(t *testing.T) {
	spec := newSpec(t, 150, 10, func(s *job.Spec) {
		tightMemory(s)
		s.Inject.SpikeBytes = 135 * mib // above critical (140 MiB) with or without the race detector's overhead
		s.Inject.SpikeAtItem = 50
		s.Inject.SlowBatch = job.Duration(60 * time.Millisecond)
		// The spike's pages fill in one call, which a loaded machine can
		// stretch over 150ms: at the default interval that is still one
		// step, not the steady climb of three intervals that the growth
		// projection drains for.
		s.Memory.SampleInterval = job.Duration(250 * time.Millisecond)
	})
	h := newHarness(t, spec, 200*mib)
	sum := h.run(t, t.Context(), supervise.StartMode{})
	if sum.Status != supervise.StatusCompleted || sum.GCRequests != 1 || sum.Restarts.Total() != 0 {
		t.Fatalf("summary: got %+v, want completed after one GC request and no restart", sum)
	}
	checkExactlyOnce(t, spec)
	var answered *plugin.GCResult
	for _, ev := range h.events.of(supervise.EventGC) {
		if ev.GC != nil {
			answered = ev.GC
		}
	}
	if answered == nil {
		t.Fatal("no GC answer among the events")
	}
	if answered.After.RSSBytes+100*mib > answered.Before.RSSBytes {
		t.Errorf("GC freed too little: RSS %d before, %d after", answered.Before.RSSBytes, answered.After.RSSBytes)
	}
	if sum.PeakRSSBytes < 140*mib {
		t.Errorf("peak RSS %d: the spike never reached critical", sum.PeakRSSBytes)
	}
}

func TestCrashResumesFromCheckpoint(t *testing.T) {
	spec := newSpec(t, 200, 10, func(s *job.Spec) {
		s.Inject.CrashAtItem = 57
		s.Inject.SlowBatch = job.Duration(20 * time.Millisecond)
	})
	h := newHarness(t, spec, 512*mib)
	sum := h.run(t, t.Context(), supervise.StartMode{})
	if sum.Status != supervise.StatusCompleted || sum.Restarts != (supervise.Restarts{Crash: 1}) {
		t.Fatalf("summary: got %+v, want completed after one crash restart", sum)
	}
	checkExactlyOnce(t, spec)
	if st := h.sup.Status(); !strings.Contains(st.LastError, "exit status 2") {
		t.Errorf("last error: got %q, want the exit status", st.LastError)
	}
	if ev := h.events.of(supervise.EventRestart); len(ev) != 1 || ev[0].RestartKind != supervise.RestartCrash {
		t.Errorf("restart events: %+v", ev)
	}
}

func TestHangKilledAndResumed(t *testing.T) {
	spec := newSpec(t, 200, 10, func(s *job.Spec) {
		s.Inject.HangAtItem = 57
		s.Inject.SlowBatch = job.Duration(20 * time.Millisecond)
		s.Memory.RPCTimeout = job.Duration(500 * time.Millisecond)
	})
	h := newHarness(t, spec, 512*mib)
	start := time.Now()
	sum := h.run(t, t.Context(), supervise.StartMode{})
	if sum.Status != supervise.StatusCompleted || sum.Restarts != (supervise.Restarts{Hang: 1}) {
		t.Fatalf("summary: got %+v, want completed after one hang restart", sum)
	}
	checkExactlyOnce(t, spec)
	ev := h.events.of(supervise.EventRestart)
	if len(ev) != 1 || ev[0].Reason != "runner did not answer Stats within 500ms" {
		t.Errorf("restart events: %+v", ev)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestCrashLoopSpendsTheBudget(t *testing.T) {
	spec := newSpec(t, 100, 10, func(s *job.Spec) {
		s.Inject.CrashOnStart = true
		s.Memory.RestartBudget = job.RestartBudget{Max: 2, Window: job.Duration(time.Minute)}
	})
	h := newHarness(t, spec, 512*mib)
	sum := h.run(t, t.Context(), supervise.StartMode{})
	if sum.Status != supervise.StatusFailed || sum.Restarts != (supervise.Restarts{Crash: 2}) {
		t.Fatalf("summary: got %+v, want failed after two crash restarts", sum)
	}
	for _, want := range []string{
		"runner failed 3 times in 1m0s without committing a checkpoint (restart_budget.max is 2)",
		"last error: runner exited before it answered Start: exit status 3",
	} {
		if !strings.Contains(sum.Reason, want) {
			t.Errorf("reason %q does not say %q", sum.Reason, want)
		}
	}
	if st := h.sup.Status(); st.State != supervise.StatusFailed || st.LastError != sum.Reason {
		t.Errorf("status: %+v", st)
	}
	if err := h.sup.Pause(t.Context()); !errors.Is(err, supervise.ErrNotRunning) {
		t.Errorf("Pause after the end: got %v, want ErrNotRunning", err)
	}
}

// waitProcessed waits until the job has processed at least n items.
func waitProcessed(t *testing.T, sup *supervise.Supervisor, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for sup.Status().Progress.Processed < n {
		if time.Now().After(deadline) {
			t.Fatalf("processed %d after 30s, want %d", sup.Status().Progress.Processed, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func slowJob(t *testing.T) job.Spec {
	return newSpec(t, 400, 10, func(s *job.Spec) { s.Inject.SlowBatch = job.Duration(50 * time.Millisecond) })
}

func TestPauseThenResume(t *testing.T) {
	spec := slowJob(t)
	h := newHarness(t, spec, 512*mib)
	type result struct {
		sum supervise.Summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := h.sup.Run(t.Context(), supervise.StartMode{})
		done <- result{sum, err}
	}()
	waitProcessed(t, h.sup, 50)
	checkRunning(t, h.sup)
	if err := h.sup.Pause(t.Context()); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	res := <-done
	if res.err != nil || res.sum.Status != supervise.StatusPaused || res.sum.Processed >= 400 || res.sum.Processed < 50 {
		t.Fatalf("paused run: got %+v, %v", res.sum, res.err)
	}
	if res.sum.Restarts.Total() != 0 {
		t.Errorf("a pause is not a restart: %+v", res.sum.Restarts)
	}
	h2 := newHarness(t, spec, 512*mib)
	sum := h2.run(t, t.Context(), supervise.StartMode{Resume: true})
	if sum.Status != supervise.StatusCompleted || sum.Processed != 400 {
		t.Fatalf("resumed run: got %+v", sum)
	}
	checkExactlyOnce(t, spec)
}

func TestContextCancelDrains(t *testing.T) {
	spec := slowJob(t)
	h := newHarness(t, spec, 512*mib)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		waitProcessed(t, h.sup, 50)
		cancel()
	}()
	sum := h.run(t, ctx, supervise.StartMode{})
	if sum.Status != supervise.StatusPaused || sum.Processed < 50 || sum.Processed >= 400 {
		t.Fatalf("got %+v, want paused part way", sum)
	}
	h2 := newHarness(t, spec, 512*mib)
	if sum := h2.run(t, t.Context(), supervise.StartMode{Resume: true}); sum.Status != supervise.StatusCompleted {
		t.Fatalf("resumed run: got %+v", sum)
	}
	checkExactlyOnce(t, spec)
}

func TestCancel(t *testing.T) {
	spec := slowJob(t)
	h := newHarness(t, spec, 512*mib)
	done := make(chan supervise.Summary, 1)
	go func() {
		sum, _ := h.sup.Run(t.Context(), supervise.StartMode{})
		done <- sum
	}()
	waitProcessed(t, h.sup, 50)
	if err := h.sup.Cancel(t.Context()); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	sum := <-done
	if sum.Status != supervise.StatusCancelled || sum.Processed >= 400 {
		t.Fatalf("got %+v, want cancelled part way", sum)
	}
}

func TestOneSupervisorPerJob(t *testing.T) {
	spec := slowJob(t)
	h := newHarness(t, spec, 512*mib)
	done := make(chan supervise.Summary, 1)
	go func() {
		sum, _ := h.sup.Run(t.Context(), supervise.StartMode{})
		done <- sum
	}()
	waitProcessed(t, h.sup, 10)
	h2 := newHarness(t, spec, 512*mib)
	if _, err := h2.sup.Run(t.Context(), supervise.StartMode{Resume: true}); !errors.Is(err, supervise.ErrJobLocked) {
		t.Errorf("second supervisor: got %v, want ErrJobLocked", err)
	}
	if err := h.sup.Cancel(t.Context()); err != nil {
		t.Fatal(err)
	}
	<-done
}

// checkRunning checks what a running job shows: its runner, its memory
// and a heap profile fetched over the plugin RPC.
func checkRunning(t *testing.T, sup *supervise.Supervisor) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for sup.Status().Memory.RSS == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	st := sup.Status()
	if st.State != supervise.StateRunning || st.RunnerPID <= 0 || st.Memory.RSS == 0 || st.Memory.Budget != 512*mib ||
		st.Memory.Level != supervise.LevelOK || st.Started.IsZero() || st.Memory.CriticalBytes != 512*mib*85/100 {
		t.Errorf("status while running: %+v", st)
	}
	prof, err := sup.HeapProfile(t.Context())
	if err != nil || len(prof) < 2 || prof[0] != 0x1f || prof[1] != 0x8b {
		t.Errorf("HeapProfile: %d bytes, %v; want a gzipped profile", len(prof), err)
	}
}

func TestAbortKillsWithoutDrain(t *testing.T) {
	spec := newSpec(t, 400, 10, func(s *job.Spec) {
		s.Inject.SlowBatch = job.Duration(50 * time.Millisecond)
		s.Inject.SlowDrain = job.Duration(time.Minute) // a drain would take a minute
	})
	h := newHarness(t, spec, 512*mib)
	done := make(chan supervise.Summary, 1)
	go func() {
		sum, _ := h.sup.Run(t.Context(), supervise.StartMode{})
		done <- sum
	}()
	waitProcessed(t, h.sup, 50)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if err := h.sup.Pause(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Pause with a minute-long drain: got %v, want the caller's deadline", err)
	}
	start := time.Now()
	h.sup.Abort()
	sum := <-done
	if sum.Status != supervise.StatusPaused || !strings.HasPrefix(sum.Reason, "aborted") {
		t.Fatalf("got %+v, want paused by the abort", sum)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("abort took %v", d)
	}
	h2 := newHarness(t, spec, 512*mib)
	if sum := h2.run(t, t.Context(), supervise.StartMode{Resume: true}); sum.Status != supervise.StatusCompleted {
		t.Fatalf("resumed run: %+v", sum)
	}
	checkExactlyOnce(t, spec)
}
