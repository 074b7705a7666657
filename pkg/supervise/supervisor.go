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
		log:      opts.Logger.With().Str("job_id", spec.ID).Logger(),
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

// Cancel stops the job after the batch in flight and returns once Run has
// returned with status cancelled.
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

const abortReason = "aborted: the runner was killed without a drain; the job resumes from its last checkpoint"

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
		Float64("budgetMB", mb(s.budget.Bytes)).Int64("gomemlimit", GoMemLimit(s.policy.Config())).
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
		Float64("peakRssMB", mb(sum.PeakRSSBytes)).Float64("duration_s", sum.DurationS).Msg("job " + status)
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
		out := s.attempt(ctx, lock, plugin.StartRequest{Job: s.jobJSON, Resume: resume, RetryFailed: mode.RetryFailed})
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

// outcome is how one runner ended.
type outcome struct {
	final      bool // the run is over, with status
	status     string
	restart    RestartKind // otherwise, restart for this reason
	reason     string
	progressed bool
}

func (s *Supervisor) setClient(c *plugin.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.client = c
	if c != nil {
		s.st.RunnerPID = c.PID()
	}
}

// attempt starts one runner and supervises it until it ends.
func (s *Supervisor) attempt(ctx context.Context, lock *jobLock, req plugin.StartRequest) outcome {
	base := s.high
	progressed := func() bool { return s.high.Batches > base.Batches || s.high.Offset > base.Offset }
	s.update(func(st *Status) { st.State = StateStarting })
	c, err := plugin.Start(ctx, plugin.ClientOptions{
		Path:         s.opts.RunnerPath,
		Args:         s.opts.RunnerArgs,
		Env:          s.env,
		Logger:       s.log,
		StartTimeout: s.opts.StartTimeout,
		// The pidfile is written before the handshake, so that even a
		// supervisor that dies during it leaves a runner that can be
		// found and reaped.
		OnStart: func(pid int) {
			if err := lock.writePID(pid); err != nil {
				s.log.Warn().Err(err).Msg("write runner pidfile")
			}
		},
	})
	if err != nil {
		if ctx.Err() != nil {
			return outcome{final: true, status: StatusPaused, reason: "interrupted while a runner started"}
		}
		return outcome{restart: RestartCrash, reason: err.Error()}
	}
	defer c.KillNow() // a no-op when already stopped
	s.setClient(c)
	defer s.setClient(nil)
	s.policy.Reset()
	s.heap, s.heapTotal = 0, 0

	rpcTimeout := s.spec.Memory.RPCTimeout.D()
	sctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	err = c.Runner().Start(sctx, req)
	cancel()
	if err != nil {
		switch {
		case c.Exited() || errors.Is(err, plugin.ErrUnavailable):
			c.KillNow()
			return outcome{restart: RestartCrash, reason: exitReason(c, "before it answered Start")}
		case errors.Is(err, context.DeadlineExceeded):
			c.KillNow()
			return outcome{restart: RestartHang, reason: fmt.Sprintf("runner did not answer Start within %s", rpcTimeout)}
		case errors.Is(err, plugin.ErrJobLocked):
			c.KillNow()
			return outcome{restart: RestartCrash, reason: err.Error()}
		}
		c.Kill()
		return outcome{final: true, status: StatusFailed, reason: err.Error()}
	}
	s.log.Info().Int("runner_pid", c.PID()).Bool("resume", req.Resume).Msg("runner started")
	s.update(func(st *Status) { st.State = StateRunning })
	out := s.watch(ctx, c)
	out.progressed = progressed()
	return out
}

func exitReason(c *plugin.Client, when string) string {
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
	}
	if err := c.ExitErr(); err != nil {
		return fmt.Sprintf("runner exited %s: %v", when, err)
	}
	if c.Exited() {
		return "runner exited with status 0 " + when
	}
	return "runner stopped answering " + when
}

type statsResult struct {
	st  plugin.Stats
	err error
}

type rpcKind int

const (
	rpcGC rpcKind = iota
	rpcDrain
	rpcCancel
)

type rpcResult struct {
	kind rpcKind
	gc   plugin.GCResult
	cp   plugin.Checkpoint
	err  error
}

type drainPurpose int

const (
	drainNone drainPurpose = iota
	drainRestart
	drainPause
)

// watch supervises one started runner until it ends or must restart.
func (s *Supervisor) watch(ctx context.Context, c *plugin.Client) outcome {
	r := c.Runner()
	pid := c.PID()
	m := s.spec.Memory
	interval, rpcTimeout, drainTimeout := m.SampleInterval.D(), m.RPCTimeout.D(), m.DrainTimeout.D()

	actx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	statsCh := make(chan statsResult)
	watchCh := make(chan plugin.Event)
	watchErr := make(chan error, 1)
	rpcCh := make(chan rpcResult, 4) // at most one GC, one drain, one cancel
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.pollStats(actx, r, s.opts.StatsInterval, rpcTimeout, statsCh)
	}()
	go func() {
		defer wg.Done()
		watchErr <- r.Watch(actx, func(ev plugin.Event) error {
			select {
			case watchCh <- ev:
				return nil
			case <-actx.Done():
				return actx.Err()
			}
		})
	}()
	call := func(fn func() rpcResult) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rpcCh <- fn()
		}()
	}

	var (
		gcInFlight     bool
		drain          drainPurpose
		drainReason    string
		cancelling     bool
		cancelAfter    bool // cancel once the drain in flight is done
		ctxDone        = ctx.Done()
		cancelDeadline <-chan time.Time
		stopTimers     []Timer
	)
	defer func() {
		for _, t := range stopTimers {
			t.Stop()
		}
	}()
	hang := func(call string, timeout time.Duration) outcome {
		reason := fmt.Sprintf("runner did not answer %s within %s", call, timeout)
		for _, a := range s.policy.Unresponsive(call, timeout) {
			reason = a.Reason
		}
		c.KillNow()
		if cancelling || cancelAfter {
			return outcome{final: true, status: StatusCancelled, reason: reason}
		}
		if drain == drainPause {
			return outcome{final: true, status: StatusPaused, reason: reason}
		}
		return outcome{restart: RestartHang, reason: reason}
	}
	startDrain := func(purpose drainPurpose, reason string) {
		if drain != drainNone {
			if purpose == drainPause {
				drain = drainPause
			}
			return
		}
		drain, drainReason = purpose, reason
		s.update(func(st *Status) { st.State = StateDraining })
		deadline := s.clock.Now().Add(drainTimeout)
		call(func() rpcResult {
			// The RPC gets a little longer than the runner's own deadline,
			// so a runner that honours it is not taken for hung.
			dctx, cancel := context.WithTimeout(actx, drainTimeout+time.Second)
			defer cancel()
			cp, err := r.Drain(dctx, deadline)
			return rpcResult{kind: rpcDrain, cp: cp, err: err}
		})
	}
	startCancel := func() {
		cancelling = true
		t := s.clock.NewTimer(drainTimeout + time.Second)
		stopTimers = append(stopTimers, t)
		cancelDeadline = t.C()
		call(func() rpcResult {
			cctx, cancel := context.WithTimeout(actx, drainTimeout)
			defer cancel()
			return rpcResult{kind: rpcCancel, err: r.Cancel(cctx)}
		})
	}
	// end turns a finished runner state into the outcome.
	end := func(state plugin.State, msg string) (outcome, bool) {
		switch state {
		case plugin.StateCompleted:
			c.Kill()
			return outcome{final: true, status: StatusCompleted}, true
		case plugin.StateFailed:
			c.Kill()
			if msg == "" {
				msg = "runner reported the job failed"
			}
			return outcome{final: true, status: StatusFailed, reason: msg}, true
		case plugin.StateCancelled:
			c.Kill()
			return outcome{final: true, status: StatusCancelled, reason: "cancelled"}, true
		case plugin.StateDrained:
			if drain != drainNone {
				return outcome{}, false // the Drain answer decides
			}
			c.Kill()
			return outcome{restart: RestartGraceful, reason: "runner drained on its own"}, true
		}
		return outcome{}, false
	}

	tick := s.clock.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C():
			if c.Exited() {
				continue // Done says why
			}
			now := s.clock.Now()
			rss, err := s.rss(pid)
			if err != nil {
				s.log.Debug().Err(err).Int("runner_pid", pid).Msg("read runner RSS")
			}
			sample := Sample{Time: now, RSSBytes: rss, HeapBytes: s.heap}
			actions := s.policy.Observe(sample)
			mem := s.memory(sample.RSSBytes, sample.HeapBytes)
			s.update(func(st *Status) {
				st.Memory = mem
				st.PeakRSS = max(st.PeakRSS, rss)
				st.Updated = now
			})
			s.emit(Event{Kind: EventMemory, Time: now, Memory: mem})
			for _, a := range actions {
				switch a.Kind {
				case ActionLevel:
					ev := s.log.Info()
					if a.To.Rank() > a.From.Rank() {
						ev = s.log.Warn()
					}
					s.memLog(ev, "memory.level", mem).Str("from", string(a.From)).Str("reason", a.Reason).
						Msg("memory level " + string(a.To))
					s.emit(Event{Kind: EventLevel, Time: now, Memory: mem, From: a.From, Level: a.To, Reason: a.Reason})
				case ActionGC:
					s.update(func(st *Status) { st.GCRequests++ })
					s.memLog(s.log.Warn(), "memory.gc", mem).Str("reason", a.Reason).Msg("asking the runner to collect garbage")
					s.emit(Event{Kind: EventGC, Time: now, Memory: mem, Level: a.To, Reason: a.Reason})
					if !gcInFlight {
						gcInFlight = true
						call(func() rpcResult {
							gctx, cancel := context.WithTimeout(actx, rpcTimeout)
							defer cancel()
							res, err := r.GC(gctx)
							return rpcResult{kind: rpcGC, gc: res, err: err}
						})
					}
				case ActionRestart:
					s.memLog(s.log.Warn(), "memory.restart", mem).Str("reason", a.Reason).
						Msg("draining the runner for a graceful restart")
					startDrain(drainRestart, a.Reason)
				case ActionKill:
					s.memLog(s.log.Error(), "memory.kill", mem).Str("reason", a.Reason).Msg("killing the runner")
					c.KillNow()
					if cancelling || cancelAfter {
						return outcome{final: true, status: StatusCancelled, reason: a.Reason}
					}
					if drain == drainPause {
						return outcome{final: true, status: StatusPaused, reason: a.Reason}
					}
					return outcome{restart: RestartKill, reason: a.Reason}
				}
			}

		case res := <-statsCh:
			if res.err != nil {
				if errors.Is(res.err, context.DeadlineExceeded) && !c.Exited() {
					return hang("Stats", rpcTimeout)
				}
				if !c.Exited() {
					s.log.Debug().Err(res.err).Msg("runner Stats")
				}
				continue
			}
			s.takeStats(res.st)
			if o, ok := end(res.st.State, res.st.Error); ok {
				return o
			}

		case ev := <-watchCh:
			s.takeProgress(ev.State, ev.Progress)
			if ev.Kind == plugin.EventDone {
				if o, ok := end(ev.State, ev.Error); ok {
					return o
				}
			}

		case err := <-watchErr:
			if err != nil && !c.Exited() && actx.Err() == nil {
				s.log.Debug().Err(err).Msg("runner progress stream ended; polling Stats only")
			}

		case <-c.Done():
			// The job may have ended just before the process did.
			sctx, cancel := context.WithTimeout(actx, 100*time.Millisecond)
			st, err := r.Stats(sctx)
			cancel()
			if err == nil {
				if o, ok := end(st.State, st.Error); ok {
					return o
				}
			}
			reason := exitReason(c, "while the job ran")
			c.KillNow()
			switch {
			case cancelling || cancelAfter:
				return outcome{final: true, status: StatusCancelled, reason: reason}
			case drain == drainPause:
				return outcome{final: true, status: StatusPaused, reason: reason}
			}
			return outcome{restart: RestartCrash, reason: reason}

		case res := <-rpcCh:
			switch res.kind {
			case rpcGC:
				gcInFlight = false
				if res.err != nil {
					if errors.Is(res.err, context.DeadlineExceeded) && !c.Exited() {
						return hang("GC", rpcTimeout)
					}
					s.log.Debug().Err(res.err).Msg("runner GC")
					continue
				}
				gc := res.gc
				s.log.Info().Str("context", "memory.gc").
					Float64("rssBeforeMB", mb(gc.Before.RSSBytes)).Float64("rssAfterMB", mb(gc.After.RSSBytes)).
					Float64("heapBeforeMB", mb(gc.Before.HeapObjectsBytes)).Float64("heapAfterMB", mb(gc.After.HeapObjectsBytes)).
					Dur("took", gc.Duration).Msg("runner collected garbage")
				s.heap = gc.After.HeapObjectsBytes
				s.emit(Event{Kind: EventGC, Time: s.clock.Now(), Memory: s.Status().Memory, GC: &gc, Reason: "collected"})
				for _, a := range s.policy.GCDone(s.clock.Now(), gc.After.RSSBytes) {
					mem := s.memory(gc.After.RSSBytes, s.heap)
					s.memLog(s.log.Warn(), "memory.restart", mem).Str("reason", a.Reason).
						Msg("draining the runner for a graceful restart")
					startDrain(drainRestart, a.Reason)
				}

			case rpcDrain:
				if res.err != nil {
					if c.Exited() {
						continue // Done says why
					}
					if errors.Is(res.err, context.DeadlineExceeded) {
						return hang("Drain", drainTimeout)
					}
					if errors.Is(res.err, plugin.ErrNotStarted) && drain == drainPause {
						// Stopped before its first batch: nothing to commit.
						c.KillNow()
						return outcome{final: true, status: StatusPaused, reason: drainReason}
					}
					if errors.Is(res.err, plugin.ErrFinished) {
						// The job ended first; Stats will say how.
						st, err := r.Stats(actx)
						if err == nil {
							if o, ok := end(st.State, st.Error); ok {
								return o
							}
						}
					}
					c.KillNow()
					reason := "drain failed: " + res.err.Error()
					switch {
					case cancelAfter:
						return outcome{final: true, status: StatusCancelled, reason: reason}
					case drain == drainPause:
						return outcome{final: true, status: StatusPaused, reason: reason}
					}
					return outcome{restart: RestartCrash, reason: reason}
				}
				s.takeProgress(plugin.StateDrained, res.cp.Progress)
				s.high.Batches = max(s.high.Batches, res.cp.Batches)
				s.high.Offset = max(s.high.Offset, res.cp.Offset)
				c.Kill()
				switch {
				case res.cp.Done:
					return outcome{final: true, status: StatusCompleted}
				case cancelAfter:
					return outcome{final: true, status: StatusCancelled, reason: "cancelled"}
				case drain == drainPause:
					return outcome{final: true, status: StatusPaused, reason: drainReason}
				}
				return outcome{restart: RestartGraceful, reason: drainReason}

			case rpcCancel:
				if res.err != nil && !errors.Is(res.err, plugin.ErrFinished) {
					if c.Exited() {
						continue
					}
					if errors.Is(res.err, context.DeadlineExceeded) {
						return hang("Cancel", drainTimeout)
					}
					s.log.Warn().Err(res.err).Msg("runner Cancel")
					c.KillNow()
					return outcome{final: true, status: StatusCancelled, reason: "cancel failed: " + res.err.Error()}
				}
				// The runner's state says when it is done.
			}

		case <-cancelDeadline:
			c.KillNow()
			return outcome{final: true, status: StatusCancelled, reason: "runner did not stop within drain_timeout after Cancel"}

		case <-s.ctrl:
			pause, cancelReq, abort := s.takeControl()
			if abort {
				s.log.Warn().Msg("aborting: killing the runner without a drain")
				c.KillNow()
				return outcome{final: true, status: StatusPaused, reason: abortReason}
			}
			if cancelReq {
				switch {
				case drain != drainNone:
					cancelAfter = true
				case !cancelling:
					s.log.Info().Msg("cancelling the job after the batch in flight")
					startCancel()
				}
			}
			if pause && !cancelling {
				s.log.Info().Msg("pausing: draining the runner")
				startDrain(drainPause, "paused")
			}

		case <-ctxDone:
			ctxDone = nil
			if !cancelling {
				s.log.Info().Msg("stopping: draining the runner so that it commits its checkpoint")
				startDrain(drainPause, "interrupted")
			}
		}
	}
}

// pollStats calls Stats every interval, each call bounded by timeout,
// until ctx is done.
func (s *Supervisor) pollStats(ctx context.Context, r plugin.Runner, interval, timeout time.Duration, out chan<- statsResult) {
	t := s.clock.NewTicker(interval)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		st, err := r.Stats(cctx)
		cancel()
		select {
		case out <- statsResult{st: st, err: err}:
		case <-ctx.Done():
			return
		}
		select {
		case <-t.C():
		case <-ctx.Done():
			return
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

// memLog adds the original tool's memory fields to a log line:
// heapUsedPercent is usage against the budget, heapTotalMB the runtime's
// whole footprint (/memory/classes/total).
func (s *Supervisor) memLog(ev *zerolog.Event, context string, m Memory) *zerolog.Event {
	return ev.Str("context", context).
		Float64("heapUsedMB", mb(m.Heap)).
		Float64("heapTotalMB", mb(s.heapTotal)).
		Float64("heapUsedPercent", round1(m.Percent)).
		Float64("rssMB", mb(m.RSS)).
		Float64("budgetMB", mb(m.Budget)).
		Str("memoryLevel", string(m.Level))
}

func mb(b uint64) float64 { return round1(float64(b) / (1 << 20)) }

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
