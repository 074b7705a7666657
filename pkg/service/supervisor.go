package service

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/supervise"
	"github.com/memvisor/memvisor/plugin"
)

// Supervisor is what the service uses of one job's supervisor. A
// Supervisor runs once: Run blocks until the job completes, fails, is
// paused or cancelled, or ctx is cancelled, which drains the runner so
// that it commits a checkpoint, and returns with StatusPaused.
type Supervisor interface {
	Run(ctx context.Context, mode StartMode) (Outcome, error)
	// Pause drains the runner; Run then returns StatusPaused.
	Pause(ctx context.Context) error
	// Cancel stops the job; Run then returns StatusCancelled.
	Cancel(ctx context.Context) error
	// Snapshot is cheap and served from memory.
	Snapshot() Snapshot
	// HeapProfile is the runner's pprof heap profile.
	HeapProfile(ctx context.Context) ([]byte, error)
}

// StartMode says how a run starts. The service always resumes: a job with
// no checkpoint starts from the beginning, and a finished job is a no-op.
type StartMode struct {
	Resume      bool
	RetryFailed bool
}

// Outcome is how a run ended.
type Outcome struct {
	// Status is completed, failed, paused or cancelled.
	Status registry.Status
	// Reason says why, for a failure above all.
	Reason string
	// Final is the last snapshot of the run.
	Final Snapshot
}

// Factory builds the Supervisor of one run of a job. log is the job's
// logger and emit receives its events; emit must not block for long.
type Factory func(spec job.Spec, log zerolog.Logger, emit func(Event)) (Supervisor, error)

// Level is a memory level, as DESIGN.md section 4 defines them: the
// supervisor's own type.
type Level = supervise.Level

// The memory levels.
const (
	LevelOK       = supervise.LevelOK
	LevelWarning  = supervise.LevelWarning
	LevelCritical = supervise.LevelCritical
	LevelKill     = supervise.LevelKill
)

// Memory is one memory reading of a runner against its budget.
type Memory struct {
	RSS    uint64 `json:"rss"`
	Heap   uint64 `json:"heap"`
	Budget uint64 `json:"budget"`
	Level  Level  `json:"level"`
	// WarningBytes and CriticalBytes are the level lines for the chart.
	WarningBytes  uint64 `json:"warning"`
	CriticalBytes uint64 `json:"critical"`
}

// Snapshot is a supervisor's view of its job.
type Snapshot struct {
	State    string
	Progress plugin.Progress
	Memory   Memory
	PeakRSS  uint64
	Restarts registry.Restarts
	// GCRequests counts the GC requests the supervisor sent.
	GCRequests   int64
	CacheEntries int64
	CacheBytes   int64
	Started      time.Time
	LastError    string
}

// EventKind names an event of a job's stream.
type EventKind string

// The event kinds. Progress, memory, level, gc and restart come from the
// supervisor; status and done come from the service.
const (
	EventProgress EventKind = "progress"
	EventMemory   EventKind = "memory"
	EventLevel    EventKind = "level"
	EventGC       EventKind = "gc"
	EventRestart  EventKind = "restart"
	EventStatus   EventKind = "status"
	EventDone     EventKind = "done"
)

// Event is one message of a job's stream.
type Event struct {
	Kind EventKind
	Time time.Time
	// Progress is set on progress events.
	Progress *plugin.Progress
	// Memory is set on memory, level, gc and restart events.
	Memory *Memory
	// Level is the new level of a level event.
	Level Level
	// RestartKind is graceful, crash, hang or kill on a restart event.
	RestartKind string
	// Reason says why a level changed, GC was asked for, or the runner
	// restarted.
	Reason string
}
