package slimcache_test

import (
	"bytes"
	"fmt"
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

// lookupNs times one lookup over all queries, best of three rounds, and
// checks that every query hit or missed as it should.
func lookupNs(b *testing.B, qs string, hit bool, get func(string) (int64, bool)) float64 {
	b.Helper()
	q := len(qs) / keyLen
	best := time.Duration(1<<63 - 1)
	for range 3 {
		found := 0
		start := time.Now()
		for j := 0; j < q; j++ {
			if _, ok := get(qs[j*keyLen : (j+1)*keyLen]); ok {
				found++
			}
		}
		best = min(best, time.Since(start))
		if want := map[bool]int{true: q, false: 0}[hit]; found != want {
			b.Fatalf("%d of %d lookups found, want %d", found, q, want)
		}
	}
	return float64(best.Nanoseconds()) / float64(q)
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
	hits, misses := queries(q, n, true), queries(q, n, false)

	// The cache without a size hint grows 1.5 times at a time; report it
	// so that the hinted figure is not the only one.
	perEntry := bytesPerEntry(n, func() { runtime.KeepAlive(buildCache(n, 0)) })
	benchfmt.Report(b, "slimcache_bytes_per_entry_nohint_10M", perEntry, "B/entry")

	var c *slimcache.Cache
	perEntry = bytesPerEntry(n, func() { c = buildCache(n, n) })
	benchfmt.Report(b, "slimcache_bytes_per_entry_10M", perEntry, "B/entry")
	cacheHit := lookupNs(b, hits, true, c.Get)
	cacheMiss := lookupNs(b, misses, false, c.Get)
	cacheGC := gcMs()
	benchfmt.Report(b, "slimcache_get_hit_ns_10M", cacheHit, "ns/op")
	benchfmt.Report(b, "slimcache_get_miss_ns_10M", cacheMiss, "ns/op")
	benchfmt.Report(b, "slimcache_gc_cycle_ms_10M", cacheGC, "ms")
	c = nil

	var m map[string]int64
	perEntry = bytesPerEntry(n, func() { m = buildMap(n, n) })
	benchfmt.Report(b, "baseline_map_bytes_per_entry_10M", perEntry, "B/entry")
	mapGet := func(k string) (int64, bool) { v, ok := m[k]; return v, ok }
	mapHit := lookupNs(b, hits, true, mapGet)
	mapMiss := lookupNs(b, misses, false, mapGet)
	mapGC := gcMs()
	benchfmt.Report(b, "baseline_map_get_hit_ns_10M", mapHit, "ns/op")
	benchfmt.Report(b, "baseline_map_get_miss_ns_10M", mapMiss, "ns/op")
	benchfmt.Report(b, "baseline_map_gc_cycle_ms_10M", mapGC, "ms")
	runtime.KeepAlive(m)

	benchfmt.Report(b, "slimcache_gc_speedup_vs_map_10M", mapGC/max(cacheGC, 0.001), "x")
	benchfmt.Report(b, "slimcache_get_hit_vs_map_10M", cacheHit/mapHit, "ratio")
	if testing.Verbose() {
		fmt.Printf("hit %.1f ns vs map %.1f ns; gc %.2f ms vs map %.1f ms\n", cacheHit, mapHit, cacheGC, mapGC)
	}
}
