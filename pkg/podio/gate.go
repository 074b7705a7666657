package podio

import (
	"context"

	"github.com/memvisor/memvisor/pkg/connector"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Gate paces the calls of every goroutine that shares it against the
// API's quota. It learns the quota from X-Rate-Limit-Limit and
// X-Rate-Limit-Remaining, estimates when the current window ends, and
// holds calls back before the quota is spent:
//
//   - While the quota has plenty left, calls go at once.
//   - In the last tenth of the quota, calls are spread over what is left
//     of the window.
//   - When only Reserve calls are left (counting calls in flight), calls
//     wait for the window's end; then one probe call goes, and the others
//     follow once its answer shows a fresh quota.
//   - A 420 or 429 blocks every call until the time it names.
//
// Podio does not say when a window started. The gate takes a window to
// start with a call whose answer shows an almost full quota, and to end
// Window after that answer arrived, which is never earlier than the true
// end. A gate that starts in the middle of a window does not know its end
// until a 420 names it.
type Gate struct {
	window  time.Duration
	reserve int
	now     func() time.Time

	mu        sync.Mutex
	limit     int // 0: unknown
	remaining int
	winEnd    time.Time
	blocked   time.Time
	inflight  int
	lastStart time.Time
	hits      int64
}

// NewGate returns a gate for a quota window of the given length (Podio's
// is one hour).
func NewGate(window time.Duration, now func() time.Time) *Gate {
	if now == nil {
		now = time.Now
	}
	if window <= 0 {
		window = time.Hour
	}
	return &Gate{window: window, reserve: 1, now: now}
}

// ticket is one call let through by the gate.
type ticket struct {
	g        *Gate
	inflight int // calls in flight when this one was sent, itself included
	done     bool
}

// Wait blocks until a call may go, or ctx is done.
func (g *Gate) Wait(ctx context.Context) (*ticket, error) { return g.waitHold(ctx, nil) }

// waitHold is Wait that also gives up, with connector.ErrNotSent, when
// hold closes.
func (g *Gate) waitHold(ctx context.Context, hold <-chan struct{}) (*ticket, error) {
	for {
		g.mu.Lock()
		now := g.now()
		until := g.holdLocked(now)
		if until.IsZero() {
			g.inflight++
			g.lastStart = now
			t := &ticket{g: g, inflight: g.inflight}
			g.mu.Unlock()
			return t, nil
		}
		g.mu.Unlock()
		d := min(until.Sub(now), 250*time.Millisecond)
		if err := sleepHold(ctx, hold, d); err != nil {
			return nil, err
		}
	}
}

// holdLocked returns when the next call may go, or zero for now.
func (g *Gate) holdLocked(now time.Time) time.Time {
	if now.Before(g.blocked) {
		return g.blocked
	}
	if g.limit <= 0 {
		return time.Time{}
	}
	budget := g.remaining - g.inflight - g.reserve
	if budget <= 0 {
		if !g.winEnd.IsZero() && now.Before(g.winEnd) {
			return g.winEnd
		}
		if g.inflight == 0 {
			return time.Time{} // a probe
		}
		return now.Add(20 * time.Millisecond)
	}
	if !g.winEnd.IsZero() && now.Before(g.winEnd) && budget < g.limit/10 {
		next := g.lastStart.Add(g.winEnd.Sub(now) / time.Duration(budget+1))
		if now.Before(next) {
			return next
		}
	}
	return time.Time{}
}

// observe records a call's answer: its rate-limit headers, or a 420's
// wait. It must be called once per ticket.
func (t *ticket) observe(status int, h http.Header, wait time.Duration) {
	g := t.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if !t.done {
		t.done = true
		g.inflight--
	}
	now := g.now()
	if isRateLimit(status) {
		g.hits++
		if wait > 0 {
			g.blocked = maxTime(g.blocked, now.Add(wait))
		}
	}
	if h == nil {
		return
	}
	limit, err1 := strconv.Atoi(h.Get("X-Rate-Limit-Limit"))
	rem, err2 := strconv.Atoi(h.Get("X-Rate-Limit-Remaining"))
	if err1 != nil || err2 != nil || limit <= 0 {
		return
	}
	g.limit = limit
	if isRateLimit(status) && rem == 0 && wait > 0 {
		// A spent quota: the wait names the window's end.
		g.winEnd = maxTime(g.winEnd, now.Add(wait))
		g.remaining = 0
		return
	}
	fresh := rem >= limit-t.inflight-1
	switch {
	case fresh && (g.winEnd.IsZero() || now.After(g.winEnd.Add(-g.window/2))):
		g.winEnd = now.Add(g.window)
		g.remaining = rem
	case !g.winEnd.IsZero() && now.Before(g.winEnd):
		g.remaining = min(g.remaining, rem)
	default:
		g.remaining = rem
	}
}

// release returns a ticket whose call got no answer.
func (t *ticket) release() { t.observe(0, nil, 0) }

// Until reports until when calls are held back, or the zero time.
func (g *Gate) Until() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if now.Before(g.blocked) {
		return g.blocked
	}
	if g.limit > 0 && g.remaining-g.inflight-g.reserve <= 0 && now.Before(g.winEnd) {
		return g.winEnd
	}
	return time.Time{}
}

// Hits is the number of 420 and 429 answers seen.
func (g *Gate) Hits() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.hits
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func sleep(ctx context.Context, d time.Duration) error { return sleepHold(ctx, nil, d) }

// sleepHold is sleep that also gives up, with connector.ErrNotSent, when
// hold closes.
func sleepHold(ctx context.Context, hold <-chan struct{}, d time.Duration) error {
	select {
	case <-hold:
		return connector.ErrNotSent
	default:
	}
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-hold:
		return connector.ErrNotSent
	case <-t.C:
		return nil
	}
}
