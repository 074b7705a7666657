package supervise_test

import (
	"testing"

	"github.com/memvisor/memvisor/pkg/supervise"
	"github.com/memvisor/memvisor/plugin"
)

// TestDecide covers every end of a session: what the runner said, and the
// one rule for a runner that stopped without finishing the job (a cancel
// asked for wins, then a pause, else a restart of the kind the end gives).
func TestDecide(t *testing.T) {
	final := func(status, reason string) supervise.Outcome {
		return supervise.Outcome{Final: true, Status: status, Reason: reason}
	}
	restart := func(kind supervise.RestartKind, reason string) supervise.Outcome {
		return supervise.Outcome{Restart: kind, Reason: reason}
	}
	const abort = "aborted: the runner was killed without a drain; the job resumes from its last checkpoint"
	for _, tc := range []struct {
		name string
		f    supervise.Facts
		want supervise.Outcome
	}{
		// The runner finished the job, one way or another: that stands,
		// whatever was asked of it.
		{"completed", supervise.Facts{End: "State", State: plugin.StateCompleted},
			final(supervise.StatusCompleted, "")},
		{"completed while a pause drains", supervise.Facts{End: "State", State: plugin.StateCompleted, Drain: "pause"},
			final(supervise.StatusCompleted, "")},
		{"failed with its error", supervise.Facts{End: "State", State: plugin.StateFailed, Reason: "target refused"},
			final(supervise.StatusFailed, "target refused")},
		{"failed without a word", supervise.Facts{End: "State", State: plugin.StateFailed},
			final(supervise.StatusFailed, "runner reported the job failed")},
		{"cancelled by the runner", supervise.Facts{End: "State", State: plugin.StateCancelled, Cancel: true},
			final(supervise.StatusCancelled, "cancelled")},
		{"the drain's checkpoint is the last", supervise.Facts{End: "Drained", Done: true, Drain: "pause"},
			final(supervise.StatusCompleted, "")},

		// Ends that no request changes.
		{"abort", supervise.Facts{End: "Abort", Cancel: true}, final(supervise.StatusPaused, abort)},
		{"interrupted at start", supervise.Facts{End: "Interrupted", Reason: "interrupted while a runner started"},
			final(supervise.StatusPaused, "interrupted while a runner started")},
		{"Start refused", supervise.Facts{End: "Refused", Reason: "invalid job"}, final(supervise.StatusFailed, "invalid job")},
		{"cancel failed", supervise.Facts{End: "CancelFailed", Cancel: true, Reason: "cancel failed: x"},
			final(supervise.StatusCancelled, "cancel failed: x")},

		// Stopped without finishing, nothing asked: restart.
		{"drained for the policy", supervise.Facts{End: "Drained", Drain: "restart", DrainReason: "usage climbing"},
			restart(supervise.RestartGraceful, "usage climbing")},
		{"drained by its memory guard", supervise.Facts{End: "State", State: plugin.StateDrained, Guard: true},
			restart(supervise.RestartGraceful, "memory guard")},
		{"drained on its own, reason unknown", supervise.Facts{End: "State", State: plugin.StateDrained},
			restart(supervise.RestartGraceful, "runner drained on its own")},
		{"exited", supervise.Facts{End: "Exited", Reason: "exit 2"}, restart(supervise.RestartCrash, "exit 2")},
		{"hung", supervise.Facts{End: "Hang", Reason: "no Stats"}, restart(supervise.RestartHang, "no Stats")},
		{"killed at the kill line", supervise.Facts{End: "Killed", Reason: "95%"}, restart(supervise.RestartKill, "95%")},
		{"killed while draining for the policy", supervise.Facts{End: "Killed", Drain: "restart", Reason: "95%"},
			restart(supervise.RestartKill, "95%")},
		{"drain failed", supervise.Facts{End: "DrainFailed", Drain: "restart", Reason: "drain failed: x"},
			restart(supervise.RestartCrash, "drain failed: x")},

		// Stopped without finishing while a pause was asked for: paused.
		{"pause drained", supervise.Facts{End: "Drained", Drain: "pause", DrainReason: "paused"},
			final(supervise.StatusPaused, "paused")},
		{"guard drain during a pause", supervise.Facts{End: "State", State: plugin.StateDrained, Guard: true, Drain: "pause"},
			final(supervise.StatusPaused, "memory guard")},
		{"exited during a pause", supervise.Facts{End: "Exited", Drain: "pause", Reason: "exit 2"},
			final(supervise.StatusPaused, "exit 2")},
		{"hung during a pause", supervise.Facts{End: "Hang", Drain: "pause", Reason: "no Drain"},
			final(supervise.StatusPaused, "no Drain")},
		{"killed during a pause", supervise.Facts{End: "Killed", Drain: "pause", Reason: "95%"},
			final(supervise.StatusPaused, "95%")},
		{"pause before the first batch", supervise.Facts{End: "DrainFailed", Drain: "pause", Reason: "paused"},
			final(supervise.StatusPaused, "paused")},

		// A cancel asked for wins over a pause and a restart.
		{"cancel after a drain", supervise.Facts{End: "Drained", Drain: "restart", DrainReason: "leak", Cancel: true},
			final(supervise.StatusCancelled, "cancelled")},
		{"cancel and pause", supervise.Facts{End: "Drained", Drain: "pause", DrainReason: "paused", Cancel: true},
			final(supervise.StatusCancelled, "cancelled")},
		{"exited while cancelling", supervise.Facts{End: "Exited", Cancel: true, Reason: "exit 2"},
			final(supervise.StatusCancelled, "exit 2")},
		{"hung while cancelling", supervise.Facts{End: "Hang", Cancel: true, Reason: "no Cancel"},
			final(supervise.StatusCancelled, "no Cancel")},
		{"killed while cancelling", supervise.Facts{End: "Killed", Cancel: true, Reason: "95%"},
			final(supervise.StatusCancelled, "95%")},
		{"drain failed while a cancel waits", supervise.Facts{End: "DrainFailed", Drain: "restart", Cancel: true, Reason: "drain failed: x"},
			final(supervise.StatusCancelled, "drain failed: x")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := supervise.Decide(tc.f); got != tc.want {
				t.Errorf("decide(%+v):\n got %+v\nwant %+v", tc.f, got, tc.want)
			}
		})
	}
}
