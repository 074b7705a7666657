package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
)

// BenchmarkAPIUnderLoad measures GET /v1/jobs/{id} latency while 200
// clients hold the job's event stream open and status requests arrive at
// 1,000/s for 20 s, with one real job (supervisor and runner processes)
// running under bin/supervisor serve with the real runner, and the
// service's RSS meanwhile. Latency is taken from each
// request's scheduled time, so a stalled server is not hidden by a
// stalled load generator. It runs once; b.N is not used.
func BenchmarkAPIUnderLoad(b *testing.B) {
	const (
		subscribers = 200
		rate        = 1000
		duration    = 20 * time.Second
	)
	p := startSupervisor(b, b.TempDir(), "")
	spec := map[string]any{
		"id":         "bench",
		"source":     map[string]any{"type": "synthetic", "count": 10_000_000, "seed": 5},
		"target":     map[string]any{"type": "jsonl", "path": filepath.Join(b.TempDir(), "target.jsonl")},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 200,
		"memory":     map[string]any{"limit": "256MiB"},
		"inject":     map[string]any{"slow_batch": "20ms"},
	}
	if code, body := p.do("POST", "/v1/jobs", spec); code != 201 {
		b.Fatalf("create: %d %s", code, body)
	}
	p.wait("bench", 60*time.Second, func(v jobView) bool { return v.Status == "running" && v.Progress.Processed > 0 })

	tr := &http.Transport{MaxIdleConns: 1000, MaxIdleConnsPerHost: 1000, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The subscribers.
	var subWG sync.WaitGroup
	var events, subErrs atomic.Int64
	ready := make(chan struct{}, subscribers)
	for range subscribers {
		subWG.Add(1)
		go func() {
			defer subWG.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", p.base+"/v1/jobs/bench/events", nil)
			req.Header.Set("Authorization", "Bearer "+p.token)
			resp, err := client.Do(req)
			if err != nil {
				subErrs.Add(1)
				ready <- struct{}{}
				return
			}
			defer resp.Body.Close()
			ready <- struct{}{}
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "event: ") {
					events.Add(1)
				}
			}
		}()
	}
	for range subscribers {
		<-ready
	}

	// RSS of the service process, sampled every 250 ms.
	var rssMu sync.Mutex
	var rssPeak, rssSum, rssN float64
	rssDone := make(chan struct{})
	go func() {
		defer close(rssDone)
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				if mb, err := rssMB(p.cmd.Process.Pid); err == nil {
					rssMu.Lock()
					rssPeak = max(rssPeak, mb)
					rssSum += mb
					rssN++
					rssMu.Unlock()
				}
			}
		}
	}()

	// Status requests, open loop: a schedule of 1,000/s, served by a pool.
	type result struct {
		lat time.Duration
		ok  bool
	}
	sched := make(chan time.Time, rate)
	results := make(chan result, rate*int(duration/time.Second)+rate)
	var poolWG sync.WaitGroup
	for range 64 {
		poolWG.Add(1)
		go func() {
			defer poolWG.Done()
			for at := range sched {
				req, _ := http.NewRequest("GET", p.base+"/v1/jobs/bench", nil)
				req.Header.Set("Authorization", "Bearer "+p.token)
				resp, err := client.Do(req)
				ok := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				results <- result{lat: time.Since(at), ok: ok}
			}
		}()
	}
	start := time.Now()
	total := rate * int(duration/time.Second)
	for i := range total {
		at := start.Add(time.Duration(i) * time.Second / rate)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		sched <- at
	}
	close(sched)
	poolWG.Wait()
	elapsed := time.Since(start)
	close(results)
	var lats []time.Duration
	fails := 0
	for r := range results {
		if !r.ok {
			fails++
			continue
		}
		lats = append(lats, r.lat)
	}
	// Where the service's memory goes, from its own metrics, while the
	// subscribers are still connected.
	_, metrics := p.do("GET", "/metrics", nil)
	var mem []string
	for _, line := range strings.Split(string(metrics), "\n") {
		for _, name := range []string{"go_memstats_heap_inuse_bytes ", "go_memstats_stack_inuse_bytes ", "go_memstats_sys_bytes ", "go_goroutines ", "go_memstats_next_gc_bytes "} {
			if strings.HasPrefix(line, name) {
				mem = append(mem, line)
			}
		}
	}
	b.Logf("service memory: %s", strings.Join(mem, "; "))
	b.Logf("server-side p99 of GET /v1/jobs/{id}: at most %s ms (histogram bucket)", serverP99(string(metrics)))
	cancel()
	subWG.Wait()
	<-rssDone

	slices.Sort(lats)
	pct := func(q float64) float64 {
		if len(lats) == 0 {
			return 0
		}
		return float64(lats[min(len(lats)-1, int(q*float64(len(lats))))].Microseconds()) / 1000
	}
	b.Logf("%d status requests in %s (%d failed), p50 %.2f ms, p99 %.2f ms, max %.2f ms; %d events to %d subscribers (%d failed to connect); service RSS peak %.1f MB, mean %.1f MB",
		len(lats), elapsed.Round(time.Millisecond), fails, pct(0.50), pct(0.99), pct(1), events.Load(), subscribers, subErrs.Load(), rssPeak, rssSum/max(rssN, 1))
	if fails > 0 || subErrs.Load() > 0 {
		b.Errorf("%d failed status requests, %d failed subscribers", fails, subErrs.Load())
	}
	benchfmt.Report(b, "api_status_p99_ms", pct(0.99), "ms")
	benchfmt.Report(b, "supervisor_rss_mb_under_api_load", rssPeak, "MB")
}

// serverP99 reads the upper bound of the bucket that holds the 99th
// percentile of the service's own request-duration histogram for GET
// /v1/jobs/{id}, which leaves out the load generator's delays.
func serverP99(metrics string) string {
	const prefix = `memvisor_api_request_duration_seconds_bucket{code="200",method="GET",route="/v1/jobs/{id}",le="`
	type bucket struct {
		le string
		n  float64
	}
	var bs []bucket
	for _, line := range strings.Split(metrics, "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		le, count, _ := strings.Cut(rest, `"} `)
		n, _ := strconv.ParseFloat(count, 64)
		bs = append(bs, bucket{le, n})
	}
	if len(bs) == 0 {
		return "?"
	}
	total := bs[len(bs)-1].n
	for _, bk := range bs {
		if bk.n >= 0.99*total {
			if sec, err := strconv.ParseFloat(bk.le, 64); err == nil {
				return strconv.FormatFloat(sec*1000, 'g', 4, 64)
			}
			return bk.le
		}
	}
	return "?"
}

func rssMB(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
