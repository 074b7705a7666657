package service

import (
	"encoding/json"
	"math"
	"sync"
	"time"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/supervise"
	"github.com/memvisor/memvisor/plugin"
)

// JobView is a job as GET /v1/jobs/{id} reports it.
type JobView struct {
	ID               string            `json:"id"`
	Status           registry.Status   `json:"status"`
	Reason           string            `json:"reason,omitempty"`
	DryRun           bool              `json:"dry_run"`
	RetryFailed      bool              `json:"retry_failed"`
	Source           EndpointView      `json:"source"`
	Target           EndpointView      `json:"target"`
	Progress         ProgressView      `json:"progress"`
	Throughput       ThroughputView    `json:"throughput"`
	Memory           MemoryView        `json:"memory"`
	Restarts         registry.Restarts `json:"restarts"`
	GCRequests       int64             `json:"gc_requests"`
	ErrorsByCategory map[string]int64  `json:"errors_by_category"`
	Checkpoint       CheckpointView    `json:"checkpoint"`
	Cache            CacheView         `json:"cache"`
	Runs             int               `json:"runs"`
	LastError        string            `json:"last_error,omitempty"`
	// Node is, in a fleet, the node whose live lease runs the job.
	Node       string         `json:"node,omitempty"`
	Timestamps TimestampsView `json:"timestamps"`
}

// EndpointView names a source or target without its credentials.
type EndpointView struct {
	Type  string `json:"type"`
	Path  string `json:"path,omitempty"`
	AppID int64  `json:"app_id,omitempty"`
	Count int64  `json:"count,omitempty"`
}

// ProgressView counts items; Percent is of Total when it is known.
type ProgressView struct {
	Total      int64   `json:"total"`
	TotalKnown bool    `json:"total_known"`
	Processed  int64   `json:"processed"`
	Created    int64   `json:"created"`
	Updated    int64   `json:"updated"`
	Skipped    int64   `json:"skipped"`
	Failed     int64   `json:"failed"`
	Percent    float64 `json:"percent"`
}

// ThroughputView is the job's speed. ETA is in seconds, null when unknown.
type ThroughputView struct {
	ItemsPerSec      float64    `json:"items_per_s"`
	ETA              *float64   `json:"eta"`
	RateLimitedUntil *time.Time `json:"rate_limited_until,omitempty"`
}

// MemoryView is the runner's memory against its budget, in bytes.
type MemoryView struct {
	RSS        uint64  `json:"rss"`
	Heap       uint64  `json:"heap"`
	Budget     uint64  `json:"budget"`
	Level      Level   `json:"level"`
	UsageRatio float64 `json:"usage_ratio"`
	PeakRSS    uint64  `json:"peak_rss"`
	Warning    uint64  `json:"warning"`
	Critical   uint64  `json:"critical"`
}

// CheckpointView is the last committed checkpoint.
type CheckpointView struct {
	Offset  int64 `json:"offset"`
	Batches int64 `json:"batches"`
}

// CacheView is the runner's match-value cache.
type CacheView struct {
	Entries int64 `json:"entries"`
	Bytes   int64 `json:"bytes"`
}

// TimestampsView holds the job's times; unset ones are null.
type TimestampsView struct {
	Created  time.Time  `json:"created"`
	Updated  time.Time  `json:"updated"`
	Started  *time.Time `json:"started"`
	Finished *time.Time `json:"finished"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// countsOf turns runner progress into registry counts.
func countsOf(p plugin.Progress) registry.Counts {
	return registry.Counts{
		Total: p.Total, TotalKnown: p.TotalKnown, Processed: p.Processed,
		Created: p.Created, Updated: p.Updated, Skipped: p.Skipped, Failed: p.Failed,
		Offset: p.Offset, Batches: p.Batches, ErrorsByCategory: p.ErrorsByCategory,
	}
}

// viewOf builds a job's view from its record and, while it runs, from its
// supervisor's snapshot.
func viewOf(sv specView, rec registry.Record, live *supervise.Status) JobView {
	v := JobView{
		ID:          rec.ID,
		Status:      rec.Status,
		Reason:      rec.Reason,
		DryRun:      sv.dryRun,
		RetryFailed: rec.RetryFailed,
		Source:      sv.source,
		Target:      sv.target,
		Restarts:    rec.Restarts,
		GCRequests:  rec.GCRequests,
		Runs:        rec.Runs,
		Memory:      MemoryView{Budget: rec.BudgetBytes, PeakRSS: rec.PeakRSS, Level: LevelOK},
		Timestamps: TimestampsView{
			Created: rec.Created, Updated: rec.Updated,
			Started: timePtr(rec.Started), Finished: timePtr(rec.Finished),
		},
	}
	c := rec.Counts
	if live != nil {
		c = countsOf(live.Progress)
		v.Restarts = addRestarts(registry.Restarts{}, live.Restarts)
		v.GCRequests = int64(live.GCRequests)
		m := live.Memory
		v.Memory = MemoryView{
			RSS: m.RSS, Heap: m.Heap, Budget: m.Budget, Level: m.Level,
			PeakRSS: max(live.PeakRSS, m.RSS), Warning: m.WarningBytes, Critical: m.CriticalBytes,
		}
		if v.Memory.Level == "" {
			v.Memory.Level = LevelOK
		}
		if m.Budget > 0 {
			v.Memory.UsageRatio = float64(m.RSS) / float64(m.Budget)
		}
		v.Cache = CacheView{Entries: live.CacheEntries, Bytes: live.CacheBytes}
		v.LastError = live.LastError
		v.Throughput.ItemsPerSec = live.Progress.ItemsPerSec
		if t := live.Progress.RateLimitedUntil; !t.IsZero() {
			v.Throughput.RateLimitedUntil = &t
		}
	}
	v.Progress = ProgressView{
		Total: c.Total, TotalKnown: c.TotalKnown, Processed: c.Processed,
		Created: c.Created, Updated: c.Updated, Skipped: c.Skipped, Failed: c.Failed,
	}
	v.Checkpoint = CheckpointView{Offset: c.Offset, Batches: c.Batches}
	v.ErrorsByCategory = c.ErrorsByCategory
	if v.ErrorsByCategory == nil {
		v.ErrorsByCategory = map[string]int64{}
	}
	switch {
	case rec.Status == registry.StatusCompleted:
		v.Progress.Percent = 100
	case c.TotalKnown && c.Total > 0:
		v.Progress.Percent = math.Min(100, math.Round(float64(c.Processed)*10000/float64(c.Total))/100)
	}
	if rec.Status == registry.StatusRunning && c.TotalKnown && v.Throughput.ItemsPerSec > 0 {
		eta := math.Max(0, math.Round(float64(c.Total-c.Processed)/v.Throughput.ItemsPerSec))
		v.Throughput.ETA = &eta
	}
	return v
}

// specView is what a view takes from the job spec. A stored spec never
// changes, so it is decoded once per job (by id and sequence number).
type specView struct {
	dryRun         bool
	source, target EndpointView
}

type specKey struct {
	id  string
	seq uint64
}

// specViews caches specView by job.
type specViews struct{ m sync.Map }

func (c *specViews) get(rec registry.Record) specView {
	k := specKey{rec.ID, rec.Seq}
	if v, ok := c.m.Load(k); ok {
		return v.(specView)
	}
	var spec job.Spec
	_ = json.Unmarshal(rec.Spec, &spec)
	v := specView{dryRun: spec.DryRun, source: endpointView(spec.Source), target: endpointView(spec.Target)}
	c.m.Store(k, v)
	return v
}

func (c *specViews) forget(rec registry.Record) { c.m.Delete(specKey{rec.ID, rec.Seq}) }

func endpointView(e job.Endpoint) EndpointView {
	v := EndpointView{Type: e.Type, Path: e.Path}
	if e.Type == job.TypeSynthetic {
		v.Count = e.Count
	}
	if e.Podio != nil {
		v.AppID = e.Podio.AppID
	}
	return v
}
