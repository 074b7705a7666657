package plugin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/plugin"
)

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

// lines returns the JSON log lines written so far.
func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// find waits up to 10 s for a log line with the message msg.
func (b *syncBuffer) find(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range b.lines(t) {
			if l["message"] == msg {
				return l
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no log line %q in:\n%s", msg, b.buf.String())
	return nil
}

func startFake(t *testing.T, ctx context.Context, mode string, logs *syncBuffer, env []string) (*plugin.Client, error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if env == nil {
		env = plugin.SanitizeEnv(os.Environ(), 0)
	}
	env = append(env, helperEnv+"="+mode)
	c, err := plugin.Start(ctx, plugin.ClientOptions{
		Path:         exe,
		Env:          env,
		Logger:       zerolog.New(logs).With().Str("job_id", "job-under-test").Logger(),
		StartTimeout: 30 * time.Second,
	})
	if err == nil {
		t.Cleanup(c.KillNow)
	}
	return c, err
}

func mustStart(t *testing.T, mode string, logs *syncBuffer, env []string) *plugin.Client {
	t.Helper()
	c, err := startFake(t, t.Context(), mode, logs, env)
	if err != nil {
		t.Fatalf("start fake runner %s: %v", mode, err)
	}
	return c
}

func TestRoundTrip(t *testing.T) {
	logs := &syncBuffer{}
	c := mustStart(t, "normal", logs, nil)
	r := c.Runner()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	if c.PID() <= 0 || c.PID() == os.Getpid() {
		t.Fatalf("PID() = %d, want the runner's own pid", c.PID())
	}
	if _, err := r.Stats(ctx); !errors.Is(err, plugin.ErrNotStarted) {
		t.Fatalf("Stats before Start: got %v, want ErrNotStarted", err)
	}
	err := r.Start(ctx, plugin.StartRequest{Job: []byte(`{"id":"a"}`)})
	if !errors.Is(err, plugin.ErrCheckpointExists) {
		t.Fatalf("Start without resume: got %v, want ErrCheckpointExists", err)
	}
	if !strings.Contains(err.Error(), `read checkpoint of {"id":"a"}`) {
		t.Errorf("Start without resume: error %q lost the runner's message", err)
	}
	if err := r.Start(ctx, plugin.StartRequest{Job: []byte(`{"id":"a"}`), Resume: true, RetryFailed: true}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := r.Start(ctx, plugin.StartRequest{Job: []byte(`{}`), Resume: true}); !errors.Is(err, plugin.ErrAlreadyStarted) {
		t.Fatalf("second Start: got %v, want ErrAlreadyStarted", err)
	}

	st, err := r.Stats(ctx)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	want := plugin.Stats{
		State: plugin.StateRunning, PID: c.PID(),
		RSSBytes: 11 << 20, HeapObjectsBytes: 5 << 20, HeapGoalBytes: fakeHeapGoal, TotalMappedBytes: 20 << 20,
		GCCount: 7, GCCPUFraction: 0.01, CacheEntries: 1234, CacheBytes: 56789,
		Progress: fakeProgress,
	}
	if !reflect.DeepEqual(st, want) {
		t.Errorf("Stats:\n got %+v\nwant %+v", st, want)
	}

	gc, err := r.GC(ctx)
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if gc.Before.TotalMappedBytes == 0 || gc.After.TotalMappedBytes == 0 || gc.Duration <= 0 {
		t.Errorf("GC: got %+v, want before and after figures and a duration", gc)
	}

	deadline := time.Now().Add(7 * time.Second).Round(time.Microsecond)
	cp, err := r.Drain(ctx, deadline)
	if err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if cp.Offset != deadline.UnixNano() || cp.Batches != 3 || !reflect.DeepEqual(cp.Progress, fakeProgress) {
		t.Errorf("Drain: got %+v, want offset %d (the deadline), batches 3", cp, deadline.UnixNano())
	}

	if err := r.Cancel(ctx); !errors.Is(err, plugin.ErrFinished) {
		t.Errorf("Cancel: got %v, want ErrFinished", err)
	}

	var events []plugin.Event
	if err := r.Watch(ctx, func(ev plugin.Event) error {
		events = append(events, ev)
		return nil
	}); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if len(events) != 4 {
		t.Fatalf("Watch: got %d events, want 4: %+v", len(events), events)
	}
	for i, ev := range events[:3] {
		if ev.Kind != plugin.EventProgress || ev.Progress.Processed != int64(i+1)*10 || ev.State != plugin.StateRunning {
			t.Errorf("event %d: got %+v", i, ev)
		}
	}
	last := events[3]
	wantTime := time.Date(2030, 1, 1, 1, 0, 0, 0, time.UTC)
	if last.Kind != plugin.EventDone || last.State != plugin.StateCompleted || !last.Time.Equal(wantTime) || last.Error != "none" ||
		!reflect.DeepEqual(last.Progress, fakeProgress) {
		t.Errorf("done event: got %+v", last)
	}

	prof, err := r.HeapProfile(ctx)
	if err != nil {
		t.Fatalf("HeapProfile: %v", err)
	}
	if len(prof) < 2 || prof[0] != 0x1f || prof[1] != 0x8b {
		t.Errorf("HeapProfile: got %d bytes, want a gzipped pprof profile", len(prof))
	}

	if n := c.StdoutBytes(); n != 0 {
		t.Errorf("runner wrote %d bytes to stdout, want 0", n)
	}
	if c.Exited() {
		t.Fatal("Exited() before Kill")
	}
	c.Kill()
	if !c.Exited() {
		t.Error("Exited() false after Kill")
	}
	if err := c.ExitErr(); err != nil {
		t.Errorf("runner exit after a graceful Kill: %v, want status 0", err)
	}
	if _, err := r.Stats(ctx); !errors.Is(err, plugin.ErrUnavailable) {
		t.Errorf("Stats after Kill: got %v, want ErrUnavailable", err)
	}
}

func TestWatchStops(t *testing.T) {
	c := mustStart(t, "watch-forever", &syncBuffer{}, nil)
	r := c.Runner()

	errStop := errors.New("stop")
	n := 0
	err := r.Watch(t.Context(), func(plugin.Event) error {
		n++
		return errStop
	})
	if !errors.Is(err, errStop) || n != 1 {
		t.Errorf("Watch with fn failing: got %v after %d events, want errStop after 1", err, n)
	}

	ctx, cancel := context.WithCancel(t.Context())
	n = 0
	err = r.Watch(ctx, func(plugin.Event) error {
		if n++; n == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Watch after cancel: got %v, want context.Canceled", err)
	}
}

func TestHangMissesDeadline(t *testing.T) {
	c := mustStart(t, "hang", &syncBuffer{}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Runner().Stats(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stats on a hung runner: got %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Stats returned after %v, want about the 300ms deadline", d)
	}
	start = time.Now()
	c.KillNow()
	if !c.Exited() {
		t.Error("Exited() false after KillNow")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("KillNow took %v on a hung runner, want well under go-plugin's 2 s grace", d)
	}
}

func TestHungRunnerKillIsBounded(t *testing.T) {
	c := mustStart(t, "hang", &syncBuffer{}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, _ = c.Runner().Stats(ctx)
	start := time.Now()
	c.Kill()
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Kill took %v, want it bounded", d)
	}
	if !c.Exited() {
		t.Error("Exited() false after Kill")
	}
}

func TestCrashIsSeen(t *testing.T) {
	c := mustStart(t, "crash", &syncBuffer{}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := c.Runner().Stats(ctx)
	if err == nil {
		t.Fatal("Stats on a crashing runner: got nil error")
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10 s after the runner exited")
	}
	if !c.Exited() {
		t.Error("Exited() false after the crash")
	}
	if err := c.ExitErr(); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("ExitErr: got %v, want exit status 3", err)
	}
}

func TestLogsBridged(t *testing.T) {
	logs := &syncBuffer{}
	c := mustStart(t, "normal", logs, nil)
	if err := c.Runner().Start(t.Context(), plugin.StartRequest{Job: []byte("J"), Resume: true}); err != nil {
		t.Fatal(err)
	}
	l := logs.find(t, "fake runner started")
	want := map[string]any{
		"level":        "info",
		"logger":       "runner",
		"job_id":       "job-under-test",
		"runner_pid":   float64(c.PID()),
		"component":    "fake",
		"job":          "J",
		"answer":       float64(42),
		"ratio":        0.25,
		"retry_failed": false,
	}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("bridged line: %s = %#v, want %#v (line %v)", k, l[k], v, l)
		}
	}
	for _, k := range []string{"@level", "@message", "@timestamp", "timestamp"} {
		if _, ok := l[k]; ok {
			t.Errorf("bridged line keeps the wire key %q: %v", k, l)
		}
	}
}

func TestEnvSanitized(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", "1")
	t.Setenv("GOMEMLIMIT", "1GiB")
	t.Setenv("MEMVISOR_TEST_KEPT", "yes")
	logs := &syncBuffer{}
	c := mustStart(t, "normal", logs, plugin.SanitizeEnv(os.Environ(), 123456789))
	if err := c.Runner().Start(t.Context(), plugin.StartRequest{Resume: true}); err != nil {
		t.Fatal(err)
	}
	l := logs.find(t, "fake runner started")
	want := map[string]any{
		"notify_socket": "",
		"watchdog_usec": "",
		"gomemlimit":    "123456789",
		"kept":          "yes",
		"plugin_launch": true,
	}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("runner saw %s = %#v, want %#v", k, l[k], v)
		}
	}
}

func TestStrayStdoutIsCaught(t *testing.T) {
	logs := &syncBuffer{}
	c := mustStart(t, "stdout", logs, nil)
	if err := c.Runner().Start(t.Context(), plugin.StartRequest{Resume: true}); err != nil {
		t.Fatal(err)
	}
	l := logs.find(t, "runner wrote to stdout, which is reserved for the go-plugin handshake")
	if l["line"] != "a stray line on stdout" || l["level"] != "warn" {
		t.Errorf("stray stdout line: got %v", l)
	}
	if n := c.StdoutBytes(); n == 0 {
		t.Error("StdoutBytes() = 0 after a stray write")
	}
}

func TestStartFailures(t *testing.T) {
	for _, tc := range []struct {
		mode    string
		timeout time.Duration
		want    []string
	}{
		{"exit-before-serve", 20 * time.Second, []string{"exit status 4"}},
		{"garbage-handshake", 20 * time.Second, []string{"Unrecognized remote plugin message: this is not a handshake"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), tc.timeout)
			defer cancel()
			start := time.Now()
			_, err := startFake(t, ctx, tc.mode, &syncBuffer{}, nil)
			if !errors.Is(err, plugin.ErrStart) {
				t.Fatalf("got %v, want ErrStart", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("failure took %v to report", d)
			}
		})
	}
}

func TestStartHonoursContext(t *testing.T) {
	// A runner that never completes the handshake: the caller's context,
	// not go-plugin's timeout, ends the wait.
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := startFake(t, ctx, "no-handshake", &syncBuffer{}, nil)
	if err == nil {
		t.Fatal("Start succeeded against a runner that never serves")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, plugin.ErrStart) {
		t.Errorf("got %v, want ErrStart wrapping context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Start returned after %v, want about 500ms", d)
	}
}

func TestSanitizeEnv(t *testing.T) {
	in := []string{
		"PATH=/bin", "NOTIFY_SOCKET=/run/n", "WATCHDOG_USEC=1", "WATCHDOG_PID=2", "LISTEN_FDS=1",
		"GOMEMLIMIT=9GiB", plugin.Handshake.MagicCookieKey + "=x", "HOME=/root", "NOTIFY_SOCKETS_NOT=kept",
	}
	orig := append([]string(nil), in...)
	for _, tc := range []struct {
		limit int64
		want  []string
	}{
		{0, []string{"PATH=/bin", "HOME=/root", "NOTIFY_SOCKETS_NOT=kept"}},
		{100 << 20, []string{"PATH=/bin", "HOME=/root", "NOTIFY_SOCKETS_NOT=kept", "GOMEMLIMIT=104857600"}},
	} {
		got := plugin.SanitizeEnv(in, tc.limit)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SanitizeEnv(_, %d):\n got %q\nwant %q", tc.limit, got, tc.want)
		}
	}
	if !reflect.DeepEqual(in, orig) {
		t.Errorf("SanitizeEnv modified its input: %q", in)
	}
}

func TestRunnerLoggerWritesHCLogJSON(t *testing.T) {
	var b bytes.Buffer
	log := plugin.NewRunnerLogger(&b)
	before := time.Now().Truncate(time.Microsecond)
	log.Warn().Str("k", "v").Int("n", 3).Msg("hello")
	log.Error().Err(errors.New("boom")).Msg("bad")
	log.Debug().Msg("")
	after := time.Now()

	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(lines), b.String())
	}
	want := []map[string]any{
		{"@level": "warn", "@message": "hello", "k": "v", "n": float64(3)},
		{"@level": "error", "@message": "bad", "error": "boom"},
		{"@level": "debug", "@message": ""},
	}
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d is not JSON: %q", i, l)
		}
		ts, err := time.Parse("2006-01-02T15:04:05.000000Z07:00", m["@timestamp"].(string))
		if err != nil {
			t.Errorf("line %d: @timestamp %q is not in go-plugin's layout: %v", i, m["@timestamp"], err)
		} else if ts.Before(before) || ts.After(after) {
			t.Errorf("line %d: @timestamp %v not between %v and %v", i, ts, before, after)
		}
		delete(m, "@timestamp")
		if !reflect.DeepEqual(m, want[i]) {
			t.Errorf("line %d:\n got %v\nwant %v", i, m, want[i])
		}
	}
}

func TestIsPluginLaunch(t *testing.T) {
	t.Setenv(plugin.Handshake.MagicCookieKey, "")
	os.Unsetenv(plugin.Handshake.MagicCookieKey)
	if plugin.IsPluginLaunch() {
		t.Error("IsPluginLaunch() true without the cookie variable")
	}
	t.Setenv(plugin.Handshake.MagicCookieKey, plugin.Handshake.MagicCookieValue)
	if !plugin.IsPluginLaunch() {
		t.Error("IsPluginLaunch() false with the cookie variable set")
	}
}

// testLedger is the supervisor's side of a fleet job, in memory: it
// accepts one commit, then answers as a lost lease does.
type testLedger struct {
	mu      sync.Mutex
	lines   []string
	after   int64
	commits []string
}

func (l *testLedger) AppendFailures(_ context.Context, after int64, lines [][]byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.after = after
	for _, x := range lines {
		l.lines = append(l.lines, string(x))
	}
	return nil
}

func (l *testLedger) Commit(_ context.Context, cp []byte, failed int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.commits) == 1 {
		return fmt.Errorf("save checkpoint: %w", plugin.ErrFenced)
	}
	l.commits = append(l.commits, fmt.Sprintf("%s/%d", cp, failed))
	return nil
}

func (l *testLedger) Lease(context.Context) (time.Duration, error) {
	return 1500 * time.Millisecond, nil
}

// TestLedgerCrossesTheBroker: a Ledger given at Start is served to the
// runner process through go-plugin's broker; its answers, a lost lease
// included, reach the runner as the sentinels they are.
func TestLedgerCrossesTheBroker(t *testing.T) {
	c := mustStart(t, "normal", &syncBuffer{}, nil)
	r := c.Runner()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	l := &testLedger{}
	if err := r.Start(ctx, plugin.StartRequest{Job: []byte(`{"id":"a"}`), Resume: true, Ledger: l}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	st, err := r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := "lease=1.5s err=<nil>; append err=<nil>; commit1 fenced=false; commit2 fenced=true"
	if st.Error != want {
		t.Errorf("the runner saw %q, want %q", st.Error, want)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.after != 2 || fmt.Sprint(l.lines) != `[{"n":3} {"n":4}]` || fmt.Sprint(l.commits) != `[{"seq":1}/4]` {
		t.Errorf("the ledger got after=%d lines=%v commits=%v", l.after, l.lines, l.commits)
	}
}
