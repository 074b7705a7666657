package service

import (
	"encoding/json"

	"github.com/memvisor/memvisor/pkg/supervise"
)

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

// The event relay of a fleet, for its tests.
type RelayThrottle = relayThrottle

func (t *relayThrottle) Admit(ev supervise.Event) []supervise.Event { return t.admit(ev) }

const (
	RelayEvery = relayEvery
	RelayData  = relayData
)

// RelayFrame is the SSE frame a client gets for ev: on the node that runs
// the job, or, relayed, on another node, after the notice's encoding. ok
// is false when the event is too large to relay.
func RelayFrame(id string, ev supervise.Event, relayed bool) (frame []byte, ok bool) {
	if relayed {
		data, ok := encodeRelayed(ev)
		if !ok {
			return nil, false
		}
		if len(data) > relayData {
			panic("encodeRelayed passed an event over relayData")
		}
		var r relayedEvent
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, false
		}
		ev = r.event()
	}
	h := newHub()
	s, _, _ := h.subscribe()
	h.publishNow(id, ev)
	return <-s.ch, true
}
