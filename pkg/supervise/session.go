package supervise

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/memvisor/memvisor/internal/logkey"
	"github.com/memvisor/memvisor/plugin"
)

// A session is one runner's life: started, watched, ended. Its select
// loop only records what happened into facts; decide, a pure function,
// turns the facts into the outcome (docs/design.md, "Graceful restart
// protocol"). The Supervisor strings sessions together.
type session struct {
	s          *Supervisor
	c          *plugin.Client
	r          plugin.Runner
	pid        int
	interval   time.Duration
	rpcTimeout time.Duration
	drainLimit time.Duration

	actx   context.Context // the session's own calls; cancelled at its end
	cancel context.CancelFunc
	wg     sync.WaitGroup
	timers []Timer

	statsCh  chan statsResult
	watchCh  chan plugin.Event
	watchErr chan error
	rpcCh    chan rpcResult

	f facts

	// Loop mechanics, not facts about the runner.
	gcInFlight   bool
	cancelSent   bool
	cancelTimer  <-chan time.Time
	drainSince   time.Time
	watchEnded   bool
	drainedStats bool // Stats said drained, on its own; the Watch stream says why
}

// drainPurpose says why the supervisor asked for a drain.
type drainPurpose int

const (
	drainNone drainPurpose = iota
	drainRestart
	drainPause
)

// endKind says how a runner's session ended; endNone while it runs.
type endKind int

const (
	endNone endKind = iota
	// endInterrupted: ctx was cancelled while the runner started.
	endInterrupted
	// endRefused: Start returned an error that a restart cannot cure.
	endRefused
	// endState: the runner reported an end state (Stats or Watch).
	endState
	// endDrained: the Drain asked for answered with a checkpoint.
	endDrained
	// endExited: the process exited, or could not be started.
	endExited
	// endHang: the runner missed an RPC deadline and was killed.
	endHang
	// endKilled: usage reached the kill line and the runner was killed.
	endKilled
	// endDrainFailed: the Drain asked for returned another error.
	endDrainFailed
	// endCancelFailed: Cancel failed, or the runner did not stop in time.
	endCancelFailed
	// endAbort: the user asked for a kill without a drain.
	endAbort
)

// facts is what happened to one runner: what was asked of it, and how it
// ended.
type facts struct {
	// drain is the drain the supervisor asked for, and drainReason why.
	drain       drainPurpose
	drainReason string
	// cancel: the user cancelled the job (Cancel sent, or to be sent
	// once the drain in flight is done).
	cancel bool

	end endKind
	// state is the end state the runner reported (endState).
	state plugin.State
	// guard: the runner drained on its own because its memory guard
	// crossed the drain line (endState with StateDrained).
	guard bool
	// done: the drain's checkpoint says the job is complete (endDrained).
	done bool
	// reason is what the end cause says: the runner's error, how the
	// process exited, which call it did not answer, the kill reason.
	reason string
}

// outcome is how one runner ended.
type outcome struct {
	final      bool // the run is over, with status
	status     string
	restart    RestartKind // otherwise, restart for this reason
	reason     string
	progressed bool
}

// Reasons of outcomes that decide writes itself.
const (
	abortReason        = "aborted: the runner was killed without a drain; the job resumes from its last checkpoint"
	guardReason        = string(plugin.DrainGuard)
	selfDrainedReason  = "runner drained on its own"
	runnerFailedReason = "runner reported the job failed"
)

// decide turns the facts of an ended session into its outcome. The rule
// for a runner that stopped without finishing the job is written once:
// a cancel asked for makes the job cancelled, else a pause makes it
// paused, else the runner restarts from its checkpoint, with the kind
// that the end cause gives.
func decide(f facts) outcome {
	reason := f.reason
	var kind RestartKind
	switch f.end {
	case endNone:
		panic("supervise: decide on a session that has not ended")
	case endAbort:
		return outcome{final: true, status: StatusPaused, reason: abortReason}
	case endInterrupted:
		return outcome{final: true, status: StatusPaused, reason: reason}
	case endRefused:
		return outcome{final: true, status: StatusFailed, reason: reason}
	case endCancelFailed:
		return outcome{final: true, status: StatusCancelled, reason: reason}
	case endState:
		switch f.state {
		case plugin.StateCompleted:
			return outcome{final: true, status: StatusCompleted}
		case plugin.StateFailed:
			if reason == "" {
				reason = runnerFailedReason
			}
			return outcome{final: true, status: StatusFailed, reason: reason}
		case plugin.StateCancelled:
			return outcome{final: true, status: StatusCancelled, reason: "cancelled"}
		}
		kind, reason = RestartGraceful, selfDrainedReason
		if f.guard {
			reason = guardReason
		}
	case endDrained:
		if f.done {
			return outcome{final: true, status: StatusCompleted}
		}
		kind, reason = RestartGraceful, f.drainReason
	case endExited, endDrainFailed:
		kind = RestartCrash
	case endHang:
		kind = RestartHang
	case endKilled:
		kind = RestartKill
	}
	switch {
	case f.cancel:
		if f.end == endDrained {
			reason = "cancelled"
		}
		return outcome{final: true, status: StatusCancelled, reason: reason}
	case f.drain == drainPause:
		return outcome{final: true, status: StatusPaused, reason: reason}
	}
	return outcome{restart: kind, reason: reason}
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
			return decide(facts{end: endInterrupted, reason: "interrupted while a runner started"})
		}
		return decide(facts{end: endExited, reason: err.Error()})
	}
	defer c.KillNow() // a no-op when already stopped
	s.setClient(c)
	defer s.setClient(nil)
	s.policy.Reset()
	s.heap, s.heapTotal = 0, 0

	m := s.spec.Memory
	ss := &session{
		s: s, c: c, r: c.Runner(), pid: c.PID(),
		interval: m.SampleInterval.D(), rpcTimeout: m.RPCTimeout.D(), drainLimit: m.DrainTimeout.D(),
	}
	f := ss.start(req)
	if f.end == endNone {
		s.log.Info().Int(logkey.RunnerPID, c.PID()).Bool("resume", req.Resume).
			Float64(logkey.GuardGCMB, logkey.MB(req.Guard.GCBytes)).Float64(logkey.GuardDrainMB, logkey.MB(req.Guard.DrainBytes)).
			Msg("runner started")
		s.update(func(st *Status) { st.State = StateRunning })
		f = ss.run(ctx)
	}
	out := decide(f)
	out.progressed = s.high.Batches > base.Batches || s.high.Offset > base.Offset
	return out
}

// start calls Start and returns the facts of a runner that did not start
// (end is endNone when it did).
func (ss *session) start(req plugin.StartRequest) facts {
	c := ss.c
	sctx, cancel := context.WithTimeout(context.Background(), ss.rpcTimeout)
	err := ss.r.Start(sctx, req)
	cancel()
	switch {
	case err == nil:
		return facts{}
	case c.Exited() || errors.Is(err, plugin.ErrUnavailable):
		c.KillNow()
		return facts{end: endExited, reason: exitReason(c, "before it answered Start")}
	case errors.Is(err, context.DeadlineExceeded):
		c.KillNow()
		return facts{end: endHang, reason: fmt.Sprintf("runner did not answer Start within %s", ss.rpcTimeout)}
	case errors.Is(err, plugin.ErrJobLocked):
		c.KillNow()
		return facts{end: endExited, reason: err.Error()}
	}
	c.Kill()
	return facts{end: endRefused, reason: err.Error()}
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
	took time.Duration
}

// run supervises the started runner until it ends, and returns the facts.
func (ss *session) run(ctx context.Context) facts {
	s := ss.s
	ss.actx, ss.cancel = context.WithCancel(context.Background())
	defer func() {
		ss.cancel()
		ss.wg.Wait()
		for _, t := range ss.timers {
			t.Stop()
		}
	}()
	ss.statsCh = make(chan statsResult)
	ss.watchCh = make(chan plugin.Event)
	ss.watchErr = make(chan error, 1)
	ss.rpcCh = make(chan rpcResult, 4) // at most one GC, one drain, one cancel
	ss.wg.Add(2)
	go func() {
		defer ss.wg.Done()
		s.pollStats(ss.actx, ss.r, s.opts.StatsInterval, ss.rpcTimeout, ss.statsCh)
	}()
	go func() {
		defer ss.wg.Done()
		ss.watchErr <- ss.r.Watch(ss.actx, func(ev plugin.Event) error {
			select {
			case ss.watchCh <- ev:
				return nil
			case <-ss.actx.Done():
				return ss.actx.Err()
			}
		})
	}()

	ctxDone := ctx.Done()
	tick := s.clock.NewTicker(ss.interval)
	defer tick.Stop()
	for ss.f.end == endNone {
		select {
		case <-tick.C():
			ss.sample()
		case res := <-ss.statsCh:
			ss.onStats(res)
		case ev := <-ss.watchCh:
			s.takeProgress(ev.State, ev.Progress)
			if ev.Kind == plugin.EventDone {
				ss.ended(ev.State, ev.Error, &ev)
			}
		case err := <-ss.watchErr:
			ss.watchEnded = true
			if err != nil && !ss.c.Exited() && ss.actx.Err() == nil {
				s.log.Debug().Err(err).Msg("runner progress stream ended; polling Stats only")
			}
			if ss.drainedStats {
				ss.ended(plugin.StateDrained, "", nil)
			}
		case <-ss.c.Done():
			ss.onExit()
		case res := <-ss.rpcCh:
			ss.onRPC(res)
		case <-ss.cancelTimer:
			ss.c.KillNow()
			ss.f.end, ss.f.reason = endCancelFailed, "runner did not stop within drain_timeout after Cancel"
		case <-s.ctrl:
			ss.onControl()
		case <-ctxDone:
			ctxDone = nil
			if !ss.cancelSent {
				s.log.Info().Msg("stopping: draining the runner so that it commits its checkpoint")
				ss.startDrain(drainPause, "interrupted")
			}
		}
	}
	return ss.f
}

// call runs fn on a goroutine of the session and delivers its result to
// the loop.
func (ss *session) call(fn func() rpcResult) {
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		ss.rpcCh <- fn()
	}()
}

// sample reads memory, feeds the policy and carries out its actions.
func (ss *session) sample() {
	s := ss.s
	if ss.c.Exited() {
		return // Done says why
	}
	now := s.clock.Now()
	rss, err := s.rss(ss.pid)
	if err != nil {
		s.log.Debug().Err(err).Int(logkey.RunnerPID, ss.pid).Msg("read runner RSS")
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
			s.memLog(ev, "memory.level", mem).Str("from", string(a.From)).Str(logkey.Reason, a.Reason).
				Msg("memory level " + string(a.To))
			s.emit(Event{Kind: EventLevel, Time: now, Memory: mem, From: a.From, Level: a.To, Reason: a.Reason})
		case ActionGC:
			s.update(func(st *Status) { st.GCRequests++ })
			s.memLog(s.log.Warn(), "memory.gc", mem).Str(logkey.Reason, a.Reason).Msg("asking the runner to collect garbage")
			s.emit(Event{Kind: EventGC, Time: now, Memory: mem, Level: a.To, Reason: a.Reason})
			if !ss.gcInFlight {
				ss.gcInFlight = true
				ss.call(func() rpcResult {
					gctx, cancel := context.WithTimeout(ss.actx, ss.rpcTimeout)
					defer cancel()
					res, err := ss.r.GC(gctx)
					return rpcResult{kind: rpcGC, gc: res, err: err}
				})
			}
		case ActionRestart:
			s.memLog(s.log.Warn(), "memory.restart", mem).Str(logkey.Reason, a.Reason).
				Dur(logkey.DrainTime, s.policy.DrainTime()).Msg("draining the runner for a graceful restart")
			ss.startDrain(drainRestart, a.Reason)
		case ActionKill:
			s.memLog(s.log.Error(), "memory.kill", mem).Str(logkey.Reason, a.Reason).Msg("killing the runner")
			ss.c.KillNow()
			ss.f.end, ss.f.reason = endKilled, a.Reason
			return
		}
	}
}

// hang records a runner that missed the deadline of call, and kills it.
func (ss *session) hang(call string, timeout time.Duration) {
	reason := fmt.Sprintf("runner did not answer %s within %s", call, timeout)
	for _, a := range ss.s.policy.Unresponsive(call, timeout) {
		reason = a.Reason
	}
	ss.c.KillNow()
	ss.f.end, ss.f.reason = endHang, reason
}

func (ss *session) onStats(res statsResult) {
	s := ss.s
	if res.err != nil {
		if errors.Is(res.err, context.DeadlineExceeded) && !ss.c.Exited() {
			ss.hang("Stats", ss.rpcTimeout)
			return
		}
		if !ss.c.Exited() {
			s.log.Debug().Err(res.err).Msg("runner Stats")
		}
		return
	}
	s.takeStats(res.st)
	ss.ended(res.st.State, res.st.Error, nil)
}

// ended records a runner that reports the end state state, if it is
// one. ev is the Watch stream's done event, when that is what said so: it
// alone says why a runner drained on its own.
func (ss *session) ended(state plugin.State, msg string, ev *plugin.Event) {
	s := ss.s
	switch state {
	case plugin.StateCompleted, plugin.StateFailed, plugin.StateCancelled:
		ss.c.Kill()
		ss.f.end, ss.f.state, ss.f.reason = endState, state, msg
	case plugin.StateDrained:
		if ss.f.drain != drainNone {
			return // the Drain answer decides
		}
		if ev == nil && !ss.drainedStats && !ss.watchEnded {
			// The done event that says why is on its way.
			ss.drainedStats = true
			return
		}
		ss.f.end, ss.f.state = endState, state
		if ev != nil {
			ss.f.guard = ev.Reason == plugin.DrainGuard
			s.policy.DrainDone(ev.DrainDuration)
		}
		why := selfDrainedReason
		if ss.f.guard {
			why = "its memory guard crossed the drain line"
		}
		ev2 := s.log.Warn().Str(logkey.Context, "memory.restart").Str(logkey.Reason, why)
		if ev != nil {
			ev2 = ev2.Dur(logkey.DrainDuration, ev.DrainDuration)
		}
		ev2.Msg("the runner drained itself")
		ss.c.Kill()
	}
}

// onExit records a runner process that exited.
func (ss *session) onExit() {
	// The job may have ended just before the process did.
	sctx, cancel := context.WithTimeout(ss.actx, 100*time.Millisecond)
	st, err := ss.r.Stats(sctx)
	cancel()
	if err == nil {
		ss.drainedStats = true // the process is gone: no done event will come
		ss.ended(st.State, st.Error, nil)
		if ss.f.end != endNone {
			return
		}
	}
	reason := exitReason(ss.c, "while the job ran")
	ss.c.KillNow()
	ss.f.end, ss.f.reason = endExited, reason
}

func (ss *session) onRPC(res rpcResult) {
	s := ss.s
	c := ss.c
	switch res.kind {
	case rpcGC:
		ss.gcInFlight = false
		if res.err != nil {
			if errors.Is(res.err, context.DeadlineExceeded) && !c.Exited() {
				ss.hang("GC", ss.rpcTimeout)
				return
			}
			s.log.Debug().Err(res.err).Msg("runner GC")
			return
		}
		gc := res.gc
		s.log.Info().Str(logkey.Context, "memory.gc").
			Float64(logkey.RSSBeforeMB, logkey.MB(gc.Before.RSSBytes)).Float64(logkey.RSSAfterMB, logkey.MB(gc.After.RSSBytes)).
			Float64(logkey.HeapObjectsBeforeMB, logkey.MB(gc.Before.HeapObjectsBytes)).
			Float64(logkey.HeapObjectsAfterMB, logkey.MB(gc.After.HeapObjectsBytes)).
			Dur("took", gc.Duration).Msg("runner collected garbage")
		s.heap = gc.After.HeapObjectsBytes
		s.emit(Event{Kind: EventGC, Time: s.clock.Now(), Memory: s.Status().Memory, GC: &gc, Reason: "collected"})
		for _, a := range s.policy.GCDone(s.clock.Now(), gc.After.RSSBytes) {
			mem := s.memory(gc.After.RSSBytes, s.heap)
			s.memLog(s.log.Warn(), "memory.restart", mem).Str(logkey.Reason, a.Reason).
				Msg("draining the runner for a graceful restart")
			ss.startDrain(drainRestart, a.Reason)
		}

	case rpcDrain:
		if res.err != nil {
			switch {
			case c.Exited():
				return // Done says why
			case errors.Is(res.err, context.DeadlineExceeded):
				ss.hang("Drain", ss.drainLimit)
				return
			case errors.Is(res.err, plugin.ErrNotStarted) && ss.f.drain == drainPause:
				// Stopped before its first batch: nothing to commit.
				c.KillNow()
				ss.f.end, ss.f.reason = endDrainFailed, ss.f.drainReason
				return
			case errors.Is(res.err, plugin.ErrFinished):
				// The job ended first; Stats will say how.
				if st, err := ss.r.Stats(ss.actx); err == nil {
					if st.State == plugin.StateDrained {
						// Its own guard drained it first: the checkpoint
						// is committed all the same.
						s.takeStats(st)
						c.Kill()
						ss.f.end = endDrained
						return
					}
					ss.ended(st.State, st.Error, nil)
					if ss.f.end != endNone {
						return
					}
				}
			}
			c.KillNow()
			ss.f.end, ss.f.reason = endDrainFailed, "drain failed: "+res.err.Error()
			return
		}
		s.takeProgress(plugin.StateDrained, res.cp.Progress)
		s.high.Batches = max(s.high.Batches, res.cp.Batches)
		s.high.Offset = max(s.high.Offset, res.cp.Offset)
		took := res.cp.DrainDuration
		if took <= 0 {
			took = res.took // a runner that does not say: the call's own time
		}
		s.policy.DrainDone(took)
		s.log.Info().Str(logkey.Context, "memory.drain").Dur(logkey.DrainDuration, took).
			Dur(logkey.DrainTime, s.policy.DrainTime()).Int64("offset", res.cp.Offset).Msg("runner drained")
		c.Kill()
		ss.f.end, ss.f.done = endDrained, res.cp.Done

	case rpcCancel:
		if res.err != nil && !errors.Is(res.err, plugin.ErrFinished) {
			if c.Exited() {
				return
			}
			if errors.Is(res.err, context.DeadlineExceeded) {
				ss.hang("Cancel", ss.drainLimit)
				return
			}
			s.log.Warn().Err(res.err).Msg("runner Cancel")
			c.KillNow()
			ss.f.end, ss.f.reason = endCancelFailed, "cancel failed: "+res.err.Error()
		}
		// Otherwise the runner's state says when it is done.
	}
}

// onControl takes the user's pending requests.
func (ss *session) onControl() {
	s := ss.s
	pause, cancel, abort := s.takeControl()
	if abort {
		s.log.Warn().Msg("aborting: killing the runner without a drain")
		ss.c.KillNow()
		ss.f.end = endAbort
		return
	}
	if cancel {
		ss.f.cancel = true
		if ss.f.drain == drainNone && !ss.cancelSent {
			s.log.Info().Msg("cancelling the job: the runner stops issuing writes and commits")
			ss.startCancel()
		}
	}
	if pause && !ss.cancelSent {
		s.log.Info().Msg("pausing: draining the runner")
		ss.startDrain(drainPause, "paused")
	}
}

// startDrain asks the runner to drain, once; a pause asked for during a
// drain for a restart turns it into a drain for the pause.
func (ss *session) startDrain(purpose drainPurpose, reason string) {
	if ss.f.drain != drainNone {
		if purpose == drainPause {
			ss.f.drain = drainPause
		}
		return
	}
	ss.f.drain, ss.f.drainReason = purpose, reason
	s := ss.s
	s.update(func(st *Status) { st.State = StateDraining })
	ss.drainSince = s.clock.Now()
	deadline := ss.drainSince.Add(ss.drainLimit)
	ss.call(func() rpcResult {
		// The RPC gets a little longer than the runner's own deadline, so
		// a runner that honours it is not taken for hung.
		dctx, cancel := context.WithTimeout(ss.actx, ss.drainLimit+time.Second)
		defer cancel()
		start := time.Now()
		cp, err := ss.r.Drain(dctx, deadline)
		return rpcResult{kind: rpcDrain, cp: cp, err: err, took: time.Since(start)}
	})
}

func (ss *session) startCancel() {
	ss.cancelSent = true
	t := ss.s.clock.NewTimer(ss.drainLimit + time.Second)
	ss.timers = append(ss.timers, t)
	ss.cancelTimer = t.C()
	ss.call(func() rpcResult {
		cctx, cancel := context.WithTimeout(ss.actx, ss.drainLimit)
		defer cancel()
		return rpcResult{kind: rpcCancel, err: ss.r.Cancel(cctx)}
	})
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
