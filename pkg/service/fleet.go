package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
	"github.com/memvisor/memvisor/pkg/supervise"
)

// The kinds of the notices a fleet's nodes send each other.
const (
	// noticePause and noticeCancel ask the node that runs a job to stop it.
	noticePause  = "pause"
	noticeCancel = "cancel"
	// noticeChanged says a job's record changed (started, progressed,
	// ended): nodes with SSE clients of that job send them its view.
	noticeChanged = "changed"
)

// fleet is a Manager's part in a fleet of nodes that share one PostgreSQL
// database (docs/design.md, "Growing past one host"): the store holds the
// registry, the queue and the leases; the state directory, with every
// job's checkpoints, is on storage that every node reaches.
type fleet struct {
	store *postgres.Store
	node  string
	// relay sends this node's job events to the others' SSE clients.
	relay *relay

	// Listener goroutine, owned by the Manager.
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// openFleet opens the fleet's store when cfg has postgres_url.
func openFleet(ctx context.Context, cfg Config, log zerolog.Logger) (*postgres.Store, error) {
	opt := cfg.Fleet.Options()
	opt.QuotaKeys = postgres.PodioQuotaKeys(podioPrincipal)
	opt.Logger = log
	s, err := postgres.Open(ctx, string(cfg.Fleet.PostgresURL), opt)
	if err != nil {
		return nil, fmt.Errorf("open the fleet registry (postgres_url %s): %w", cfg.Fleet.PostgresURL, err)
	}
	return s, nil
}

// podioPrincipal names the Podio identity a job's calls count against
// without reading a secret: the client id, and the user name (from the
// variable username_env names) for the password flow, the app id for the
// app flow, or the credentials file. Jobs with the same principal share a
// quota key, so they take turns across the fleet.
func podioPrincipal(p job.Podio) (clientID, principal string, err error) {
	if p.Auth == nil {
		return "", fmt.Sprintf("app:%d", p.AppID), nil
	}
	a := *p.Auth
	switch {
	case a.Flow == job.PodioFlowApp:
		principal = fmt.Sprintf("app:%d", p.AppID)
	case a.UsernameEnv != "":
		principal = "user:" + os.Getenv(a.UsernameEnv)
	case a.CredentialsFile != "":
		principal = "file:" + a.CredentialsFile
	default:
		principal = a.Flow
	}
	return a.ClientID, principal, nil
}

// withQuotaShares gives each Podio end of a job claimed under
// podio_quota_shares N > 1 its part of the quota (quota_share): 1/N of
// each set of credentials, and 1/(2N) for each end when both ends use the
// same set, since each end paces its own calls. A larger quota_share the
// job set itself stays.
func withQuotaShares(spec job.Spec, shares int) job.Spec {
	if shares <= 1 {
		return spec
	}
	ends := []*job.Endpoint{&spec.Source, &spec.Target}
	keys := make([]string, len(ends))
	for i, e := range ends {
		// podioPrincipal never fails; Claim computed these keys already.
		keys[i], _ = postgres.EndpointQuotaKey(*e, podioPrincipal)
	}
	for i, e := range ends {
		if keys[i] == "" {
			continue
		}
		n := shares
		if keys[0] == keys[1] {
			n *= 2
		}
		p := *e.Podio
		p.QuotaShare = min(max(p.QuotaShare, n), job.MaxQuotaShare)
		e.Podio = &p
	}
	return spec
}

// scheduleFleet claims jobs from the shared queue while this node has free
// slots: queued jobs, and running jobs whose owner's lease ran out.
func (m *Manager) scheduleFleet() {
	for m.reserveSlot() {
		c, err := m.fleet.store.Claim(bg)
		if err != nil {
			m.releaseSlot()
			if !errors.Is(err, postgres.ErrNoJob) {
				m.log.Error().Err(err).Msg("claim a job from the fleet's queue")
			}
			return
		}
		m.log.Info().Str(keyJob, c.Record.ID).Int64("epoch", c.Job.Epoch()).Msg("claimed a job")
		m.start(c.Record, c)
	}
}

// keepClaim renews the claim's leases while the job runs, and stops the
// job's runner at once when one is lost: another node may own the job
// now, so this one must not write again.
func (m *Manager) keepClaim(aj *activeJob) {
	aj.keeper = m.fleet.store.Keep(aj.claim.Leases()...)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		// Lost closes when a renewal is refused. The local deadline of a
		// lease that could not be renewed at all (the database is
		// unreachable, or this process was stopped), and the loss of a
		// quota share, are seen by Fence, polled here, so that the runner
		// is killed before the database lets another node take the job.
		t := time.NewTicker(max(m.fleet.store.LeaseTTL()/30, 50*time.Millisecond))
		defer t.Stop()
	wait:
		for {
			select {
			case <-aj.ran:
				return
			case <-aj.claim.Job.Lost():
				break wait
			case <-t.C:
				if aj.claim.Fence() != nil {
					break wait
				}
			}
		}
		aj.lost.Store(true)
		aj.log.Error().Msg("lost the job's lease: killing its runner; the job resumes on the node that takes it")
		if a, ok := aj.sup.(interface{ abort() }); ok {
			a.abort()
		}
		aj.cancel()
	}()
}

// releaseClaim stops renewing a run's leases and gives them up, once its
// runner has stopped.
func (m *Manager) releaseClaim(aj *activeJob) {
	if aj.snapshots != nil {
		aj.snapshots.wait()
	}
	if aj.keeper != nil {
		aj.keeper.Close()
	}
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()
	if err := aj.claim.Release(ctx); err != nil {
		aj.log.Warn().Err(err).Msg("release the job's lease; it runs out by itself")
	}
}

// fleetStarted records a claimed job's run; Claim has marked it running.
func (m *Manager) fleetStarted(id string) (registry.Record, error) {
	now := m.now()
	return m.reg.Update(bg, id, func(r *registry.Record) error {
		if r.Status != registry.StatusRunning {
			return &TransitionError{ID: id, Action: string(actStart), From: r.Status, Hint: "stopped since it was claimed"}
		}
		if r.Started.IsZero() {
			r.Started = now
		}
		r.Updated = now
		r.Runs++
		return nil
	})
}

// owner returns the node whose live lease runs job id, or "".
func (m *Manager) owner(id string) string {
	if m.fleet == nil {
		return ""
	}
	node, live, err := m.fleet.store.Owner(bg, id)
	if err != nil || !live {
		return ""
	}
	return node
}

// relayStop asks the node that runs job id to pause or cancel it, and
// waits until the registry shows the job stopped.
func (m *Manager) relayStop(ctx context.Context, id, node string, in intent) (JobView, error) {
	kind := noticePause
	if in == intentCancel {
		kind = noticeCancel
	}
	if err := m.fleet.store.Notify(ctx, postgres.Notice{JobID: id, Kind: kind}); err != nil {
		return JobView{}, err
	}
	m.log.Info().Str(keyJob, id).Str("node", node).Str("action", kind).Msg("relayed to the node running the job")
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		rec, err := m.reg.Get(bg, id)
		if err != nil {
			return JobView{}, err
		}
		if rec.Status != registry.StatusRunning {
			return m.view(rec), nil
		}
		select {
		case <-ctx.Done():
			return JobView{}, fmt.Errorf("wait for job %s to %s on node %s: %w", id, kind, node, ctx.Err())
		case <-t.C:
		}
	}
}

// notifyChanged tells the other nodes that job id's record changed, for
// their SSE clients.
func (m *Manager) notifyChanged(id string) {
	if m.fleet == nil {
		return
	}
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	if err := m.fleet.store.Notify(ctx, postgres.Notice{JobID: id, Kind: noticeChanged}); err != nil {
		m.log.Debug().Err(err).Str(keyJob, id).Msg("notify the fleet")
	}
}

// listenFleet acts on the fleet's notices until the Manager closes: the
// owner of a job pauses or cancels it, and every node sends a changed
// job's view to its SSE clients.
func (m *Manager) listenFleet() error {
	ctx, cancel := context.WithCancel(context.Background())
	l, err := m.fleet.store.Listen(ctx)
	if err != nil {
		cancel()
		return fmt.Errorf("listen for the fleet's notices: %w", err)
	}
	m.fleet.cancel = cancel
	m.startRelay(ctx)
	m.fleet.wg.Add(1)
	go func() {
		defer m.fleet.wg.Done()
		defer l.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case n, ok := <-l.C():
				if !ok {
					return
				}
				m.onNotice(ctx, n)
			}
		}
	}()
	return nil
}

func (m *Manager) onNotice(ctx context.Context, n postgres.Notice) {
	switch n.Kind {
	case noticePause, noticeCancel:
		m.mu.Lock()
		_, ok := m.active[n.JobID]
		m.mu.Unlock()
		if !ok {
			return
		}
		in := intentPause
		if n.Kind == noticeCancel {
			in = intentCancel
		}
		m.log.Info().Str(keyJob, n.JobID).Str("from_node", n.Node).Str("action", n.Kind).Msg("relayed request")
		m.fleet.wg.Add(1)
		go func() {
			defer m.fleet.wg.Done()
			if _, err := m.stop(ctx, n.JobID, in); err != nil && ctx.Err() == nil {
				m.log.Warn().Err(err).Str(keyJob, n.JobID).Msg("relayed " + n.Kind)
			}
		}()
	case noticeChanged:
		if n.Node == m.fleet.node {
			return
		}
		rec, err := m.reg.Get(bg, n.JobID)
		if err != nil {
			return
		}
		kind := EventStatus
		if rec.Status.Finished() {
			kind = EventDone
		}
		m.mu.Lock()
		m.publishViewLocked(n.JobID, kind)
		m.mu.Unlock()
	case noticeEvent:
		m.onEventNotice(n)
	case postgres.NoticeResync:
	}
}

// closeFleet stops the listener.
func (m *Manager) closeFleet() {
	if m.fleet == nil || m.fleet.cancel == nil {
		return
	}
	m.fleet.cancel()
	m.fleet.wg.Wait()
}

// abort kills the runner without a drain (the lease is lost), and ends
// the run.
func (a *superviseAdapter) abort() { a.s.Abort() }

// fleetRunEnded handles the ends of a claimed run that are not the job's
// outcome, and reports whether it did: a lost lease (the job belongs to the
// node that takes it next; this node records nothing), or a job whose
// state directory a supervisor still holds (an earlier run of this node,
// or of another node when state_dir is shared, that lost its lease and has
// not stopped yet): the claim is given back and the job is claimed again
// later.
func (m *Manager) fleetRunEnded(aj *activeJob, runErr error) bool {
	lost := aj.lost.Load() || aj.claim.Job.Fence() != nil
	locked := errors.Is(runErr, supervise.ErrJobLocked)
	if !lost && !locked {
		return false
	}
	if locked {
		aj.log.Warn().Err(runErr).Msg("an earlier supervisor still holds the job's state directory; giving the claim back")
		if aj.claim.Fence() == nil {
			// Nothing ran: the run fleetStarted counted is taken back.
			_, _ = m.reg.Update(bg, aj.id, func(r *registry.Record) error {
				if r.Status != registry.StatusRunning || r.Runs == 0 {
					return errSkip
				}
				r.Runs--
				return nil
			})
		}
	}
	m.mu.Lock()
	delete(m.active, aj.id)
	m.mu.Unlock()
	m.releaseClaim(aj)
	if locked {
		// Give the other node's lease check time to stop its runner.
		select {
		case <-time.After(m.fleet.store.LeaseTTL() / 3):
		case <-m.ctx.Done():
		}
	}
	m.schedule()
	return true
}
