package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Status is where a job stands, as the API reports it.
type Status string

// The job states.
const (
	StatusQueued    Status = "queued"
	StatusRunning   Status = "running"
	StatusPaused    Status = "paused"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
)

// Statuses lists every state, in lifecycle order.
var Statuses = []Status{StatusQueued, StatusRunning, StatusPaused, StatusCompleted, StatusFailed, StatusCancelled}

// Valid reports whether s is a known state.
func (s Status) Valid() bool {
	for _, x := range Statuses {
		if s == x {
			return true
		}
	}
	return false
}

// Finished reports whether s is an end state.
func (s Status) Finished() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Active reports whether a job in state s still owns its source and target.
func (s Status) Active() bool { return !s.Finished() }

// Counts are the item counters last known for a job.
type Counts struct {
	Total            int64            `json:"total"`
	TotalKnown       bool             `json:"total_known"`
	Processed        int64            `json:"processed"`
	Created          int64            `json:"created"`
	Updated          int64            `json:"updated"`
	Skipped          int64            `json:"skipped"`
	Failed           int64            `json:"failed"`
	Offset           int64            `json:"offset"`
	Batches          int64            `json:"batches"`
	ErrorsByCategory map[string]int64 `json:"errors_by_category,omitempty"`
}

// Restarts counts runner restarts by kind.
type Restarts struct {
	Graceful int64 `json:"graceful"`
	Crash    int64 `json:"crash"`
	Hang     int64 `json:"hang"`
	Kill     int64 `json:"kill"`
}

// Record is one job.
type Record struct {
	ID  string `json:"id"`
	Seq uint64 `json:"seq"`
	// Spec is the job spec as the service will run it (job.Spec as JSON).
	Spec json.RawMessage `json:"spec"`
	// Pair identifies the source and target; see Create.
	Pair   string `json:"pair"`
	Status Status `json:"status"`
	// RetryFailed makes the next start process failed.jsonl again.
	RetryFailed bool `json:"retry_failed,omitempty"`
	// Reason says why the job is in its state (a failure, a shutdown).
	Reason string `json:"reason,omitempty"`

	Counts      Counts   `json:"counts"`
	Restarts    Restarts `json:"restarts"`
	GCRequests  int64    `json:"gc_requests"`
	PeakRSS     uint64   `json:"peak_rss,omitempty"`
	BudgetBytes uint64   `json:"budget_bytes,omitempty"`
	// Runs counts the supervisor runs of the job (starts and resumes).
	Runs int `json:"runs"`

	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
}

// Errors returned by the registry, matched with errors.Is.
var (
	ErrNotFound = errors.New("job not found")
	ErrExists   = errors.New("job id already exists")
	// ErrActivePair means another active job has the same source and
	// target.
	ErrActivePair = errors.New("an active job already has the same source and target")
	ErrBadCursor  = errors.New("bad cursor")
	ErrLocked     = errors.New("registry is open in another process")
	// ErrQueueFull means the queue already holds the most jobs the
	// service allows (max_queued_jobs).
	ErrQueueFull = errors.New("the job queue is full")
)

// ConflictError names the active job that holds a pair.
type ConflictError struct{ ID string }

func (e *ConflictError) Error() string { return fmt.Sprintf("%v: job %s", ErrActivePair, e.ID) }
func (e *ConflictError) Unwrap() error { return ErrActivePair }

// ListOptions selects a page of jobs.
type ListOptions struct {
	// Statuses keeps only jobs in one of these states; empty keeps all.
	Statuses []Status
	// Cursor is the NextCursor of the previous page; empty starts at the
	// oldest job.
	Cursor string
	// Limit is the page size; at most 1000, default 50.
	Limit int
}

// Page is one page of jobs, oldest first.
type Page struct {
	Jobs []Record
	// NextCursor is empty on the last page.
	NextCursor string
}

// pageLimit applies ListOptions' default and cap.
func (o ListOptions) pageLimit() int {
	if o.Limit <= 0 {
		return 50
	}
	return min(o.Limit, 1000)
}

// keeps reports whether a job in state s belongs on the page.
func (o ListOptions) keeps(s Status) bool {
	if len(o.Statuses) == 0 {
		return true
	}
	for _, x := range o.Statuses {
		if x == s {
			return true
		}
	}
	return false
}
