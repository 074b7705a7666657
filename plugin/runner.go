package plugin

import (
	"context"
	"time"
)

// Runner is the contract between the supervisor and a runner process.
// Every method takes a context; a method that misses its deadline is how
// the supervisor detects a hung runner.
type Runner interface {
	// Start begins the job in the background and returns at once. With
	// Resume, the runner continues from the job's last checkpoint.
	Start(ctx context.Context, req StartRequest) error
	// Stats reports the runner's memory and progress as it sees them.
	Stats(ctx context.Context) (Stats, error)
	// GC runs runtime.GC and debug.FreeOSMemory and reports the figures
	// before and after.
	GC(ctx context.Context) (GCResult, error)
	// Drain stops issuing writes at once, waits only for the writes in
	// flight, commits a checkpoint that records the done items of the
	// partial batch, and a cache snapshot, and returns the checkpoint. It
	// must return before deadline.
	Drain(ctx context.Context, deadline time.Time) (Checkpoint, error)
	// Cancel stops the job the way Drain does, commits, and marks it
	// cancelled.
	Cancel(ctx context.Context) error
	// Watch streams events (progress, checkpoints, the end of the job)
	// to fn until the job ends, ctx is done, or fn returns an error.
	Watch(ctx context.Context, fn func(Event) error) error
	// HeapProfile returns the runner's pprof heap profile.
	HeapProfile(ctx context.Context) ([]byte, error)
	// SetGuard replaces the lines of the runner's own memory guard.
	SetGuard(ctx context.Context, g Guard) error
}

// Guard holds the lines of the runner's own memory guard, in bytes of the
// runner's usage as it measures it itself (see docs/design.md, "The memory
// guard"). The supervisor sets them at Start and whenever the budget
// changes. Crossing GCBytes makes the runner collect garbage once;
// crossing DrainBytes makes it drain itself and end with StateDrained and
// DrainReasonGuard. Zero turns a line off.
type Guard struct {
	GCBytes    uint64
	DrainBytes uint64
}

// DrainReason says why a runner drained.
type DrainReason string

// The drain reasons.
const (
	// DrainRequested: the supervisor called Drain (or a signal asked a
	// standalone runner to stop).
	DrainRequested DrainReason = "requested"
	// DrainGuard: the runner's own memory guard crossed its drain line.
	DrainGuard DrainReason = "memory guard"
)

// StartRequest starts a job.
type StartRequest struct {
	// Job is the job spec, JSON-encoded as job.Spec.
	Job []byte
	// Resume continues from the last checkpoint. Without it, a job that
	// has a checkpoint is refused.
	Resume bool
	// RetryFailed processes the job's failed.jsonl again instead of the
	// source.
	RetryFailed bool
	// Guard is the runner's memory guard from the start.
	Guard Guard
	// Ledger, in a fleet, is where the runner commits its checkpoints and
	// failure records first, and asks how long it may still write. Nil
	// keeps them in the job's state directory only.
	Ledger Ledger
}

// State is where a runner's job stands.
type State string

// The runner states.
const (
	StateIdle      State = "idle"
	StateStarting  State = "starting" // prefetching or restoring the cache
	StateRunning   State = "running"
	StateDraining  State = "draining"
	StateDrained   State = "drained"
	StateCompleted State = "completed"
	StateFailed    State = "failed"
	StateCancelled State = "cancelled"
)

// Finished reports whether s is an end state.
func (s State) Finished() bool {
	return s == StateDrained || s == StateCompleted || s == StateFailed || s == StateCancelled
}

// Progress counts items. Processed = Created + Updated + Skipped + Failed.
type Progress struct {
	Total      int64
	TotalKnown bool
	Processed  int64
	Created    int64
	Updated    int64
	Skipped    int64
	Failed     int64
	// Batches is the number of committed batches; it grows by one per
	// checkpoint, so a runner that made progress has a higher number.
	Batches int64
	// Offset is the source position of the last checkpoint.
	Offset      int64
	ItemsPerSec float64
	// RateLimitedUntil is set while the target's rate limit holds writes.
	RateLimitedUntil time.Time
	// ErrorsByCategory counts failed items by category.
	ErrorsByCategory map[string]int64
}

// Stats is the runner's view of itself.
type Stats struct {
	State State
	// Error says why the job failed, when State is StateFailed.
	Error string
	PID   int

	RSSBytes uint64
	// From runtime/metrics.
	HeapObjectsBytes uint64 // /memory/classes/heap/objects:bytes
	HeapGoalBytes    uint64 // /gc/heap/goal:bytes
	TotalMappedBytes uint64 // /memory/classes/total:bytes
	GCCount          uint64 // /gc/cycles/total:gc-cycles
	GCCPUFraction    float64

	CacheEntries int64
	CacheBytes   int64
	Progress     Progress
	// GuardGCs counts the collections the runner's guard asked for.
	GuardGCs uint64
}

// MemFigures is one memory reading inside the runner.
type MemFigures struct {
	RSSBytes         uint64
	HeapObjectsBytes uint64
	TotalMappedBytes uint64
}

// GCResult reports a forced collection.
type GCResult struct {
	Before   MemFigures
	After    MemFigures
	Duration time.Duration
}

// Checkpoint is what a drain committed.
type Checkpoint struct {
	Batches  int64
	Offset   int64
	Done     bool
	Progress Progress
	// DrainDuration runs from the moment the drain began to the
	// committed checkpoint.
	DrainDuration time.Duration
	// Reason says why the runner drained.
	Reason DrainReason
}

// EventKind names an event of the Watch stream.
type EventKind string

// The event kinds.
const (
	EventProgress   EventKind = "progress"
	EventCheckpoint EventKind = "checkpoint"
	EventDone       EventKind = "done" // State says how the job ended
)

// Event is one message of the Watch stream.
type Event struct {
	Kind     EventKind
	Time     time.Time
	State    State
	Progress Progress
	Error    string
	// With EventDone and StateDrained: why the runner drained and how
	// long the drain took.
	Reason        DrainReason
	DrainDuration time.Duration
}
