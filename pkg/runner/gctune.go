package runner

import (
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// gcTuner keeps the garbage collector's headroom to a fixed size instead of
// GOGC=100's "as much again as the live heap". With the default, a runner
// whose match cache holds 400 MB of live data may also hold up to 400 MB
// of garbage, so its RSS grows with the cache. With a fixed headroom, RSS
// is the cache plus the batch's working set plus the headroom. The extra
// collections are cheap because the cache is pointer-free: the collector
// does not scan it.
type gcTuner struct {
	mu       sync.Mutex
	headroom uint64
	percent  int
	sample   []metrics.Sample
	disabled bool
}

const (
	defaultHeadroom = 32 << 20
	minGCPercent    = 10
	maxGCPercent    = 1000
)

func newGCTuner(headroom uint64) *gcTuner {
	return &gcTuner{
		headroom: headroom,
		percent:  100,
		sample:   []metrics.Sample{{Name: "/gc/heap/live:bytes"}},
		// An operator's GOGC wins.
		disabled: debug.SetGCPercent(100) != 100,
	}
}

// tune sets GOGC from the live heap of the last collection.
func (g *gcTuner) tune() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.disabled {
		return
	}
	metrics.Read(g.sample)
	if g.sample[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	live := g.sample[0].Value.Uint64()
	p := maxGCPercent
	if live > 0 {
		p = int(g.headroom * 100 / live)
	}
	p = max(minGCPercent, min(maxGCPercent, p))
	// Move only on a real change: SetGCPercent recomputes the pacer.
	if p*10 < g.percent*9 || p*10 > g.percent*11 {
		debug.SetGCPercent(p)
		g.percent = p
	}
}
