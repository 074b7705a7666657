// Command supervisor runs memvisor jobs under supervision: it starts a
// runner process per job, watches its memory from outside, asks it to
// collect garbage, restarts it gracefully from its checkpoint, and kills
// and resumes it when it hangs or crosses its ceiling.
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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		fmt.Fprintln(os.Stderr, "supervisor:", err)
		os.Exit(1)
	}
}

// exitError ends the process with a code; the command has already said
// why.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit %d", int(e)) }

// command is one subcommand. Each lives in its own file with its flags
// and help.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands lists the subcommands, one line each.
func commands() []command {
	return []command{
		{"run", "supervise one job in the foreground until it ends", runCommand},
		{"serve", "run the HTTP API, the job queue and the metrics (the systemd service)", serveCommand},
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `supervisor: runs memvisor jobs, keeping each job's runner within its memory budget.

Usage:
    supervisor COMMAND [flags] [args]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "    %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `    version  print the version

Run "supervisor COMMAND --help" for the flags of a command.
`)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return exitError(2)
	}
	switch args[0] {
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "supervisor", version.Version)
		return nil
	case "help", "--help", "-help", "-h":
		usage(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "supervisor: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitError(2)
}
