package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/supervise"
)

// SuperviseFactory builds the real supervisors: one pkg/supervise
// Supervisor per run, each starting runnerPath as its runner process.
func SuperviseFactory(runnerPath string) Factory {
	return func(spec job.Spec, log zerolog.Logger, emit func(Event)) (Supervisor, error) {
		a := &superviseAdapter{done: make(chan struct{})}
		s, err := supervise.New(spec, supervise.Options{
			RunnerPath: runnerPath,
			Logger:     log,
			OnEvent: func(ev supervise.Event) {
				if e, ok := fromSuperviseEvent(ev); ok {
					emit(e)
				}
			},
		})
		if err != nil {
			return nil, err
		}
		a.s = s
		return a, nil
	}
}

// DefaultRunnerPath is "runner" beside the running executable.
func DefaultRunnerPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	return filepath.Join(filepath.Dir(exe), "runner"), nil
}

// superviseAdapter makes a *supervise.Supervisor a Supervisor.
type superviseAdapter struct {
	s    *supervise.Supervisor
	done chan struct{}

	mu sync.Mutex
	// stop cancels the run's context once Run has begun.
	stop context.CancelFunc
	// stopped: a pause or cancel came before the supervising loop was up.
	stopped bool
}

var _ Supervisor = (*superviseAdapter)(nil)

// logsMemoryEvents tells the Manager that pkg/supervise writes the log
// lines of level changes, GC requests and restarts itself.
func (a *superviseAdapter) logsMemoryEvents() bool { return true }

func (a *superviseAdapter) Run(ctx context.Context, mode StartMode) (Outcome, error) {
	defer close(a.done)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.mu.Lock()
	a.stop = cancel
	if a.stopped {
		cancel()
	}
	a.mu.Unlock()
	sum, err := a.s.Run(ctx, supervise.StartMode{Resume: mode.Resume, RetryFailed: mode.RetryFailed})
	a.mu.Lock()
	stopped := a.stopped
	a.mu.Unlock()
	if stopped && errors.Is(err, context.Canceled) {
		// Stopped before it was up: nothing ran, the job is paused.
		return Outcome{Status: registry.StatusPaused, Final: a.Snapshot()}, nil
	}
	return Outcome{Status: registry.Status(sum.Status), Reason: sum.Reason, Final: a.Snapshot()}, err
}

// control asks the supervisor to pause or cancel. The Manager may ask in
// the instant after starting a job, before the supervising loop is up
// (supervise.ErrNotRunning): then the run's context is cancelled, which
// drains a runner that came up meanwhile, and Run returns paused; the
// Manager records a cancel as cancelled. No polling: control waits for
// Run to return.
func (a *superviseAdapter) control(ctx context.Context, fn func(context.Context) error) error {
	err := fn(ctx)
	if !errors.Is(err, supervise.ErrNotRunning) {
		return err
	}
	a.mu.Lock()
	a.stopped = true
	if a.stop != nil {
		a.stop()
	}
	a.mu.Unlock()
	select {
	case <-a.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *superviseAdapter) Pause(ctx context.Context) error  { return a.control(ctx, a.s.Pause) }
func (a *superviseAdapter) Cancel(ctx context.Context) error { return a.control(ctx, a.s.Cancel) }

func (a *superviseAdapter) HeapProfile(ctx context.Context) ([]byte, error) {
	p, err := a.s.HeapProfile(ctx)
	if errors.Is(err, supervise.ErrNotRunning) {
		return nil, fmt.Errorf("%w: no runner is up at this instant (starting or restarting); try again", ErrConflict)
	}
	return p, err
}

func (a *superviseAdapter) Snapshot() Snapshot {
	st := a.s.Status()
	p := st.Progress
	if !st.RateLimitedUntil.IsZero() {
		p.RateLimitedUntil = st.RateLimitedUntil
	}
	return Snapshot{
		State:    st.State,
		Progress: p,
		Memory:   fromSuperviseMemory(st.Memory),
		PeakRSS:  st.PeakRSS,
		Restarts: registry.Restarts{
			Graceful: int64(st.Restarts.Graceful), Crash: int64(st.Restarts.Crash),
			Hang: int64(st.Restarts.Hang), Kill: int64(st.Restarts.Kill),
		},
		GCRequests:   int64(st.GCRequests),
		CacheEntries: st.CacheEntries,
		CacheBytes:   st.CacheBytes,
		Started:      st.Started,
		LastError:    st.LastError,
	}
}

func fromSuperviseMemory(m supervise.Memory) Memory {
	return Memory{
		RSS: m.RSS, Heap: m.Heap, Budget: m.Budget, Level: m.Level,
		WarningBytes: m.WarningBytes, CriticalBytes: m.CriticalBytes,
	}
}

// fromSuperviseEvent converts an event; the supervisor's own done event is
// dropped, as the Manager sends done once the registry has the outcome.
func fromSuperviseEvent(ev supervise.Event) (Event, bool) {
	mem := fromSuperviseMemory(ev.Memory)
	out := Event{Kind: EventKind(ev.Kind), Time: ev.Time, Reason: ev.Reason}
	switch ev.Kind {
	case supervise.EventProgress:
		p := ev.Progress
		out.Progress = &p
	case supervise.EventMemory:
		out.Memory = &mem
	case supervise.EventLevel:
		out.Memory, out.Level = &mem, ev.Level
	case supervise.EventGC:
		out.Memory = &mem
	case supervise.EventRestart:
		out.Memory, out.RestartKind = &mem, string(ev.RestartKind)
	default:
		return Event{}, false
	}
	return out, true
}
