// Command faultkit is the toolbox of the fault-injection scenarios in
// examples/: the scenario scripts use it to check JSON files, find and
// watch runner processes in /proc, inspect and damage checkpoints, write
// sources with bad records, and turn each scenario's results into one row
// of the table `make faults` prints. It needs nothing but the standard
// library and the project's own file formats, so the scripts need no jq.
//
// Every check a scenario makes is appended to its checks file (one JSON
// object a line); `faultkit result` turns the checks, the supervisor's
// summaries and bin/verify's report into the scenario's result.json, and
// `faultkit table` prints the results side by side.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: faultkit COMMAND [flags] [args]

Checks
  expect   -checks FILE [-desc TEXT] JSONFILE 'PATH OP VALUE'   check a field of a JSON file
  check    -checks FILE -ok=BOOL TEXT [DETAIL]                   record a check made by the script
  result   -scenario NAME -dir DIR [-summary FILE]... [-verify FILE]... [-skip REASON] [-duration S]
  table    -dir DIR -order a,b,c [-logs DIR] [-strict]          print the results, exit 1 if any failed

Processes
  runners  -exe PATH -mark VALUE          pids of live runners started with MEMVISOR_FAULTS_MARK=VALUE
  watch    -exe PATH -mark VALUE -out FILE [-interval D] [-for D]
                                          sample /proc until SIGTERM; record the most runners alive at once

Files
  checkpoint DIR                          validate DIR/checkpoint.json; print its position as JSON
  corrupt    -mode flip|truncate FILE     damage a checkpoint in place
  filestat   FILE                         size, lines and SHA-256 of a file, as JSON
  failed     FILE                         summarize a failed.jsonl, as JSON
  gen-bad    -out FILE -fixed FILE -count N   a jsonl source with bad records, and its fixed twin
  events     LOGFILE                      the lines of a JSON log an operator looks for

Podio
  podio-seed  -out FILE [-items N]        the emulator's seed: a client, a source app, an empty target app
  podio-jsonl -in DUMP -out FILE [-target]  an emulator dump in the jsonl connector's format, for bin/verify
  gen-podio-bad -out FILE -fixed FILE [-count N]  a jsonl source with values the target app refuses
  fetch       URL                         print the body of a GET (the emulator's /_emulator/stats)
`

// MarkEnv is the variable every process of one scenario run inherits, so
// that its runners can be told from any other runner on the machine.
const MarkEnv = "MEMVISOR_FAULTS_MARK"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		var code exitCode
		if errors.As(err, &code) {
			os.Exit(int(code))
		}
		fmt.Fprintln(os.Stderr, "faultkit:", err)
		os.Exit(2)
	}
}

// exitCode ends the program with a status and no further message.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitCode(2)
	}
	cmds := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"expect":        cmdExpect,
		"check":         cmdCheck,
		"result":        cmdResult,
		"table":         cmdTable,
		"runners":       cmdRunners,
		"watch":         cmdWatch,
		"checkpoint":    cmdCheckpoint,
		"corrupt":       cmdCorrupt,
		"filestat":      cmdFilestat,
		"failed":        cmdFailed,
		"gen-bad":       cmdGenBad,
		"events":        cmdEvents,
		"podio-seed":    cmdPodioSeed,
		"podio-jsonl":   cmdPodioJSONL,
		"fetch":         cmdFetch,
		"gen-podio-bad": cmdGenPodioBad,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprint(stdout, usage)
			return nil
		}
		fmt.Fprintf(stderr, "faultkit: unknown command %q\n\n%s", args[0], usage)
		return exitCode(2)
	}
	return cmd(ctx, args[1:], stdout, stderr)
}
