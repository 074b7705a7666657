package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/atomicfile"
	"github.com/memvisor/memvisor/internal/cliflag"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/supervise"
)

const runUsage = `Usage: supervisor run [flags] JOB.yaml

Runs the job in JOB.yaml in the foreground under full supervision, until
it ends. A runner process does the work; the supervisor samples its memory
against the job's budget (memory.limit, else the cgroup limit, else half of
host RAM), logs each warning, GC request and restart, asks for GC at the
critical level, restarts the runner gracefully from its checkpoint when GC
does not help, and kills and resumes it when it hangs, crashes or crosses
the kill ceiling.

On a terminal it shows a progress bar with the ETA and the runner's memory;
otherwise it logs a progress line every --progress-interval.

SIGTERM or SIGINT drains the runner, which commits its checkpoint, and the
supervisor exits 0: run the same command again to resume. A second signal
kills the runner at once; the job still resumes from its last checkpoint.
A finished job run again is a no-op.

Exit status: 0 when the job completed or was stopped by a signal, 1 when it
failed (the reason is on stderr and in the summary), 2 on a usage error.

Flags:
`

type runFlags struct {
	summary          string
	runner           string
	logLevel         string
	logFormat        string
	progressInterval time.Duration
	retryFailed      bool
}

func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f runFlags
	fs := flag.NewFlagSet("supervisor run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.summary, "summary", "", "write a JSON summary of the run to `FILE` when it ends")
	fs.StringVar(&f.runner, "runner", "", "the runner executable at `PATH` (default: runner next to this program, else on $PATH)")
	fs.StringVar(&f.logLevel, "log-level", "info", "the lowest level logged: trace, debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "auto", "json, console, or auto: console on a terminal, json otherwise")
	fs.DurationVar(&f.progressInterval, "progress-interval", 10*time.Second, "how often to log progress when stderr is not a terminal")
	fs.BoolVar(&f.retryFailed, "retry-failed", false, "process the job's failed.jsonl again instead of its source")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), runUsage)
		fs.PrintDefaults()
	}
	var pos []string
	switch err := cliflag.Parse(fs, func() (err error) { pos, err = parseInterspersed(fs, args); return err }, stdout, stderr); {
	case errors.Is(err, flag.ErrHelp):
		return nil
	case err != nil:
		return exitError(2)
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "supervisor run: want one job file, got %d arguments\n\n", len(pos))
		fs.Usage()
		return exitError(2)
	}
	level, err := zerolog.ParseLevel(f.logLevel)
	if err != nil || level == zerolog.NoLevel {
		fmt.Fprintf(stderr, "supervisor run: --log-level: unknown level %q\n", f.logLevel)
		return exitError(2)
	}
	tty := isTerminal(stderr)
	console := tty
	switch f.logFormat {
	case "auto":
	case "json":
		console = false
	case "console":
		console = true
	default:
		fmt.Fprintf(stderr, "supervisor run: --log-format: want json, console or auto, got %q\n", f.logFormat)
		return exitError(2)
	}
	if f.progressInterval <= 0 {
		fmt.Fprintln(stderr, "supervisor run: --progress-interval must be positive")
		return exitError(2)
	}

	spec, err := job.Load(pos[0])
	if err != nil {
		return err
	}
	runnerPath := f.runner
	if runnerPath == "" {
		if runnerPath, err = defaultRunner(); err != nil {
			return err
		}
	}

	term := &terminal{w: stderr}
	var out io.Writer = term
	if console {
		out = zerolog.ConsoleWriter{Out: term, TimeFormat: "15:04:05"}
	}
	log := zerolog.New(out).Level(level).With().Timestamp().Logger()

	sup, err := supervise.New(spec, supervise.Options{
		RunnerPath: runnerPath,
		Logger:     log,
	})
	if err != nil {
		return err
	}

	// A second signal aborts: the first has already asked for a drain.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	show := newDisplay(sup, term, log.With().Str("job_id", spec.ID).Logger(), tty, f.progressInterval)
	dctx, stopDisplay := context.WithCancel(context.Background())
	displayDone := make(chan struct{})
	go func() {
		defer close(displayDone)
		show.loop(dctx, sigs)
	}()
	sum, runErr := sup.Run(ctx, supervise.StartMode{Resume: true, RetryFailed: f.retryFailed})
	stopDisplay()
	<-displayDone
	show.finish()

	if f.summary != "" {
		if err := writeSummary(f.summary, sum); err != nil {
			log.Error().Err(err).Msg("write summary")
			if runErr == nil {
				runErr = err
			}
		}
	}
	if runErr != nil {
		return runErr
	}
	printSummary(stdout, spec.ID, sum)
	switch sum.Status {
	case supervise.StatusFailed:
		fmt.Fprintf(stderr, "supervisor: job %s failed: %s\n", spec.ID, sum.Reason)
		return exitError(1)
	case supervise.StatusPaused:
		fmt.Fprintf(stderr, "supervisor: job %s stopped (%s); run the same command again to resume\n", spec.ID, sum.Reason)
	}
	return nil
}

// parseInterspersed parses flags that come before or after the
// positional arguments, as in `supervisor run job.yaml --summary s.json`.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" && len(args) > 0 {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// defaultRunner finds the runner: next to this program (as `make build`
// lays them out), else on $PATH.
func defaultRunner() (string, error) {
	exe, err := os.Executable()
	if err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			p := filepath.Join(filepath.Dir(exe), "runner")
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath("runner"); err == nil {
		return p, nil
	}
	return "", errors.New("find the runner: there is no runner next to this program or on $PATH; run `make build`, or pass --runner PATH")
}

func writeSummary(path string, sum supervise.Summary) error {
	data, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return fmt.Errorf("encode summary: %w", err)
	}
	return atomicfile.WriteBytes(path, 0o644, append(data, '\n'))
}

func printSummary(w io.Writer, id string, s supervise.Summary) {
	var b strings.Builder
	fmt.Fprintf(&b, "job %s %s: %d items (created %d, updated %d, skipped %d, failed %d) in %s\n",
		id, s.Status, s.Processed, s.Items.Created, s.Items.Updated, s.Items.Skipped, s.Items.Failed,
		(time.Duration(s.DurationS * float64(time.Second))).Round(100*time.Millisecond))
	fmt.Fprintf(&b, "restarts: %d graceful, %d crash, %d hang, %d kill; GC requests: %d; peak RSS %.1f MiB of a %.1f MiB budget\n",
		s.Restarts.Graceful, s.Restarts.Crash, s.Restarts.Hang, s.Restarts.Kill, s.GCRequests,
		float64(s.PeakRSSBytes)/(1<<20), float64(s.BudgetBytes)/(1<<20))
	fmt.Fprint(w, b.String())
}
