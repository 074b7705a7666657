// Package plugin is the wire contract between the supervisor and a runner
// process: the go-plugin handshake, the plugin name, the Runner interface,
// and its gRPC client and server. The proto source is in proto/; the
// generated code is committed and `make proto` regenerates it.
//
// The runner's side is two calls in main:
//
//	log := plugin.NewRunnerLogger(os.Stderr) // JSON lines go-plugin parses
//	plugin.Serve(impl)                        // blocks until the supervisor closes
//
// IsPluginLaunch tells a launch by the supervisor from a user running the
// runner by hand. The runner never writes to stdout: it is go-plugin's
// handshake channel.
//
// The supervisor's side is Start, which launches one runner process per
// call (a go-plugin client cannot be started twice), with AutoMTLS and
// gRPC only, and returns a Client: the dispensed Runner, the pid, the exit
// status, and Kill. The runner's log lines arrive in the supervisor's
// zerolog.Logger with their fields, tagged with runner_pid. SanitizeEnv
// builds the runner's environment.
//
// Errors: a Runner returns the sentinels of errors.go (ErrNotStarted,
// ErrCheckpointExists, ...); they cross the wire as gRPC status codes with
// an ErrorInfo detail, so errors.Is works on the supervisor's side. A call
// that misses its deadline unwraps to context.DeadlineExceeded, and a call
// to a runner that has gone to ErrUnavailable.
package plugin
