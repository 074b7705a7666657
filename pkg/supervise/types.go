package supervise

import (
	"context"
	"time"

	"github.com/shirou/gopsutil/v4/process"

	"github.com/memvisor/memvisor/plugin"
)

// Clock is the time source of a Supervisor.
type Clock interface {
	Now() time.Time
	NewTicker(d time.Duration) Ticker
	NewTimer(d time.Duration) Timer
}

// Ticker is a time.Ticker behind an interface.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Timer is a time.Timer behind an interface.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// RealClock is the system clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// NewTicker returns a time.Ticker.
func (RealClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

// NewTimer returns a time.Timer.
func (RealClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }

// RSSFunc reads the resident set of a process from outside.
type RSSFunc func(pid int) (uint64, error)

// ProcRSS reads RSS through gopsutil (/proc/<pid>/statm on Linux).
func ProcRSS(pid int) (uint64, error) {
	mi, err := (&process.Process{Pid: int32(pid)}).MemoryInfo()
	if err != nil {
		return 0, err
	}
	return mi.RSS, nil
}

// StartMode says how Run starts the job.
type StartMode struct {
	// Resume continues from the job's checkpoint. Without it the runner
	// refuses a job that already has one. Restarts always resume.
	Resume bool
	// RetryFailed processes the job's failed.jsonl again.
	RetryFailed bool
	// Ledger, in a fleet, is called before every runner starts: the
	// runner commits through the Ledger it returns, and fences its writes
	// on it (docs/design.md, "Growing past one host"). An error counts as
	// a runner that did not start.
	Ledger func(context.Context) (plugin.Ledger, error)
}

// The statuses a run ends with (Summary.Status), and the states of
// Status.State while it runs.
const (
	StatusCompleted = "completed"
	StatusFailed    = "failed"
	StatusPaused    = "paused"
	StatusCancelled = "cancelled"

	StateIdle       = "idle"
	StateStarting   = "starting"
	StateRunning    = "running"
	StateDraining   = "draining"
	StateRestarting = "restarting"
)

// Memory is a runner's memory against its budget.
type Memory struct {
	RSS    uint64 `json:"rss"`
	Heap   uint64 `json:"heap"`
	Budget uint64 `json:"budget"`
	Level  Level  `json:"level"`
	// Percent is usage (Sample.Usage) as a percentage of the budget.
	Percent float64 `json:"percent"`
	// WarningBytes and CriticalBytes are the level lines.
	WarningBytes  uint64 `json:"warning"`
	CriticalBytes uint64 `json:"critical"`
	KillBytes     uint64 `json:"kill"`
}

// Restarts counts restarts by kind.
type Restarts struct {
	Graceful int `json:"graceful"`
	Crash    int `json:"crash"`
	Hang     int `json:"hang"`
	Kill     int `json:"kill"`
}

// Total is the sum of every kind.
func (r Restarts) Total() int { return r.Graceful + r.Crash + r.Hang + r.Kill }

func (r *Restarts) add(k RestartKind) {
	switch k {
	case RestartGraceful:
		r.Graceful++
	case RestartCrash:
		r.Crash++
	case RestartHang:
		r.Hang++
	case RestartKill:
		r.Kill++
	}
}

// Status is a snapshot of a supervised job, served from memory.
type Status struct {
	// State is idle, starting, running, draining or restarting while Run
	// runs, and then the final status.
	State     string
	JobID     string
	RunnerPID int
	Progress  plugin.Progress
	Memory    Memory
	PeakRSS   uint64
	Restarts  Restarts
	// GCRequests counts the GC requests sent to runners.
	GCRequests       int
	CacheEntries     int64
	CacheBytes       int64
	RateLimitedUntil time.Time
	Started          time.Time
	Updated          time.Time
	LastError        string
}

// EventKind names an event.
type EventKind string

// The event kinds.
const (
	EventProgress EventKind = "progress"
	EventMemory   EventKind = "memory"
	EventLevel    EventKind = "level"
	EventGC       EventKind = "gc"
	EventRestart  EventKind = "restart"
	EventDone     EventKind = "done"
)

// Event is something that happened to a supervised job. Options.OnEvent
// receives them on the supervising goroutine, so it must not block.
type Event struct {
	Kind EventKind
	Time time.Time
	// Progress is set on progress and done events.
	Progress plugin.Progress
	// Memory is the reading of memory, level, gc and restart events.
	Memory Memory
	// From and Level are the old and new levels of a level event.
	From  Level
	Level Level
	// RestartKind is set on restart events.
	RestartKind RestartKind
	// GC is the runner's answer to a GC request, when it came back.
	GC *plugin.GCResult
	// Status is the final status on a done event.
	Status string
	// Reason says why the level changed, GC was asked for, the runner
	// restarted, or the run ended.
	Reason string
}

// Summary is how a run ended, as `supervisor run --summary` writes it.
type Summary struct {
	JobID  string `json:"job_id"`
	Status string `json:"status"`
	Items  Items  `json:"items"`
	// Processed counts every item handled, in this run and before.
	Processed    int64    `json:"processed"`
	Restarts     Restarts `json:"restarts"`
	GCRequests   int      `json:"gc_requests"`
	PeakRSSBytes uint64   `json:"peak_rss_bytes"`
	BudgetBytes  uint64   `json:"budget_bytes"`
	DurationS    float64  `json:"duration_s"`
	Reason       string   `json:"reason,omitempty"`
}

// Items counts items by result.
type Items struct {
	Created int64 `json:"created"`
	Updated int64 `json:"updated"`
	Skipped int64 `json:"skipped"`
	Failed  int64 `json:"failed"`
}
