package service

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
	"github.com/memvisor/memvisor/pkg/supervise"
	"github.com/memvisor/memvisor/plugin"
)

// The event relay (docs/design.md, "Growing past one host"): the node that
// runs a job sends its supervise events (progress, memory, level, gc,
// restart) to the other nodes as notices of kind noticeEvent, and a node
// with SSE clients of that job publishes them into the job's hub, so that
// its clients get the same frames as the owner's. PostgreSQL carries every
// notice to every node, so the owner sends at most one progress and one
// memory event per relayEvery per job; the rare level, gc and restart
// events always go. A notice that cannot be sent is dropped: the registry
// stays the truth, and the job never waits for, or fails over, a notice.

// noticeEvent carries one supervise event of a running job.
const noticeEvent = "event"

// relayEvery bounds the rate of the relayed progress and memory events of
// one job: each at most twice a second.
const relayEvery = 500 * time.Millisecond

// relayData bounds a relayed event's encoding, so that the notice, with
// the job id and node name around it, fits in a NOTIFY payload
// (postgres.ErrNoticeTooLarge). A larger event goes without its
// errors_by_category map; one still too large is dropped.
const relayData = 7000

// relayQueue is how many events wait for the sender; beyond it, new ones
// are dropped rather than holding up a job's supervisor.
const relayQueue = 256

// relayedEvent is a supervise.Event as a notice carries it between the
// nodes: the fields the hub publishes, with names of their own, so that
// nodes of two versions during a rolling update read each other.
type relayedEvent struct {
	Kind        EventKind         `json:"kind"`
	Time        time.Time         `json:"time"`
	Progress    *relayedProgress  `json:"progress,omitempty"`
	Memory      *supervise.Memory `json:"memory,omitempty"`
	From        Level             `json:"from,omitempty"`
	Level       Level             `json:"level,omitempty"`
	RestartKind string            `json:"restart_kind,omitempty"`
	Reason      string            `json:"reason,omitempty"`
}

type relayedProgress struct {
	Total            int64            `json:"total"`
	TotalKnown       bool             `json:"total_known,omitempty"`
	Processed        int64            `json:"processed"`
	Created          int64            `json:"created"`
	Updated          int64            `json:"updated"`
	Skipped          int64            `json:"skipped"`
	Failed           int64            `json:"failed"`
	Batches          int64            `json:"batches,omitempty"`
	ItemsPerSec      float64          `json:"items_per_s"`
	RateLimitedUntil *time.Time       `json:"rate_limited_until,omitempty"`
	ErrorsByCategory map[string]int64 `json:"errors_by_category,omitempty"`
}

func relayedOf(ev supervise.Event) relayedEvent {
	r := relayedEvent{Kind: ev.Kind, Time: ev.Time, From: ev.From, Level: ev.Level, RestartKind: string(ev.RestartKind), Reason: ev.Reason}
	switch ev.Kind {
	case EventProgress:
		p := ev.Progress
		r.Progress = &relayedProgress{Total: p.Total, TotalKnown: p.TotalKnown, Processed: p.Processed, Created: p.Created,
			Updated: p.Updated, Skipped: p.Skipped, Failed: p.Failed, Batches: p.Batches, ItemsPerSec: p.ItemsPerSec,
			ErrorsByCategory: p.ErrorsByCategory}
		if !p.RateLimitedUntil.IsZero() {
			t := p.RateLimitedUntil
			r.Progress.RateLimitedUntil = &t
		}
	default:
		mem := ev.Memory
		r.Memory = &mem
	}
	return r
}

func (r relayedEvent) event() supervise.Event {
	ev := supervise.Event{Kind: r.Kind, Time: r.Time, From: r.From, Level: r.Level, RestartKind: supervise.RestartKind(r.RestartKind), Reason: r.Reason}
	if p := r.Progress; p != nil {
		ev.Progress = plugin.Progress{Total: p.Total, TotalKnown: p.TotalKnown, Processed: p.Processed, Created: p.Created,
			Updated: p.Updated, Skipped: p.Skipped, Failed: p.Failed, Batches: p.Batches, ItemsPerSec: p.ItemsPerSec,
			ErrorsByCategory: p.ErrorsByCategory}
		if p.RateLimitedUntil != nil {
			ev.Progress.RateLimitedUntil = *p.RateLimitedUntil
		}
	}
	if r.Memory != nil {
		ev.Memory = *r.Memory
	}
	return ev
}

// encodeRelayed encodes an event for a notice, without its error map if
// that is what makes it too large. ok is false for an event that does not
// fit even so.
func encodeRelayed(ev supervise.Event) (data []byte, ok bool) {
	r := relayedOf(ev)
	data, err := json.Marshal(r)
	if err == nil && len(data) > relayData && r.Progress != nil && r.Progress.ErrorsByCategory != nil {
		r.Progress.ErrorsByCategory = nil
		data, err = json.Marshal(r)
	}
	return data, err == nil && len(data) <= relayData
}

// relayRelevant reports whether the hub publishes events of kind: the
// supervisor's done is the Manager's to send, as a view.
func relayRelevant(k EventKind) bool {
	switch k {
	case EventProgress, EventMemory, EventLevel, EventGC, EventRestart:
		return true
	}
	return false
}

// relayThrottle decides which of one run's events go to the other nodes.
// It holds the latest progress event it kept back, and sends it once
// relayEvery has passed, with the next event of any kind, so that the
// other nodes' clients are never left with an old count while the job
// moves on. Time is the events' own. Not safe for concurrent use.
type relayThrottle struct {
	lastProgress, lastMemory time.Time
	pending                  *supervise.Event
}

// admit returns the events to send now, in order, given ev.
func (t *relayThrottle) admit(ev supervise.Event) []supervise.Event {
	if !relayRelevant(ev.Kind) {
		return nil
	}
	var out []supervise.Event
	due := func(last time.Time) bool { return last.IsZero() || ev.Time.Sub(last) >= relayEvery }
	if ev.Kind == EventProgress {
		if due(t.lastProgress) {
			t.lastProgress, t.pending = ev.Time, nil
			return append(out, ev)
		}
		e := ev
		t.pending = &e
		return nil
	}
	// A rare event (level, gc, restart) takes a held-back progress with
	// it at once, so that a client sees them in the owner's order.
	rare := ev.Kind != EventMemory
	if t.pending != nil && (rare || due(t.lastProgress)) {
		out = append(out, *t.pending)
		t.lastProgress, t.pending = ev.Time, nil
	}
	if ev.Kind == EventMemory {
		if !due(t.lastMemory) {
			return out
		}
		t.lastMemory = ev.Time
	}
	return append(out, ev)
}

// relayed is an event on its way to the sender.
type relayed struct {
	id string
	ev supervise.Event
}

// relay sends the events of the jobs this node runs to the other nodes.
type relay struct {
	store *postgres.Store
	log   zerolog.Logger
	now   func() time.Time
	q     chan relayed
}

// startRelay starts the relay's sender, owned by the fleet's listener
// lifetime (ctx, wg). Manager.start hands every run's events to it (wrap).
func (m *Manager) startRelay(ctx context.Context) {
	r := &relay{store: m.fleet.store, log: m.log, now: m.now, q: make(chan relayed, relayQueue)}
	m.fleet.relay = r
	m.fleet.wg.Add(1)
	go func() {
		defer m.fleet.wg.Done()
		r.send(ctx)
	}()
}

// wrap returns an emit that passes every event to emit, this node's hub,
// and then offers it to the relay, throttled for the run.
func (r *relay) wrap(id string, emit func(supervise.Event)) func(supervise.Event) {
	var (
		mu sync.Mutex
		t  relayThrottle
	)
	return func(ev supervise.Event) {
		if ev.Time.IsZero() {
			ev.Time = r.now()
		}
		emit(ev)
		mu.Lock()
		out := t.admit(ev)
		mu.Unlock()
		for _, e := range out {
			select {
			case r.q <- relayed{id: id, ev: e}:
			default:
				r.log.Debug().Str(keyJob, id).Str("event", string(e.Kind)).Msg("event relay queue full: event not relayed")
			}
		}
	}
}

// send notifies the fleet of the queued events until ctx ends.
func (r *relay) send(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-r.q:
			data, ok := encodeRelayed(e.ev)
			if !ok {
				r.log.Debug().Str(keyJob, e.id).Str("event", string(e.ev.Kind)).Msg("event too large for a notice: not relayed")
				continue
			}
			nctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := r.store.Notify(nctx, postgres.Notice{JobID: e.id, Kind: noticeEvent, Data: data})
			cancel()
			if err != nil && ctx.Err() == nil {
				lvl := r.log.Debug()
				if errors.Is(err, postgres.ErrNoticeTooLarge) {
					lvl = r.log.Warn()
				}
				lvl.Err(err).Str(keyJob, e.id).Msg("relay an event to the fleet")
			}
		}
	}
}

// onEventNotice publishes another node's event of job id into this node's
// hub of the job, when it has one (an SSE client is watching) and does not
// run the job itself (a late notice of a former owner).
func (m *Manager) onEventNotice(n postgres.Notice) {
	if n.Node == m.fleet.node {
		return
	}
	var r relayedEvent
	if err := json.Unmarshal(n.Data, &r); err != nil || !relayRelevant(r.Kind) {
		m.log.Debug().Str(keyJob, n.JobID).Str("from_node", n.Node).Msg("undecodable event notice dropped")
		return
	}
	m.mu.Lock()
	h, watched := m.hubs[n.JobID]
	_, mine := m.active[n.JobID]
	m.mu.Unlock()
	if !watched || mine {
		return
	}
	h.publish(n.JobID, r.event())
}
