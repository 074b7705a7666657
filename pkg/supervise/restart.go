package supervise

import (
	"time"

	"github.com/cenkalti/backoff/v5"
)

// RestartKind says why a runner was restarted.
type RestartKind string

// The restart kinds.
const (
	// RestartGraceful: the memory policy asked for it, and the runner
	// drained and committed first.
	RestartGraceful RestartKind = "graceful"
	// RestartCrash: the runner process exited on its own.
	RestartCrash RestartKind = "crash"
	// RestartHang: the runner missed an RPC deadline and was killed.
	RestartHang RestartKind = "hang"
	// RestartKill: the runner reached the kill ceiling and was killed.
	RestartKill RestartKind = "kill"
)

// RestartBudget bounds restarts in the manner of an Erlang/OTP
// supervisor: at most Max restarts within Window (its intensity and
// period), with exponential backoff between them. Only restarts of a
// runner that made no progress count: a runner that committed a new
// checkpoint since it started was doing its job, so memory-driven
// restarts that make progress never spend the budget, and a crash loop
// does. It is pure, with time passed in.
type RestartBudget struct {
	max      int
	window   time.Duration
	failures []time.Time
	bo       *backoff.ExponentialBackOff
}

// BackoffConfig shapes the delay before a restart that did not follow
// progress.
type BackoffConfig struct {
	Initial time.Duration // default 200ms
	Max     time.Duration // default 10s
	// Jitter is the randomization factor, 0 to 1; default 0.2. Set it to
	// a negative number for none.
	Jitter float64
}

// NewRestartBudget returns a budget of max restarts within window.
func NewRestartBudget(max int, window time.Duration, bc BackoffConfig) *RestartBudget {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = 10 * time.Second
	bo.Multiplier = 2
	bo.RandomizationFactor = 0.2
	if bc.Initial > 0 {
		bo.InitialInterval = bc.Initial
	}
	if bc.Max > 0 {
		bo.MaxInterval = bc.Max
	}
	switch {
	case bc.Jitter < 0:
		bo.RandomizationFactor = 0
	case bc.Jitter > 0:
		bo.RandomizationFactor = min(bc.Jitter, 1)
	}
	bo.Reset()
	return &RestartBudget{max: max, window: window, bo: bo}
}

// Restart records a restart at now. After progress it costs nothing and
// comes at once. Otherwise it counts, and comes after a growing delay;
// ok is false when more than max such restarts fall within the window,
// and count is how many do.
func (b *RestartBudget) Restart(now time.Time, progressed bool) (delay time.Duration, count int, ok bool) {
	if progressed {
		b.bo.Reset()
		return 0, b.inWindow(now), true
	}
	b.failures = append(b.failures, now)
	n := b.inWindow(now)
	if n > b.max {
		return 0, n, false
	}
	return b.bo.NextBackOff(), n, true
}

// inWindow drops failures older than the window and counts the rest.
func (b *RestartBudget) inWindow(now time.Time) int {
	keep := b.failures[:0]
	for _, t := range b.failures {
		if now.Sub(t) < b.window {
			keep = append(keep, t)
		}
	}
	b.failures = keep
	return len(keep)
}
