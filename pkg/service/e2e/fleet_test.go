package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/pgtest"
)

const fleetToken = "MEMVISOR_TOKEN=fleet-e2e-token-0123456789abcdef"

// startNode starts one `supervisor serve` node of a fleet on db, with a
// state dir of its own (nodeState) and shared as the fleet's shared root:
// the jobs' jsonl files go there.
func startNode(t testing.TB, db, shared, node string) *proc {
	t.Helper()
	return startNodeTTL(t, db, shared, node, "3s")
}

func startNodeTTL(t testing.TB, db, shared, node, ttl string) *proc {
	t.Helper()
	return startSupervisor(t, nodeState(shared, node), fmt.Sprintf("postgres_url: %q\nnode_id: %s\nlease_ttl: %s\nshared_roots: [%s]\n", db, node, ttl, shared), fleetToken)
}

// nodeState is a node's own state dir: nothing in it is shared.
func nodeState(shared, node string) string { return filepath.Join(shared, "state-"+node) }

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

// create posts spec to p and fails the test unless p accepts it (201).
func (p *proc) create(spec map[string]any) {
	p.t.Helper()
	if code, body := p.do("POST", "/v1/jobs", spec); code != 201 {
		p.t.Fatalf("create %v on %s: %d %s", spec["id"], p.base, code, body)
	}
}

// fleetEnded waits, on p, until job id is neither running nor queued.
func (p *proc) fleetEnded(id string, timeout time.Duration) fleetView {
	p.t.Helper()
	return p.fleetWait(id, timeout, func(v fleetView) bool { return v.Status != "running" && v.Status != "queued" })
}

// stopNodes stops each node with SIGTERM, as at the end of a test.
func stopNodes(t testing.TB, nodes ...*proc) {
	t.Helper()
	for _, p := range nodes {
		if err := p.stop(syscall.SIGTERM, 30*time.Second); err != nil {
			t.Errorf("final stop: %v", err)
		}
	}
}

// runnerPID reads the pid of a job's runner from its state dir.
func runnerPID(t testing.TB, state, id string) int {
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
func exactlyOnce(t testing.TB, target string, count int) {
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
	d := failover(t, "3s", 2)
	t.Logf("failover: the job runs on the other node %.1fs after the kill (lease_ttl 3s)", d.Seconds())
}

// TestFleetFailoverThreeNodes is TestFleetFailover with three nodes: one of
// the two that are left takes the job over.
func TestFleetFailoverThreeNodes(t *testing.T) {
	d := failover(t, "3s", 3)
	t.Logf("failover: the job runs on another node %.1fs after the kill (lease_ttl 3s)", d.Seconds())
}

// BenchmarkFleetFailover measures fleet_failover_s: from the SIGKILL of
// the node running a job (serve and runner) to the job running on the
// other node, with the default lease_ttl of 15s; and fleet_node_rss_mb,
// the RSS of the serve process (not its runner) of the node that took the
// job over, while it runs it. It runs once; b.N is not used.
func BenchmarkFleetFailover(b *testing.B) {
	d := failover(b, "15s", 2)
	benchfmt.Report(b, "fleet_failover_s", d.Seconds(), "s")
}

// BenchmarkFleetJobsPerSecond runs many small jobs on a fleet of one node
// and of three nodes (max_concurrent_jobs 2 each, one PostgreSQL, a state
// dir per node), posted round-robin to the nodes, and reports the jobs
// completed per second: fleet_jobs_per_s_1_node and
// fleet_jobs_per_s_3_nodes. On one machine the nodes share its cores, so
// the ratio shows the fleet's overhead more than its scaling. It runs
// once; b.N is not used.
func BenchmarkFleetJobsPerSecond(b *testing.B) {
	const jobs = 24
	for _, n := range []int{1, 3} {
		db := pgtest.Start(b).NewDatabase(b)
		shared := b.TempDir()
		var nodes []*proc
		for i := range n {
			nodes = append(nodes, startSupervisor(b, nodeState(shared, fmt.Sprint(i)), fmt.Sprintf("postgres_url: %q\nnode_id: node-%d\nmax_concurrent_jobs: 2\nshared_roots: [%s]\n", db, i, shared), fleetToken))
		}
		start := time.Now()
		for i := range jobs {
			spec := map[string]any{
				"id":         fmt.Sprintf("small-%d", i),
				"source":     map[string]any{"type": "synthetic", "count": 500, "seed": i + 1},
				"target":     map[string]any{"type": "jsonl", "path": filepath.Join(shared, fmt.Sprintf("target-%d.jsonl", i))},
				"match":      map[string]any{"source_field": "email", "target_field": "email"},
				"batch_size": 100,
				"memory":     map[string]any{"limit": "256MiB"},
			}
			nodes[i%n].create(spec)
		}
		for i := range jobs {
			v := nodes[0].fleetWait(fmt.Sprintf("small-%d", i), 300*time.Second, func(v fleetView) bool { return v.Status != "running" && v.Status != "queued" })
			if v.Status != "completed" {
				b.Fatalf("job %s: %+v", v.ID, v)
			}
		}
		name := "fleet_jobs_per_s_1_node"
		if n > 1 {
			name = fmt.Sprintf("fleet_jobs_per_s_%d_nodes", n)
		}
		benchfmt.Report(b, name, float64(jobs)/time.Since(start).Seconds(), "jobs/s")
		stopNodes(b, nodes...)
	}
}

// BenchmarkFleetCommitCost runs one job of 1,000,000 synthetic items (batch
// 500) on a single serve node (bbolt) and on a one-node fleet, where every
// commit also crosses the runner's ledger into PostgreSQL, alternating
// twice, and reports the best items per second of each and their ratio,
// fleet_vs_single_throughput. It runs once; b.N is not used.
func BenchmarkFleetCommitCost(b *testing.B) {
	const count = 1000000
	db := pgtest.Start(b).NewDatabase(b)
	best := map[bool]float64{}
	for round := range 4 {
		fleet := round%2 == 1
		shared := b.TempDir()
		extra := ""
		if fleet {
			extra = fmt.Sprintf("postgres_url: %q\nnode_id: node-%d\nshared_roots: [%s]\n", db, round, shared)
		}
		p := startSupervisor(b, nodeState(shared, "n"), extra, fleetToken)
		id := fmt.Sprintf("cost-%d", round)
		spec := map[string]any{
			"id":         id,
			"source":     map[string]any{"type": "synthetic", "count": count, "seed": 3},
			"target":     map[string]any{"type": "jsonl", "path": filepath.Join(shared, "target.jsonl")},
			"match":      map[string]any{"source_field": "email", "target_field": "email"},
			"batch_size": 500,
			"memory":     map[string]any{"limit": "512MiB"},
		}
		start := time.Now()
		p.create(spec)
		v := p.fleetEnded(id, 600*time.Second)
		if v.Status != "completed" || v.Progress.Processed != count {
			b.Fatalf("job %s: %+v", id, v)
		}
		best[fleet] = max(best[fleet], count/time.Since(start).Seconds())
		if err := p.stop(syscall.SIGTERM, 30*time.Second); err != nil {
			b.Errorf("stop: %v", err)
		}
	}
	benchfmt.Report(b, "single_node_items_per_s", best[false], "items/s")
	benchfmt.Report(b, "fleet_items_per_s", best[true], "items/s")
	benchfmt.Report(b, "fleet_vs_single_throughput", best[true]/best[false], "ratio")
}

// fleetJob is the job the fleet tests run: count synthetic items from
// seed into a jsonl target, slow enough (40 ms a batch of 100) that a node
// can be killed or stopped while it runs.
func fleetJob(id, target string, count, seed int) map[string]any {
	return map[string]any{
		"id":         id,
		"source":     map[string]any{"type": "synthetic", "count": count, "seed": seed},
		"target":     map[string]any{"type": "jsonl", "path": target},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 100,
		"memory":     map[string]any{"limit": "512MiB"},
		"inject":     map[string]any{"slow_batch": "40ms"},
	}
}

// failover is TestFleetFailover's scenario on n nodes; it returns the time
// from the kill of the job's node to the job running on another node.
func failover(t testing.TB, ttl string, n int) time.Duration {
	db := pgtest.Start(t).NewDatabase(t)
	shared := t.TempDir()
	target := filepath.Join(shared, "target.jsonl")
	const count = 4000
	spec := fleetJob("fleet", target, count, 5)
	nodes := map[string]*proc{}
	names := []string{"node-a", "node-b", "node-c"}[:n]
	for _, name := range names {
		nodes[name] = startNodeTTL(t, db, shared, name, ttl)
		if name == "node-a" {
			nodes[name].create(spec)
		}
	}

	// Any node answers for any job, and names the node running it.
	v := nodes["node-b"].fleetWait("fleet", 60*time.Second, func(v fleetView) bool {
		return v.Status != "queued" && (v.Status != "running" || v.Progress.Processed >= 300)
	})
	owner := nodes[v.Node]
	if v.Status != "running" || owner == nil {
		t.Fatalf("on b: %+v, want running on a node of the fleet", v)
	}
	for name, p := range nodes {
		if name == v.Node {
			continue
		}
		if w := p.fleetGet("fleet"); w.Node != v.Node {
			t.Errorf("on %s: %+v, want node %s", name, w, v.Node)
		}
		if code, body := p.do("POST", "/v1/jobs", spec); code != 409 {
			t.Fatalf("the same id posted to %s: %d %s, want 409", name, code, body)
		}
		if code, body := p.do("GET", "/v1/jobs", nil); code != 200 || !strings.Contains(string(body), `"node":"`+v.Node+`"`) {
			t.Fatalf("list on %s: %d %s", name, code, body)
		}
	}

	// The job's node is lost: serve and its runner die at once.
	dead := v.Node
	delete(nodes, dead)
	var survivor *proc
	for _, p := range nodes {
		survivor = p
	}
	runner := runnerPID(t, nodeState(shared, dead), "fleet")
	killed := time.Now()
	_ = syscall.Kill(-runner, syscall.SIGKILL)
	if err := owner.stop(syscall.SIGKILL, 10*time.Second); err == nil {
		t.Fatalf("SIGKILL: %s exited cleanly", dead)
	}
	v = survivor.fleetWait("fleet", 90*time.Second, func(v fleetView) bool {
		return (v.Node != "" && v.Node != dead) || v.Status != "running"
	})
	took := time.Since(killed)
	if nodes[v.Node] == nil {
		t.Fatalf("after %s died: %+v, want the job on another node", dead, v)
	}
	if b, ok := t.(*testing.B); ok {
		if mb, err := rssMB(nodes[v.Node].cmd.Process.Pid); err == nil {
			benchfmt.Report(b, "fleet_node_rss_mb", mb, "MB")
		}
	}
	v = survivor.fleetEnded("fleet", 120*time.Second)
	if v.Status != "completed" || v.Progress.Processed != count || v.Runs != 2 {
		t.Fatalf("after the failover: %+v, want completed, %d processed, in 2 runs", v, count)
	}
	exactlyOnce(t, target, count)
	for _, p := range nodes {
		if err := p.stop(syscall.SIGTERM, 30*time.Second); err != nil {
			t.Errorf("final stop: %v", err)
		}
	}
	return took
}

// TestFleetStoppedNodeDoesNotWriteAfterWaking stops node a (serve and its
// runner, SIGSTOP) for longer than lease_ttl. Then it wakes the runner
// alone: its serve still sleeps, so it can neither kill the runner nor
// answer it, and only the runner's own fence (a deadline on its own clock
// that passed while it slept) keeps it from writing: the shared target
// must not grow. Then node b starts and takes the job over from the
// checkpoint in PostgreSQL, a's serve wakes and kills its runner, and the
// job completes on b with every item exactly once.
func TestFleetStoppedNodeDoesNotWriteAfterWaking(t *testing.T) {
	db := pgtest.Start(t).NewDatabase(t)
	shared := t.TempDir()
	target := filepath.Join(shared, "target.jsonl")
	const count = 4000
	spec := fleetJob("paused-node", target, count, 6)
	a := startNode(t, db, shared, "node-a")
	a.create(spec)
	v := a.fleetWait("paused-node", 60*time.Second, func(v fleetView) bool {
		return v.Status != "queued" && (v.Status != "running" || v.Progress.Processed >= 300)
	})
	if v.Status != "running" || v.Node != "node-a" {
		t.Fatalf("on a: %+v, want running on node-a", v)
	}

	runner := runnerPID(t, nodeState(shared, "node-a"), "paused-node")
	serve := a.cmd.Process.Pid
	_ = syscall.Kill(-runner, syscall.SIGSTOP)
	_ = syscall.Kill(serve, syscall.SIGSTOP)
	time.Sleep(7 * time.Second) // more than twice lease_ttl
	size := func() int64 {
		fi, err := os.Stat(target)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	// The runner's target writes go to the file at its commits; a batch
	// takes 40 ms. Unfenced, it would commit within this time.
	slept := size()
	_ = syscall.Kill(-runner, syscall.SIGCONT)
	time.Sleep(2 * time.Second)
	if grew := size() - slept; grew != 0 {
		t.Errorf("node a's runner wrote %d bytes to the target after waking with its lease run out", grew)
	}

	b := startNode(t, db, shared, "node-b")
	_ = syscall.Kill(serve, syscall.SIGCONT)
	v = b.fleetEnded("paused-node", 180*time.Second)
	if v.Status != "completed" || v.Progress.Processed != count || v.Runs != 2 {
		t.Fatalf("after node a woke: %+v, want completed with %d processed in 2 runs\nnode a:\n%s", v, count, a.stderr.String())
	}
	if !strings.Contains(a.stderr.String(), "lost the job's lease") {
		t.Errorf("node a did not report its lost lease:\n%s", a.stderr.String())
	}
	exactlyOnce(t, target, count)
	stopNodes(t, a, b)
}

// sseCount reads a job's event stream on p until it has seen want[kind]
// events of each kind, the stream ends (the job is done), or timeout, and
// returns how many of each kind it saw. A progress event counts only with
// items processed and a memory event only with an RSS reading: the frames
// a client draws.
func sseCount(t *testing.T, p *proc, id string, want map[string]int, timeout time.Duration) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.base+"/v1/jobs/"+id+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+p.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("events: %d", resp.StatusCode)
	}
	got := map[string]int{}
	enough := func() bool {
		for k, n := range want {
			if got[k] < n {
				return false
			}
		}
		return true
	}
	kind := ""
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for !enough() && sc.Scan() {
		line := sc.Text()
		if k, ok := strings.CutPrefix(line, "event: "); ok {
			kind = k
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var frame struct {
			Job      string `json:"job"`
			Progress *struct {
				Processed int64 `json:"processed"`
			} `json:"progress"`
			Memory *struct {
				RSS uint64 `json:"rss"`
			} `json:"memory"`
		}
		if err := json.Unmarshal([]byte(data), &frame); err != nil {
			t.Errorf("%s event: %v in %s", kind, err, data)
			continue
		}
		switch {
		case frame.Job != id:
		case kind == "progress" && (frame.Progress == nil || frame.Progress.Processed <= 0):
		case kind == "memory" && (frame.Memory == nil || frame.Memory.RSS == 0):
		default:
			got[kind]++
		}
	}
	return got
}

// TestFleetRelaysRequestsAndEvents checks that a node that does not run a
// job serves its event stream, with the owner's progress and memory events
// relayed while the job runs, and relays pause and cancel to the node that
// does.
func TestFleetRelaysRequestsAndEvents(t *testing.T) {
	db := pgtest.Start(t).NewDatabase(t)
	shared := t.TempDir()
	spec := fleetJob("relay", filepath.Join(shared, "target.jsonl"), 20000, 7)
	nodes := map[string]*proc{"node-a": startNode(t, db, shared, "node-a")}
	nodes["node-a"].create(spec)
	nodes["node-b"] = startNode(t, db, shared, "node-b")
	other := func(node string) *proc {
		if node == "node-a" {
			return nodes["node-b"]
		}
		return nodes["node-a"]
	}
	running := func(v fleetView) bool { return v.Status == "running" && v.Node != "" && v.Progress.Processed > 0 }
	v := nodes["node-b"].fleetWait("relay", 60*time.Second, running)
	p := other(v.Node)

	// Events of a job that runs elsewhere: its view as it changes, and the
	// owner's live progress and memory events.
	want := map[string]int{"status": 2, "progress": 3, "memory": 3}
	got := sseCount(t, p, "relay", want, 60*time.Second)
	for k, n := range want {
		if got[k] < n {
			t.Errorf("event stream on the node that does not run the job: %d %s events, want %d or more (all: %v)", got[k], k, n, got)
		}
	}
	if v := p.fleetGet("relay"); v.Status != "running" {
		t.Fatalf("the job ended while its events were read: %+v", v)
	}

	if code, body := p.do("GET", "/v1/jobs/relay/heap-profile", nil); code != 409 || !strings.Contains(string(body), "runs on node "+v.Node) {
		t.Errorf("heap profile on the node that does not run the job: %d %s, want 409 naming %s", code, body, v.Node)
	}

	// Pause, relayed to the owner.
	code, body := p.do("POST", "/v1/jobs/relay/pause", nil)
	if code != 200 || !strings.Contains(string(body), `"status":"paused"`) {
		t.Fatalf("pause on the node that does not run the job: %d %s", code, body)
	}
	if v := nodes[v.Node].fleetGet("relay"); v.Status != "paused" {
		t.Fatalf("on the owner after the relayed pause: %+v", v)
	}
	if code, body := p.do("POST", "/v1/jobs/relay/resume", nil); code != 200 {
		t.Fatalf("resume: %d %s", code, body)
	}

	// Cancel, relayed to whichever node claimed it again.
	v = p.fleetWait("relay", 60*time.Second, running)
	p = other(v.Node)
	code, body = p.do("POST", "/v1/jobs/relay/cancel", nil)
	if code != 200 || !strings.Contains(string(body), `"status":"cancelled"`) {
		t.Fatalf("cancel on the node that does not run the job: %d %s", code, body)
	}
	for _, n := range nodes {
		if err := n.stop(syscall.SIGTERM, 30*time.Second); err != nil {
			t.Errorf("final stop: %v", err)
		}
	}
}

// TestFleetFailoverPodioTarget is the SIGKILL failover with a Podio target
// (bin/podio-emulator, reachable from every node) and a shared JSONL
// source: the target app ends with each source item exactly once.
func TestFleetFailoverPodioTarget(t *testing.T) {
	db := pgtest.Start(t).NewDatabase(t)
	shared := t.TempDir()
	const count = 1500

	// The emulator, seeded with a client and an empty target app.
	seed := filepath.Join(shared, "seed.jsonl")
	var sb strings.Builder
	sb.WriteString(`{"kind":"client","client_id":"memvisor","client_secret":"fleet-secret"}` + "\n")
	sb.WriteString(`{"kind":"app","app_id":30002,"app_token":"fleet-app-token","name":"Leads","fields":[` +
		`{"external_id":"title","type":"text","label":"Title"},{"external_id":"email","type":"text","label":"Email"}]}` + "\n")
	if err := os.WriteFile(seed, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	source := filepath.Join(shared, "source.jsonl")
	sb.Reset()
	for i := 1; i <= count; i++ {
		fmt.Fprintf(&sb, `{"item_id":%d,"fields":{"title":"Lead %d","email":"lead%d@example.com"}}`+"\n", i, i, i)
	}
	if err := os.WriteFile(source, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	urlFile := filepath.Join(shared, "emulator.url")
	emu := exec.Command(testbin.Path(t, "podio-emulator"), "--seed", seed, "--addr-file", urlFile, "--latency", "2ms")
	emu.Stderr = &lockedBuffer{}
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Process.Kill(); _ = emu.Wait() })
	var api string
	for deadline := time.Now().Add(20 * time.Second); api == ""; time.Sleep(50 * time.Millisecond) {
		if data, _ := os.ReadFile(urlFile); len(strings.TrimSpace(string(data))) > 0 {
			api = strings.TrimSpace(string(data))
		} else if time.Now().After(deadline) {
			t.Fatal("the emulator wrote no address within 20s")
		}
	}

	extra := fmt.Sprintf("postgres_url: %q\nlease_ttl: 3s\nshared_roots: [%s]\npodio_api_urls: [%s]\nallowed_credentials: [FLEET_PODIO_SECRET, FLEET_PODIO_APP_TOKEN]\n", db, shared, api)
	env := []string{fleetToken, "FLEET_PODIO_SECRET=fleet-secret", "FLEET_PODIO_APP_TOKEN=fleet-app-token"}
	spec := map[string]any{
		"id":     "podio",
		"source": map[string]any{"type": "jsonl", "path": source},
		"target": map[string]any{"type": "podio", "api_url": api, "app_id": 30002, "silent": true, "hook": false,
			"auth": map[string]any{"flow": "app", "client_id": "memvisor", "client_secret_env": "FLEET_PODIO_SECRET", "app_token_env": "FLEET_PODIO_APP_TOKEN"}},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 50,
		"memory":     map[string]any{"limit": "512MiB"},
		"inject":     map[string]any{"slow_batch": "40ms"},
	}
	a := startSupervisor(t, nodeState(shared, "node-a"), extra+"node_id: node-a\n", env...)
	a.create(spec)
	b := startSupervisor(t, nodeState(shared, "node-b"), extra+"node_id: node-b\n", env...)
	v := b.fleetWait("podio", 60*time.Second, func(v fleetView) bool {
		return v.Status != "queued" && (v.Status != "running" || v.Progress.Processed >= 200)
	})
	if v.Status != "running" || v.Node != "node-a" {
		t.Fatalf("on b: %+v, want running on node-a", v)
	}
	_ = syscall.Kill(-runnerPID(t, nodeState(shared, "node-a"), "podio"), syscall.SIGKILL)
	if err := a.stop(syscall.SIGKILL, 10*time.Second); err == nil {
		t.Fatal("SIGKILL: node a exited cleanly")
	}
	v = b.fleetEnded("podio", 120*time.Second)
	if v.Status != "completed" || v.Runs != 2 {
		t.Fatalf("after the failover: %+v, want completed in 2 runs\n%s", v, b.stderr.String())
	}

	// The target app: each source item exactly once.
	resp, err := http.Get(api + "/_emulator/dump?app_id=30002")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	seen := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var item struct {
			ExternalID string `json:"external_id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &item); err != nil {
			t.Fatalf("dump line %q: %v", sc.Text(), err)
		}
		seen[item.ExternalID]++
	}
	dups := 0
	for _, n := range seen {
		if n > 1 {
			dups++
		}
	}
	if len(seen) != count || dups != 0 {
		t.Errorf("target app holds %d distinct items (%d duplicated), want %d exactly once", len(seen), dups, count)
	}
	stopNodes(t, b)
}

// TestFleetDrainHandsJobOver stops the node running a job with SIGTERM, as
// a rolling update does: the node drains the runner, records the job
// queued and gives its lease up, and the other node resumes the job at
// once, without waiting out the lease; every item lands once.
func TestFleetDrainHandsJobOver(t *testing.T) {
	db := pgtest.Start(t).NewDatabase(t)
	shared := t.TempDir()
	target := filepath.Join(shared, "target.jsonl")
	const count = 3000
	spec := fleetJob("drain", target, count, 8)
	// A long lease: a handover that waited it out would show.
	a := startNodeTTL(t, db, shared, "node-a", "10m")
	a.create(spec)
	b := startNodeTTL(t, db, shared, "node-b", "10m")
	v := b.fleetWait("drain", 60*time.Second, func(v fleetView) bool {
		return v.Status != "queued" && (v.Status != "running" || v.Progress.Processed >= 300)
	})
	if v.Status != "running" || v.Node != "node-a" {
		t.Fatalf("on b: %+v, want running on node-a", v)
	}
	if err := a.stop(syscall.SIGTERM, 60*time.Second); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	v = b.fleetEnded("drain", 120*time.Second)
	if v.Status != "completed" || v.Progress.Processed != count || v.Runs != 2 {
		t.Fatalf("after a drained: %+v, want completed in 2 runs", v)
	}
	exactlyOnce(t, target, count)
	// a's drain stored its cache snapshot in PostgreSQL before it gave the
	// lease up; b, with a state dir of its own, restored it rather than
	// reading the whole target.
	if !strings.Contains(a.stderr.String(), "cache snapshot stored in the fleet") {
		t.Errorf("node a stored no snapshot:\n%s", a.stderr.String())
	}
	if !strings.Contains(b.stderr.String(), "Cache restored from snapshot") {
		t.Errorf("node b did not restore a's snapshot:\n%s", b.stderr.String())
	}
	stopNodes(t, b)
}

// TestFleetFailedItemsFollowTheJob: a job with bad records completes on
// node a; node b, which never ran it, lists its failed items from
// PostgreSQL; a leaves; the source is fixed and the retry runs on b, from
// a state dir that never held the job: every item ends in the target
// exactly once and no failure is left.
func TestFleetFailedItemsFollowTheJob(t *testing.T) {
	db := pgtest.Start(t).NewDatabase(t)
	shared := t.TempDir()
	source := filepath.Join(shared, "source.jsonl")
	target := filepath.Join(shared, "target.jsonl")
	const count, bad = 600, 7
	write := func(fixed bool) {
		var sb strings.Builder
		for i := 1; i <= count; i++ {
			if i%(count/bad) == 0 && !fixed {
				fmt.Fprintf(&sb, "{\"item_id\": %d, broken\n", i)
				continue
			}
			fmt.Fprintf(&sb, `{"item_id":%d,"external_id":"src-%d","fields":{"email":"u%d@example.com"}}`+"\n", i, i, i)
		}
		if err := os.WriteFile(source, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(false)
	a := startNode(t, db, shared, "node-a")
	spec := map[string]any{
		"id":         "bad",
		"source":     map[string]any{"type": "jsonl", "path": source},
		"target":     map[string]any{"type": "jsonl", "path": target},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 50,
		"memory":     map[string]any{"limit": "256MiB"},
	}
	a.create(spec)
	v := a.fleetEnded("bad", 120*time.Second)
	if v.Status != "completed" || v.Node != "" {
		t.Fatalf("on a: %+v, want completed", v)
	}
	b := startNode(t, db, shared, "node-b")
	code, body := b.do("GET", "/v1/jobs/bad/failed?limit=1000", nil)
	var page struct {
		Items []struct {
			Line     int64  `json:"line"`
			Category string `json:"category"`
		} `json:"items"`
		Next *string `json:"next_cursor"`
	}
	if code != 200 || json.Unmarshal(body, &page) != nil || len(page.Items) != bad || page.Next != nil {
		t.Fatalf("failed items on b: %d %s, want %d items in one page", code, body, bad)
	}
	// Pages of 3, through the cursor, give the same items.
	seen, cursor := 0, ""
	for range bad {
		code, body := b.do("GET", "/v1/jobs/bad/failed?limit=3"+cursor, nil)
		page.Next = nil
		if code != 200 || json.Unmarshal(body, &page) != nil {
			t.Fatalf("failed items page on b: %d %s", code, body)
		}
		seen += len(page.Items)
		if page.Next == nil {
			break
		}
		cursor = "&cursor=" + *page.Next
	}
	if seen != bad {
		t.Errorf("pages of 3 gave %d failed items, want %d", seen, bad)
	}
	if err := a.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	write(true)
	if code, body := b.do("POST", "/v1/jobs/bad/retry-failed", map[string]any{}); code != 200 {
		t.Fatalf("retry-failed on b: %d %s", code, body)
	}
	v = b.fleetWait("bad", 120*time.Second, func(v fleetView) bool { return v.Runs > 1 && v.Status != "running" && v.Status != "queued" })
	if v.Status != "completed" {
		t.Fatalf("retry on b: %+v, want completed", v)
	}
	exactlyOnce(t, target, count)
	code, body = b.do("GET", "/v1/jobs/bad/failed", nil)
	if code != 200 || !strings.Contains(string(body), `"items":[]`) {
		t.Errorf("failed items after the retry: %d %s, want none", code, body)
	}
	stopNodes(t, b)
}

// TestFleetKilledNodesSnapshotMoves: with snapshot_interval, node a stores
// a cache snapshot in PostgreSQL while it runs the job, with no drain;
// a's serve and runner are then SIGKILLed, and node b, with a state dir of
// its own, restores that snapshot instead of reading the whole target,
// and completes the job with every item exactly once.
func TestFleetKilledNodesSnapshotMoves(t *testing.T) {
	db := pgtest.Start(t).NewDatabase(t)
	shared := t.TempDir()
	target := filepath.Join(shared, "target.jsonl")
	const count = 8000
	spec := fleetJob("snap", target, count, 9)
	spec["snapshot_interval"] = "1s"
	a := startNode(t, db, shared, "node-a")
	a.create(spec)
	b := startNode(t, db, shared, "node-b")
	stored := func() bool { return strings.Contains(a.stderr.String(), "cache snapshot stored in the fleet") }
	for deadline := time.Now().Add(90 * time.Second); !stored(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node a stored no snapshot within 90s:\n%s", a.stderr.String())
		}
	}
	if v := b.fleetGet("snap"); v.Status != "running" || v.Node != "node-a" {
		t.Fatalf("on b: %+v, want running on node-a", v)
	}
	_ = syscall.Kill(-runnerPID(t, nodeState(shared, "node-a"), "snap"), syscall.SIGKILL)
	if err := a.stop(syscall.SIGKILL, 10*time.Second); err == nil {
		t.Fatal("SIGKILL: node a exited cleanly")
	}
	v := b.fleetEnded("snap", 180*time.Second)
	if v.Status != "completed" || v.Progress.Processed != count || v.Runs != 2 {
		t.Fatalf("after node a was killed: %+v, want completed in 2 runs\n%s", v, b.stderr.String())
	}
	if !strings.Contains(b.stderr.String(), "Cache restored from snapshot") {
		t.Errorf("node b did not restore node a's snapshot:\n%s", b.stderr.String())
	}
	exactlyOnce(t, target, count)
	stopNodes(t, b)
}
