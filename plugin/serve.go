package plugin

import (
	"os"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
)

// Handshake is the go-plugin handshake both sides use. The cookie is not
// a secret: it only stops a user from starting the runner by hand in
// plugin mode by mistake. Bump ProtocolVersion when the proto changes
// incompatibly.
var Handshake = goplugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "MEMVISOR_PLUGIN",
	MagicCookieValue: "AbRzyKhCmuN0FEXC63DFC4xLFReLvkv7",
}

// PluginName is the name the runner is dispensed under.
const PluginName = "runner"

// IsPluginLaunch reports whether this process was started by a plugin
// client: the handshake's cookie variable is set. cmd/runner uses it to
// tell a launch by the supervisor from a user running the binary by hand.
// A wrong cookie value still counts, so Serve can say what is wrong.
func IsPluginLaunch() bool {
	_, ok := os.LookupEnv(Handshake.MagicCookieKey)
	return ok
}

// Serve serves impl to the supervisor over go-plugin's gRPC transport and
// blocks until the supervisor closes the connection.
//
// Stdout is go-plugin's handshake channel: nothing else may be written
// to it. Serve swaps os.Stdout and os.Stderr for pipes that go-plugin
// forwards to the supervisor, so a stray fmt.Print in the runner reaches
// the supervisor's log as a warning instead of breaking the handshake.
// Log through NewRunnerLogger(os.Stderr), created before Serve is called.
func Serve(impl Runner) {
	// Keep the real stderr: go-plugin replaces os.Stderr with a pipe
	// once it has printed the handshake.
	stderr := os.Stderr
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         PluginMap(impl),
		GRPCServer:      goplugin.DefaultGRPCServer,
		// go-plugin's own lines, in the JSON form the client parses.
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       "go-plugin",
			Output:     stderr,
			Level:      hclog.Warn,
			JSONFormat: true,
		}),
	})
}
