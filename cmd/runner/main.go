// Command runner runs one migration job. The supervisor starts it as a
// go-plugin subprocess; `runner run JOB.yaml` runs a job in the foreground,
// unsupervised, for debugging or under another process manager.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/memvisor/memvisor/internal/version"
	"github.com/memvisor/memvisor/pkg/runner"
	"github.com/memvisor/memvisor/plugin"
)

const usage = `runner: the memvisor runner, which moves items from a source to a target.

It is a plugin: the supervisor (bin/supervisor) starts it and drives it over
gRPC. To run a job under supervision, use:

    supervisor run JOB.yaml

To run a job here in the foreground, unsupervised:

    runner run JOB.yaml [--retry-failed] [--reset-checkpoint]

Commands:
    run JOB.yaml   run a job to completion (resumes from its checkpoint)
    version        print the version

Run "runner run --help" for the flags of run.
`

func main() {
	if plugin.IsPluginLaunch() {
		serve()
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		fmt.Fprintln(os.Stderr, "runner:", err)
		os.Exit(1)
	}
}

// exitError ends the process with a code and no further message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError(1)
	}
	switch args[0] {
	case "run":
		return runJob(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "runner", version.Version)
		return nil
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "runner: unknown command %q\n\n%s", args[0], usage)
	return exitError(2)
}

// serve runs the plugin server. Nothing may be written to stdout: it is
// go-plugin's handshake channel.
func serve() {
	log := plugin.NewRunnerLogger(os.Stderr).With().Timestamp().Logger()
	h := runner.New(log)
	plugin.Serve(h)
	h.Close()
}
