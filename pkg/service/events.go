package service

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/memvisor/memvisor/pkg/supervise"
	"github.com/memvisor/memvisor/plugin"
)

// The SSE wire form of an event. Each frame is encoded once and shared by
// every subscriber.
type eventData struct {
	Time        time.Time         `json:"time"`
	Job         string            `json:"job"`
	Progress    *ProgressView     `json:"progress,omitempty"`
	Throughput  *ThroughputView   `json:"throughput,omitempty"`
	Memory      *supervise.Memory `json:"memory,omitempty"`
	Level       Level             `json:"level,omitempty"`
	RestartKind string            `json:"restart_kind,omitempty"`
	Reason      string            `json:"reason,omitempty"`
	View        *JobView          `json:"view,omitempty"`
	History     []memPoint        `json:"history,omitempty"`
	Markers     []marker          `json:"markers,omitempty"`
	Errors      map[string]int64  `json:"errors_by_category,omitempty"`
}

// memPoint is one memory sample of the chart's history.
type memPoint struct {
	T      int64  `json:"t"` // Unix milliseconds
	RSS    uint64 `json:"rss"`
	Heap   uint64 `json:"heap"`
	Budget uint64 `json:"budget"`
}

// marker is a GC request, a restart or a level change on the chart.
type marker struct {
	T      int64  `json:"t"`
	Kind   string `json:"kind"`
	Label  string `json:"label,omitempty"`
	Reason string `json:"reason,omitempty"`
}

const (
	historyLen   = 600 // 2.5 minutes at 4 Hz
	markersLen   = 100
	subscriberCh = 64
)

// hub fans a job's events out to its SSE subscribers, and keeps the recent
// memory history so that a new subscriber can draw the chart at once.
type hub struct {
	mu      sync.Mutex
	seq     uint64
	subs    map[*subscriber]struct{}
	hist    []memPoint // ring
	histAt  int
	markers []marker
	closed  bool
	// Progress events are sent at most every progressEvery; the latest
	// one held back goes out with the next event of any kind.
	lastProgress time.Time
	pending      *supervise.Event
}

// progressEvery bounds the rate of progress events: a runner commits a
// batch every few milliseconds, and a client draws at most a few frames a
// second.
const progressEvery = 250 * time.Millisecond

type subscriber struct {
	ch chan []byte
	// gone is closed when the hub drops the subscriber: it fell behind, or
	// the job ended.
	gone chan struct{}
}

func newHub() *hub { return &hub{subs: map[*subscriber]struct{}{}} }

// subscribe registers a subscriber and returns the memory history as of
// that instant, so that nothing is missed between the two.
func (h *hub) subscribe() (*subscriber, []memPoint, []marker) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &subscriber{ch: make(chan []byte, subscriberCh), gone: make(chan struct{})}
	if h.closed {
		close(s.gone)
	} else {
		h.subs[s] = struct{}{}
	}
	return s, h.historyLocked(), append([]marker(nil), h.markers...)
}

func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.gone)
	}
}

func (h *hub) historyLocked() []memPoint {
	if len(h.hist) < historyLen {
		return append([]memPoint(nil), h.hist...)
	}
	out := make([]memPoint, 0, historyLen)
	out = append(out, h.hist[h.histAt:]...)
	return append(out, h.hist[:h.histAt]...)
}

// publish records an event and sends it to every subscriber. A subscriber
// whose buffer is full is dropped rather than waited for: its client
// reconnects and starts again from a snapshot.
func (h *hub) publish(id string, ev supervise.Event) {
	h.mu.Lock()
	if ev.Kind == EventProgress {
		if ev.Time.Sub(h.lastProgress) < progressEvery {
			e := ev
			h.pending = &e
			h.mu.Unlock()
			return
		}
		h.lastProgress, h.pending = ev.Time, nil
	}
	pending := h.pending
	h.pending = nil
	if pending != nil {
		h.lastProgress = pending.Time
	}
	h.mu.Unlock()
	if pending != nil {
		h.publishNow(id, *pending)
	}
	h.publishNow(id, ev)
}

func (h *hub) publishNow(id string, ev supervise.Event) {
	d := eventData{Time: ev.Time, Job: id, Level: ev.Level, RestartKind: string(ev.RestartKind), Reason: ev.Reason}
	switch ev.Kind {
	case EventProgress:
		pv, tv := progressViews(ev.Progress)
		d.Progress, d.Throughput = &pv, &tv
		d.Errors = ev.Progress.ErrorsByCategory
	case EventMemory, EventLevel, EventGC, EventRestart:
		mem := ev.Memory
		d.Memory = &mem
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ms := ev.Time.UnixMilli()
	switch ev.Kind {
	case EventMemory:
		p := memPoint{T: ms, RSS: ev.Memory.RSS, Heap: ev.Memory.Heap, Budget: ev.Memory.Budget}
		if len(h.hist) < historyLen {
			h.hist = append(h.hist, p)
		} else {
			h.hist[h.histAt] = p
			h.histAt = (h.histAt + 1) % historyLen
		}
	case EventGC, EventRestart, EventLevel:
		label := string(ev.Level)
		if ev.Kind == EventRestart {
			label = string(ev.RestartKind)
		}
		h.markers = append(h.markers, marker{T: ms, Kind: string(ev.Kind), Label: label, Reason: ev.Reason})
		if len(h.markers) > markersLen {
			h.markers = h.markers[len(h.markers)-markersLen:]
		}
	}
	h.seq++
	frame := encodeFrame(h.seq, ev.Kind, d)
	h.sendLocked(frame)
}

// publishView sends a status or done event that carries the whole view.
func (h *hub) publishView(kind EventKind, v JobView, now time.Time) {
	// A progress event held back goes first, so the last progress a
	// client sees before done is the final one.
	h.mu.Lock()
	pending := h.pending
	h.pending = nil
	h.mu.Unlock()
	if pending != nil {
		h.publishNow(v.ID, *pending)
	}
	d := eventData{Time: now, Job: v.ID, View: &v, Reason: v.Reason}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	h.sendLocked(encodeFrame(h.seq, kind, d))
}

// snapshotFrame encodes the first event a subscriber gets.
func (h *hub) snapshotFrame(v JobView, hist []memPoint, marks []marker, now time.Time) []byte {
	d := eventData{Time: now, Job: v.ID, View: &v, History: hist, Markers: marks}
	h.mu.Lock()
	seq := h.seq
	h.mu.Unlock()
	return encodeFrame(seq, "snapshot", d)
}

func (h *hub) sendLocked(frame []byte) {
	for s := range h.subs {
		select {
		case s.ch <- frame:
		default:
			delete(h.subs, s)
			close(s.gone)
		}
	}
}

// close ends every subscription; later subscribers get only the snapshot.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		delete(h.subs, s)
		close(s.gone)
	}
	h.closed = true
}

func encodeFrame(seq uint64, kind EventKind, d eventData) []byte {
	data, err := json.Marshal(d)
	if err != nil {
		data = []byte(`{}`)
	}
	return fmt.Appendf(nil, "id: %d\nevent: %s\ndata: %s\n\n", seq, kind, data)
}

func progressViews(p plugin.Progress) (ProgressView, ThroughputView) {
	pv := ProgressView{
		Total: p.Total, TotalKnown: p.TotalKnown, Processed: p.Processed,
		Created: p.Created, Updated: p.Updated, Skipped: p.Skipped, Failed: p.Failed,
	}
	tv := ThroughputView{ItemsPerSec: p.ItemsPerSec}
	if p.TotalKnown && p.Total > 0 {
		pv.Percent = min(100, float64(int64(float64(p.Processed)*10000/float64(p.Total)))/100)
		if p.ItemsPerSec > 0 {
			eta := float64(int64(float64(p.Total-p.Processed) / p.ItemsPerSec))
			tv.ETA = &eta
		}
	}
	if !p.RateLimitedUntil.IsZero() {
		t := p.RateLimitedUntil
		tv.RateLimitedUntil = &t
	}
	return pv, tv
}
