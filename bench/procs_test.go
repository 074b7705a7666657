package bench_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// rssSampler samples the RSS of every process running exe, every
// interval, and keeps the peak and the samples.
type rssSampler struct {
	exe  string
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	peak    uint64
	samples []sample
}

type sample struct {
	t   time.Time
	rss uint64
}

func sampleRSS(exe string, interval time.Duration) *rssSampler {
	s := &rssSampler{exe: exe, stop: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			var total uint64
			for _, pid := range pidsOf(exe) {
				total = max(total, rssOf(pid))
			}
			s.mu.Lock()
			s.peak = max(s.peak, total)
			s.samples = append(s.samples, sample{time.Now(), total})
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) Stop() uint64 {
	close(s.stop)
	s.wg.Wait()
	return s.peak
}

// pidsOf lists the processes whose executable is exe.
func pidsOf(exe string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && p == exe {
			out = append(out, pid)
		}
	}
	return out
}

func rssOf(pid int) uint64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "statm"))
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.ParseUint(string(f[1]), 10, 64)
	return n * uint64(os.Getpagesize())
}
