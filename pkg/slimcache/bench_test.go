package slimcache_test

import (
	"bytes"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/pkg/slimcache"
)

// The benchmarks run once each (make bench uses -benchtime 1x) and do
// their own measurement: they build a structure, measure it, and report
// BENCH lines. The cache and the map baseline are measured side by side
// in the same run. Keys are 24 random-looking bytes derived from an
// index (appendKey), so the harness holds no list of keys while the heap
// is measured.

const keyLen = 24

// heapAlloc returns HeapAlloc after a full GC.
func heapAlloc() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func buildCache(n, hint int) *slimcache.Cache {
	c := slimcache.New(slimcache.Options{ExpectedEntries: hint})
	buf := make([]byte, 0, keyLen)
	for i := range uint64(n) {
		buf = appendKey(buf[:0], i)
		c.Put(string(buf), int64(i))
	}
	return c
}

func buildMap(n, hint int) map[string]int64 {
	m := make(map[string]int64, hint)
	buf := make([]byte, 0, keyLen)
	for i := range uint64(n) {
		buf = appendKey(buf[:0], i)
		m[string(buf)] = int64(i)
	}
	return m
}

// queries returns q keys, concatenated in one string: random existing
// keys (index below n) for hits, keys from n on for misses.
func queries(q, n int, hit bool) string {
	buf := make([]byte, 0, q*keyLen)
	for j := range uint64(q) {
		i := uint64(n) + j
		if hit {
			i = mix(j^0xabcdef) % uint64(n)
		}
		buf = appendKey(buf, i)
	}
	return string(buf)
}

// lookupNs times lookups in the cache and in the map over the same
// queries, in alternating blocks, so that both see the same load on a
// shared machine; it checks that every query hit or missed as it should.
func lookupNs(b *testing.B, qs string, hit bool, getters ...func(string) (int64, bool)) []float64 {
	b.Helper()
	const block = 50_000
	q := len(qs) / keyLen
	total := make([]time.Duration, len(getters))
	for range 3 {
		for start := 0; start < q; start += block {
			end := min(start+block, q)
			for g, get := range getters {
				found := 0
				t0 := time.Now()
				for j := start; j < end; j++ {
					if _, ok := get(qs[j*keyLen : (j+1)*keyLen]); ok {
						found++
					}
				}
				total[g] += time.Since(t0)
				if want := map[bool]int{true: end - start, false: 0}[hit]; found != want {
					b.Fatalf("getter %d: %d of %d lookups found, want %d", g, found, end-start, want)
				}
			}
		}
	}
	ns := make([]float64, len(getters))
	for g := range total {
		ns[g] = float64(total[g].Nanoseconds()) / float64(3*q)
	}
	return ns
}

// gcMs returns the median duration of a forced GC, in milliseconds.
func gcMs() float64 {
	var ds []time.Duration
	for range 3 {
		start := time.Now()
		runtime.GC()
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return float64(ds[1].Microseconds()) / 1000
}

// bytesPerEntry measures the heap that build leaves behind; build must
// keep what it builds reachable (assign it to a variable of the caller).
func bytesPerEntry(n int, build func()) float64 {
	before := heapAlloc()
	build()
	return float64(heapAlloc()-before) / float64(n)
}

func BenchmarkSlimcache1M(b *testing.B) {
	const n = 1_000_000
	var c *slimcache.Cache
	perEntry := bytesPerEntry(n, func() { c = buildCache(n, n) })
	benchfmt.Report(b, "slimcache_bytes_per_entry_1M", perEntry, "B/entry")

	var snap bytes.Buffer
	if err := c.WriteSnapshot(&snap); err != nil {
		b.Fatal(err)
	}
	var restores []time.Duration
	for range 3 {
		start := time.Now()
		r, err := slimcache.ReadSnapshot(bytes.NewReader(snap.Bytes()), slimcache.Options{})
		restores = append(restores, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		if r.Len() != n {
			b.Fatalf("restored %d entries, want %d", r.Len(), n)
		}
	}
	slices.Sort(restores)
	benchfmt.Report(b, "slimcache_snapshot_restore_ms_1M", float64(restores[1].Microseconds())/1000, "ms")
	c = nil
	snap = bytes.Buffer{}

	var m map[string]int64
	perEntry = bytesPerEntry(n, func() { m = buildMap(n, n) })
	benchfmt.Report(b, "baseline_map_bytes_per_entry_1M", perEntry, "B/entry")
	runtime.KeepAlive(m)
}

func BenchmarkSlimcache10M(b *testing.B) {
	const n, q = 10_000_000, 1_000_000

	// The cache without a size hint grows 1.5 times at a time; report it
	// so that the hinted figure is not the only one.
	var c *slimcache.Cache
	perEntry := bytesPerEntry(n, func() { c = buildCache(n, 0) })
	runtime.KeepAlive(c)
	benchfmt.Report(b, "slimcache_bytes_per_entry_nohint_10M", perEntry, "B/entry")
	c = nil

	perEntry = bytesPerEntry(n, func() { c = buildCache(n, n) })
	benchfmt.Report(b, "slimcache_bytes_per_entry_10M", perEntry, "B/entry")
	cacheGC := gcMs()
	benchfmt.Report(b, "slimcache_gc_cycle_ms_10M", cacheGC, "ms")

	// The map's figures are taken with the cache still live: it adds
	// its bytes to the heap but nothing to mark.
	var m map[string]int64
	perEntry = bytesPerEntry(n, func() { m = buildMap(n, n) })
	benchfmt.Report(b, "baseline_map_bytes_per_entry_10M", perEntry, "B/entry")
	mapGC := gcMs()
	benchfmt.Report(b, "baseline_map_gc_cycle_ms_10M", mapGC, "ms")

	mapGet := func(k string) (int64, bool) { v, ok := m[k]; return v, ok }
	hit := lookupNs(b, queries(q, n, true), true, c.Get, mapGet)
	miss := lookupNs(b, queries(q, n, false), false, c.Get, mapGet)
	benchfmt.Report(b, "slimcache_get_hit_ns_10M", hit[0], "ns/op")
	benchfmt.Report(b, "slimcache_get_miss_ns_10M", miss[0], "ns/op")
	benchfmt.Report(b, "baseline_map_get_hit_ns_10M", hit[1], "ns/op")
	benchfmt.Report(b, "baseline_map_get_miss_ns_10M", miss[1], "ns/op")
	runtime.KeepAlive(c)
	runtime.KeepAlive(m)

	benchfmt.Report(b, "slimcache_gc_speedup_vs_map_10M", mapGC/max(cacheGC, 0.001), "x")
	benchfmt.Report(b, "slimcache_get_hit_vs_map_10M", hit[0]/hit[1], "ratio")
}
