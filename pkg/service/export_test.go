package service

// The job state machine, for its table test.
type (
	Facts    = facts
	Decision = decision
	Action   = action
	Intent   = intent
)

var Transition = transition

const (
	ActRecover     = actRecover
	ActStart       = actStart
	ActStartFailed = actStartFailed
	ActRunEnded    = actRunEnded
	ActPause       = actPause
	ActCancel      = actCancel
	ActResume      = actResume
	ActRetry       = actRetry
	ActDelete      = actDelete

	IntentNone   = intentNone
	IntentPause  = intentPause
	IntentCancel = intentCancel
)

// PodioPrincipal names the Podio identity behind a job's credentials.
var PodioPrincipal = podioPrincipal
