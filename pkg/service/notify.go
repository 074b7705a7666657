package service

import (
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier speaks the systemd notify protocol.
type Notifier interface {
	// Notify sends state lines such as "READY=1"; errors are ignored, as
	// systemd treats a missing notification by its own timeouts.
	Notify(state string)
	// WatchdogInterval returns WATCHDOG_USEC, if systemd expects pings.
	WatchdogInterval() (time.Duration, bool)
}

// SystemdNotifier sends to $NOTIFY_SOCKET through coreos/go-systemd. It
// does nothing when the variable is unset. The variables stay in the
// environment; the runner's environment is sanitized where it is started.
func SystemdNotifier() Notifier { return sdNotifier{} }

type sdNotifier struct{}

func (sdNotifier) Notify(state string) { _, _ = daemon.SdNotify(false, state) }

func (sdNotifier) WatchdogInterval() (time.Duration, bool) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0, false
	}
	return d, true
}
