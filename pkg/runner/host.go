package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"sync"
	"time"

	"github.com/gofrs/flock"
	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/logkey"
	"github.com/memvisor/memvisor/internal/memstat"
	"github.com/memvisor/memvisor/pkg/batcher"
	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/plugin"
)

// Errors. They are the plugin's sentinels, so that errors.Is works on the
// supervisor's side of the RPC too.
var (
	// ErrLocked means another runner holds the job's lock.
	ErrLocked = plugin.ErrJobLocked
	// ErrStarted means Start was called twice.
	ErrStarted = plugin.ErrAlreadyStarted
	// ErrNotStarted means a job call came before Start.
	ErrNotStarted = plugin.ErrNotStarted
)

// LockFile is the runner's lock in the job's state directory. The kernel
// releases it when the runner dies, however it dies.
const LockFile = "job.lock"

// Host runs one job in this process and answers for it: it is the
// plugin.Runner that cmd/runner serves, and what `runner run` drives
// directly.
type Host struct {
	log zerolog.Logger
	now func() time.Time

	mu       sync.Mutex
	state    plugin.State
	errMsg   string
	spec     job.Spec
	b        *batcher.Batcher
	done     chan struct{}
	result   batcher.Result
	runErr   error
	cancel   context.CancelFunc
	watchers map[chan plugin.Event]struct{}
	rate     rateMeter
	limit    int64
	// lastCheckpointEvent is when the last checkpoint event went out.
	lastCheckpointEvent time.Time

	// drainReason and drainStart are set by the first drain asked for,
	// by the supervisor or by the guard; drainTook once it committed.
	drainReason plugin.DrainReason
	drainStart  time.Time
	drainTook   time.Duration

	guard *guard
	inj   *injector
	gc    *gcTuner
	lock  *flock.Flock
	wg    sync.WaitGroup
}

var _ plugin.Runner = (*Host)(nil)

// New returns an idle Host.
func New(log zerolog.Logger) *Host {
	h := &Host{
		log:      log,
		now:      time.Now,
		state:    plugin.StateIdle,
		watchers: map[chan plugin.Event]struct{}{},
		inj:      newInjector(),
		gc:       newGCTuner(defaultHeadroom),
		guard:    newGuard(log),
		done:     make(chan struct{}),
	}
	h.guard.beforeGC = h.inj.releaseSpike
	h.guard.drain = h.guardDrain
	return h
}

// Start parses the job, takes its lock, opens its connectors and runs it in
// the background.
func (h *Host) Start(ctx context.Context, req plugin.StartRequest) error {
	spec, err := job.ParseJSON(req.Job)
	if err != nil {
		return fmt.Errorf("%w: %w", plugin.ErrInvalidJob, err)
	}
	return h.StartSpec(ctx, spec, req)
}

// StartSpec is Start with a parsed spec.
func (h *Host) StartSpec(ctx context.Context, spec job.Spec, req plugin.StartRequest) error {
	h.inj.gate()
	h.mu.Lock()
	if h.state != plugin.StateIdle {
		h.mu.Unlock()
		return ErrStarted
	}
	h.state = plugin.StateStarting
	h.spec = spec
	h.mu.Unlock()

	fail := func(err error) error {
		h.mu.Lock()
		h.state, h.errMsg = plugin.StateIdle, ""
		h.mu.Unlock()
		return err
	}
	if spec.Inject.CrashOnStart {
		h.log.Error().Str("inject", "crash_on_start").Msg("injected crash at start")
		panic("injected fault: crash_on_start")
	}
	dir := spec.Dir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(fmt.Errorf("create state directory: %w", err))
	}
	lk := flock.New(filepath.Join(dir, LockFile))
	ok, err := lk.TryLock()
	if err != nil {
		return fail(fmt.Errorf("lock job %s: %w", spec.ID, err))
	}
	if !ok {
		holder, _ := os.ReadFile(filepath.Join(dir, LockFile))
		return fail(fmt.Errorf("start job %s: %w (pid %s)", spec.ID, ErrLocked, bytes.TrimSpace(holder)))
	}
	// The pid in the lock file is for people; the lock itself is the flock.
	_ = os.WriteFile(filepath.Join(dir, LockFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)

	limit := int64(spec.Memory.Limit)
	if limit == 0 {
		if l := debug.SetMemoryLimit(-1); l > 0 && l < 1<<62 {
			limit = l
		}
	}
	h.limit = limit
	h.inj.configure(spec.Inject, dir, h.log)
	if req.Guard != (plugin.Guard{}) {
		h.guard.set(req.Guard)
	}

	src, err := openSource(ctx, spec, h.log)
	if err != nil {
		lk.Unlock()
		return fail(err)
	}
	tgt, err := openTarget(ctx, spec, h.log)
	if err != nil {
		src.Close()
		lk.Unlock()
		return fail(err)
	}
	if d := spec.Inject.SlowWrite; d > 0 {
		tgt = slowTarget{Target: tgt, d: d.D()}
	}
	var (
		fence  *leaseFence
		remote batcher.Remote
		fenceF func() error
	)
	if req.Ledger != nil {
		if fence, err = newLeaseFence(ctx, req.Ledger, h.log); err != nil {
			src.Close()
			tgt.Close()
			lk.Unlock()
			return fail(fmt.Errorf("start job %s: %w", spec.ID, err))
		}
		remote, fenceF = ledgerRemote{req.Ledger}, fence.check
	}
	b, err := batcher.New(batcher.Options{
		Spec: spec, Source: src, Target: tgt, Dir: dir, Logger: h.log,
		Resume: req.Resume, RetryFailed: req.RetryFailed,
		BeforeItem:  h.inj.beforeItem,
		BeforeGC:    h.inj.releaseSpike,
		AfterCommit: h.afterCommit,
		AfterWrite:  h.guard.afterWrite,
		Limit:       limit,
		Remote:      remote,
		Fence:       fenceF,
	})
	if err != nil {
		src.Close()
		tgt.Close()
		lk.Unlock()
		return fail(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	h.mu.Lock()
	h.b, h.cancel, h.lock = b, cancel, lk
	h.rate.reset(h.now(), b.Progress().Processed)
	h.mu.Unlock()

	h.wg.Add(4)
	go func() {
		defer h.wg.Done()
		h.run(runCtx, b, src, tgt, lk)
	}()
	go func() {
		defer h.wg.Done()
		h.tick(runCtx)
	}()
	go func() {
		defer h.wg.Done()
		h.guard.run(runCtx, h.done)
	}()
	go func() {
		defer h.wg.Done()
		h.inj.leakOverTime(runCtx, h.done)
	}()
	if fence != nil {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			fence.run(runCtx, h.done)
		}()
	}
	return nil
}

func (h *Host) run(ctx context.Context, b *batcher.Batcher, src connector.Source, tgt connector.Target, lk *flock.Flock) {
	h.setState(plugin.StateRunning)
	res, err := b.Run(ctx)
	h.mu.Lock()
	if res.Status == batcher.StatusDrained && !h.drainStart.IsZero() {
		// The checkpoint is durable now; closing the connectors is not
		// part of the drain.
		h.drainTook = h.now().Sub(h.drainStart)
	}
	h.mu.Unlock()
	cerr := errors.Join(src.Close(), tgt.Close())
	if err == nil && cerr != nil {
		err = fmt.Errorf("close connectors: %w", cerr)
	}
	h.mu.Lock()
	h.result, h.runErr = res, err
	switch {
	case err != nil && errors.Is(err, context.Canceled):
		h.state, h.errMsg = plugin.StateCancelled, "aborted"
	case err != nil:
		h.state, h.errMsg = plugin.StateFailed, err.Error()
	case res.Status == batcher.StatusDrained:
		h.state = plugin.StateDrained
		if h.drainReason == "" {
			h.drainReason = plugin.DrainRequested
		}
		h.log.Info().Str("reason", string(h.drainReason)).Dur("took", h.drainTook).
			Int64("seq", res.Checkpoint.Seq).Int64("offset", res.Checkpoint.Source.Index).Msg("drained")
	case res.Status == batcher.StatusCancelled:
		h.state = plugin.StateCancelled
	default:
		h.state = plugin.StateCompleted
	}
	ev := h.eventLocked(plugin.EventDone)
	h.mu.Unlock()
	if err != nil {
		h.log.Error().Err(err).Str("job", h.spec.ID).Msg("job failed")
	}
	lk.Unlock()
	h.broadcast(ev)
	close(h.done)
}

// tick sends a progress event twice a second until the job ends.
func (h *Host) tick(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			h.inj.gate()
			h.mu.Lock()
			ev := h.eventLocked(plugin.EventProgress)
			h.mu.Unlock()
			h.broadcast(ev)
		}
	}
}

// checkpointEvery spaces checkpoint events out: a fast job commits hundreds
// of batches a second, and each event crosses the RPC to every watcher.
// The first commit after a start is always sent.
const checkpointEvery = 100 * time.Millisecond

func (h *Host) afterCommit(cp checkpoint.Checkpoint) {
	h.guard.poke()
	h.gc.tune()
	h.inj.afterCommit()
	h.mu.Lock()
	now := h.now()
	if !h.lastCheckpointEvent.IsZero() && now.Sub(h.lastCheckpointEvent) < checkpointEvery {
		h.mu.Unlock()
		return
	}
	h.lastCheckpointEvent = now
	ev := h.eventLocked(plugin.EventCheckpoint)
	h.mu.Unlock()
	h.broadcast(ev)
}

func (h *Host) setState(s plugin.State) {
	h.mu.Lock()
	if !h.state.Finished() {
		h.state = s
	}
	h.mu.Unlock()
}

// progressLocked converts the batcher's counters.
func (h *Host) progressLocked() plugin.Progress {
	if h.b == nil {
		return plugin.Progress{}
	}
	p := h.b.Progress()
	out := plugin.Progress{
		Total: p.Total, TotalKnown: p.TotalKnown,
		Processed: p.Processed, Created: p.Created, Updated: p.Updated,
		Skipped: p.Skipped, Failed: p.Failed,
		Batches: p.Batches, Offset: p.Offset,
		ErrorsByCategory: p.ByCategory,
	}
	out.ItemsPerSec = h.rate.observe(h.now(), p.Processed)
	if rl := h.b.RateLimitedUntil(); rl.After(h.now()) {
		out.RateLimitedUntil = rl
	}
	return out
}

func (h *Host) eventLocked(kind plugin.EventKind) plugin.Event {
	ev := plugin.Event{Kind: kind, Time: h.now(), State: h.state, Progress: h.progressLocked(), Error: h.errMsg}
	if h.state == plugin.StateDrained {
		ev.Reason, ev.DrainDuration = h.drainReason, h.drainTook
	}
	return ev
}

func (h *Host) broadcast(ev plugin.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.watchers {
		if ev.Kind == plugin.EventDone {
			// The last event must arrive: make room for it.
			select {
			case <-ch:
			default:
			}
		}
		select {
		case ch <- ev:
		default: // a slow watcher misses a progress event, not the job
		}
	}
}

// Stats reports memory and progress.
func (h *Host) Stats(ctx context.Context) (plugin.Stats, error) {
	h.inj.gate()
	m := memstat.Read()
	h.mu.Lock()
	defer h.mu.Unlock()
	s := plugin.Stats{
		State: h.state, Error: h.errMsg, PID: os.Getpid(),
		RSSBytes: m.RSSBytes, HeapObjectsBytes: m.HeapObjectsBytes, HeapGoalBytes: m.HeapGoalBytes,
		TotalMappedBytes: m.TotalMappedBytes, GCCount: m.GCCycles, GCCPUFraction: m.GCCPUFraction,
		Progress: h.progressLocked(),
		GuardGCs: h.guard.gcs.Load(),
	}
	if h.b != nil {
		s.CacheEntries, s.CacheBytes = h.b.CacheStats()
	}
	return s, nil
}

// GC collects garbage and returns memory to the OS.
func (h *Host) GC(ctx context.Context) (plugin.GCResult, error) {
	h.inj.gate()
	before := memstat.Read()
	start := time.Now()
	h.inj.releaseSpike()
	runtime.GC()
	debug.FreeOSMemory()
	after := memstat.Read()
	res := plugin.GCResult{
		Before:   plugin.MemFigures{RSSBytes: before.RSSBytes, HeapObjectsBytes: before.HeapObjectsBytes, TotalMappedBytes: before.TotalMappedBytes},
		After:    plugin.MemFigures{RSSBytes: after.RSSBytes, HeapObjectsBytes: after.HeapObjectsBytes, TotalMappedBytes: after.TotalMappedBytes},
		Duration: time.Since(start),
	}
	h.log.Info().Str(logkey.Context, "gc").Float64(logkey.RSSBeforeMB, logkey.MB(before.RSSBytes)).
		Float64(logkey.RSSAfterMB, logkey.MB(after.RSSBytes)).Float64(logkey.HeapObjectsAfterMB, logkey.MB(after.HeapObjectsBytes)).
		Dur("took", res.Duration).Msg("garbage collection on request")
	return res, nil
}

// Drain stops issuing writes, waits for the writes in flight, commits a
// checkpoint with the done items of the partial batch, snapshots the
// cache and returns the checkpoint.
func (h *Host) Drain(ctx context.Context, deadline time.Time) (plugin.Checkpoint, error) {
	h.inj.gate()
	b := h.beginDrain(plugin.DrainRequested)
	if b == nil {
		return plugin.Checkpoint{}, ErrNotStarted
	}
	h.inj.slowDrain()
	b.Drain()
	return h.waitCheckpoint(ctx, deadline)
}

// beginDrain records the first drain's reason and start, and returns the
// batcher to drain, or nil before Start.
func (h *Host) beginDrain(reason plugin.DrainReason) *batcher.Batcher {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.b != nil && !h.state.Finished() {
		h.state = plugin.StateDraining
		if h.drainReason == "" {
			h.drainReason, h.drainStart = reason, h.now()
		}
	}
	return h.b
}

// guardDrain is the guard's drain: the same path as the Drain RPC, with
// its own reason. climb is the sustained climb, in bytes a second, that
// made the guard drain before usage reached the line, or 0.
func (h *Host) guardDrain(usage, line uint64, climb float64) {
	b := h.beginDrain(plugin.DrainGuard)
	if b == nil {
		return
	}
	ev := h.log.Warn().Str("reason", string(plugin.DrainGuard)).Float64("rssMB", logkey.MB(usage)).
		Float64("drainLineMB", logkey.MB(line))
	if climb > 0 {
		ev.Msgf("memory guard: usage is climbing %.1f MiB/s and would cross the drain line before a drain could finish; draining",
			climb/(1<<20))
	} else {
		ev.Msg("memory guard: usage crossed the drain line; draining")
	}
	b.Drain()
}

// Cancel stops the job for good, as a drain does: no write is issued
// after it, and the done items of the batch in flight are committed.
func (h *Host) Cancel(ctx context.Context) error {
	h.inj.gate()
	h.mu.Lock()
	b := h.b
	h.mu.Unlock()
	if b == nil {
		return ErrNotStarted
	}
	b.Cancel()
	return nil
}

func (h *Host) waitCheckpoint(ctx context.Context, deadline time.Time) (plugin.Checkpoint, error) {
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	select {
	case <-h.done:
	case <-ctx.Done():
		return plugin.Checkpoint{}, fmt.Errorf("drain: %w", ctx.Err())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.runErr != nil {
		return plugin.Checkpoint{}, h.runErr
	}
	cp := h.result.Checkpoint
	return plugin.Checkpoint{Batches: cp.Seq, Offset: cp.Source.Index, Done: cp.Done, Progress: h.progressLocked(),
		DrainDuration: h.drainTook, Reason: h.drainReason}, nil
}

// Watch streams events until the job ends or ctx is done.
func (h *Host) Watch(ctx context.Context, fn func(plugin.Event) error) error {
	h.inj.gate()
	ch := make(chan plugin.Event, 16)
	h.mu.Lock()
	first := h.eventLocked(plugin.EventProgress)
	if h.state.Finished() && h.b != nil {
		first.Kind = plugin.EventDone
	}
	h.watchers[ch] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.watchers, ch)
		h.mu.Unlock()
	}()
	if err := fn(first); err != nil || first.Kind == plugin.EventDone {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-ch:
			if err := fn(ev); err != nil {
				return err
			}
			if ev.Kind == plugin.EventDone {
				return nil
			}
		}
	}
}

// HeapProfile returns a pprof heap profile.
func (h *Host) HeapProfile(ctx context.Context) ([]byte, error) {
	h.inj.gate()
	var buf bytes.Buffer
	if err := pprof.Lookup("heap").WriteTo(&buf, 0); err != nil {
		return nil, fmt.Errorf("write heap profile: %w", err)
	}
	return buf.Bytes(), nil
}

// Wait blocks until the job ends and returns how it ended.
func (h *Host) Wait(ctx context.Context) (batcher.Result, error) {
	select {
	case <-h.done:
	case <-ctx.Done():
		return batcher.Result{}, ctx.Err()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.result, h.runErr
}

// Done is closed when the job ends.
func (h *Host) Done() <-chan struct{} { return h.done }

// Snapshot returns the state and progress, for the standalone progress
// display.
func (h *Host) Snapshot() (plugin.State, plugin.Progress) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state, h.progressLocked()
}

// CacheBytes returns the match cache's estimated size.
func (h *Host) CacheBytes() int64 {
	h.mu.Lock()
	b := h.b
	h.mu.Unlock()
	if b == nil {
		return 0
	}
	_, n := b.CacheStats()
	return n
}

// Close aborts a job still running (without committing the batch in
// flight) and waits for the host's goroutines.
func (h *Host) Close() error {
	h.mu.Lock()
	cancel := h.cancel
	h.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	h.wg.Wait()
	return nil
}

// rateMeter turns a counter into a rate over the last few seconds.
type rateMeter struct {
	t0   time.Time
	n0   int64
	rate float64
}

func (r *rateMeter) reset(now time.Time, n int64) { r.t0, r.n0, r.rate = now, n, 0 }

func (r *rateMeter) observe(now time.Time, n int64) float64 {
	dt := now.Sub(r.t0).Seconds()
	if dt >= 2 {
		inst := float64(n-r.n0) / dt
		if r.rate == 0 {
			r.rate = inst
		} else {
			r.rate = 0.5*r.rate + 0.5*inst
		}
		r.t0, r.n0 = now, n
	}
	return r.rate
}

// SetGuard replaces the memory guard's lines; they are checked at once.
func (h *Host) SetGuard(_ context.Context, g plugin.Guard) error {
	h.inj.gate()
	h.guard.set(g)
	return nil
}

// Guard returns the memory guard's lines.
func (h *Host) Guard() plugin.Guard { return h.guard.lines() }

// DrainReason says why the job drained, once it has.
func (h *Host) DrainReason() plugin.DrainReason {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != plugin.StateDrained {
		return ""
	}
	return h.drainReason
}
