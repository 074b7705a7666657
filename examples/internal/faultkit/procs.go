package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// runners returns the pids of live (not zombie) processes that run exe
// and carry MarkEnv=mark in their environment: the runners of one
// scenario run, whoever started them and whatever became of their parent.
func runners(exe, mark string) []int {
	want := canonical(exe)
	needle := []byte(MarkEnv + "=" + mark + "\x00")
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		link, err := os.Readlink(filepath.Join(dir, "exe"))
		if err != nil || canonical(strings.TrimSuffix(link, " (deleted)")) != want {
			continue
		}
		env, err := os.ReadFile(filepath.Join(dir, "environ"))
		if err != nil || !bytes.Contains(append(env, 0), needle) {
			continue
		}
		if zombie(dir) {
			continue
		}
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids
}

// zombie reports whether the process has exited and awaits its parent's
// wait: it holds no memory, files or locks any more.
func zombie(dir string) bool {
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return true // gone
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	return stat[i+2] == 'Z' || stat[i+2] == 'X'
}

func canonical(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		p = a
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return p
}

func cmdRunners(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("runners", flag.ContinueOnError)
	fs.SetOutput(stderr)
	exe := fs.String("exe", "", "the runner executable's `PATH`")
	mark := fs.String("mark", os.Getenv(MarkEnv), "the scenario run's `MARK`")
	if err := fs.Parse(args); err != nil || *exe == "" || *mark == "" {
		fmt.Fprintln(stderr, "usage: faultkit runners -exe PATH -mark MARK")
		return exitCode(2)
	}
	for _, pid := range runners(*exe, *mark) {
		fmt.Fprintln(stdout, pid)
	}
	return nil
}

// watchReport is what `faultkit watch` writes.
type watchReport struct {
	Samples int `json:"samples"`
	// MaxAlive is the most runners of the run seen alive in one sample.
	MaxAlive int `json:"max_alive"`
	// Overlaps lists the samples (at most 20) with more than one runner.
	Overlaps [][]int `json:"overlaps,omitempty"`
	// Seen lists every runner pid seen, in order.
	Seen      []int   `json:"seen"`
	IntervalS float64 `json:"interval_s"`
	Running   bool    `json:"running"`
}

// cmdWatch samples /proc until it is stopped (SIGTERM) or -for passes,
// and keeps -out up to date.
func cmdWatch(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	exe := fs.String("exe", "", "the runner executable's `PATH`")
	mark := fs.String("mark", os.Getenv(MarkEnv), "the scenario run's `MARK`")
	out := fs.String("out", "", "the report `FILE`")
	interval := fs.Duration("interval", 10*time.Millisecond, "time between samples")
	limit := fs.Duration("for", 10*time.Minute, "stop after this long in any case")
	if err := fs.Parse(args); err != nil || *exe == "" || *mark == "" || *out == "" {
		fmt.Fprintln(stderr, "usage: faultkit watch -exe PATH -mark MARK -out FILE [-interval D] [-for D]")
		return exitCode(2)
	}
	ctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()
	rep := watchReport{IntervalS: interval.Seconds(), Running: true, Seen: []int{}}
	write := func() error {
		data, _ := json.MarshalIndent(rep, "", "  ")
		tmp := *out + ".tmp"
		if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, *out)
	}
	if err := write(); err != nil {
		return err
	}
	t := time.NewTicker(*interval)
	defer t.Stop()
	last := time.Now()
	for {
		pids := runners(*exe, *mark)
		rep.Samples++
		changed := false
		if len(pids) > rep.MaxAlive {
			rep.MaxAlive, changed = len(pids), true
		}
		if len(pids) > 1 && len(rep.Overlaps) < 20 {
			rep.Overlaps, changed = append(rep.Overlaps, pids), true
		}
		for _, p := range pids {
			if !slices.Contains(rep.Seen, p) {
				rep.Seen, changed = append(rep.Seen, p), true
			}
		}
		if changed || time.Since(last) > time.Second {
			if err := write(); err != nil {
				return err
			}
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			rep.Running = false
			return write()
		case <-t.C:
		}
	}
}
