package servicetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/atomicfile"
	"github.com/memvisor/memvisor/pkg/batcher"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/supervise"
	"github.com/memvisor/memvisor/plugin"
)

// Options tune the simulation.
type Options struct {
	// Tick is the time one batch takes; the job's inject.slow_batch
	// overrides it. Default 10ms.
	Tick time.Duration
	// FailEvery makes every n-th item fail (0: none).
	FailEvery int64
	// FailOnStart makes every run fail at once with this reason.
	FailOnStart string
	// Budget is the simulated memory budget when the job sets no limit.
	// Default 256MiB.
	Budget uint64
	// Started, if set, receives each job id as its run starts.
	Started chan<- string
	// OnSpec, if set, sees the spec of every run built.
	OnSpec func(job.Spec)
}

// Factory returns a service.Factory that builds simulated supervisors.
func Factory(opt Options) service.Factory {
	return func(spec job.Spec, _ zerolog.Logger, emit func(supervise.Event)) (service.Supervisor, error) {
		if opt.Tick <= 0 {
			opt.Tick = 10 * time.Millisecond
		}
		if opt.Budget == 0 {
			opt.Budget = 256 << 20
		}
		if opt.OnSpec != nil {
			opt.OnSpec(spec)
		}
		return &Sim{spec: spec, opt: opt, emit: emit, ctl: make(chan service.EventKind, 1)}, nil
	}
}

// Sim is one simulated run.
type Sim struct {
	spec job.Spec
	opt  Options
	emit func(supervise.Event)
	ctl  chan service.EventKind // pause or cancel requests

	mu   sync.Mutex
	snap supervise.Status
}

var _ service.Supervisor = (*Sim)(nil)

type checkpoint struct {
	Processed int64 `json:"processed"`
	Created   int64 `json:"created"`
	Failed    int64 `json:"failed"`
	Batches   int64 `json:"batches"`
	Done      bool  `json:"done"`
}

func (s *Sim) dir() string { return s.spec.Dir() }

func (s *Sim) total() int64 {
	n := int64(1000)
	if s.spec.Source.Type == job.TypeSynthetic {
		n = s.spec.Source.Count
	}
	if s.spec.MaxItems > 0 && s.spec.MaxItems < n {
		n = s.spec.MaxItems
	}
	return n
}

func (s *Sim) load() (checkpoint, error) {
	var cp checkpoint
	data, err := os.ReadFile(filepath.Join(s.dir(), "sim-checkpoint.json"))
	if errors.Is(err, os.ErrNotExist) {
		return cp, nil
	}
	if err != nil {
		return cp, err
	}
	return cp, json.Unmarshal(data, &cp)
}

func (s *Sim) save(cp checkpoint) error {
	data, _ := json.Marshal(cp)
	return atomicfile.WriteBytes(filepath.Join(s.dir(), "sim-checkpoint.json"), 0o644, data)
}

// Run processes the job until it ends, is paused or cancelled, or ctx is
// done (which pauses it).
func (s *Sim) Run(ctx context.Context, mode service.StartMode) (service.Outcome, error) {
	if s.opt.Started != nil {
		s.opt.Started <- s.spec.ID
	}
	if err := os.MkdirAll(s.dir(), 0o755); err != nil {
		return service.Outcome{}, err
	}
	if s.opt.FailOnStart != "" {
		return service.Outcome{Status: registry.StatusFailed, Reason: s.opt.FailOnStart}, nil
	}
	cp, err := s.load()
	if err != nil {
		return service.Outcome{}, fmt.Errorf("load checkpoint: %w", err)
	}
	budget := uint64(s.spec.Memory.Limit)
	if budget == 0 {
		budget = s.opt.Budget
	}
	total := s.total()
	tick := s.opt.Tick
	if d := s.spec.Inject.SlowBatch.D(); d > 0 {
		tick = d
	}
	started := time.Now()
	base := cp.Processed
	level := service.LevelOK
	var gcs int64
	update := func(rss uint64) plugin.Progress {
		p := plugin.Progress{
			Total: total, TotalKnown: true, Processed: cp.Processed, Created: cp.Created, Failed: cp.Failed,
			Batches: cp.Batches, Offset: cp.Processed,
		}
		if el := time.Since(started).Seconds(); el > 0 {
			p.ItemsPerSec = float64(cp.Processed-base) / el
		}
		if cp.Failed > 0 {
			p.ErrorsByCategory = map[string]int64{"validation": cp.Failed}
		}
		mem := supervise.Memory{
			RSS: rss, Heap: rss * 6 / 10, Budget: budget, Level: level,
			WarningBytes:  uint64(float64(budget) * s.spec.Memory.WarningPercent / 100),
			CriticalBytes: uint64(float64(budget) * s.spec.Memory.CriticalPercent / 100),
		}
		s.mu.Lock()
		s.snap.State = "running"
		s.snap.Progress = p
		s.snap.Memory = mem
		s.snap.PeakRSS = max(s.snap.PeakRSS, rss)
		s.snap.GCRequests = int(gcs)
		s.snap.CacheEntries = cp.Created
		s.snap.CacheBytes = cp.Created * 40
		s.snap.Started = started
		s.mu.Unlock()
		return p
	}
	if mode.RetryFailed {
		return s.retryFailed(&cp, update)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for i := int64(0); !cp.Done; i++ {
		// Memory: a sawtooth from 40% to 90% of the budget; crossing 85%
		// asks for GC, which brings it back.
		frac := 0.40 + 0.05*float64(i%11)
		rss := uint64(frac * float64(budget))
		now := time.Now()
		newLevel := service.LevelOK
		switch {
		case frac*100 >= s.spec.Memory.CriticalPercent:
			newLevel = service.LevelCritical
		case frac*100 >= s.spec.Memory.WarningPercent:
			newLevel = service.LevelWarning
		}
		p := update(rss)
		mem := s.Snapshot().Memory
		if newLevel != level {
			level = newLevel
			mem.Level = level
			s.emit(supervise.Event{Kind: service.EventLevel, Time: now, Level: level, Memory: mem, Reason: "rss crossed a level line"})
		}
		if level == service.LevelCritical {
			gcs++
			s.emit(supervise.Event{Kind: service.EventGC, Time: now, Memory: mem, Reason: "rss above critical"})
		}
		s.emit(supervise.Event{Kind: service.EventMemory, Time: now, Memory: mem})
		s.emit(supervise.Event{Kind: service.EventProgress, Time: now, Progress: p})

		select {
		case <-ctx.Done():
			return s.outcome(registry.StatusPaused, "", update), nil
		case k := <-s.ctl:
			if k == "cancel" {
				return s.outcome(registry.StatusCancelled, "", update), nil
			}
			return s.outcome(registry.StatusPaused, "", update), nil
		case <-t.C:
		}
		n := min(int64(s.spec.BatchSize), total-cp.Processed)
		if err := s.batch(&cp, n); err != nil {
			return s.outcome(registry.StatusFailed, err.Error(), update), nil
		}
		cp.Done = cp.Processed >= total
		if err := s.save(cp); err != nil {
			return s.outcome(registry.StatusFailed, err.Error(), update), nil
		}
	}
	if s.spec.DryRun {
		preview, _ := json.Marshal(map[string]any{"job": s.spec.ID, "would_create": cp.Created, "would_update": 0, "sample": []any{}})
		if err := atomicfile.WriteBytes(filepath.Join(s.dir(), batcher.DryRunFile), 0o644, preview); err != nil {
			return s.outcome(registry.StatusFailed, err.Error(), update), nil
		}
	}
	p := update(0)
	s.emit(supervise.Event{Kind: service.EventProgress, Time: time.Now(), Progress: p})
	return s.outcome(registry.StatusCompleted, "", update), nil
}

// batch processes n items, appending the failing ones to failed.jsonl.
func (s *Sim) batch(cp *checkpoint, n int64) error {
	var failed bytes.Buffer
	for k := range n {
		id := cp.Processed + k + 1
		if s.opt.FailEvery > 0 && id%s.opt.FailEvery == 0 {
			cp.Failed++
			fmt.Fprintf(&failed, `{"time":%q,"source_id":%d,"line":%d,"category":"validation","retryable":false,"error":"simulated failure","detail":{"field":"email"}}`+"\n",
				time.Now().UTC().Format(time.RFC3339Nano), id, id)
		} else {
			cp.Created++
		}
	}
	cp.Processed += n
	cp.Batches++
	if failed.Len() == 0 {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(s.dir(), batcher.FailedFile), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(failed.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// retryFailed turns every failed item into a created one.
func (s *Sim) retryFailed(cp *checkpoint, update func(uint64) plugin.Progress) (service.Outcome, error) {
	data, err := os.ReadFile(filepath.Join(s.dir(), batcher.FailedFile))
	if err != nil {
		return s.outcome(registry.StatusFailed, err.Error(), update), nil
	}
	n := int64(bytes.Count(data, []byte("\n")))
	cp.Failed -= n
	cp.Created += n
	if err := s.save(*cp); err != nil {
		return s.outcome(registry.StatusFailed, err.Error(), update), nil
	}
	if err := os.Remove(filepath.Join(s.dir(), batcher.FailedFile)); err != nil {
		return s.outcome(registry.StatusFailed, err.Error(), update), nil
	}
	return s.outcome(registry.StatusCompleted, "", update), nil
}

func (s *Sim) outcome(st registry.Status, reason string, update func(uint64) plugin.Progress) service.Outcome {
	update(s.Snapshot().Memory.RSS)
	return service.Outcome{Status: st, Reason: reason, Final: s.Snapshot()}
}

// Pause asks the run to stop after its batch.
func (s *Sim) Pause(ctx context.Context) error { return s.request(ctx, "pause") }

// Cancel asks the run to stop as cancelled.
func (s *Sim) Cancel(ctx context.Context) error { return s.request(ctx, "cancel") }

func (s *Sim) request(ctx context.Context, k service.EventKind) error {
	select {
	case s.ctl <- k:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Snapshot returns the run's figures.
func (s *Sim) Snapshot() supervise.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// HeapProfile returns the heap profile of the current process.
func (s *Sim) HeapProfile(context.Context) ([]byte, error) {
	var b bytes.Buffer
	if err := pprof.Lookup("heap").WriteTo(&b, 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Processed reads the simulated checkpoint of a job in stateDir/jobs, for
// tests that check where a job stands on disk.
func Processed(jobDir string) (int64, bool, error) {
	data, err := os.ReadFile(filepath.Join(jobDir, "sim-checkpoint.json"))
	if err != nil {
		return 0, false, err
	}
	var cp checkpoint
	if err := json.Unmarshal(data, &cp); err != nil {
		return 0, false, err
	}
	return cp.Processed, cp.Done, nil
}
