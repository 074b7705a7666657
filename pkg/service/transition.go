package service

import (
	"github.com/memvisor/memvisor/pkg/service/registry"
)

// action is what moves a job from one state to another.
type action string

// The actions.
const (
	// actRecover: the service starts and finds the job running, so the
	// process that ran it is gone.
	actRecover action = "recover"
	// actStart: a slot is free for a queued job.
	actStart action = "start"
	// actStartFailed: the job's supervisor could not be built.
	actStartFailed action = "start-failed"
	// actRunEnded: a run returned.
	actRunEnded action = "run-ended"
	actPause    action = "pause"
	actCancel   action = "cancel"
	actResume   action = "resume"
	actRetry    action = "retry the failed items of"
	actDelete   action = "delete"
)

// facts are everything a transition depends on, gathered by the caller.
type facts struct {
	From   registry.Status
	Action action
	// Running: a runner is active for the job in this process.
	Running bool
	// Stopping: a pause or cancel of the running job is under way.
	Stopping bool
	// Intent is the pause or cancel asked of the run that ended.
	Intent intent
	// Outcome and OutcomeReason are what the run reported; RunErr is its
	// error, if any, and Canceled says the error is the service's own
	// cancellation.
	Outcome       registry.Status
	OutcomeReason string
	RunErr        error
	Canceled      bool
	// ShuttingDown: the service is stopping.
	ShuttingDown bool
	// HasFailedItems: the job's failed.jsonl is not empty.
	HasFailedItems bool
	// Err is why a start failed.
	Err error
}

// decision is the outcome of a transition.
type decision struct {
	To     registry.Status
	Reason string
	// Signal: ask the running supervisor to pause or cancel; the state
	// changes when its run ends.
	Signal bool
	// RetryFailed: the next run processes failed.jsonl again.
	RetryFailed bool
	// Remove: delete the job and its state.
	Remove bool
}

// transition is the whole state machine of a job, as one pure function: it
// says what an action does to a job in the state f.From, or returns a
// *TransitionError (without the job id, which the caller adds).
func transition(f facts) (decision, error) {
	refuse := func(hint string) (decision, error) {
		return decision{}, &TransitionError{Action: string(f.Action), From: f.From, Hint: hint}
	}
	switch f.Action {
	case actRecover:
		if f.From == registry.StatusRunning {
			return decision{To: registry.StatusQueued, Reason: "resuming after a service restart"}, nil
		}
		return refuse("only a job recorded as running is recovered")
	case actStart:
		if f.From == registry.StatusQueued {
			return decision{To: registry.StatusRunning}, nil
		}
		return refuse("only a queued job starts")
	case actStartFailed:
		reason := "the job could not start"
		if f.Err != nil {
			reason = f.Err.Error()
		}
		return decision{To: registry.StatusFailed, Reason: reason}, nil
	case actRunEnded:
		return runEnded(f), nil
	case actPause, actCancel:
		if f.Running {
			if f.Stopping && f.Action == actPause {
				return refuse("it is already stopping")
			}
			return decision{Signal: true}, nil
		}
		if f.From == registry.StatusQueued {
			if f.Action == actPause {
				return decision{To: registry.StatusPaused, Reason: "pause requested"}, nil
			}
			return decision{To: registry.StatusCancelled, Reason: "cancel requested"}, nil
		}
		if f.Action == actCancel && f.From == registry.StatusPaused {
			return decision{To: registry.StatusCancelled, Reason: "cancel requested"}, nil
		}
		return refuse("")
	case actResume:
		if f.From == registry.StatusPaused || f.From == registry.StatusFailed {
			return decision{To: registry.StatusQueued}, nil
		}
		return refuse("only a paused or failed job can be resumed")
	case actRetry:
		if f.From != registry.StatusCompleted && f.From != registry.StatusFailed {
			return refuse("only a completed or failed job can retry its failed items")
		}
		if !f.HasFailedItems {
			return refuse("it has no failed items")
		}
		return decision{To: registry.StatusQueued, RetryFailed: true}, nil
	case actDelete:
		if f.From.Finished() {
			return decision{Remove: true}, nil
		}
		return refuse("cancel it first")
	}
	return refuse("unknown action")
}

// runEnded decides the state after a run returned.
func runEnded(f facts) decision {
	to, reason := f.Outcome, f.OutcomeReason
	switch {
	case f.RunErr != nil && !(f.ShuttingDown && f.Canceled):
		to, reason = registry.StatusFailed, f.RunErr.Error()
	case f.RunErr != nil || to == "":
		to = registry.StatusPaused
	}
	switch {
	case f.Intent == intentCancel && to == registry.StatusPaused:
		to = registry.StatusCancelled
	case to == registry.StatusPaused && f.Intent != intentPause && f.ShuttingDown:
		// Drained by the shutdown: queue it, so the next start resumes it.
		to, reason = registry.StatusQueued, "drained by a service shutdown; resumes when the service starts"
	}
	return decision{To: to, Reason: reason}
}
