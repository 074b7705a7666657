package plugin

import (
	"strconv"
	"strings"
)

// SanitizeEnv returns the environment for a runner, built from env (the
// supervisor's own) without the variables that belong to the supervisor
// alone:
//   - NOTIFY_SOCKET and WATCHDOG_*: systemd's notify socket and watchdog
//     are the supervisor's; a runner that spoke to them could tell
//     systemd the service is ready or alive when it is not.
//   - LISTEN_*: socket activation, handed to the main process only.
//   - the plugin handshake cookie: go-plugin sets it for each launch.
//
// GOMEMLIMIT is replaced: set to gomemlimit bytes when it is positive,
// so that the runner's own GC works before the supervisor has to, and
// removed otherwise, because a limit meant for the supervisor's process
// is wrong for the runner. The caller picks a value below the policy's
// warning level. env itself is not modified.
func SanitizeEnv(env []string, gomemlimit int64) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "NOTIFY_SOCKET",
			strings.HasPrefix(name, "WATCHDOG_"),
			strings.HasPrefix(name, "LISTEN_"),
			name == "GOMEMLIMIT",
			name == Handshake.MagicCookieKey:
			continue
		}
		out = append(out, kv)
	}
	if gomemlimit > 0 {
		out = append(out, "GOMEMLIMIT="+strconv.FormatInt(gomemlimit, 10))
	}
	return out
}
