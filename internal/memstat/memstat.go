package memstat

import (
	"bytes"
	"os"
	"runtime/metrics"
	"strconv"
	"sync"
)

// Figures is one reading.
type Figures struct {
	RSSBytes uint64
	// HeapObjectsBytes is /memory/classes/heap/objects:bytes: live and
	// not-yet-swept heap objects, the Go analogue of V8's heapUsed.
	HeapObjectsBytes uint64
	// HeapTotalBytes is every byte the heap holds from the OS
	// (objects, unused, free but not released, stacks excluded), the
	// analogue of V8's heapTotal.
	HeapTotalBytes   uint64
	HeapGoalBytes    uint64
	TotalMappedBytes uint64
	GCCycles         uint64
	// GCCPUFraction is the share of CPU time spent in GC since start.
	GCCPUFraction float64
}

var names = []string{
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/gc/heap/goal:bytes",
	"/memory/classes/total:bytes",
	"/gc/cycles/total:gc-cycles",
	"/cpu/classes/gc/total:cpu-seconds",
	"/cpu/classes/total:cpu-seconds",
}

var (
	mu      sync.Mutex
	samples = func() []metrics.Sample {
		s := make([]metrics.Sample, len(names))
		for i, n := range names {
			s[i].Name = n
		}
		return s
	}()
)

// Read takes a reading.
func Read() Figures {
	mu.Lock()
	metrics.Read(samples)
	u := func(i int) uint64 {
		if samples[i].Value.Kind() == metrics.KindUint64 {
			return samples[i].Value.Uint64()
		}
		return 0
	}
	f := func(i int) float64 {
		if samples[i].Value.Kind() == metrics.KindFloat64 {
			return samples[i].Value.Float64()
		}
		return 0
	}
	out := Figures{
		HeapObjectsBytes: u(0),
		HeapTotalBytes:   u(0) + u(1) + u(2),
		HeapGoalBytes:    u(3),
		TotalMappedBytes: u(4),
		GCCycles:         u(5),
	}
	if total := f(7); total > 0 {
		out.GCCPUFraction = f(6) / total
	}
	mu.Unlock()
	out.RSSBytes = RSS()
	return out
}

var pageSize = uint64(os.Getpagesize())

// RSS returns the resident set size from /proc/self/statm, or 0 where
// that file does not exist.
func RSS() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	return StatmRSS(b)
}

// StatmRSS returns the resident set size that b, the contents of a
// /proc/<pid>/statm file, gives, or 0 if b is not such a file.
func StatmRSS(b []byte) uint64 {
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	n, err := strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		return 0
	}
	return n * pageSize
}
