package service_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/registry"
)

const (
	queued    = registry.StatusQueued
	running   = registry.StatusRunning
	paused    = registry.StatusPaused
	completed = registry.StatusCompleted
	failed    = registry.StatusFailed
	cancelled = registry.StatusCancelled
)

// TestTransitionTable is the whole job state machine: every action from
// every state, and how a run's end is read.
func TestTransitionTable(t *testing.T) {
	boom := errors.New("runner exploded")
	cases := []struct {
		name string
		f    service.Facts
		to   registry.Status // "" with refused: the action is refused
		// signal: the running supervisor is asked instead.
		signal, retry, remove, refused bool
		reason                         string
	}{
		{name: "recover a running job", f: service.Facts{From: running, Action: service.ActRecover}, to: queued, reason: "resuming after a service restart"},
		{name: "recover a paused job", f: service.Facts{From: paused, Action: service.ActRecover}, refused: true},
		{name: "start a queued job", f: service.Facts{From: queued, Action: service.ActStart}, to: running},
		{name: "start a paused job", f: service.Facts{From: paused, Action: service.ActStart}, refused: true},
		{name: "start a cancelled job", f: service.Facts{From: cancelled, Action: service.ActStart}, refused: true},
		{name: "a start that failed", f: service.Facts{From: queued, Action: service.ActStartFailed, Err: boom}, to: failed, reason: "runner exploded"},

		{name: "pause a queued job", f: service.Facts{From: queued, Action: service.ActPause}, to: paused, reason: "pause requested"},
		{name: "pause a running job", f: service.Facts{From: running, Action: service.ActPause, Running: true}, signal: true},
		{name: "pause a job already stopping", f: service.Facts{From: running, Action: service.ActPause, Running: true, Stopping: true}, refused: true},
		{name: "pause a paused job", f: service.Facts{From: paused, Action: service.ActPause}, refused: true},
		{name: "pause a completed job", f: service.Facts{From: completed, Action: service.ActPause}, refused: true},
		{name: "pause a job recorded running with no runner", f: service.Facts{From: running, Action: service.ActPause}, refused: true},

		{name: "cancel a queued job", f: service.Facts{From: queued, Action: service.ActCancel}, to: cancelled, reason: "cancel requested"},
		{name: "cancel a paused job", f: service.Facts{From: paused, Action: service.ActCancel}, to: cancelled, reason: "cancel requested"},
		{name: "cancel a running job", f: service.Facts{From: running, Action: service.ActCancel, Running: true}, signal: true},
		{name: "cancel a job that is pausing", f: service.Facts{From: running, Action: service.ActCancel, Running: true, Stopping: true}, signal: true},
		{name: "cancel a failed job", f: service.Facts{From: failed, Action: service.ActCancel}, refused: true},

		{name: "resume a paused job", f: service.Facts{From: paused, Action: service.ActResume}, to: queued},
		{name: "resume a failed job", f: service.Facts{From: failed, Action: service.ActResume}, to: queued},
		{name: "resume a completed job", f: service.Facts{From: completed, Action: service.ActResume}, refused: true},
		{name: "resume a cancelled job", f: service.Facts{From: cancelled, Action: service.ActResume}, refused: true},
		{name: "resume a queued job", f: service.Facts{From: queued, Action: service.ActResume}, refused: true},

		{name: "retry a completed job's failures", f: service.Facts{From: completed, Action: service.ActRetry, HasFailedItems: true}, to: queued, retry: true},
		{name: "retry a failed job's failures", f: service.Facts{From: failed, Action: service.ActRetry, HasFailedItems: true}, to: queued, retry: true},
		{name: "retry with nothing failed", f: service.Facts{From: completed, Action: service.ActRetry}, refused: true},
		{name: "retry a running job", f: service.Facts{From: running, Action: service.ActRetry, HasFailedItems: true}, refused: true},

		{name: "delete a completed job", f: service.Facts{From: completed, Action: service.ActDelete}, remove: true},
		{name: "delete a cancelled job", f: service.Facts{From: cancelled, Action: service.ActDelete}, remove: true},
		{name: "delete a paused job", f: service.Facts{From: paused, Action: service.ActDelete}, refused: true},
		{name: "delete a running job", f: service.Facts{From: running, Action: service.ActDelete}, refused: true},

		{name: "run completed", f: service.Facts{From: running, Action: service.ActRunEnded, Outcome: completed}, to: completed},
		{name: "run failed", f: service.Facts{From: running, Action: service.ActRunEnded, Outcome: failed, OutcomeReason: "budget spent"}, to: failed, reason: "budget spent"},
		{name: "run error", f: service.Facts{From: running, Action: service.ActRunEnded, RunErr: boom}, to: failed, reason: "runner exploded"},
		{name: "paused on request", f: service.Facts{From: running, Action: service.ActRunEnded, Outcome: paused, Intent: service.IntentPause}, to: paused},
		{name: "cancel drains to paused, recorded cancelled", f: service.Facts{From: running, Action: service.ActRunEnded, Outcome: paused, Intent: service.IntentCancel}, to: cancelled},
		{name: "cancelled", f: service.Facts{From: running, Action: service.ActRunEnded, Outcome: cancelled, Intent: service.IntentCancel}, to: cancelled},
		{name: "drained by a shutdown", f: service.Facts{From: running, Action: service.ActRunEnded, Outcome: paused, ShuttingDown: true}, to: queued,
			reason: "drained by a service shutdown; resumes when the service starts"},
		{name: "cancelled context at shutdown", f: service.Facts{From: running, Action: service.ActRunEnded, RunErr: context.Canceled, Canceled: true, ShuttingDown: true}, to: queued,
			reason: "drained by a service shutdown; resumes when the service starts"},
		{name: "paused by the user during a shutdown", f: service.Facts{From: running, Action: service.ActRunEnded, Outcome: paused, Intent: service.IntentPause, ShuttingDown: true}, to: paused},
		{name: "cancelled context outside a shutdown", f: service.Facts{From: running, Action: service.ActRunEnded, RunErr: context.Canceled, Canceled: true}, to: failed, reason: "context canceled"},
		{name: "completed during a shutdown", f: service.Facts{From: running, Action: service.ActRunEnded, Outcome: completed, ShuttingDown: true}, to: completed},
		{name: "no outcome", f: service.Facts{From: running, Action: service.ActRunEnded}, to: paused},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := service.Transition(c.f)
			if c.refused {
				var te *service.TransitionError
				if !errors.As(err, &te) || !errors.Is(err, service.ErrConflict) || te.From != c.f.From {
					t.Fatalf("got %+v, %v: want a TransitionError from %s", d, err, c.f.From)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			got := fmt.Sprintf("%s %q signal=%v retry=%v remove=%v", d.To, d.Reason, d.Signal, d.RetryFailed, d.Remove)
			want := fmt.Sprintf("%s %q signal=%v retry=%v remove=%v", c.to, c.reason, c.signal, c.retry, c.remove)
			if got != want {
				t.Errorf("got %s, want %s", got, want)
			}
		})
	}
}
