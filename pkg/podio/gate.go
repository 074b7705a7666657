package podio

import (
	"context"

	"github.com/memvisor/memvisor/pkg/connector"
	"net/http"
	"slices"
	"sort"
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
//
// Podio has two tiers: every call counts against the general limit, and
// the calls its reference marks "Rate limited" also against a lower one;
// X-Rate-Limit-Limit is the ceiling of the call just made. The gate keeps
// one bucket per tier, learned from the answers of that tier's calls, and
// holds a call while any bucket it draws on is spent (once either limit
// is hit, Podio refuses every call).
//
// A gate with a quota share N (NewGateShare) also keeps to 1/N of each
// tier's limit, less the reserve, in every window, so that N jobs on the
// same credentials can run at once without one starving the others (see
// docs/design.md, "Growing past one host"). Podio does not say when its
// windows start, so the share is counted over a sliding window: a call
// holds a slot of its share from when it starts until Window after its
// answer, and a call waits while every slot is held. Every call Podio
// counts in one of its windows holds its slot at that window's last
// instant, so none of Podio's windows, wherever they fall, gets more
// calls than the share. A call answered 420 or 429, or not at all, gives
// its slot back at once: Podio did not count it, or most likely not. The
// last tenth of the share is spread over the time until the oldest slot
// comes back, as the last tenth of the quota is over the window. All of
// this comes on top of the holds above: the shared Remaining still binds,
// since other jobs may have spent it.
type Gate struct {
	window  time.Duration
	reserve int
	share   int // 1: the whole quota
	now     func() time.Time

	mu      sync.Mutex
	buckets [2]bucket // general, limited
	blocked time.Time
	hits    int64
}

// bucket is what the gate knows of one tier's quota.
type bucket struct {
	limit     int // 0: unknown
	remaining int
	winEnd    time.Time
	inflight  int
	lastStart time.Time
	// slots holds, with a quota share, when each answered call of the
	// last window gives its slot back, oldest first.
	slots []time.Time
}

const (
	tierGeneral = 0
	tierLimited = 1
)

// NewGate returns a gate for a quota window of the given length (Podio's
// is one hour).
func NewGate(window time.Duration, now func() time.Time) *Gate {
	return NewGateShare(window, 1, now)
}

// NewGateShare returns a gate that uses 1/share of each quota window, of
// each tier; a share of 1 or less is the whole quota, as NewGate.
func NewGateShare(window time.Duration, share int, now func() time.Time) *Gate {
	if now == nil {
		now = time.Now
	}
	if window <= 0 {
		window = time.Hour
	}
	return &Gate{window: window, reserve: 1, share: max(share, 1), now: now}
}

// Share returns the gate's quota share N: it uses 1/N of each window.
func (g *Gate) Share() int { return g.share }

// ticket is one call let through by the gate.
type ticket struct {
	g        *Gate
	limited  bool
	inflight int // calls of its tier in flight when it was sent, itself included
	done     bool
}

// Wait blocks until a call of the general tier may go, or ctx is done.
func (g *Gate) Wait(ctx context.Context) (*ticket, error) { return g.wait(ctx, false, nil) }

// wait blocks until a call may go; a limited call draws on both tiers. It
// also gives up, with connector.ErrNotSent, when hold closes.
func (g *Gate) wait(ctx context.Context, limited bool, hold <-chan struct{}) (*ticket, error) {
	for {
		g.mu.Lock()
		now := g.now()
		var until time.Time
		for _, b := range g.drawn(limited) {
			if until = g.holdLocked(now, b); !until.IsZero() {
				break
			}
		}
		if until.IsZero() && g.share > 1 {
			for _, b := range g.drawn(limited) {
				if until = g.holdShareLocked(now, b); !until.IsZero() {
					break
				}
			}
		}
		if until.IsZero() {
			t := &ticket{g: g, limited: limited}
			for _, b := range g.drawn(limited) {
				b.inflight++
				b.lastStart = now
			}
			t.inflight = g.own(limited).inflight
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

func (g *Gate) drawn(limited bool) []*bucket {
	if limited {
		return []*bucket{&g.buckets[tierGeneral], &g.buckets[tierLimited]}
	}
	return []*bucket{&g.buckets[tierGeneral]}
}

func (g *Gate) own(limited bool) *bucket {
	if limited {
		return &g.buckets[tierLimited]
	}
	return &g.buckets[tierGeneral]
}

// holdLocked returns when the next call on b may go, or zero for now.
func (g *Gate) holdLocked(now time.Time, b *bucket) time.Time {
	if now.Before(g.blocked) {
		return g.blocked
	}
	if b.limit <= 0 {
		return time.Time{}
	}
	budget := b.remaining - b.inflight - g.reserve
	if budget <= 0 {
		if !b.winEnd.IsZero() && now.Before(b.winEnd) {
			return b.winEnd
		}
		if b.inflight == 0 {
			return time.Time{} // a probe
		}
		return now.Add(20 * time.Millisecond)
	}
	if !b.winEnd.IsZero() && now.Before(b.winEnd) && budget < b.limit/10 {
		next := b.lastStart.Add(b.winEnd.Sub(now) / time.Duration(budget+1))
		if now.Before(next) {
			return next
		}
	}
	return time.Time{}
}

// allowance is the slots of b's tier that the gate's share allows:
// limit/share less the reserve, and at least one.
func (g *Gate) allowance(b *bucket) int {
	return max(1, b.limit/g.share-g.reserve)
}

// held returns the slots of b's share held at now: the calls in flight
// and those answered less than a window ago. It drops the slots given
// back.
func (b *bucket) held(now time.Time) int {
	i := sort.Search(len(b.slots), func(i int) bool { return b.slots[i].After(now) })
	b.slots = b.slots[i:]
	return b.inflight + len(b.slots)
}

// holdShareLocked returns when the next call on b may go as far as the
// gate's share is concerned, or zero for now.
func (g *Gate) holdShareLocked(now time.Time, b *bucket) time.Time {
	if b.limit <= 0 {
		return time.Time{}
	}
	allow := g.allowance(b)
	left := allow - b.held(now)
	switch {
	case left <= 0 && len(b.slots) > 0:
		return b.slots[0]
	case left <= 0:
		// Every slot is a call in flight: an answer starts its slot's
		// window.
		return now.Add(20 * time.Millisecond)
	case 10*left < allow && len(b.slots) > 0:
		next := b.lastStart.Add(b.slots[0].Sub(now) / time.Duration(left+1))
		if now.Before(next) {
			return next
		}
	}
	return time.Time{}
}

// maxSlots bounds the slots a bucket keeps, whatever the limit (Podio's
// is 1,000): an API that sends no limit, or a huge one, cannot make a
// gate's memory grow with the calls of a window.
const maxSlots = 1 << 14

// holdSlot keeps a slot of b's share until the given time.
func (b *bucket) holdSlot(until time.Time) {
	if len(b.slots) >= maxSlots {
		b.slots = b.slots[1:]
	}
	i := sort.Search(len(b.slots), func(i int) bool { return b.slots[i].After(until) })
	b.slots = slices.Insert(b.slots, i, until)
}

// observe records a call's answer: its rate-limit headers, or a 420's
// wait. It must be called once per ticket.
func (t *ticket) observe(status int, h http.Header, wait time.Duration) {
	g := t.g
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if !t.done {
		t.done = true
		// With a share, an answered call that Podio counted keeps its
		// slot a window more.
		counted := g.share > 1 && (status != 0 || h != nil) && !isRateLimit(status)
		for _, b := range g.drawn(t.limited) {
			b.inflight--
			if counted {
				b.holdSlot(now.Add(g.window))
			}
		}
	}
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
	b := g.own(t.limited)
	if t.limited && status < 300 {
		// The general tier counted this call too, unseen.
		if gb := &g.buckets[tierGeneral]; gb.limit > 0 && gb.remaining > 0 {
			gb.remaining--
		}
	}
	b.limit = limit
	if isRateLimit(status) && rem == 0 && wait > 0 {
		// A spent quota: the wait names the window's end.
		b.winEnd = maxTime(b.winEnd, now.Add(wait))
		b.remaining = 0
		return
	}
	fresh := rem >= limit-t.inflight-1
	switch {
	case fresh && (b.winEnd.IsZero() || now.After(b.winEnd.Add(-g.window/2))):
		b.winEnd = now.Add(g.window)
		b.remaining = rem
	case !b.winEnd.IsZero() && now.Before(b.winEnd):
		b.remaining = min(b.remaining, rem)
	default:
		b.remaining = rem
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
	var until time.Time
	for i := range g.buckets {
		b := &g.buckets[i]
		if b.limit > 0 && b.remaining-b.inflight-g.reserve <= 0 && now.Before(b.winEnd) {
			until = maxTime(until, b.winEnd)
		}
		if g.share > 1 && b.limit > 0 && b.held(now) >= g.allowance(b) && len(b.slots) > 0 {
			until = maxTime(until, b.slots[0])
		}
	}
	return until
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
