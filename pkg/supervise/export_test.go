package supervise

import "github.com/memvisor/memvisor/plugin"

// Facts mirrors facts for the tests of decide in package supervise_test.
// End names an endKind by the words after "end": "Drained", "Exited" ...
type Facts struct {
	Drain       string // "", "restart" or "pause"
	DrainReason string
	Cancel      bool
	End         string
	State       plugin.State
	Guard, Done bool
	Reason      string
}

// Outcome mirrors outcome.
type Outcome struct {
	Final   bool
	Status  string
	Restart RestartKind
	Reason  string
}

var endNames = map[string]endKind{
	"Interrupted": endInterrupted, "Refused": endRefused, "State": endState, "Drained": endDrained,
	"Exited": endExited, "Hang": endHang, "Killed": endKilled, "DrainFailed": endDrainFailed,
	"CancelFailed": endCancelFailed, "Abort": endAbort,
}

// Decide runs decide.
func Decide(f Facts) Outcome {
	end, ok := endNames[f.End]
	if !ok {
		panic("unknown end " + f.End)
	}
	d := map[string]drainPurpose{"": drainNone, "restart": drainRestart, "pause": drainPause}[f.Drain]
	o := decide(facts{
		drain: d, drainReason: f.DrainReason, cancel: f.Cancel, end: end, state: f.State,
		guard: f.Guard, done: f.Done, reason: f.Reason,
	})
	return Outcome{Final: o.final, Status: o.status, Restart: o.restart, Reason: o.reason}
}
