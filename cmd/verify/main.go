// Command verify checks a finished job from the outside: it reads the
// job's source and its jsonl target directly and reports items lost and
// items duplicated. It exits 1 when the verdict is not ok.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/memvisor/memvisor/internal/verify"
	"github.com/memvisor/memvisor/pkg/job"
)

const usage = `usage: verify [--json] JOB.yaml

Reads the job's source and target directly (never the runner's counters) and
checks that the target holds one item per distinct match value and one per
source item without a match value, with nothing lost, nothing duplicated,
and every malformed source line in failed.jsonl once. Exit status 0 when the
verdict is ok, 1 when it is not, 2 for bad usage.
`

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		var code exitCode
		if errors.As(err, &code) {
			os.Exit(int(code))
		}
		fmt.Fprintln(os.Stderr, "verify:", err)
		os.Exit(2)
	}
}

type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return exitCode(2)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitCode(2)
	}
	spec, err := job.Load(fs.Arg(0))
	if err != nil {
		return err
	}
	rep, err := verify.Check(ctx, spec)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		verdict := "ok"
		if !rep.OK {
			verdict = "FAILED"
		}
		fmt.Fprintf(stdout, "verify %s: %s — source items %d (malformed %d), expected in target %d, in target %d, duplicates %d, lost %d\n",
			rep.Job, verdict, rep.SourceItems, rep.Malformed, rep.Expected, rep.InTarget, rep.Duplicates, rep.Lost)
		for _, p := range rep.Problems {
			fmt.Fprintln(stdout, "  -", p)
		}
	}
	if !rep.OK {
		return exitCode(1)
	}
	return nil
}
