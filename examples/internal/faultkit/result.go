package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Restarts mirrors the supervisor summary's restarts by kind.
type Restarts struct {
	Graceful int `json:"graceful"`
	Crash    int `json:"crash"`
	Hang     int `json:"hang"`
	Kill     int `json:"kill"`
}

// summary is the part of `supervisor run --summary` a row shows.
type summary struct {
	Status       string   `json:"status"`
	Restarts     Restarts `json:"restarts"`
	GCRequests   int      `json:"gc_requests"`
	PeakRSSBytes uint64   `json:"peak_rss_bytes"`
	BudgetBytes  uint64   `json:"budget_bytes"`
}

// verifyReport is the part of `verify --json` a row shows.
type verifyReport struct {
	Expected       int64    `json:"expected"`
	InTarget       int64    `json:"in_target"`
	Duplicates     int64    `json:"duplicates"`
	Lost           int64    `json:"lost"`
	Unexpected     int64    `json:"unexpected"`
	FailedMissing  int64    `json:"failed_missing"`
	FailedRepeated int64    `json:"failed_repeated"`
	Problems       []string `json:"problems,omitempty"`
	OK             bool     `json:"ok"`
}

// Result is a scenario's result.json: one row of the table.
type Result struct {
	Scenario string `json:"scenario"`
	// Verdict is ok, FAIL or skipped.
	Verdict string   `json:"verdict"`
	Skipped string   `json:"skipped,omitempty"`
	Failed  []string `json:"failed,omitempty"`
	Checks  int      `json:"checks"`
	// Runs counts the supervisor summaries the row adds up.
	Runs         int           `json:"supervisor_runs"`
	Restarts     Restarts      `json:"restarts"`
	GCRequests   int           `json:"gc_requests"`
	PeakRSSBytes uint64        `json:"peak_rss_bytes"`
	BudgetBytes  uint64        `json:"budget_bytes"`
	Verify       *verifyReport `json:"verify,omitempty"`
	DurationS    float64       `json:"duration_s"`
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// cmdResult writes DIR/result.json from the checks file, the summaries
// and the verify report, prints the verdict, and exits 1 unless it is ok
// (or skipped).
func cmdResult(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("result", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("scenario", "", "the scenario's `NAME`")
	dir := fs.String("dir", "", "the scenario's scratch `DIR` (holds checks.jsonl)")
	skip := fs.String("skip", "", "the scenario could not run here, for this `REASON`")
	dur := fs.Float64("duration", 0, "the scenario's wall time in seconds")
	var sums, verifies multiFlag
	fs.Var(&sums, "summary", "a supervisor summary `FILE` (repeat for several runs)")
	fs.Var(&verifies, "verify", "a `FILE` bin/verify --json wrote (repeat for several jobs; the row adds them up)")
	if err := fs.Parse(args); err != nil || *name == "" || *dir == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: faultkit result -scenario NAME -dir DIR [-summary FILE]... [-verify FILE]... [-skip REASON] [-duration S]")
		return exitCode(2)
	}
	checksFile := filepath.Join(*dir, "checks.jsonl")
	res := Result{Scenario: *name, DurationS: *dur}
	for _, f := range sums {
		var s summary
		if err := readJSON(f, &s); err != nil {
			if err := record(checksFile, Check{Check: "supervisor summary written", Detail: err.Error()}, stdout); err != nil {
				return err
			}
			continue
		}
		res.Runs++
		res.Restarts.Graceful += s.Restarts.Graceful
		res.Restarts.Crash += s.Restarts.Crash
		res.Restarts.Hang += s.Restarts.Hang
		res.Restarts.Kill += s.Restarts.Kill
		res.GCRequests += s.GCRequests
		res.PeakRSSBytes = max(res.PeakRSSBytes, s.PeakRSSBytes)
		res.BudgetBytes = max(res.BudgetBytes, s.BudgetBytes)
	}
	if *skip == "" {
		// Every verdict includes the outside check of the target.
		if len(verifies) == 0 {
			c := Check{Check: "bin/verify: the target holds every source item exactly once", Detail: "no verify report was given"}
			if err := record(checksFile, c, stdout); err != nil {
				return err
			}
		}
		for _, f := range verifies {
			c := Check{Check: "bin/verify: the target holds every source item exactly once"}
			if len(verifies) > 1 {
				c.Check += " (" + filepath.Base(f) + ")"
			}
			var v verifyReport
			if err := readJSON(f, &v); err != nil {
				c.Detail = err.Error()
			} else {
				if res.Verify == nil {
					res.Verify = &verifyReport{OK: true}
				}
				res.Verify.Expected += v.Expected
				res.Verify.InTarget += v.InTarget
				res.Verify.Duplicates += v.Duplicates
				res.Verify.Lost += v.Lost
				res.Verify.Unexpected += v.Unexpected
				res.Verify.FailedMissing += v.FailedMissing
				res.Verify.FailedRepeated += v.FailedRepeated
				res.Verify.OK = res.Verify.OK && v.OK
				c.OK = v.OK
				c.Detail = fmt.Sprintf("expected %d, in target %d, duplicates %d, lost %d, unexpected %d, malformed lines missing from failed.jsonl %d",
					v.Expected, v.InTarget, v.Duplicates, v.Lost, v.Unexpected, v.FailedMissing)
				if len(v.Problems) > 0 {
					c.Detail += "; " + strings.Join(v.Problems, "; ")
				}
			}
			if err := record(checksFile, c, stdout); err != nil {
				return err
			}
		}
	}
	checks, err := readChecks(checksFile)
	if err != nil {
		return err
	}
	res.Checks = len(checks)
	for _, c := range checks {
		if !c.OK {
			res.Failed = append(res.Failed, c.Check)
		}
	}
	switch {
	case *skip != "":
		res.Verdict, res.Skipped = "skipped", *skip
	case len(res.Failed) > 0:
		res.Verdict = "FAIL"
	case len(checks) < 2:
		res.Verdict = "FAIL"
		res.Failed = append(res.Failed, "the scenario made no checks of its own")
	default:
		res.Verdict = "ok"
	}
	data, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(filepath.Join(*dir, "result.json"), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	switch res.Verdict {
	case "ok":
		fmt.Fprintf(stdout, "verdict %s: ok (%d checks passed)\n", *name, len(checks))
	case "skipped":
		fmt.Fprintf(stdout, "verdict %s: skipped: %s\n", *name, *skip)
	default:
		fmt.Fprintf(stdout, "verdict %s: FAIL (%d of %d checks failed: %s)\n", *name, len(res.Failed), len(checks), strings.Join(res.Failed, "; "))
		return exitCode(1)
	}
	return nil
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// cmdTable prints one row per scenario and exits 1 if any verdict is not
// ok (a skipped scenario does not fail the table unless -strict).
func cmdTable(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("table", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", ".faults", "the `DIR` holding one directory per scenario")
	order := fs.String("order", "", "the scenarios, comma separated, in table order")
	strict := fs.Bool("strict", false, "a skipped scenario fails the table too")
	logs := fs.String("logs", "", "the `DIR` holding each scenario's output as <scenario>.log")
	if err := fs.Parse(args); err != nil || *order == "" {
		fmt.Fprintln(stderr, "usage: faultkit table -dir DIR -order a,b,c [-logs DIR] [-strict]")
		return exitCode(2)
	}
	header := []string{"scenario", "restarts by kind", "gc requests", "peak RSS / budget", "items expected", "in target", "duplicates", "lost", "verdict", "time"}
	rows := [][]string{header}
	logOf := func(name string) string {
		if *logs == "" {
			return "examples/" + name + "/run"
		}
		return filepath.Join(*logs, name+".log")
	}
	var notes []string
	bad := 0
	for _, name := range strings.Split(*order, ",") {
		var r Result
		if err := readJSON(filepath.Join(*dir, name, "result.json"), &r); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				err = fmt.Errorf("no result.json: the scenario's script stopped before its verdict; see %s", logOf(name))
			}
			rows = append(rows, []string{name, "—", "—", "—", "—", "—", "—", "—", "FAIL", "—"})
			notes = append(notes, fmt.Sprintf("%s: %v", name, err))
			bad++
			continue
		}
		row := []string{name, restartsCell(r), "—", "—", "—", "—", "—", "—", r.Verdict, fmt.Sprintf("%.0fs", r.DurationS)}
		if r.Runs > 0 {
			row[2] = fmt.Sprint(r.GCRequests)
			row[3] = fmt.Sprintf("%.1f / %.0f MiB", mib(r.PeakRSSBytes), mib(r.BudgetBytes))
		}
		if v := r.Verify; v != nil {
			row[4], row[5], row[6], row[7] = fmt.Sprint(v.Expected), fmt.Sprint(v.InTarget), fmt.Sprint(v.Duplicates), fmt.Sprint(v.Lost)
		}
		switch r.Verdict {
		case "ok":
		case "skipped":
			notes = append(notes, fmt.Sprintf("%s: skipped: %s", name, r.Skipped))
			if *strict {
				bad++
			}
		default:
			bad++
			notes = append(notes, fmt.Sprintf("%s: failed checks: %s (see %s)", name, strings.Join(r.Failed, "; "), logOf(name)))
		}
		rows = append(rows, row)
	}
	printTable(stdout, rows)
	for _, n := range notes {
		fmt.Fprintln(stdout, "  -", n)
	}
	if bad > 0 {
		fmt.Fprintf(stdout, "\nfaults: %d scenario(s) did not pass\n", bad)
		return exitCode(1)
	}
	return nil
}

func restartsCell(r Result) string {
	if r.Runs == 0 {
		return "—"
	}
	var parts []string
	for _, p := range []struct {
		n    int
		kind string
	}{{r.Restarts.Graceful, "graceful"}, {r.Restarts.Crash, "crash"}, {r.Restarts.Hang, "hang"}, {r.Restarts.Kill, "kill"}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", p.n, p.kind))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// printTable prints rows as an aligned Markdown table.
func printTable(w io.Writer, rows [][]string) {
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	line := func(r []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range r {
			b.WriteString(" ")
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)))
			b.WriteString(" |")
		}
		fmt.Fprintln(w, b.String())
	}
	line(rows[0])
	sep := make([]string, len(width))
	for i, n := range width {
		sep[i] = strings.Repeat("-", n)
	}
	line(sep)
	for _, r := range rows[1:] {
		line(r)
	}
}
