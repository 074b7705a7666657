package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/cliflag"
	"github.com/memvisor/memvisor/pkg/batcher"
	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/runner"
	"github.com/memvisor/memvisor/plugin"
)

const runUsage = `usage: runner run JOB.yaml [flags]

Runs the job in the foreground, unsupervised, until it completes. A job with
a checkpoint resumes from it; a completed job is left as it is. SIGINT or
SIGTERM stops issuing writes, waits for those in flight, commits the done
items and exits 0, so running the same command again resumes.

Logs are JSON lines on stderr (readable text on a terminal). Progress is a
bar on a terminal, and a log line every --progress-interval otherwise.

With memory.limit set, the runner guards its own memory as it does under
the supervisor: it collects garbage at its GC line (guard_gc_percent,
default critical_percent of the limit) and drains at its drain line
(guard_drain_percent, default midway between critical_percent and
kill_percent). A drain stops new writes at once, commits the items already
written and exits 75 (EX_TEMPFAIL) with a message on stderr: the job is
intact, and running the same command again resumes it in a fresh process.
Without memory.limit there is no guard.

Exit status: 0 when the job completed or was stopped cleanly, 1 when it
failed (the reason is printed), 2 for bad usage or a bad job file, 75 when
the memory guard drained it (run the same command again to resume).

Flags:
`

func runJob(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("runner run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	retry := fs.Bool("retry-failed", false, "process the items in the job's failed.jsonl again instead of the source")
	reset := fs.Bool("reset-checkpoint", false, "move a corrupt or unwanted checkpoint aside and start from the first item\n(items already in the target are found and not created twice)")
	interval := fs.Duration("progress-interval", 5*time.Second, "how often to log progress when stderr is not a terminal")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	guardOn := fs.Bool("guard", true, "guard the runner's memory against memory.limit (see above); --guard=false turns the guard off")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), runUsage)
		fs.PrintDefaults()
	}
	switch err := cliflag.Parse(fs, func() error { return fs.Parse(reorder(args)) }, stdout, stderr); {
	case errors.Is(err, flag.ErrHelp):
		return nil
	case err != nil:
		return exitError(2)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitError(2)
	}
	lvl, err := zerolog.ParseLevel(*level)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	tty := isTerminal(stderr)
	log := newLogger(stderr, tty).Level(lvl)

	spec, err := job.Load(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "runner:", err)
		return exitError(2)
	}
	if *reset {
		to, err := checkpoint.MoveAside(spec.Dir(), time.Now())
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err == nil {
			log.Warn().Str("moved_to", to).Msg("checkpoint moved aside; starting from the first item")
		}
	}

	h := runner.New(log)
	defer h.Close()
	budget := uint64(spec.Memory.Limit)
	var guard plugin.Guard
	if *guardOn {
		guard = runner.GuardFor(budget, spec.Memory)
	}
	if err := h.StartSpec(ctx, spec, plugin.StartRequest{Resume: true, RetryFailed: *retry, Guard: guard}); err != nil {
		return err
	}
	prog := newProgress(stderr, tty, *interval, log)
	defer prog.stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-h.Done():
			st, p := h.Snapshot()
			prog.update(st, p, h.CacheBytes())
			prog.stop()
			res, err := h.Wait(context.Background())
			if err != nil {
				return err
			}
			if res.Status == batcher.StatusDrained && h.DrainReason() == plugin.DrainGuard {
				fmt.Fprintf(stderr, "runner: job %s: memory reached the guard's drain line (%.1f MiB of the %s memory.limit); "+
					"it stopped and committed %d items. Run the same command again to resume it in a fresh process, "+
					"or run it under the supervisor, which restarts it by itself.\n",
					spec.ID, float64(guard.DrainBytes)/(1<<20), job.ByteSize(budget), p.Processed)
				return exitError(ExitGuardDrained)
			}
			if res.AlreadyDone {
				fmt.Fprintf(stdout, "job %s had already completed; nothing changed\n", spec.ID)
			} else {
				fmt.Fprintf(stdout, "job %s %s: processed %d, created %d, updated %d, skipped %d, failed %d\n",
					spec.ID, res.Status, p.Processed, p.Created, p.Updated, p.Skipped, p.Failed)
			}
			if p.Failed > 0 && res.Status == batcher.StatusCompleted {
				fmt.Fprintf(stdout, "failed items are in %s/%s; fix them and run again with --retry-failed\n", spec.Dir(), batcher.FailedFile)
			}
			return nil
		case <-ctx.Done():
			log.Info().Msg("signal received: finishing the batch in flight and committing")
			if _, err := h.Drain(context.Background(), time.Time{}); err != nil {
				return fmt.Errorf("drain: %w", err)
			}
			ctx = context.Background()
		case <-tick.C:
			st, p := h.Snapshot()
			prog.update(st, p, h.CacheBytes())
		}
	}
}

// ExitGuardDrained is the exit status of a run that the memory guard
// drained: EX_TEMPFAIL from sysexits.h, "try again later". The job's
// progress is committed, so running the same command again resumes it.
const ExitGuardDrained = 75

// reorder lets flags follow the job file, as in "run job.yaml --retry-failed".
func reorder(args []string) []string {
	var flags, rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) > 1 && a[0] == '-' {
			flags = append(flags, a)
			if a == "--progress-interval" || a == "-progress-interval" || a == "--log-level" || a == "-log-level" {
				if i+1 < len(args) {
					flags = append(flags, args[i+1])
					i++
				}
			}
			continue
		}
		rest = append(rest, a)
	}
	return append(flags, rest...)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}

func newLogger(w io.Writer, tty bool) zerolog.Logger {
	if tty {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).With().Timestamp().Logger()
}
