package service

import (
	"github.com/memvisor/memvisor/pkg/supervise"

	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "memvisor"

// metrics holds the service's own metrics. The per-job figures are read
// from the supervisors' snapshots at scrape time by jobCollector, so a
// scrape never waits on a runner.
type metrics struct {
	jobs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
	requests *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer, m func() map[string]supervise.Status) *metrics {
	mt := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "job_transitions_total",
			Help: "Jobs that were submitted or reached an end state, by event.",
		}, []string{"event"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "job_duration_seconds",
			Help:    "Time from a job's first start to its end, by final status.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}, []string{"status"}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "api_request_duration_seconds",
			Help:    "HTTP API request durations, by route pattern, method and status code. Event streams count until they close.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"route", "method", "code"}),
	}
	if reg == nil {
		return mt
	}
	reg.MustRegister(mt.jobs, mt.duration, mt.requests, &jobCollector{snapshots: m})
	return mt
}

func (mt *metrics) jobEvent(ev string) {
	if mt != nil {
		mt.jobs.WithLabelValues(ev).Inc()
	}
}

func (mt *metrics) observeDuration(status string, d time.Duration) {
	if mt != nil {
		mt.duration.WithLabelValues(status).Observe(d.Seconds())
	}
}

func (mt *metrics) observeRequest(route, method string, code int, d time.Duration) {
	if mt != nil {
		mt.requests.WithLabelValues(route, method, strconv.Itoa(code)).Observe(d.Seconds())
	}
}

// newRegistry is the service's own registry, with the Go and process
// collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

func metricsHandler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}

var (
	jobLabel        = []string{"job_id"}
	descRSS         = desc("runner_rss_bytes", "Resident set size of the job's runner, measured from outside.", jobLabel)
	descHeap        = desc("runner_heap_bytes", "Go heap objects of the job's runner (runtime/metrics).", jobLabel)
	descBudget      = desc("budget_bytes", "Memory budget of the job's runner.", jobLabel)
	descUsage       = desc("memory_usage_ratio", "Runner RSS divided by its budget.", jobLabel)
	descLevel       = desc("memory_level", "Memory level of the job: 0 ok, 1 warning, 2 critical, 3 kill.", jobLabel)
	descGC          = desc("gc_requests_total", "GC requests sent to the job's runners during this run of the service.", jobLabel)
	descRestarts    = desc("restarts_total", "Runner restarts by kind (graceful, crash, hang, kill) during this run of the service.", []string{"job_id", "kind"})
	descItems       = desc("items_total", "Items processed by result (created, updated, skipped, failed).", []string{"job_id", "result"})
	descOffset      = desc("checkpoint_offset", "Source offset of the job's last committed checkpoint.", jobLabel)
	descBatches     = desc("checkpoint_batches", "Batches committed by the job.", jobLabel)
	descCacheN      = desc("cache_entries", "Entries in the runner's match-value cache.", jobLabel)
	descCacheB      = desc("cache_bytes", "Estimated bytes of the runner's match-value cache.", jobLabel)
	descThroughput  = desc("items_per_second", "Current throughput of the job.", jobLabel)
	descJobsRunning = desc("jobs_running", "Jobs running now.", nil)
)

func desc(name, help string, labels []string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
}

// jobCollector reports every running job from its supervisor's snapshot.
type jobCollector struct {
	snapshots func() map[string]supervise.Status
}

func (c *jobCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRSS, descHeap, descBudget, descUsage, descLevel, descGC, descRestarts,
		descItems, descOffset, descBatches, descCacheN, descCacheB, descThroughput, descJobsRunning} {
		ch <- d
	}
}

func (c *jobCollector) Collect(ch chan<- prometheus.Metric) {
	snaps := c.snapshots()
	ch <- prometheus.MustNewConstMetric(descJobsRunning, prometheus.GaugeValue, float64(len(snaps)))
	for id, s := range snaps {
		g := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{id}, labels...)...)
		}
		cnt := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append([]string{id}, labels...)...)
		}
		m := s.Memory
		g(descRSS, float64(m.RSS))
		g(descHeap, float64(m.Heap))
		g(descBudget, float64(m.Budget))
		if m.Budget > 0 {
			g(descUsage, float64(m.RSS)/float64(m.Budget))
		}
		g(descLevel, float64(m.Level.Rank()))
		cnt(descGC, float64(s.GCRequests))
		cnt(descRestarts, float64(s.Restarts.Graceful), "graceful")
		cnt(descRestarts, float64(s.Restarts.Crash), "crash")
		cnt(descRestarts, float64(s.Restarts.Hang), "hang")
		cnt(descRestarts, float64(s.Restarts.Kill), "kill")
		p := s.Progress
		cnt(descItems, float64(p.Created), "created")
		cnt(descItems, float64(p.Updated), "updated")
		cnt(descItems, float64(p.Skipped), "skipped")
		cnt(descItems, float64(p.Failed), "failed")
		g(descOffset, float64(p.Offset))
		g(descBatches, float64(p.Batches))
		g(descCacheN, float64(s.CacheEntries))
		g(descCacheB, float64(s.CacheBytes))
		g(descThroughput, p.ItemsPerSec)
	}
}
