// Package plugin is the wire contract between the supervisor and a runner
// process: the go-plugin handshake, the plugin name, the Runner interface,
// and its gRPC client and server. The proto source is in proto/; the
// generated code is committed and `make proto` regenerates it.
package plugin
