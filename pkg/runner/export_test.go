package runner

import (
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/plugin"
)

// GuardProbe exposes the guard's per-write check and its measurement to
// the benchmarks.
type GuardProbe struct{ g *guard }

// NewGuardProbe returns a guard with lines far above any usage and no
// goroutine.
func NewGuardProbe() GuardProbe {
	g := newGuard(zerolog.Nop())
	g.set(plugin.Guard{GCBytes: 1 << 50, DrainBytes: 1 << 51})
	g.statm, _ = os.Open("/proc/self/statm")
	return GuardProbe{g}
}

// AfterWrite is the per-write check.
func (p GuardProbe) AfterWrite() { p.g.afterWrite() }

// Close closes the probe's /proc/self/statm.
func (p GuardProbe) Close() {
	if p.g.statm != nil {
		p.g.statm.Close()
	}
}

// Usage is one measurement, a pread of the open /proc/self/statm.
func (p GuardProbe) Usage() uint64 { return p.g.usage() }

// GuardSim drives the guard's decisions with made-up measurements and a
// made-up clock: collections do not run, they only count, and stay in
// progress until FinishGC.
type GuardSim struct {
	g           *guard
	Collections int
	Drains      int
	DrainUsage  uint64
	DrainClimb  float64
}

// NewGuardSim returns a simulated guard with lines l.
func NewGuardSim(l plugin.Guard) *GuardSim {
	s := &GuardSim{g: newGuard(zerolog.Nop())}
	s.g.set(l)
	s.g.startGC = func(uint64) {
		s.g.armed = false
		s.g.collecting.Store(true)
		s.Collections++
	}
	s.g.drain = func(u, _ uint64, climb float64) {
		s.Drains++
		s.DrainUsage, s.DrainClimb = u, climb
	}
	return s
}

// Measure hands the guard usage measured at time at.
func (s *GuardSim) Measure(at time.Duration, usage uint64) {
	s.g.decide(time.Unix(1_000_000, 0).Add(at), usage)
}

// Collecting reports whether a collection is in progress.
func (s *GuardSim) Collecting() bool { return s.g.collecting.Load() }

// FinishGC ends the collection in progress.
func (s *GuardSim) FinishGC() { s.g.collecting.Store(false) }

// DrainLead is how long the guard expects a drain to take.
const DrainLead = drainLead
