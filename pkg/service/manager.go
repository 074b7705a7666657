package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/logkey"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/confine"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
	"github.com/memvisor/memvisor/pkg/supervise"
)

// Errors of job operations, matched with errors.Is. registry.ErrNotFound,
// registry.ErrExists and registry.ErrActivePair pass through as well.
var (
	// ErrConflict is a state transition the job's state does not allow.
	ErrConflict = errors.New("invalid state transition")
	// ErrInvalid is a job spec with bad fields; see InputError.
	ErrInvalid = errors.New("invalid job")
	// ErrClosed is returned once the manager is shutting down.
	ErrClosed = errors.New("service is shutting down")
)

// TransitionError says which action a state refused.
type TransitionError struct {
	ID     string
	Action string
	From   registry.Status
	Hint   string
}

func (e *TransitionError) Error() string {
	msg := fmt.Sprintf("cannot %s job %s: it is %s", e.Action, e.ID, e.From)
	if e.Hint != "" {
		msg += "; " + e.Hint
	}
	return msg
}

func (e *TransitionError) Unwrap() error { return ErrConflict }

// InputError lists the bad fields of a request body.
type InputError struct{ Fields job.Errors }

func (e *InputError) Error() string { return e.Fields.Error() }
func (e *InputError) Unwrap() error { return ErrInvalid }

// Manager owns the lifecycle of jobs: it queues them, starts at most max of
// them, each under its own Supervisor, and records every transition in the
// registry.
type Manager struct {
	reg     Registry
	factory Factory
	log     zerolog.Logger
	now     func() time.Time
	jobsDir string
	max     int
	// maxQueued bounds the queue; 0 is no bound.
	maxQueued int
	share     job.ByteSize
	defaults  job.Memory
	mask      bool
	metrics   *metrics
	policy    *confine.Policy
	// fleet is nil on a single host.
	fleet *fleet

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	specs specViews

	// schedMu serializes schedule, so that two calls do not pick the
	// same queued job.
	schedMu sync.Mutex
	// opMu serializes the transitions that the API starts on jobs that
	// are not running (pause or cancel of a queued job, resume, retry,
	// delete, prune). It may be held across registry writes.
	opMu sync.Mutex

	// mu guards the in-memory state below. It is never held across a
	// registry write or a removal of files, so that a status request
	// never waits for an fsync.
	mu      sync.Mutex
	closing bool
	active  map[string]*activeJob
	// starting counts the slots reserved by jobs being started.
	starting int
	hubs     map[string]*hub
}

type intent int

const (
	intentNone intent = iota
	intentPause
	intentCancel
)

type activeJob struct {
	id     string
	sup    Supervisor
	cancel context.CancelFunc
	done   chan struct{}
	intent intent
	log    zerolog.Logger
	level  Level
	// quiet: the Supervisor logs its memory events itself.
	quiet bool
	// In a fleet: the job's leases, their renewal, and whether one was
	// lost (the run's outcome is then not this node's to record).
	claim  *postgres.Claim
	keeper *postgres.Keeper
	lost   atomic.Bool
	// ran is closed when the supervisor's Run has returned, before the
	// leases are released.
	ran chan struct{}
	// snapshots stores the run's cache snapshots in the fleet.
	snapshots *snapshotUploader
}

func newManager(cfg Config, reg Registry, policy *confine.Policy, factory Factory, log zerolog.Logger, now func() time.Time, m *metrics) *Manager {
	ctx, cancel := context.WithCancel(context.Background())
	mg := &Manager{
		reg: reg, policy: policy, factory: factory, log: log, now: now, metrics: m,
		jobsDir: cfg.jobsDir(), max: cfg.MaxConcurrentJobs, maxQueued: cfg.MaxQueuedJobs,
		defaults: cfg.Memory.Defaults, mask: cfg.Log.MaskValues,
		ctx: ctx, cancel: cancel,
		active: map[string]*activeJob{}, hubs: map[string]*hub{},
	}
	if cfg.Memory.Budget > 0 {
		mg.share = cfg.Memory.Budget / job.ByteSize(cfg.MaxConcurrentJobs)
	}
	return mg
}

// recover requeues the jobs that were running when the last process
// stopped, so that they resume, and starts what fits.
func (m *Manager) recover() error {
	if m.fleet != nil {
		// A fleet's running jobs are leased: a job of a node that died
		// is claimed again once its lease runs out.
		if err := m.listenFleet(); err != nil {
			return err
		}
		m.schedule()
		return nil
	}
	recs, err := allJobs(bg, m.reg, registry.StatusRunning)
	if err != nil {
		return fmt.Errorf("list running jobs: %w", err)
	}
	for _, r := range recs {
		_, err := m.apply(r.ID, facts{Action: actRecover})
		if err != nil {
			return fmt.Errorf("requeue job %s: %w", r.ID, err)
		}
		m.log.Info().Str(keyJob, r.ID).Msg("requeued a job that was running when the service stopped")
	}
	m.schedule()
	return nil
}

// apply runs a transition on the stored record in one registry update: f
// gets the record's state as From, and the decision's state and reason
// are written. It returns the record written and the decision.
func (m *Manager) apply(id string, f facts, also ...func(*registry.Record, decision)) (registry.Record, error) {
	now := m.now()
	return m.reg.Update(bg, id, func(r *registry.Record) error {
		f.From = r.Status
		d, err := transition(f)
		if err != nil {
			var te *TransitionError
			if errors.As(err, &te) {
				te.ID = id
			}
			return err
		}
		if d.To != "" {
			r.Status, r.Reason, r.Updated = d.To, d.Reason, now
			if d.To.Finished() {
				r.Finished = now
			} else {
				r.Finished = time.Time{}
			}
		}
		if d.RetryFailed {
			r.RetryFailed = true
		}
		for _, fn := range also {
			fn(r, d)
		}
		return nil
	})
}

// Submit validates a job spec given as JSON, confines it, records it as
// queued, and starts it if a slot is free.
func (m *Manager) Submit(body []byte) (registry.Record, error) {
	spec, err := m.prepare(body)
	if err != nil {
		return registry.Record{}, err
	}
	plan, err := m.policy.Check(spec)
	if err != nil {
		return registry.Record{}, inputError(err)
	}
	m.mu.Lock()
	closing := m.closing
	m.mu.Unlock()
	if closing {
		return registry.Record{}, ErrClosed
	}
	// The checks passed: create a new target, with its marker, so that it
	// has an identity for the same-target check.
	if err := plan.Commit(); err != nil {
		return registry.Record{}, inputError(err)
	}
	spec = plan.Spec
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return registry.Record{}, fmt.Errorf("encode job: %w", err)
	}
	now := m.now()
	rec := registry.Record{
		ID: spec.ID, Spec: specJSON, Pair: pairKey(spec, plan.SourceID, plan.TargetID), Status: registry.StatusQueued,
		Created: now, Updated: now,
	}
	if err := m.reg.Create(bg, &rec, m.maxQueued); err != nil {
		if rerr := plan.Rollback(); rerr != nil {
			m.log.Warn().Err(rerr).Str(keyJob, rec.ID).Msg("a refused job's new target could not be removed")
		}
		return registry.Record{}, err
	}
	m.log.Info().Str(keyJob, rec.ID).Str("source", spec.Source.Type).Str("target", spec.Target.Type).
		Bool("dry_run", spec.DryRun).Msg("job queued")
	m.metrics.jobEvent("submitted")
	m.schedule()
	return m.reg.Get(bg, rec.ID)
}

// inputError makes field errors an InputError and passes others through.
func inputError(err error) error {
	var je job.Errors
	if errors.As(err, &je) {
		return &InputError{Fields: je}
	}
	return err
}

// prepare decodes a request body strictly onto the service's defaults
// (memory policy, budget share, a made-up id), with the service's state
// dir and no environment expansion.
func (m *Manager) prepare(body []byte) (job.Spec, error) {
	base := job.Default()
	base.ID = newID(m.now())
	base.Memory = m.defaults
	if m.share > 0 {
		base.Memory.Limit = m.share
	}
	spec, err := job.ParseAPI(body, base, m.jobsDir)
	if err != nil {
		return job.Spec{}, inputError(err)
	}
	if m.share > 0 && spec.Memory.Limit > m.share {
		return job.Spec{}, &InputError{Fields: job.Errors{{Field: "memory.limit",
			Message: fmt.Sprintf("must be at most this job's share of the service's budget, %s", m.share)}}}
	}
	if m.mask {
		spec.Log.MaskValues = true
	}
	return spec, nil
}

func newID(now time.Time) string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return "job-" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(r[:])
}

// pairKey identifies a job's source and target, credentials left out. A
// file is named by its device and inode (srcID, tgtID), so that two
// spellings of one file are one pair.
func pairKey(s job.Spec, srcID, tgtID string) string {
	norm := func(e job.Endpoint, id string) job.Endpoint {
		if id != "" {
			e.Path = id
		} else if e.Path != "" {
			if abs, err := filepath.Abs(e.Path); err == nil {
				e.Path = abs
			}
		}
		if e.Podio != nil {
			p := *e.Podio
			p.Auth, p.Silent, p.Hook = nil, nil, nil
			if p.APIURL == "" {
				p.APIURL = job.DefaultPodioAPIURL
			}
			e.Podio = &p
		}
		return e
	}
	data, _ := json.Marshal([2]job.Endpoint{norm(s.Source, srcID), norm(s.Target, tgtID)})
	return string(data)
}

// schedule starts queued jobs, oldest first, while slots are free. Its
// registry writes run outside m.mu: a slot is reserved under the lock
// first, and the registry's atomic transition from queued to running
// decides a race with a pause or cancel of the same job.
func (m *Manager) schedule() {
	m.schedMu.Lock()
	defer m.schedMu.Unlock()
	if m.fleet != nil {
		m.scheduleFleet()
		return
	}
	for m.reserveSlot() {
		p, err := m.reg.List(bg, registry.ListOptions{Statuses: []registry.Status{registry.StatusQueued}, Limit: 1})
		if err != nil || len(p.Jobs) == 0 {
			m.releaseSlot()
			if err != nil {
				m.log.Error().Err(err).Msg("list queued jobs")
			}
			return
		}
		m.start(p.Jobs[0], nil)
	}
}

// reserveSlot takes a slot for a job about to start, if one is free.
func (m *Manager) reserveSlot() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing || len(m.active)+m.starting >= m.max {
		return false
	}
	m.starting++
	return true
}

func (m *Manager) releaseSlot() {
	m.mu.Lock()
	m.starting--
	m.mu.Unlock()
}

// start starts a queued job in a reserved slot, and releases the slot. In
// a fleet, claim is the job's claim: Claim has marked it running.
func (m *Manager) start(rec registry.Record, claim *postgres.Claim) {
	log := m.log.With().Str(keyJob, rec.ID).Logger()
	release := func() {
		if claim != nil {
			m.releaseClaim(&activeJob{claim: claim, log: log})
		}
	}
	fail := func(err error) {
		log.Error().Err(err).Msg("job cannot start")
		defer release()
		if _, uerr := m.apply(rec.ID, facts{Action: actStartFailed, Err: err}); uerr != nil {
			log.Error().Err(uerr).Msg("record job failure")
		}
		m.metrics.jobEvent("failed")
		m.mu.Lock()
		m.starting--
		m.publishViewLocked(rec.ID, EventDone)
		m.mu.Unlock()
	}
	var spec job.Spec
	if err := json.Unmarshal(rec.Spec, &spec); err != nil {
		fail(fmt.Errorf("decode stored job spec: %w", err))
		return
	}
	if claim != nil {
		spec = withQuotaShares(spec, claim.QuotaShares)
	}
	aj := &activeJob{id: rec.ID, done: make(chan struct{}), ran: make(chan struct{}), log: log, level: LevelOK}
	m.mu.Lock()
	h := m.hubLocked(rec.ID)
	m.mu.Unlock()
	emit := func(ev supervise.Event) { m.onEvent(aj, h, ev) }
	if m.fleet != nil && m.fleet.relay != nil {
		emit = m.fleet.relay.wrap(rec.ID, emit)
	}
	sup, err := m.factory(spec, log, emit)
	if err != nil {
		fail(fmt.Errorf("create supervisor: %w", err))
		return
	}
	var updated registry.Record
	if claim != nil {
		updated, err = m.fleetStarted(rec.ID)
	} else {
		updated, err = m.apply(rec.ID, facts{Action: actStart}, func(r *registry.Record, _ decision) {
			if r.Started.IsZero() {
				r.Started = r.Updated
			}
			r.Runs++
		})
	}
	if err != nil {
		release()
		// Paused or cancelled since it was listed, or deleted.
		if !errors.Is(err, ErrConflict) && !errors.Is(err, registry.ErrNotFound) {
			log.Error().Err(err).Msg("record job start")
		}
		m.releaseSlot()
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	aj.sup, aj.cancel, aj.claim = sup, cancel, claim
	if q, ok := sup.(interface{ logsMemoryEvents() bool }); ok {
		aj.quiet = q.logsMemoryEvents()
	}
	m.mu.Lock()
	m.starting--
	m.active[rec.ID] = aj
	m.publishViewLocked(rec.ID, EventStatus)
	m.mu.Unlock()
	log.Info().Int("run", updated.Runs).Bool("retry_failed", updated.RetryFailed).Msg("job started")
	mode := StartMode{Resume: true, RetryFailed: updated.RetryFailed}
	if claim != nil {
		mode.Ledger = m.ledgerFor(aj, spec.Dir())
		m.keepClaim(aj)
		m.notifyChanged(rec.ID)
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(aj.done)
		out, err := sup.Run(ctx, mode)
		close(aj.ran)
		cancel()
		if claim != nil && m.fleetRunEnded(aj, err) {
			return
		}
		m.finish(aj, out, err)
	}()
}

// finish records how a run ended and starts the next queued job.
func (m *Manager) finish(aj *activeJob, out Outcome, runErr error) {
	m.mu.Lock()
	closing := m.closing
	in := aj.intent
	m.mu.Unlock()

	f := facts{
		Action: actRunEnded, Outcome: out.Status, OutcomeReason: out.Reason, RunErr: runErr,
		Canceled: errors.Is(runErr, context.Canceled), ShuttingDown: closing, Intent: in,
	}
	d := runEnded(f)
	status, reason := d.To, d.Reason
	final := out.Final
	now := m.now()
	rec, err := m.apply(aj.id, f, func(r *registry.Record, _ decision) {
		if final.Progress.Processed > 0 || final.Progress.TotalKnown || final.Progress.Batches > 0 {
			r.Counts = countsOf(final.Progress)
		}
		r.Restarts = addRestarts(r.Restarts, final.Restarts)
		r.GCRequests += int64(final.GCRequests)
		r.PeakRSS = max(r.PeakRSS, final.PeakRSS, final.Memory.RSS)
		if final.Memory.Budget > 0 {
			r.BudgetBytes = final.Memory.Budget
		}
		if r.Status == registry.StatusCompleted {
			r.RetryFailed = false
		}
	})
	if err != nil {
		aj.log.Error().Err(err).Msg("record job end")
	}
	ev := aj.log.Info()
	if status == registry.StatusFailed {
		ev = aj.log.Error()
	}
	ev.Str("status", string(status)).Str("reason", reason).Int64("processed", final.Progress.Processed).
		Int64("failed", final.Progress.Failed).Msg("job run ended")
	if status.Finished() {
		m.metrics.jobEvent(string(status))
		if !rec.Started.IsZero() {
			m.metrics.observeDuration(string(status), now.Sub(rec.Started))
		}
	}
	m.mu.Lock()
	delete(m.active, aj.id)
	kind := EventStatus
	if status.Finished() {
		kind = EventDone
	}
	m.publishViewLocked(aj.id, kind)
	m.mu.Unlock()
	if aj.claim != nil {
		// After the outcome is recorded: the next owner sees it.
		m.releaseClaim(aj)
		m.notifyChanged(aj.id)
	}
	m.schedule()
}

// addRestarts adds a run's restarts to the stored ones: the registry's
// counters are the edge where the supervisor's Restarts are converted.
func addRestarts(a registry.Restarts, b supervise.Restarts) registry.Restarts {
	return registry.Restarts{Graceful: a.Graceful + int64(b.Graceful), Crash: a.Crash + int64(b.Crash),
		Hang: a.Hang + int64(b.Hang), Kill: a.Kill + int64(b.Kill)}
}

// onEvent logs the memory events and passes every event to the job's hub.
func (m *Manager) onEvent(aj *activeJob, h *hub, ev supervise.Event) {
	if ev.Time.IsZero() {
		ev.Time = m.now()
	}
	switch {
	case aj.quiet:
	case ev.Kind == EventLevel:
		memLine(aj.log.Warn(), ev, "level "+string(ev.Level)).Str("from", string(aj.level)).Str("memoryLevel", string(ev.Level)).Msg("memory level changed")
		aj.level = ev.Level
	case ev.Kind == EventGC:
		memLine(aj.log.Warn(), ev, "gc request").Msg("asked the runner for GC")
	case ev.Kind == EventRestart:
		memLine(aj.log.Warn(), ev, "restart "+string(ev.RestartKind)).Str("kind", string(ev.RestartKind)).Msg("runner restarted")
	}
	h.publish(aj.id, ev)
}

// memLine adds the memory fields to a log line, with the one meaning
// internal/logkey gives each name.
func memLine(e *zerolog.Event, ev supervise.Event, context string) *zerolog.Event {
	e = e.Str(logkey.Context, context).Str(logkey.Reason, ev.Reason)
	if mem := ev.Memory; mem.Budget > 0 || mem.RSS > 0 {
		e = e.Float64(logkey.HeapObjectsMB, logkey.MB(mem.Heap)).
			Float64(logkey.BudgetMB, logkey.MB(mem.Budget)).
			Float64(logkey.RSSMB, logkey.MB(mem.RSS))
		if mem.Budget > 0 {
			e = e.Float64(logkey.HeapObjectsPercent, round1(float64(mem.Heap)*100/float64(mem.Budget))).
				Float64(logkey.RSSPercent, round1(float64(mem.RSS)*100/float64(mem.Budget)))
		}
	}
	return e
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

func (m *Manager) hubLocked(id string) *hub {
	h, ok := m.hubs[id]
	if !ok {
		h = newHub()
		m.hubs[id] = h
	}
	return h
}

// publishViewLocked sends the job's current view to its subscribers.
func (m *Manager) publishViewLocked(id string, kind EventKind) {
	h, ok := m.hubs[id]
	if !ok {
		return
	}
	rec, err := m.reg.Get(bg, id)
	if err != nil {
		return
	}
	var live *supervise.Status
	if aj, ok := m.active[id]; ok && aj.sup != nil {
		s := aj.sup.Snapshot()
		live = &s
	}
	h.publishView(kind, m.viewOf(rec, live), m.now())
	if kind == EventDone {
		h.close()
		delete(m.hubs, id)
	}
}

func (m *Manager) viewOf(rec registry.Record, live *supervise.Status) JobView {
	return viewOf(m.specs.get(rec), rec, live)
}

// Get returns a job's view, live while it runs.
func (m *Manager) Get(id string) (JobView, error) {
	rec, err := m.reg.Get(bg, id)
	if err != nil {
		return JobView{}, err
	}
	return m.view(rec), nil
}

func (m *Manager) view(rec registry.Record) JobView {
	m.mu.Lock()
	aj, ok := m.active[rec.ID]
	m.mu.Unlock()
	var v JobView
	if ok && rec.Status == registry.StatusRunning {
		s := aj.sup.Snapshot()
		v = m.viewOf(rec, &s)
	} else {
		v = m.viewOf(rec, nil)
	}
	if rec.Status == registry.StatusRunning {
		v.Node = m.owner(rec.ID)
	}
	return v
}

// List returns a page of jobs.
func (m *Manager) List(opt registry.ListOptions) ([]JobView, string, error) {
	p, err := m.reg.List(bg, opt)
	if err != nil {
		return nil, "", err
	}
	out := make([]JobView, 0, len(p.Jobs))
	for _, r := range p.Jobs {
		out = append(out, m.view(r))
	}
	return out, p.NextCursor, nil
}

// Pause drains a running job and waits until it is paused; a queued job is
// paused at once.
func (m *Manager) Pause(ctx context.Context, id string) (JobView, error) {
	return m.stop(ctx, id, intentPause)
}

// Cancel stops a running job and waits until it is cancelled; a queued or
// paused job is cancelled at once.
func (m *Manager) Cancel(ctx context.Context, id string) (JobView, error) {
	return m.stop(ctx, id, intentCancel)
}

func (m *Manager) stop(ctx context.Context, id string, in intent) (JobView, error) {
	act := actPause
	if in == intentCancel {
		act = actCancel
	}
	m.opMu.Lock()
	m.mu.Lock()
	if aj, ok := m.active[id]; ok {
		if _, err := transition(facts{From: registry.StatusRunning, Action: act, Running: true, Stopping: aj.intent != intentNone}); err != nil {
			m.mu.Unlock()
			m.opMu.Unlock()
			var te *TransitionError
			if errors.As(err, &te) {
				te.ID = id
			}
			return JobView{}, err
		}
		aj.intent = in
		m.mu.Unlock()
		m.opMu.Unlock()
		var err error
		if in == intentCancel {
			err = aj.sup.Cancel(ctx)
		} else {
			err = aj.sup.Pause(ctx)
		}
		if err != nil {
			return JobView{}, fmt.Errorf("%s job %s: %w", act, id, err)
		}
		select {
		case <-aj.done:
		case <-ctx.Done():
			return JobView{}, fmt.Errorf("wait for job %s to %s: %w", id, act, ctx.Err())
		}
		return m.Get(id)
	}
	m.mu.Unlock()
	if m.fleet != nil {
		if node := m.owner(id); node != "" && node != m.fleet.node {
			m.opMu.Unlock()
			return m.relayStop(ctx, id, node, in)
		}
	}
	defer m.opMu.Unlock()
	rec, err := m.apply(id, facts{Action: act})
	if err != nil {
		return JobView{}, err
	}
	m.log.Info().Str(keyJob, id).Str("status", string(rec.Status)).Msg("job " + string(rec.Status))
	kind := EventStatus
	if rec.Status.Finished() {
		kind = EventDone
		m.metrics.jobEvent(string(rec.Status))
	}
	m.mu.Lock()
	m.publishViewLocked(id, kind)
	m.mu.Unlock()
	return m.viewOf(rec, nil), nil
}

// Resume queues a paused or failed job; it continues from its checkpoint.
func (m *Manager) Resume(id string) (JobView, error) {
	return m.requeue(id, facts{Action: actResume})
}

// RetryFailed queues a finished job to process its failed items again.
func (m *Manager) RetryFailed(id string) (JobView, error) {
	return m.requeue(id, facts{Action: actRetry, HasFailedItems: m.hasFailedItems(id)})
}

// requeue applies a transition that makes a finished or paused job queued
// again. The registry refuses it if another active job has taken the same
// source and target meanwhile.
func (m *Manager) requeue(id string, f facts) (JobView, error) {
	m.mu.Lock()
	closing := m.closing
	m.mu.Unlock()
	if closing {
		return JobView{}, ErrClosed
	}
	m.opMu.Lock()
	rec, err := m.apply(id, f)
	m.opMu.Unlock()
	if err != nil {
		return JobView{}, err
	}
	m.log.Info().Str(keyJob, id).Bool("retry_failed", rec.RetryFailed).Msg("job queued again")
	m.mu.Lock()
	m.hubLocked(id)
	m.publishViewLocked(id, EventStatus)
	m.mu.Unlock()
	m.schedule()
	return m.Get(id)
}

// Delete removes a finished job and its state directory.
func (m *Manager) Delete(id string) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	rec, err := m.reg.Get(bg, id)
	if err != nil {
		return err
	}
	if _, err := transition(facts{From: rec.Status, Action: actDelete}); err != nil {
		var te *TransitionError
		if errors.As(err, &te) {
			te.ID = id
		}
		return err
	}
	return m.remove(rec)
}

// remove deletes a job's record, then its state directory, with opMu held
// and m.mu not.
func (m *Manager) remove(rec registry.Record) error {
	if err := m.reg.Delete(bg, rec.ID); err != nil {
		return err
	}
	m.mu.Lock()
	m.specs.forget(rec)
	if h, ok := m.hubs[rec.ID]; ok {
		h.close()
		delete(m.hubs, rec.ID)
	}
	m.mu.Unlock()
	dir := filepath.Join(m.jobsDir, rec.ID)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove job state %s: %w", dir, err)
	}
	m.log.Info().Str(keyJob, rec.ID).Msg("job deleted")
	return nil
}

// prune deletes the finished jobs that ended before cutoff.
func (m *Manager) prune(cutoff time.Time) (int, error) {
	recs, err := allJobs(bg, m.reg, registry.StatusCompleted, registry.StatusFailed, registry.StatusCancelled)
	if err != nil {
		return 0, err
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	n := 0
	for _, r := range recs {
		if r.Finished.IsZero() || !r.Finished.Before(cutoff) {
			continue
		}
		// Resumed or retried since the list was read: keep it.
		if cur, err := m.reg.Get(bg, r.ID); err != nil || !cur.Status.Finished() {
			continue
		}
		if err := m.remove(r); err != nil {
			if errors.Is(err, registry.ErrNotFound) {
				// In a fleet, another node pruned it first.
				continue
			}
			return n, err
		}
		n++
	}
	return n, nil
}

// persistProgress stores the live counters of the running jobs, so that a
// job's figures survive a crash of the service.
func (m *Manager) persistProgress() {
	m.mu.Lock()
	snaps := make(map[string]supervise.Status, len(m.active))
	for id, aj := range m.active {
		if aj.claim != nil && aj.claim.Fence() != nil {
			// Another node may own the job now.
			continue
		}
		snaps[id] = aj.sup.Snapshot()
	}
	m.mu.Unlock()
	for id, s := range snaps {
		_, _ = m.reg.Update(bg, id, func(r *registry.Record) error {
			if r.Status != registry.StatusRunning {
				return errSkip
			}
			r.Counts = countsOf(s.Progress)
			if s.Memory.Budget > 0 {
				r.BudgetBytes = s.Memory.Budget
			}
			return nil
		})
		// Other nodes' SSE clients of the job get the counts just written.
		m.notifyChanged(id)
	}
}

var errSkip = errors.New("skip")

// bg is the context of registry calls that no request bounds: a job's
// transitions must be recorded even while the service shuts down.
var bg = context.Background()

// ping proves that the manager's lock and the registry answer, for the
// systemd watchdog.
func (m *Manager) ping() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.reg.List(bg, registry.ListOptions{Limit: 1})
	return err
}

// subscribe returns a job's hub subscription and its first frame.
func (m *Manager) subscribe(id string) (*hub, *subscriber, []byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, err := m.reg.Get(bg, id)
	if err != nil {
		return nil, nil, nil, false, err
	}
	var live *supervise.Status
	if aj, ok := m.active[id]; ok && aj.sup != nil {
		s := aj.sup.Snapshot()
		live = &s
	}
	v := m.viewOf(rec, live)
	finished := rec.Status.Finished()
	h := m.hubLocked(id)
	if finished {
		// A finished job's stream is a snapshot and a done event.
		delete(m.hubs, id)
		h.close()
	}
	s, hist, marks := h.subscribe()
	return h, s, h.snapshotFrame(v, hist, marks, m.now()), finished, nil
}

// heapProfile fetches a running job's heap profile.
func (m *Manager) heapProfile(ctx context.Context, id string) ([]byte, error) {
	m.mu.Lock()
	aj, ok := m.active[id]
	m.mu.Unlock()
	if !ok {
		rec, err := m.reg.Get(bg, id)
		if err != nil {
			return nil, err
		}
		if node := m.owner(id); node != "" && m.fleet != nil && node != m.fleet.node {
			return nil, &TransitionError{ID: id, Action: "profile", From: rec.Status, Hint: "it runs on node " + node + ": ask that node for its profile"}
		}
		return nil, &TransitionError{ID: id, Action: "profile", From: rec.Status, Hint: "only a running job has a runner to profile"}
	}
	return aj.sup.HeapProfile(ctx)
}

// activeSnapshots returns the snapshot of every running job.
func (m *Manager) activeSnapshots() map[string]supervise.Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]supervise.Status, len(m.active))
	for id, aj := range m.active {
		out[id] = aj.sup.Snapshot()
	}
	return out
}

// jobDir returns a job's state directory after checking that it exists.
func (m *Manager) jobDir(id string) (string, error) {
	if _, err := m.reg.Get(bg, id); err != nil {
		return "", err
	}
	return filepath.Join(m.jobsDir, id), nil
}

// close drains every running job, waiting at most until ctx is done, and
// stops starting new ones. Drained jobs are recorded as queued. extend is
// called now and then while jobs are still draining.
func (m *Manager) close(ctx context.Context, extend func()) error {
	m.mu.Lock()
	m.closing = true
	n := len(m.active)
	for _, h := range m.hubs {
		h.close()
	}
	m.hubs = map[string]*hub{}
	m.mu.Unlock()
	if n > 0 {
		m.log.Info().Int("jobs", n).Msg("draining running jobs")
	}
	m.cancel()
	done := make(chan struct{})
	go func() { m.wg.Wait(); m.closeFleet(); close(done) }()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	if extend != nil {
		extend()
	}
	for {
		select {
		case <-done:
			return nil
		case <-t.C:
			if extend != nil {
				extend()
			}
		case <-ctx.Done():
			m.mu.Lock()
			left := len(m.active)
			m.mu.Unlock()
			return fmt.Errorf("drain %d running jobs: %w", left, ctx.Err())
		}
	}
}
