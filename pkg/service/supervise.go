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
	return func(spec job.Spec, log zerolog.Logger, emit func(supervise.Event)) (Supervisor, error) {
		a := &superviseAdapter{done: make(chan struct{})}
		s, err := supervise.New(spec, supervise.Options{
			RunnerPath: runnerPath,
			Logger:     log,
			OnEvent: func(ev supervise.Event) {
				// The Manager sends done once the registry has the
				// outcome.
				if ev.Kind != supervise.EventDone {
					emit(ev)
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
	sum, err := a.s.Run(ctx, supervise.StartMode{Resume: mode.Resume, RetryFailed: mode.RetryFailed, Ledger: mode.Ledger})
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

// Snapshot is the supervisor's status, with a rate-limit wait shown in
// the progress.
func (a *superviseAdapter) Snapshot() supervise.Status {
	st := a.s.Status()
	if !st.RateLimitedUntil.IsZero() {
		st.Progress.RateLimitedUntil = st.RateLimitedUntil
	}
	return st
}
