package plugin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/memvisor/memvisor/plugin"
)

// helperEnv selects the fake runner's behaviour when the test binary is
// started as a runner (the os/exec TestMain pattern).
const helperEnv = "MEMVISOR_PLUGIN_TEST_RUNNER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		runHelper(mode)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

func runHelper(mode string) {
	switch mode {
	case "exit-before-serve":
		fmt.Fprintln(os.Stderr, "runner refuses to start")
		os.Exit(4)
	case "no-handshake":
		time.Sleep(time.Minute)
		os.Exit(0)
	case "garbage-handshake":
		fmt.Println("this is not a handshake")
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	f := &fakeRunner{
		mode:         mode,
		log:          plugin.NewRunnerLogger(os.Stderr).With().Str("component", "fake").Logger(),
		pluginLaunch: plugin.IsPluginLaunch(),
	}
	plugin.Serve(f)
}

// The figures the fake runner reports; the tests compare against them.
var (
	fakeProgress = plugin.Progress{
		Total: 1000, TotalKnown: true, Processed: 120, Created: 100, Updated: 10, Skipped: 5, Failed: 5,
		Batches: 3, Offset: 120, ItemsPerSec: 42.5,
		RateLimitedUntil: time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC),
		ErrorsByCategory: map[string]int64{"validation": 3, "duplicate": 2},
	}
	fakeHeapGoal = uint64(64 << 20)
)

// fakeRunner answers every call with known figures. Its mode makes one
// call misbehave.
type fakeRunner struct {
	mode         string
	pluginLaunch bool
	log          zerolog.Logger

	mu      sync.Mutex
	started bool
	// ledgerSays is what the supervisor's Ledger answered, for Stats.
	ledgerSays string
}

// useLedger calls each Ledger method once, the way a fleet runner does,
// and keeps the answers: Lease, AppendFailures, then two commits.
func (f *fakeRunner) useLedger(l plugin.Ledger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []string
	d, err := l.Lease(ctx)
	out = append(out, fmt.Sprintf("lease=%s err=%v", d, err))
	err = l.AppendFailures(ctx, 2, [][]byte{[]byte(`{"n":3}`), []byte(`{"n":4}`)})
	out = append(out, fmt.Sprintf("append err=%v", err))
	for i := range 2 {
		err = l.Commit(ctx, []byte(fmt.Sprintf(`{"seq":%d}`, i+1)), 4)
		out = append(out, fmt.Sprintf("commit%d fenced=%t", i+1, errors.Is(err, plugin.ErrFenced)))
	}
	f.ledgerSays = strings.Join(out, "; ")
}

func (f *fakeRunner) Start(_ context.Context, req plugin.StartRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started {
		return plugin.ErrAlreadyStarted
	}
	if !req.Resume {
		return fmt.Errorf("read checkpoint of %s: %w", req.Job, plugin.ErrCheckpointExists)
	}
	f.started = true
	if req.Ledger != nil {
		f.useLedger(req.Ledger)
	}
	f.log.Info().
		Str("job", string(req.Job)).
		Bool("retry_failed", req.RetryFailed).
		Int("answer", 42).
		Float64("ratio", 0.25).
		Bool("plugin_launch", f.pluginLaunch).
		Str("notify_socket", os.Getenv("NOTIFY_SOCKET")).
		Str("watchdog_usec", os.Getenv("WATCHDOG_USEC")).
		Str("gomemlimit", os.Getenv("GOMEMLIMIT")).
		Str("kept", os.Getenv("MEMVISOR_TEST_KEPT")).
		Msg("fake runner started")
	if f.mode == "stdout" {
		fmt.Println("a stray line on stdout")
	}
	return nil
}

func (f *fakeRunner) Stats(ctx context.Context) (plugin.Stats, error) {
	switch f.mode {
	case "hang":
		time.Sleep(time.Hour) // a wedged runner does not look at ctx
	case "crash":
		os.Exit(3)
	}
	f.mu.Lock()
	started := f.started
	f.mu.Unlock()
	if !started {
		return plugin.Stats{}, plugin.ErrNotStarted
	}
	f.mu.Lock()
	says := f.ledgerSays
	f.mu.Unlock()
	return plugin.Stats{
		State: plugin.StateRunning, PID: os.Getpid(), Error: says,
		RSSBytes: 11 << 20, HeapObjectsBytes: 5 << 20, HeapGoalBytes: fakeHeapGoal, TotalMappedBytes: 20 << 20,
		GCCount: 7, GCCPUFraction: 0.01, CacheEntries: 1234, CacheBytes: 56789,
		Progress: fakeProgress,
	}, nil
}

func (f *fakeRunner) GC(context.Context) (plugin.GCResult, error) {
	start := time.Now()
	before := memFigures()
	runtime.GC()
	return plugin.GCResult{Before: before, After: memFigures(), Duration: time.Since(start)}, nil
}

func memFigures() plugin.MemFigures {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return plugin.MemFigures{RSSBytes: ms.Sys, HeapObjectsBytes: ms.HeapAlloc, TotalMappedBytes: ms.Sys}
}

// Drain echoes the deadline it was given as the offset, so the test sees
// that it crossed the wire.
func (f *fakeRunner) Drain(_ context.Context, deadline time.Time) (plugin.Checkpoint, error) {
	return plugin.Checkpoint{Batches: 3, Offset: deadline.UnixNano(), Done: false, Progress: fakeProgress}, nil
}

func (f *fakeRunner) Cancel(context.Context) error {
	return fmt.Errorf("cancel: %w", plugin.ErrFinished)
}

func (f *fakeRunner) Watch(ctx context.Context, fn func(plugin.Event) error) error {
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		p := fakeProgress
		p.Processed = int64(i+1) * 10
		if err := fn(plugin.Event{Kind: plugin.EventProgress, Time: base.Add(time.Duration(i) * time.Second), State: plugin.StateRunning, Progress: p}); err != nil {
			return err
		}
	}
	if f.mode == "watch-forever" {
		<-ctx.Done()
		return ctx.Err()
	}
	return fn(plugin.Event{Kind: plugin.EventDone, Time: base.Add(time.Hour), State: plugin.StateCompleted, Progress: fakeProgress, Error: "none"})
}

func (f *fakeRunner) HeapProfile(context.Context) ([]byte, error) {
	var b bytes.Buffer
	if err := pprof.Lookup("heap").WriteTo(&b, 0); err != nil {
		return nil, errors.New("write heap profile")
	}
	return b.Bytes(), nil
}

func (f *fakeRunner) SetGuard(context.Context, plugin.Guard) error { return nil }
