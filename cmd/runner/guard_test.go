package main_test

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"

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
