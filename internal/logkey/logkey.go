package logkey

// Identity and context.
const (
	// JobID is the job's id.
	JobID = "job_id"
	// RunnerPID is the runner process's pid.
	RunnerPID = "runner_pid"
	// Context names what a line is about: "memory.level", "memory.gc",
	// "memory.restart", "memory.kill", "progress" ...
	Context = "context"
	// Reason says why something happened, in words a user can act on.
	Reason = "reason"
)

// Memory figures. Each has one meaning.
const (
	// RSSMB is the resident set size (/proc/<pid>/statm), what the kernel
	// and a cgroup limit count.
	RSSMB = "rssMB"
	// PeakRSSMB is the highest RSSMB seen.
	PeakRSSMB = "peakRssMB"
	// HeapObjectsMB is the Go runtime's live heap,
	// /memory/classes/heap/objects:bytes (V8's heapUsed).
	HeapObjectsMB = "heapObjectsMB"
	// HeapGoalMB is the size at which the Go runtime's next GC cycle
	// ends, /gc/heap/goal:bytes.
	HeapGoalMB = "heapGoalMB"
	// HeapMappedMB is what the Go heap holds from the OS: objects,
	// unused and free-but-not-released spans (V8's heapTotal).
	HeapMappedMB = "heapMappedMB"
	// TotalMappedMB is every byte the Go runtime has mapped,
	// /memory/classes/total:bytes.
	TotalMappedMB = "totalMappedMB"
	// BudgetMB is the runner's memory budget.
	BudgetMB = "budgetMB"
	// UsagePercent is the memory policy's usage (the larger of RSS and
	// the live heap) as a percentage of the budget; never of the heap's
	// own size.
	UsagePercent = "usagePercent"
	// HeapObjectsPercent and RSSPercent are HeapObjectsMB and RSSMB as
	// percentages of the budget.
	HeapObjectsPercent = "heapObjectsPercent"
	RSSPercent         = "rssPercent"
	// MemoryLevel is the policy's level: ok, warning, critical or kill.
	MemoryLevel = "memoryLevel"

	// RSSBeforeMB and RSSAfterMB are RSSMB before and after a forced
	// collection; HeapObjectsBeforeMB and HeapObjectsAfterMB the same
	// for HeapObjectsMB.
	RSSBeforeMB         = "rssBeforeMB"
	RSSAfterMB          = "rssAfterMB"
	HeapObjectsBeforeMB = "heapObjectsBeforeMB"
	HeapObjectsAfterMB  = "heapObjectsAfterMB"

	// GuardGCMB and GuardDrainMB are the lines of the runner's memory
	// guard.
	GuardGCMB    = "guardGcMB"
	GuardDrainMB = "guardDrainMB"
	// DrainTime is the drain time the supervisor's policy expects, and
	// DrainDuration how long a drain took.
	DrainTime     = "drainTime"
	DrainDuration = "drainDuration"
)

// MB converts bytes to MiB, rounded to one decimal, as every MB field
// carries it.
func MB(b uint64) float64 { return float64(int64(float64(b)/(1<<20)*10+0.5)) / 10 }
