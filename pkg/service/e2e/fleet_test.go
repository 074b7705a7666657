package e2e_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/pgtest"
)

const fleetToken = "MEMVISOR_TOKEN=fleet-e2e-token-0123456789abcdef"

// startNode starts one `supervisor serve` node of a fleet on db, with the
// shared state dir every node of the fleet uses.
func startNode(t *testing.T, db, state, node string) *proc {
	t.Helper()
	return startSupervisor(t, state, fmt.Sprintf("postgres_url: %q\nnode_id: %s\nlease_ttl: 3s\n", db, node), fleetToken)
}

type fleetView struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Node     string `json:"node"`
	Runs     int    `json:"runs"`
	Progress struct {
		Processed int64 `json:"processed"`
	} `json:"progress"`
}

func (p *proc) fleetGet(id string) fleetView {
	p.t.Helper()
	code, body := p.do("GET", "/v1/jobs/"+id, nil)
	if code != 200 {
		p.t.Fatalf("GET %s: %d %s", id, code, body)
	}
	var v fleetView
	if err := json.Unmarshal(body, &v); err != nil {
		p.t.Fatal(err)
	}
	return v
}

func (p *proc) fleetWait(id string, timeout time.Duration, cond func(fleetView) bool) fleetView {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := p.fleetGet(id)
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("job %s: %+v after %s\n%s", id, v, timeout, p.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runnerPID reads the pid of a job's runner from its state dir.
func runnerPID(t *testing.T, state, id string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(state, "jobs", id, "runner.pid"))
	if err != nil {
		t.Fatalf("read runner.pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(data))[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// exactlyOnce checks that the jsonl target holds count distinct items,
// none twice.
func exactlyOnce(t *testing.T, target string, count int) {
	t.Helper()
	f, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			ExternalID string `json:"external_id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("target line %q: %v", sc.Text(), err)
		}
		if line.ExternalID != "" {
			seen[line.ExternalID]++
		}
	}
	dups := 0
	for _, n := range seen {
		if n > 1 {
			dups++
		}
	}
	if len(seen) != count || dups != 0 {
		t.Errorf("target holds %d distinct items (%d duplicated), want %d exactly once", len(seen), dups, count)
	}
}

// TestFleetFailover runs two real serve nodes on one real PostgreSQL and
// one shared state dir. A job posted to node a is seen on node b with its
// node; the same id posted to b is refused; then node a is lost as a host
// is (serve and its runner SIGKILLed), and b takes the job over once the
// lease runs out, resumes it from its checkpoint, and completes it with
// every item in the target exactly once.
func TestFleetFailover(t *testing.T) {
	db := pgtest.Start(t).NewDatabase(t)
	shared := t.TempDir()
	state := filepath.Join(shared, "state")
	target := filepath.Join(shared, "target.jsonl")
	const count = 4000
	spec := map[string]any{
		"id":         "fleet",
		"source":     map[string]any{"type": "synthetic", "count": count, "seed": 5},
		"target":     map[string]any{"type": "jsonl", "path": target},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 100,
		"memory":     map[string]any{"limit": "512MiB"},
		"inject":     map[string]any{"slow_batch": "40ms"},
	}
	a := startNode(t, db, state, "node-a")
	if code, body := a.do("POST", "/v1/jobs", spec); code != 201 {
		t.Fatalf("create on a: %d %s", code, body)
	}
	b := startNode(t, db, state, "node-b")

	// Any node answers for any job, and names the node running it.
	v := b.fleetWait("fleet", 60*time.Second, func(v fleetView) bool {
		return v.Status != "queued" && (v.Status != "running" || v.Progress.Processed >= 300)
	})
	if v.Status != "running" || v.Node != "node-a" {
		t.Fatalf("on b: %+v, want running on node-a", v)
	}
	if code, body := b.do("POST", "/v1/jobs", spec); code != 409 {
		t.Fatalf("the same id posted to b: %d %s, want 409", code, body)
	}
	if code, body := b.do("GET", "/v1/jobs", nil); code != 200 || !strings.Contains(string(body), `"node":"node-a"`) {
		t.Fatalf("list on b: %d %s", code, body)
	}

	// Node a is lost: serve and its runner die at once.
	runner := runnerPID(t, state, "fleet")
	killed := time.Now()
	_ = syscall.Kill(-runner, syscall.SIGKILL)
	if err := a.stop(syscall.SIGKILL, 10*time.Second); err == nil {
		t.Fatal("SIGKILL: node a exited cleanly")
	}
	v = b.fleetWait("fleet", 60*time.Second, func(v fleetView) bool { return v.Node == "node-b" || v.Status != "running" })
	if v.Node != "node-b" {
		t.Fatalf("after node a died: %+v, want the job on node-b", v)
	}
	t.Logf("failover: the job runs on node-b %.1fs after the kill (lease_ttl 3s)", time.Since(killed).Seconds())
	v = b.fleetWait("fleet", 120*time.Second, func(v fleetView) bool { return v.Status != "running" && v.Status != "queued" })
	if v.Status != "completed" || v.Progress.Processed != count || v.Runs < 2 {
		t.Fatalf("after the failover: %+v, want completed, %d processed, 2 runs or more", v, count)
	}
	exactlyOnce(t, target, count)
	if err := b.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Errorf("final stop: %v", err)
	}
}

// TestFleetStoppedNodeDoesNotWriteAfterWaking stops node a (serve and its
// runner, SIGSTOP) for longer than lease_ttl, then wakes it. Node b must
// not write while a's supervisor still holds the job's state dir, and a
// must kill its runner when it finds its lease lost, before any more
// writes count: the job completes on b with every item exactly once.
func TestFleetStoppedNodeDoesNotWriteAfterWaking(t *testing.T) {
	db := pgtest.Start(t).NewDatabase(t)
	shared := t.TempDir()
	state := filepath.Join(shared, "state")
	target := filepath.Join(shared, "target.jsonl")
	const count = 4000
	spec := map[string]any{
		"id":         "paused-node",
		"source":     map[string]any{"type": "synthetic", "count": count, "seed": 6},
		"target":     map[string]any{"type": "jsonl", "path": target},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 100,
		"memory":     map[string]any{"limit": "512MiB"},
		"inject":     map[string]any{"slow_batch": "40ms"},
	}
	a := startNode(t, db, state, "node-a")
	if code, body := a.do("POST", "/v1/jobs", spec); code != 201 {
		t.Fatalf("create on a: %d %s", code, body)
	}
	b := startNode(t, db, state, "node-b")
	v := b.fleetWait("paused-node", 60*time.Second, func(v fleetView) bool {
		return v.Status != "queued" && (v.Status != "running" || v.Progress.Processed >= 300)
	})
	if v.Status != "running" || v.Node != "node-a" {
		t.Fatalf("on b: %+v, want running on node-a", v)
	}

	runner := runnerPID(t, state, "paused-node")
	serve := a.cmd.Process.Pid
	_ = syscall.Kill(-runner, syscall.SIGSTOP)
	_ = syscall.Kill(serve, syscall.SIGSTOP)
	time.Sleep(7 * time.Second) // more than twice lease_ttl
	_ = syscall.Kill(-runner, syscall.SIGCONT)
	_ = syscall.Kill(serve, syscall.SIGCONT)

	v = b.fleetWait("paused-node", 180*time.Second, func(v fleetView) bool { return v.Status != "running" && v.Status != "queued" })
	if v.Status != "completed" || v.Progress.Processed != count {
		t.Fatalf("after node a woke: %+v, want completed with %d processed\nnode a:\n%s", v, count, a.stderr.String())
	}
	if !strings.Contains(a.stderr.String(), "lost the job's lease") {
		t.Errorf("node a did not report its lost lease:\n%s", a.stderr.String())
	}
	exactlyOnce(t, target, count)
	for _, p := range []*proc{a, b} {
		if err := p.stop(syscall.SIGTERM, 30*time.Second); err != nil {
			t.Errorf("final stop: %v", err)
		}
	}
}
