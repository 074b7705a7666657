package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"
)

// notable are the info lines worth showing besides every warning and
// error: the steps of a restart and of a resume.
var notable = map[string]bool{
	"supervising job":              true,
	"runner started":               true,
	"resuming from checkpoint":     true,
	"runner collected garbage":     true,
	"Cache restored from snapshot": true,
	"job stopped after committing": true,
	"job completed":                true,
	"job already completed; nothing to do, the target is unchanged":                                    true,
	"found creates made after the last checkpoint by an interrupted runner; they will not be repeated": true,
	"memory level ok": true,
}

// shown are the fields printed after the message, in this order.
var shown = []string{
	"kind", "reason", "error", "orphan_pid", "runner_pid", "inject", "item",
	"rssMB", "usagePercent", "budgetMB", "rssBeforeMB", "rssAfterMB", "drainDuration",
	"offset", "seq", "items", "status", "processed", "restarts", "gc_requests", "peakRssMB",
}

// cmdEvents prints the lines of a JSON log an operator looks for, one
// short line each: warnings, errors, and the steps of restarts and
// resumes. Goroutine dumps of an injected panic are left out.
func cmdEvents(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: faultkit events LOGFILE")
		return exitCode(2)
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		msg, _ := m["message"].(string)
		// The log level is the line's first "level" key; the memory lines
		// repeat the key for the memory level, which a map keeps instead.
		level := ""
		if sm := logLevel.FindStringSubmatch(line); sm != nil {
			level = sm[1]
		}
		if msg == "" || stackLine(msg) {
			continue
		}
		if !(level == "warn" || level == "error" || level == "fatal" || notable[msg]) {
			continue
		}
		ts := ""
		if t, ok := m["time"].(string); ok {
			if tt, err := time.Parse(time.RFC3339Nano, t); err == nil {
				ts = tt.Local().Format("15:04:05")
			}
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s %-5s %s", ts, level, msg)
		for _, k := range shown {
			if v, ok := m[k]; ok && render(v) != "" {
				fmt.Fprintf(&b, " %s=%s", k, render(v))
			}
		}
		fmt.Fprintln(stdout, b.String())
	}
	return sc.Err()
}

var logLevel = regexp.MustCompile(`^\{"level":"(\w+)"`)

func stackLine(msg string) bool {
	return strings.HasSuffix(msg, ")") || strings.HasPrefix(msg, "\t") || strings.HasPrefix(msg, "goroutine ") ||
		strings.HasPrefix(msg, "created by ") || strings.Contains(msg, ".go:") ||
		(strings.Contains(msg, "(") && strings.Contains(msg, "0x"))
}
