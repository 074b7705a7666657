package podio_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

// runnerEnv is the environment that holds the jobs' secrets.
func runnerEnv() []string {
	return append(os.Environ(),
		"PODIO_CLIENT_SECRET="+clientSecret,
		"PODIO_SOURCE_APP_TOKEN="+srcToken,
		"PODIO_USERNAME="+username,
		"PODIO_PASSWORD="+password,
	)
}

func podioEndpoint(url string, app int64, target bool) string {
	auth := `{flow: app, client_id: memvisor, client_secret_env: PODIO_CLIENT_SECRET, app_token_env: PODIO_SOURCE_APP_TOKEN}`
	extra := ""
	if target {
		// The target uses other credentials: a user, by password.
		auth = `{flow: password, client_id: memvisor, client_secret_env: PODIO_CLIENT_SECRET, username_env: PODIO_USERNAME, password_env: PODIO_PASSWORD}`
		extra = "\n  silent: true\n  hook: false"
	}
	return fmt.Sprintf(`
  type: podio
  api_url: %s
  app_id: %d
  auth: %s
  backoff: 5ms
  max_attempts: 10
  timeout: 20s%s`, url, app, auth, extra)
}

func writeJob(t testing.TB, dir, id, source, target string) string {
	t.Helper()
	spec := fmt.Sprintf("id: %s\nstate_dir: %s\nbatch_size: 500\nconcurrency: 5\nsource:%s\ntarget:%s\n",
		id, filepath.Join(dir, "state"), source, target)
	path := filepath.Join(dir, id+".yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runRunner runs `runner run job` to completion and returns its stdout.
func runRunner(t testing.TB, bin, jobPath, logPath string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "run", jobPath, "--progress-interval", "2s")
	cmd.Env = runnerEnv()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("runner run %s: %v\nstdout: %s\nlog tail:\n%s", jobPath, err, out, tail(logPath, 30))
	}
	return string(out)
}

func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// The proof of the issue: a podio-to-podio migration of 3,000 items of
// every field type, with 5% lost answers, 5% 5xx, 420 bursts and token
// expiries, and the runner SIGKILLed 5 times at random. The target ends
// with each source item exactly once and the right values.
// BenchmarkPodioRunnerFaultsAndKills runs the same on 20,000 items.
func TestRunnerMigratesPodioToPodioThroughFaultsAndKills(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the runner binary on 3,000 items")
	}
	migrateThroughFaultsAndKills(t, 3000, 5)
}

// BenchmarkPodioRunnerFaultsAndKills is the 20,000-item run of the test
// above, once whatever b.N is; it reports the time it took.
func BenchmarkPodioRunnerFaultsAndKills(b *testing.B) {
	start := time.Now()
	migrateThroughFaultsAndKills(b, 20_000, 5)
	benchfmt.Report(b, "podio_runner_20k_faults_kills_s", time.Since(start).Seconds(), "s")
}

func migrateThroughFaultsAndKills(t testing.TB, n, wantKills int) {
	bin := testbin.Path(t, "runner")
	t0 := time.Now()
	e := startEmuProc(t, n, "--random-seed", "42", "--token-ttl", "20s",
		"--lost-rate", "0.05", "--error-rate", "0.05", "--error-after-commit", "0.5",
		"--burst-every", fmt.Sprint(n/4), "--burst-length", "3", "--burst-wait", "1",
		"--expire-tokens-every", fmt.Sprint(n/3))
	t.Logf("emulator seeded and listening after %s", time.Since(t0).Round(time.Millisecond))
	dir := t.TempDir()
	jobPath := writeJob(t, dir, "p2p", podioEndpoint(e.url, srcApp, false), podioEndpoint(e.url, dstApp, true))

	rng := rand.New(rand.NewPCG(42, 6))
	start := time.Now()
	kills := 0
	// The kills come sooner in a smaller run, so that they land in it.
	scale := max(300, 5000*n/20_000)
	for run := 0; kills < wantKills && run < 12; run++ {
		cmd := exec.Command(bin, "run", jobPath)
		cmd.Env = runnerEnv()
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("run-%d.log", run)))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		wait := time.Duration(scale*3/10+rng.IntN(scale*7/10)) * time.Millisecond
		finished := false
		select {
		case err := <-exited:
			logf.Close()
			if err != nil || kills < 2 {
				t.Fatalf("runner run %d exited after %d kills, before it was killed: %v\n%s", run, kills, err, tail(logf.Name(), 20))
			}
			finished = true
		case <-time.After(wait):
		}
		if finished {
			break
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-exited
		logf.Close()
		kills++
		t.Logf("run %d killed after %s; %d creates so far", run, wait, e.stats(t).Creates)
	}
	out := runRunner(t, bin, jobPath, filepath.Join(dir, "final.log"))
	t.Logf("final run: %s(total %s)", out, time.Since(start).Round(time.Millisecond))
	if !strings.Contains(out, "completed") || !strings.Contains(out, "failed 0") {
		t.Errorf("final run: %q, want completed with no failures", out)
	}
	if failed := filepath.Join(dir, "state", "p2p", "failed.jsonl"); fileHasLines(failed) {
		t.Errorf("failed.jsonl is not empty:\n%s", tail(failed, 5))
	}
	st := e.stats(t)
	t.Logf("emulator: %+v", st)
	if st.Lost == 0 || st.ServerErrors == 0 || st.Burst420 == 0 || st.Expired401 == 0 {
		t.Errorf("faults were not all exercised: %+v", st)
	}
	if st.HooksFired != 0 || st.NotSilent != 0 {
		t.Errorf("%d writes fired hooks and %d were not silent", st.HooksFired, st.NotSilent)
	}
	t1 := time.Now()
	checkMigrated(t, e.dump(t, srcApp), e.dump(t, dstApp), true)
	t.Logf("checked in %s", time.Since(t1).Round(time.Millisecond))

	// Running the finished job again changes nothing.
	before := st.Creates + st.Updates
	out = runRunner(t, bin, jobPath, filepath.Join(dir, "again.log"))
	if !strings.Contains(out, "already completed") {
		t.Errorf("second run: %q, want already completed", out)
	}
	if st := e.stats(t); st.Creates+st.Updates != before {
		t.Errorf("re-running a finished job wrote %d items", st.Creates+st.Updates-before)
	}
}

func fileHasLines(path string) bool {
	data, err := os.ReadFile(path)
	return err == nil && len(strings.TrimSpace(string(data))) > 0
}

// Podio to JSONL (a backup) and JSONL back to Podio (an import) through
// the same connectors: the imported items have the values of the
// originals.
func TestRunnerExportAndImportRoundTrip(t *testing.T) {
	bin := testbin.Path(t, "runner")
	s, _ := newEmu(t, podioemu.Config{Seed: 3}, 300)
	dir := t.TempDir()
	export := filepath.Join(dir, "export.jsonl")
	exp := writeJob(t, dir, "export", podioEndpoint(s.URL(), srcApp, false), "\n  type: jsonl\n  path: "+export)
	out := runRunner(t, bin, exp, filepath.Join(dir, "export.log"))
	if !strings.Contains(out, "created 300") {
		t.Fatalf("export: %q", out)
	}
	// The export's lines name the source item in external_id; an import
	// reads them as items whose id is the line's item_id.
	f, err := os.Open(export)
	if err != nil {
		t.Fatal(err)
	}
	var lines int
	lineToSource := map[string]string{} // export item_id -> source item id
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l struct {
			ItemID     int64           `json:"item_id"`
			ExternalID string          `json:"external_id"`
			Fields     json.RawMessage `json:"fields"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.ExternalID == "" {
			t.Fatalf("export line %d: %v %s", lines+1, err, sc.Bytes())
		}
		lineToSource[fmt.Sprint(l.ItemID)] = l.ExternalID
		lines++
	}
	f.Close()
	if lines != 300 {
		t.Fatalf("export has %d lines, want 300", lines)
	}
	imp := writeJob(t, dir, "import", "\n  type: jsonl\n  path: "+export, podioEndpoint(s.URL(), dstApp, true))
	out = runRunner(t, bin, imp, filepath.Join(dir, "import.log"))
	if !strings.Contains(out, "created 300") {
		t.Fatalf("import: %q", out)
	}
	// References point at source ids that the import does not know (its
	// items are the export's lines), so they are dropped; every other
	// value round-trips.
	src := dumpApp(t, s, srcApp)
	dst := dumpApp(t, s, dstApp)
	if len(dst) != len(src) {
		t.Fatalf("imported %d items, want %d", len(dst), len(src))
	}
	bySource := map[string]dumped{}
	for _, d := range dst {
		if d.ExternalID != nil {
			bySource[lineToSource[*d.ExternalID]] = d
		}
	}
	for i := range src {
		imported, ok := bySource[fmt.Sprint(src[i].ItemID)]
		if !ok {
			t.Fatalf("source item %d was not imported", src[i].ItemID)
		}
		want := src[i].Flat
		delete(want, "parent")
		delete(want, "score")
		want["remarks"] = want["notes"]
		delete(want, "notes")
		got := imported.Flat
		wj, _ := json.Marshal(want)
		gj, _ := json.Marshal(got)
		if string(wj) != string(gj) {
			t.Fatalf("item %d after export and import:\n got %s\nwant %s", i, gj, wj)
		}
	}
}
