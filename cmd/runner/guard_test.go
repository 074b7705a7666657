package main_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/testbin"
)

// A standalone run with memory.limit drains itself when its memory guard
// trips, exits 75 with a message, and the same command resumes it: the
// job ends with every item exactly once.
func TestStandaloneGuardDrainExits75AndResumes(t *testing.T) {
	bin := testbin.Path(t, "runner")
	dir := t.TempDir()
	src := writeSource(t, dir, 12000, 7)
	job := writeJob(t, dir, `memory: {limit: 64MiB}
inject: {leak_bytes_per_second: 64MiB, slow_batch: 50ms}
`)
	drained := 0
	for attempt := 0; ; attempt++ {
		if attempt == 30 {
			t.Fatalf("the job did not complete in 30 runs (%d drained by the guard)", drained)
		}
		cmd := exec.Command(bin, "run", job, "--log-level", "warn")
		cmd.Dir = dir
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 75 {
			drained++
			if msg := stderr.String(); !strings.Contains(msg, "memory reached the guard's drain line") || !strings.Contains(msg, "Run the same command again") {
				t.Fatalf("exit 75 without the message; stderr:\n%s", msg)
			}
			continue
		}
		if err != nil {
			t.Fatalf("run %d: %v\n%s", attempt, err, stderr.String())
		}
		if !strings.Contains(stdout.String(), "completed") {
			t.Fatalf("run %d exited 0 without completing: %s", attempt, stdout.String())
		}
		break
	}
	if drained == 0 {
		t.Fatal("the guard never drained the leaking run")
	}
	t.Logf("%d runs drained by the guard before the job completed", drained)
	verify(t, dir, src)
}

// TestDrainInsideBatchesThenSIGKILL alternates SIGINT, which drains the
// runner inside a batch of slow writes and commits the done items, with
// SIGKILL, which commits nothing, at random instants; then runs the job to
// the end. Every item must be in the target once, and every malformed
// line in failed.jsonl once.
func TestDrainInsideBatchesThenSIGKILL(t *testing.T) {
	bin := testbin.Path(t, "runner")
	dir := t.TempDir()
	src := writeSource(t, dir, 2000, 11)
	jobPath := writeJob(t, dir, "inject: {slow_write: 4ms}\n")
	cpPath := filepath.Join(dir, "state", "killtest", "checkpoint.json")
	r := rand.New(rand.NewPCG(3, 3))
	partials := 0
	for attempt := range 6 {
		cmd := exec.Command(bin, "run", jobPath, "--log-level", "warn")
		cmd.Dir = dir
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		sig := syscall.SIGKILL
		if attempt%2 == 0 {
			sig = syscall.SIGINT
		}
		// The runner writes its pid into the job's lock once it holds the
		// job, long after it has set up its signal handling.
		lock := filepath.Join(dir, "state", "killtest", "job.lock")
		pid := []byte(strconv.Itoa(cmd.Process.Pid))
		for i := 0; i < 2000; i++ {
			if data, _ := os.ReadFile(lock); bytes.Equal(bytes.TrimSpace(data), pid) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		select {
		case err := <-done:
			t.Fatalf("attempt %d: the runner ended before the signal: %v\n%s", attempt, err, errb.String())
		case <-time.After(time.Duration(100+r.IntN(250)) * time.Millisecond):
		}
		cmd.Process.Signal(sig)
		err := <-done
		if sig == syscall.SIGINT {
			if err != nil {
				t.Fatalf("attempt %d: a drained run exited with %v\n%s", attempt, err, errb.String())
			}
			if data, _ := os.ReadFile(cpPath); bytes.Contains(data, []byte(`"partial"`)) {
				partials++
			}
		}
	}
	if partials == 0 {
		t.Fatal("no drain stopped inside a batch")
	}
	if out, err := exec.Command(bin, "run", jobPath, "--log-level", "warn").CombinedOutput(); err != nil {
		t.Fatalf("final run: %v\n%s", err, out)
	}
	verify(t, dir, src)
}
