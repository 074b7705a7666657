package postgres_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

// The helper node: this test binary, run again with these variables set,
// stands for a serve process that owns a job.
const (
	helperEnv    = "PGFLEET_HELPER_DSN"
	helperTarget = "PGFLEET_HELPER_TARGET"
	helperTTL    = "PGFLEET_HELPER_TTL"
)

// Exit codes of the helper node.
const (
	exitFenced  = 3 // its fence check stopped it before a write
	exitRefused = 4 // the database refused its checkpoint
)

// helperNode claims a job, keeps its lease, and writes one target line per
// item, checking its fence before each write and committing a checkpoint
// every 5 items, until it is fenced.
func helperNode() int {
	ctx := context.Background()
	ttl, _ := time.ParseDuration(os.Getenv(helperTTL))
	s, err := postgres.Open(ctx, os.Getenv(helperEnv), postgres.Options{Node: "child", LeaseTTL: ttl})
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	defer s.Close()
	var c *postgres.Claim
	for range 600 {
		if c, err = s.Claim(ctx); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c == nil {
		fmt.Println("ERROR no claim:", err)
		return 1
	}
	k := s.Keep(c.Leases()...)
	defer k.Close()
	f, err := os.OpenFile(os.Getenv(helperTarget), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	defer f.Close()
	fmt.Println("CLAIMED", c.Job.Epoch())
	for i := int64(0); ; i++ {
		if err := c.Fence(); err != nil {
			fmt.Println("FENCED before item", i)
			return exitFenced
		}
		fmt.Fprintf(f, "%d child %d\n", i, c.Job.Epoch())
		if i%5 == 4 {
			err := s.SaveCheckpoint(ctx, c.Job, checkpoint.Checkpoint{JobID: c.Record.ID, Seq: i})
			if errors.Is(err, postgres.ErrLeaseLost) {
				fmt.Println("REFUSED checkpoint", i)
				return exitRefused
			}
			if err != nil {
				fmt.Println("ERROR", err)
				return 1
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type helper struct {
	cmd    *exec.Cmd
	lines  chan string
	done   chan error
	target string
}

func startHelper(t testing.TB, dsn string, ttl time.Duration) *helper {
	t.Helper()
	h := &helper{lines: make(chan string, 100), done: make(chan error, 1), target: t.TempDir() + "/target.txt"}
	h.cmd = exec.Command(os.Args[0], "-test.run=^$")
	h.cmd.Env = append(os.Environ(), helperEnv+"="+dsn, helperTarget+"="+h.target, helperTTL+"="+ttl.String())
	// Its own process group, as a serve process with its runners.
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.cmd.Stderr = os.Stderr
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
		h.done <- h.cmd.Wait()
	}()
	t.Cleanup(func() {
		syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		syscall.Kill(-h.cmd.Process.Pid, syscall.SIGCONT)
		for range h.lines {
		}
	})
	return h
}

func (h *helper) expect(t testing.TB, prefix string, d time.Duration) string {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-h.lines:
			if !ok {
				t.Fatalf("helper node exited before printing %s", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
			if strings.HasPrefix(l, "ERROR") {
				t.Fatalf("helper node: %s", l)
			}
		case <-timeout:
			t.Fatalf("helper node printed no %s within %s", prefix, d)
		}
	}
}

func (h *helper) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(-h.cmd.Process.Pid, sig); err != nil {
		t.Fatal(err)
	}
}

// targetLines waits until the helper wrote at least n lines.
func (h *helper) waitLines(t testing.TB, n int) {
	t.Helper()
	for range 400 {
		data, _ := os.ReadFile(h.target)
		if strings.Count(string(data), "\n") >= n {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("helper wrote fewer than %d lines", n)
}

// TestStoppedNodeDoesNotWriteAfterItWakes: a node process that owns a job
// is SIGSTOPped for longer than lease_ttl; another takes the job over with
// a higher epoch and writes; after SIGCONT the old node writes at most the
// one target write it had already passed its fence for, and its checkpoint
// never lands.
func TestStoppedNodeDoesNotWriteAfterItWakes(t *testing.T) {
	const ttl = 3 * time.Second
	dsn := pgtest.NewDatabase(t)
	me := node(t, dsn, "parent", postgres.Options{LeaseTTL: ttl})
	create(t, me, "job1", "", registry.StatusQueued)
	h := startHelper(t, dsn, ttl)
	h.expect(t, "CLAIMED 1", 60*time.Second)
	h.waitLines(t, 12)
	h.signal(t, syscall.SIGSTOP)

	c := claimWithin(t, me, 60*time.Second)
	if c.Job.Epoch() != 2 {
		t.Fatalf("takeover at epoch %d, want 2", c.Job.Epoch())
	}
	k := me.Keep(c.Leases()...)
	defer k.Close()
	cp, err := me.LoadCheckpoint(t.Context(), "job1")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(h.target, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := cp.Seq + 1; i < cp.Seq+6; i++ {
		if err := c.Fence(); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "%d parent %d\n", i, c.Job.Epoch())
	}
	f.Close()
	if err := me.SaveCheckpoint(t.Context(), c.Job, checkpoint.Checkpoint{JobID: "job1", Seq: cp.Seq + 5}); err != nil {
		t.Fatal(err)
	}

	h.signal(t, syscall.SIGCONT)
	var exitErr *exec.ExitError
	select {
	case err := <-h.done:
		if !errors.As(err, &exitErr) || (exitErr.ExitCode() != exitFenced && exitErr.ExitCode() != exitRefused) {
			t.Errorf("old node exit: %v, want fenced (%d) or refused (%d)", err, exitFenced, exitRefused)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the old node kept running after SIGCONT")
	}

	data, err := os.ReadFile(h.target)
	if err != nil {
		t.Fatal(err)
	}
	takeover, stale := -1, 0
	for i, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		fields := strings.Fields(l)
		if len(fields) != 3 {
			t.Fatalf("target line %q", l)
		}
		epoch, _ := strconv.Atoi(fields[2])
		if epoch == 2 && takeover < 0 {
			takeover = i
		}
		if epoch == 1 && takeover >= 0 {
			stale++
		}
	}
	if takeover < 0 || stale > 1 {
		t.Errorf("old node wrote %d target lines after the takeover, want at most the 1 it was past its fence for:\n%s", stale, data)
	}
	got, err := me.LoadCheckpoint(t.Context(), "job1")
	epoch := got.Epoch
	if err != nil || epoch != 2 || got.Seq != cp.Seq+5 {
		t.Errorf("checkpoint after the old node woke: seq %d epoch %d (%v), want seq %d epoch 2", got.Seq, epoch, err, cp.Seq+5)
	}
}

// TestKilledNodesJobMoves: SIGKILL of a node's process group; its job is
// taken over from its last checkpoint once the lease runs out.
func TestKilledNodesJobMoves(t *testing.T) {
	const ttl = 3 * time.Second
	dsn := pgtest.NewDatabase(t)
	me := node(t, dsn, "parent", postgres.Options{LeaseTTL: ttl})
	create(t, me, "job1", "", registry.StatusQueued)
	h := startHelper(t, dsn, ttl)
	h.expect(t, "CLAIMED 1", 60*time.Second)
	h.waitLines(t, 7)
	h.signal(t, syscall.SIGKILL)
	<-h.done
	killed := time.Now()
	c := claimWithin(t, me, 60*time.Second)
	t.Logf("taken over %s after the kill (lease_ttl %s)", time.Since(killed).Round(time.Millisecond), ttl)
	cp, err := me.LoadCheckpoint(t.Context(), "job1")
	epoch := cp.Epoch
	if err != nil || epoch != 1 || cp.Seq < 4 || c.Job.Epoch() != 2 {
		t.Errorf("resume from seq %d epoch %d (%v) at epoch %d, want the dead node's checkpoint (seq >= 4, epoch 1) at epoch 2", cp.Seq, epoch, err, c.Job.Epoch())
	}
}
