package runner

import (
	"os"

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
