package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/logkey"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/plugin"
)

// Errors of the Supervisor's own making.
var (
	// ErrNotRunning: Pause, Cancel or HeapProfile on a supervisor whose
	// Run is not running, or that has no runner at the moment.
	ErrNotRunning = errors.New("job is not running")
	// ErrAlreadyRun: a Supervisor runs once; make a new one.
	ErrAlreadyRun = errors.New("supervisor has already run")
)

// Options configures a Supervisor.
type Options struct {
	// RunnerPath is the runner executable.
	RunnerPath string
	// RunnerArgs are passed to every runner.
	RunnerArgs []string
	// Logger receives the supervisor's lines and the runners' lines.
	Logger zerolog.Logger
	// Clock defaults to RealClock.
	Clock Clock
	// OnEvent, if set, receives every Event on the supervising goroutine;
	// it must not block.
	OnEvent func(Event)
	// BudgetBytes, if set, is the runner's memory budget and overrides the
	// job file's memory.limit. With neither, BudgetSource decides.
	BudgetBytes uint64
	// BudgetSource finds the default budget (cgroup, else host RAM).
	BudgetSource BudgetSource
	// Env is the environment runners start from, before SanitizeEnv; nil
	// means os.Environ().
	Env []string
	// StartTimeout bounds a runner's handshake; default 30s.
	StartTimeout time.Duration
	// Backoff shapes the delay before a restart that follows no progress.
	Backoff BackoffConfig
	// RSS reads a runner's RSS from outside; default ProcRSS (gopsutil).
	RSS RSSFunc
	// StatsInterval is how often the runner's Stats (its heap, state and
	// progress, and the proof that it still answers) are fetched; default
	// 1s, and never more often than the job's sample_interval. RSS is
	// sampled from outside every sample_interval regardless, and progress
	// also comes on the Watch stream.
	StatsInterval time.Duration
}

// Supervisor supervises one job: it starts a runner process, samples its
// memory, applies the Policy (GC, graceful restart, kill), detects crashes
// and hangs, and restarts the runner from its checkpoint within the
// RestartBudget. A Supervisor runs once.
type Supervisor struct {
	spec     job.Spec
	jobJSON  []byte
	opts     Options
	log      zerolog.Logger
	clock    Clock
	rss      RSSFunc
	budget   Budget
	env      []string
	policy   *Policy
	restarts *RestartBudget

	ran      atomic.Bool
	finished chan struct{}
	ctrl     chan struct{}

	// Owned by the supervising goroutine.
	high      plugin.Progress // the highest progress seen in this run
	heap      uint64
	heapTotal uint64

	mu        sync.Mutex
	st        Status
	client    *plugin.Client
	pauseReq  bool
	cancelReq bool
	abortReq  bool
}

// New returns a Supervisor for spec. It checks the runner executable and
// settles the budget, but starts nothing.
func New(spec job.Spec, opts Options) (*Supervisor, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if opts.RunnerPath == "" {
		return nil, errors.New("new supervisor: no runner path")
	}
	if fi, err := os.Stat(opts.RunnerPath); err != nil {
		return nil, fmt.Errorf("new supervisor: find runner: %w", err)
	} else if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("new supervisor: runner %s is not an executable file", opts.RunnerPath)
	}
	if opts.Clock == nil {
		opts.Clock = RealClock{}
	}
	if opts.RSS == nil {
		opts.RSS = ProcRSS
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.StatsInterval <= 0 {
		opts.StatsInterval = time.Second
	}
	opts.StatsInterval = max(opts.StatsInterval, spec.Memory.SampleInterval.D())
	var budget Budget
	switch {
	case opts.BudgetBytes > 0:
		budget = Budget{Bytes: opts.BudgetBytes, Source: "supervisor configuration"}
	case spec.Memory.Limit > 0:
		budget = Budget{Bytes: uint64(spec.Memory.Limit), Source: "job file memory.limit"}
	default:
		b, err := opts.BudgetSource.Default()
		if err != nil {
			return nil, fmt.Errorf("new supervisor: find the memory budget: %w", err)
		}
		budget = b
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("new supervisor: encode job: %w", err)
	}
	base := opts.Env
	if base == nil {
		base = os.Environ()
	}
	m := spec.Memory
	cfg := NewPolicyConfig(m, budget.Bytes)
	s := &Supervisor{
		spec:     spec,
		jobJSON:  data,
		opts:     opts,
		log:      opts.Logger.With().Str(logkey.JobID, spec.ID).Logger(),
		clock:    opts.Clock,
		rss:      opts.RSS,
		budget:   budget,
		env:      plugin.SanitizeEnv(base, GoMemLimit(cfg)),
		policy:   NewPolicy(cfg),
		restarts: NewRestartBudget(m.RestartBudget.Max, m.RestartBudget.Window.D(), opts.Backoff),
		finished: make(chan struct{}),
		ctrl:     make(chan struct{}, 1),
	}
	s.st = Status{State: StateIdle, JobID: spec.ID, Memory: s.memory(0, 0)}
	return s, nil
}

// GoMemLimit is the GOMEMLIMIT a runner gets: 5 points below the warning
// level, so the Go runtime collects on its own before the supervisor has
// to ask.
func GoMemLimit(cfg PolicyConfig) int64 {
	pct := max(cfg.WarningPercent-5, cfg.WarningPercent/2)
	return int64(cfg.Bytes(pct))
}

// Budget returns the budget in force and where it came from.
func (s *Supervisor) Budget() Budget { return s.budget }

// Status returns a snapshot. It is cheap and safe for concurrent use.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	if st.Progress.ErrorsByCategory != nil {
		m := make(map[string]int64, len(st.Progress.ErrorsByCategory))
		for k, v := range st.Progress.ErrorsByCategory {
			m[k] = v
		}
		st.Progress.ErrorsByCategory = m
	}
	return st
}

// Pause drains the runner, which commits its checkpoint, and returns once
// Run has returned with status paused.
func (s *Supervisor) Pause(ctx context.Context) error {
	return s.control(ctx, func() { s.pauseReq = true })
}

// Cancel stops the job (the runner stops issuing writes and commits what
// it wrote) and returns once Run has returned with status cancelled.
func (s *Supervisor) Cancel(ctx context.Context) error {
	return s.control(ctx, func() { s.cancelReq = true })
}

func (s *Supervisor) control(ctx context.Context, set func()) error {
	if !s.ran.Load() {
		return ErrNotRunning
	}
	select {
	case <-s.finished:
		return ErrNotRunning
	default:
	}
	s.mu.Lock()
	set()
	s.mu.Unlock()
	select {
	case s.ctrl <- struct{}{}:
	default:
	}
	select {
	case <-s.finished:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Abort kills the runner at once, without a drain, and makes Run return
// with status paused: the job resumes from its last committed checkpoint,
// redoing at most the batch in flight. It is for a user who will not wait
// for a drain (a second Ctrl-C); it does not wait for Run to return.
func (s *Supervisor) Abort() {
	s.mu.Lock()
	s.abortReq = true
	s.mu.Unlock()
	select {
	case s.ctrl <- struct{}{}:
	default:
	}
}

// takeControl returns and clears the pending requests.
func (s *Supervisor) takeControl() (pause, cancel, abort bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pause, cancel, abort = s.pauseReq, s.cancelReq, s.abortReq
	s.pauseReq, s.cancelReq, s.abortReq = false, false, false
	return pause, cancel, abort
}

// HeapProfile returns the running runner's pprof heap profile.
func (s *Supervisor) HeapProfile(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	c := s.client
	s.mu.Unlock()
	if c == nil {
		return nil, ErrNotRunning
	}
	return c.Runner().HeapProfile(ctx)
}

// Run supervises the job until it completes, fails, is paused or
// cancelled. Cancelling ctx drains the runner, so that it commits its
// checkpoint, and Run returns with status paused. The error is non-nil
// only when the job could not be supervised at all (its lock is held by
// another supervisor, say); how the job ended is in the Summary.
func (s *Supervisor) Run(ctx context.Context, mode StartMode) (Summary, error) {
	if !s.ran.CompareAndSwap(false, true) {
		return Summary{}, ErrAlreadyRun
	}
	defer close(s.finished)
	start := s.clock.Now()
	s.update(func(st *Status) { st.Started, st.Updated = start, start })

	lock, err := lockJob(s.spec.Dir())
	if err != nil {
		s.update(func(st *Status) { st.State, st.LastError = StatusFailed, err.Error() })
		return s.summary(StatusFailed, err.Error(), start), err
	}
	defer func() {
		if err := lock.unlock(); err != nil {
			s.log.Warn().Err(err).Msg("unlock job")
		}
	}()
	pid, err := lock.reapOrphan(ctx, s.opts.RunnerPath)
	if err != nil {
		s.update(func(st *Status) { st.State, st.LastError = StatusFailed, err.Error() })
		return s.summary(StatusFailed, err.Error(), start), err
	}
	if pid != 0 {
		s.log.Warn().Int("orphan_pid", pid).Msg("killed the runner a previous supervisor left behind")
	}
	s.log.Info().Uint64("budget_bytes", s.budget.Bytes).Str("budget_source", s.budget.Source).
		Float64(logkey.BudgetMB, logkey.MB(s.budget.Bytes)).Int64("gomemlimit", GoMemLimit(s.policy.Config())).
		Msg("supervising job")

	status, reason := s.loop(ctx, lock, mode)
	if err := lock.removePID(); err != nil {
		s.log.Warn().Err(err).Msg("remove runner pidfile")
	}
	s.update(func(st *Status) {
		st.State = status
		st.RunnerPID = 0
		if reason != "" && status == StatusFailed {
			st.LastError = reason
		}
	})
	sum := s.summary(status, reason, start)
	ev := s.log.Info()
	if status == StatusFailed {
		ev = s.log.Error()
	}
	ev.Str("status", status).Str("reason", reason).Int64("processed", sum.Processed).
		Int("restarts", sum.Restarts.Total()).Int("gc_requests", sum.GCRequests).
		Float64(logkey.PeakRSSMB, logkey.MB(sum.PeakRSSBytes)).Float64("duration_s", sum.DurationS).Msg("job " + status)
	st := s.Status()
	s.emit(Event{Kind: EventDone, Time: s.clock.Now(), Progress: st.Progress, Memory: st.Memory, Status: status, Reason: reason})
	return sum, nil
}

func (s *Supervisor) summary(status, reason string, start time.Time) Summary {
	st := s.Status()
	p := st.Progress
	return Summary{
		JobID:        s.spec.ID,
		Status:       status,
		Items:        Items{Created: p.Created, Updated: p.Updated, Skipped: p.Skipped, Failed: p.Failed},
		Processed:    p.Processed,
		Restarts:     st.Restarts,
		GCRequests:   st.GCRequests,
		PeakRSSBytes: st.PeakRSS,
		BudgetBytes:  s.budget.Bytes,
		DurationS:    s.clock.Now().Sub(start).Seconds(),
		Reason:       reason,
	}
}

// loop starts runners until the job ends.
func (s *Supervisor) loop(ctx context.Context, lock *jobLock, mode StartMode) (status, reason string) {
	resume := mode.Resume
	for {
		if pause, cancel, abort := s.takeControl(); abort {
			return StatusPaused, abortReason
		} else if cancel {
			return StatusCancelled, "cancelled before a runner started"
		} else if pause {
			return StatusPaused, "paused before a runner started"
		}
		if ctx.Err() != nil {
			return StatusPaused, "interrupted before a runner started"
		}
		req := plugin.StartRequest{
			Job: s.jobJSON, Resume: resume, RetryFailed: mode.RetryFailed,
			// The budget is settled once, in New, so the guard's lines
			// are given at every Start and never change while a runner
			// runs; SetGuard is for a budget that would.
			Guard: GuardFor(s.policy.Config()),
		}
		var out outcome
		var lerr error
		if mode.Ledger != nil {
			req.Ledger, lerr = mode.Ledger(ctx)
		}
		if lerr != nil {
			out = decide(facts{end: endExited, reason: "prepare the job's ledger: " + lerr.Error()})
		} else {
			out = s.attempt(ctx, lock, req)
		}
		// Every later start resumes: a runner with no checkpoint to resume
		// from simply starts from the beginning.
		resume = true
		if out.final {
			return out.status, out.reason
		}
		now := s.clock.Now()
		delay, n, ok := s.restarts.Restart(now, out.progressed)
		if !ok {
			return StatusFailed, fmt.Sprintf(
				"runner failed %d times in %s without committing a checkpoint (restart_budget.max is %d); last error: %s",
				n, s.spec.Memory.RestartBudget.Window, s.spec.Memory.RestartBudget.Max, out.reason)
		}
		s.update(func(st *Status) {
			st.Restarts.add(out.restart)
			st.LastError = out.reason
			st.State = StateRestarting
			st.RunnerPID = 0
		})
		st := s.Status()
		s.memLog(s.log.Warn(), "memory.restart", st.Memory).
			Str("kind", string(out.restart)).Str("reason", out.reason).Bool("progressed", out.progressed).
			Int("restarts", st.Restarts.Total()).Int("without_progress", n).Dur("delay", delay).
			Msg("restarting runner from its checkpoint")
		s.emit(Event{Kind: EventRestart, Time: now, Memory: st.Memory, RestartKind: out.restart, Reason: out.reason})
		if delay <= 0 {
			continue
		}
		t := s.clock.NewTimer(delay)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return StatusPaused, "interrupted while waiting to restart the runner"
		case <-s.ctrl:
			t.Stop()
			// Handled at the top of the loop.
		}
	}
}

// takeStats folds a Stats answer into the status.
func (s *Supervisor) takeStats(st plugin.Stats) {
	s.heap, s.heapTotal = st.HeapObjectsBytes, st.TotalMappedBytes
	s.update(func(x *Status) {
		x.CacheEntries, x.CacheBytes = st.CacheEntries, st.CacheBytes
		x.PeakRSS = max(x.PeakRSS, st.RSSBytes)
		x.Memory.Heap = st.HeapObjectsBytes
	})
	s.takeProgress(st.State, st.Progress)
}

// takeProgress records progress and emits it when it moved. A runner
// that is still starting has not restored its counters yet, so its
// figures are not taken.
func (s *Supervisor) takeProgress(state plugin.State, p plugin.Progress) {
	if state == plugin.StateIdle || state == plugin.StateStarting {
		return
	}
	s.high.Batches = max(s.high.Batches, p.Batches)
	s.high.Offset = max(s.high.Offset, p.Offset)
	now := s.clock.Now()
	changed := false
	s.update(func(st *Status) {
		old := st.Progress
		changed = old.Processed != p.Processed || old.Batches != p.Batches || old.Total != p.Total
		st.Progress = p
		st.RateLimitedUntil = p.RateLimitedUntil
		st.Updated = now
	})
	if changed {
		s.emit(Event{Kind: EventProgress, Time: now, Progress: p})
	}
}

func (s *Supervisor) update(fn func(*Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(&s.st)
}

func (s *Supervisor) emit(ev Event) {
	if s.opts.OnEvent != nil {
		s.opts.OnEvent(ev)
	}
}

// memory builds a reading against the budget.
func (s *Supervisor) memory(rss, heap uint64) Memory {
	cfg := s.policy.Config()
	return Memory{
		RSS:           rss,
		Heap:          heap,
		Budget:        cfg.BudgetBytes,
		Level:         s.policy.Level(),
		Percent:       s.policy.Percent(max(rss, heap)),
		WarningBytes:  cfg.Bytes(cfg.WarningPercent),
		CriticalBytes: cfg.Bytes(cfg.CriticalPercent),
		KillBytes:     cfg.Bytes(cfg.KillPercent),
	}
}

// memLog adds the memory fields (internal/logkey) to a log line.
func (s *Supervisor) memLog(ev *zerolog.Event, context string, m Memory) *zerolog.Event {
	return ev.Str(logkey.Context, context).
		Float64(logkey.RSSMB, logkey.MB(m.RSS)).
		Float64(logkey.HeapObjectsMB, logkey.MB(m.Heap)).
		Float64(logkey.TotalMappedMB, logkey.MB(s.heapTotal)).
		Float64(logkey.UsagePercent, round1(m.Percent)).
		Float64(logkey.BudgetMB, logkey.MB(m.Budget)).
		Str(logkey.MemoryLevel, string(m.Level))
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
