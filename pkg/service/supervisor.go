package service

import (
	"context"

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
	Snapshot() supervise.Status
	// HeapProfile is the runner's pprof heap profile.
	HeapProfile(ctx context.Context) ([]byte, error)
}

// StartMode says how a run starts. The service always resumes: a job with
// no checkpoint starts from the beginning, and a finished job is a no-op.
type StartMode struct {
	Resume      bool
	RetryFailed bool
	// Ledger is set for a job claimed in a fleet; see supervise.StartMode.
	Ledger func(context.Context) (plugin.Ledger, error)
}

// Outcome is how a run ended.
type Outcome struct {
	// Status is completed, failed, paused or cancelled.
	Status registry.Status
	// Reason says why, for a failure above all.
	Reason string
	// Final is the supervisor's last status of the run.
	Final supervise.Status
}

// Factory builds the Supervisor of one run of a job. log is the job's
// logger and emit receives its events; emit must not block for long.
type Factory func(spec job.Spec, log zerolog.Logger, emit func(supervise.Event)) (Supervisor, error)

// Level is a memory level, as docs/design.md, "The memory policy",
// defines them: the
// supervisor's own type.
type Level = supervise.Level

// The memory levels.
const (
	LevelOK       = supervise.LevelOK
	LevelWarning  = supervise.LevelWarning
	LevelCritical = supervise.LevelCritical
	LevelKill     = supervise.LevelKill
)

// EventKind names an event of a job's stream: pkg/supervise's kinds, and
// the service's own status.
type EventKind = supervise.EventKind

// The event kinds. Progress, memory, level, gc and restart come from the
// supervisor; status and done come from the service (the supervisor's own
// done event is dropped: the service sends done once the registry has the
// outcome).
const (
	EventProgress = supervise.EventProgress
	EventMemory   = supervise.EventMemory
	EventLevel    = supervise.EventLevel
	EventGC       = supervise.EventGC
	EventRestart  = supervise.EventRestart
	EventDone     = supervise.EventDone
	EventStatus   = EventKind("status")
)
