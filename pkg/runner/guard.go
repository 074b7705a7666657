package runner

import (
	"context"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/logkey"
	"github.com/memvisor/memvisor/internal/memstat"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/plugin"
)

// GuardFor returns the memory guard lines for a runner with budget bytes
// and the job's memory policy (docs/design.md, "The memory guard"). The
// supervisor and a standalone `runner run` both use it, so a job is
// guarded the same way wherever it runs.
//
// The GC line is memory.guard_gc_percent of the budget, by default the
// critical level: the runner collects at the level where the supervisor
// would ask it to, but without the sampling delay. The drain line is
// memory.guard_drain_percent, by default midway between critical and kill
// (90% with the defaults): above the GC line, so a spike that a
// collection frees does not cost a restart, and far enough below the kill
// line that the memory a drain needs (one write and one commit) fits in
// between. A zero budget turns the guard off.
func GuardFor(budget uint64, mem job.Memory) plugin.Guard {
	gc, drain := mem.GuardLines(budget)
	return plugin.Guard{GCBytes: gc, DrainBytes: drain}
}

const (
	// guardEvery is how many writes pass between two measurements. A
	// measurement is a pread of /proc/self/statm: 3 to 25 us here,
	// depending on load (BENCH guard_measure_us), while a write to a local
	// file takes a few microseconds, so measuring every write would cost a
	// large share of the throughput. At 2 KiB leaked per item, 1024
	// writes are 2 MiB, and at 200,000 writes a second they take 5 ms.
	guardEvery = 1024
	// guardTick bounds the time between two measurements when writes are
	// slow or stalled; docs/design.md asks for at most 25 ms.
	guardTick = 10 * time.Millisecond

	// climbWindow and climbWindows define a sustained climb: the median
	// rise over climbWindows consecutive windows of climbWindow. A leak
	// climbs in every window, except one in which a collection returns
	// some garbage; a spike rises in one or two and then stays flat (a
	// 160 MiB spike filled its pages in 40 to 150 ms here). Half a second of
	// history is short beside a leak's climb from a runner's start to its
	// GC line (over a second at 80 MiB/s).
	climbWindow  = 100 * time.Millisecond
	climbWindows = 5
	// drainLead is how long a drain is expected to take, from the guard's
	// decision until the runner has committed and exits: drains took 40
	// to 165 ms under a fast leak here (writes in flight, the checkpoint,
	// the cache snapshot), and the process exit comes after; more on a
	// loaded machine. During a drain a
	// leak keeps climbing, so under a sustained climb the guard drains
	// when usage plus the climb over drainLead would cross the drain line,
	// not when usage itself does: at 80 MiB/s, waiting for the drain line
	// (and for a collection) put the peak at the kill line.
	drainLead = 250 * time.Millisecond
)

// mark is one point of the guard's usage history.
type mark struct {
	at    time.Time
	usage uint64
}

// guard is the runner's own memory guard. Writers and commits only count
// and poke it (every write is counted, every guardEvery-th write and
// every commit pokes) (an atomic add, and now and then a non-blocking send); its
// own goroutine measures RSS and acts, so no write waits for a
// measurement or a collection.
type guard struct {
	log zerolog.Logger

	gcLine    atomic.Uint64
	drainLine atomic.Uint64
	writes    atomic.Uint64
	gcs       atomic.Uint64
	tripped   atomic.Bool // the drain line was crossed; it drains once
	kick      chan struct{}

	// beforeGC runs before every collection (it drops an injected spike).
	beforeGC func()
	// drain starts the runner's drain; climb is the sustained climb in
	// bytes a second that made the guard drain early, or 0.
	drain func(usage, line uint64, climb float64)
	// now is the guard's clock; startGC starts a collection (collect,
	// unless a test replaces it).
	now     func() time.Time
	startGC func(before uint64)

	// A collection runs in a goroutine of its own, so that the guard's
	// goroutine stays free to measure; collecting 100 MB of live heap took
	// 30 to 165 ms here.
	collecting atomic.Bool
	wg         sync.WaitGroup

	// Owned by the guard's goroutine.
	statm *os.File
	buf   [128]byte
	armed bool // a collection is allowed
	// marks holds usage at the ends of the last climbWindows windows,
	// oldest first.
	marks []mark
}

func newGuard(log zerolog.Logger) *guard {
	g := &guard{log: log, kick: make(chan struct{}, 1), armed: true, now: time.Now}
	g.startGC = g.collect
	return g
}

// set replaces the lines and has them checked at once.
func (g *guard) set(l plugin.Guard) {
	g.gcLine.Store(l.GCBytes)
	g.drainLine.Store(l.DrainBytes)
	g.poke()
}

func (g *guard) lines() plugin.Guard {
	return plugin.Guard{GCBytes: g.gcLine.Load(), DrainBytes: g.drainLine.Load()}
}

// afterWrite is the per-write check: one atomic add and a compare.
func (g *guard) afterWrite() {
	if g.writes.Add(1)%guardEvery == 0 {
		g.poke()
	}
}

// poke asks the guard's goroutine to measure now.
func (g *guard) poke() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// run measures on every poke and every guardTick until ctx is done or
// stop is closed.
func (g *guard) run(ctx context.Context, stop <-chan struct{}) {
	if f, err := os.Open("/proc/self/statm"); err == nil {
		g.statm = f
		defer f.Close()
	}
	defer g.wg.Wait() // a collection in progress ends in bounded time
	t := time.NewTicker(guardTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-t.C:
		case <-g.kick:
		}
		g.check()
	}
}

// check measures usage and acts on it.
func (g *guard) check() {
	if u := g.usage(); u != 0 {
		g.decide(g.now(), u)
	}
}

// decide compares usage u, measured at now, with the lines and acts.
func (g *guard) decide(now time.Time, u uint64) {
	gcLine, drainLine := g.gcLine.Load(), g.drainLine.Load()
	if (gcLine == 0 && drainLine == 0) || g.tripped.Load() {
		return
	}
	climb := g.observe(now, u)
	line := gcLine
	if line == 0 {
		// No GC line: collect once as the drain line is crossed.
		line = drainLine
	}
	collecting := g.collecting.Load()
	// Under a sustained climb (a leak, or live data growing) the lines
	// are compared with usage plus the climb over drainLead, because
	// usage goes on climbing while a collection and then a drain run
	// (docs/design.md, "The memory guard"). The order of the rules does
	// not change: a collection is still tried first, and the guard drains
	// only once it has finished without bringing usage under the GC line.
	// So a spike, however slowly it fills (under the race detector 160
	// MiB took two seconds), still gets the collection that frees it.
	p := u + uint64(climb*drainLead.Seconds())
	if p < line {
		// Under a climb, a collection that was tried is not tried again:
		// it returned what garbage there was, and the climb went on.
		if climb == 0 {
			g.armed = true
		}
		return
	}
	if drainLine > 0 && p >= drainLine {
		// A spike that a collection frees is not worth a restart: the
		// drain waits for the answer of a collection in progress, and
		// collects first if none was tried since usage was last below
		// the GC line. A climb that a collection already failed to stop
		// has no time to lose.
		switch {
		case collecting:
		case g.armed:
			g.startGC(u)
		default:
			if !g.tripped.Swap(true) {
				early := 0.0 // the climb, if it drains before usage itself crossed the line
				if u < drainLine {
					early = climb
				}
				g.drain(u, drainLine, early)
			}
		}
		return
	}
	// Between the lines: one collection, and no other until usage has
	// been below the GC line again. Collecting again while a leak climbs
	// only takes CPU from the drain that follows (measured: a drain of
	// 27 ms took 90 ms beside a second collection).
	if g.armed && !collecting {
		g.startGC(u)
	}
}

// observe records usage u at now in the history and returns the
// sustained climb in bytes a second: the median of the climbs over the
// last climbWindows windows, or 0 if that is not a rise. The median holds
// through a window or two that fell, as when the guard's own collection
// returns a few MiB of garbage, and ignores the window or two in which a
// spike fills.
func (g *guard) observe(now time.Time, u uint64) float64 {
	if n := len(g.marks); n == 0 || now.Sub(g.marks[n-1].at) >= climbWindow {
		if n == climbWindows+1 {
			copy(g.marks, g.marks[1:])
			g.marks = g.marks[:n-1]
		}
		g.marks = append(g.marks, mark{at: now, usage: u})
	}
	if len(g.marks) < climbWindows+1 {
		return 0
	}
	var rates [climbWindows]float64
	for i := 1; i < len(g.marks); i++ {
		a, b := g.marks[i-1], g.marks[i]
		rates[i-1] = (float64(b.usage) - float64(a.usage)) / b.at.Sub(a.at).Seconds()
	}
	slices.Sort(rates[:])
	return max(0, rates[climbWindows/2])
}

// collect starts one collection in its own goroutine and has the guard
// look again when it is done.
func (g *guard) collect(before uint64) {
	g.armed = false
	g.collecting.Store(true)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		start := time.Now()
		if g.beforeGC != nil {
			g.beforeGC()
		}
		// FreeOSMemory is a full collection that also returns the freed
		// pages at once; a runtime.GC before it would collect twice.
		debug.FreeOSMemory()
		g.gcs.Add(1)
		var buf [128]byte
		after := g.read(buf[:])
		g.log.Info().Str("context", "gc").Str("reason", "memory guard").
			Float64("rssBeforeMB", logkey.MB(before)).Float64("rssMB", logkey.MB(after)).
			Float64("gcLineMB", logkey.MB(g.gcLine.Load())).Dur("took", time.Since(start)).
			Msg("memory guard: usage crossed the GC line; collected garbage")
		g.collecting.Store(false)
		g.poke()
	}()
}

// usage is the runner's RSS, read from an open /proc/self/statm.
func (g *guard) usage() uint64 { return g.read(g.buf[:]) }

// read reads RSS into buf, so that goroutines with their own buffers can
// read at once (ReadAt is a pread).
func (g *guard) read(buf []byte) uint64 {
	if g.statm == nil {
		return memstat.RSS()
	}
	n, err := g.statm.ReadAt(buf, 0)
	if n == 0 && err != nil {
		return 0
	}
	return memstat.StatmRSS(buf[:n])
}
