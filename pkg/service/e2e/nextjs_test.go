package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// requireTool finds a command the Next.js test needs. Without it the test
// is skipped on a developer's machine, but fails under CI (CI=true), where
// .ci/run has installed everything.
func requireTool(t *testing.T, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed, and CI is set: %s", name, hint)
	}
	t.Skipf("%s is not installed (%s)", name, hint)
	return ""
}

// nextEnv is the environment of every npm and next command: telemetry,
// update checks and audits off, so that nothing but the npm registry (at
// install time) and loopback (at run time) is contacted.
func nextEnv(extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"NEXT_TELEMETRY_DISABLED=1",
		"NPM_CONFIG_UPDATE_NOTIFIER=false",
		"NPM_CONFIG_AUDIT=false",
		"NPM_CONFIG_FUND=false",
	}
	for _, k := range []string{"HOME", "TMPDIR", "NPM_CONFIG_REGISTRY", "NPM_CONFIG_CACHE", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return append(env, extra...)
}

// copyApp copies examples/nextjs into dir, without what a local install or
// build left there, so that the test builds from the sources alone.
func copyApp(t *testing.T, src, dir string) {
	t.Helper()
	skip := map[string]bool{"node_modules": true, ".next": true, "test": true, "screenshot.png": true}
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if skip[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dir, rel), 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, rel), data, 0o644)
	})
	if err != nil {
		t.Fatalf("copy the app: %v", err)
	}
}

// runIn runs a command in dir and fails the test with its output if it fails.
func runIn(t *testing.T, ctx context.Context, dir string, env []string, name string, args ...string) {
	t.Helper()
	start := time.Now()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	t.Logf("%s %s: %s", filepath.Base(name), strings.Join(args, " "), time.Since(start).Round(time.Second))
}

// TestNextjsApp builds examples/nextjs with `next build`, serves it with
// `next start` in front of a real bin/supervisor serve (with a token), and
// drives its page in headless Chromium: start a migration, watch progress
// arrive over Server-Sent Events, pause, resume, see it complete, and
// cancel a second one. It also checks that the app's route handler refuses
// what is not on its allow-list.
func TestNextjsApp(t *testing.T) {
	node := requireTool(t, "node", ".ci/run installs nodejs")
	npm := requireTool(t, "npm", ".ci/run installs npm")
	requireTool(t, "chromium", ".ci/run installs chromium")
	chrome := chromiumPath(t)

	src, err := filepath.Abs("../../../examples/nextjs")
	if err != nil {
		t.Fatal(err)
	}
	app := t.TempDir()
	copyApp(t, src, app)
	buildCtx, cancelBuild := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancelBuild()
	runIn(t, buildCtx, app, nextEnv(), npm, "ci", "--ignore-scripts", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error")
	nextBin := filepath.Join(app, "node_modules", "next", "dist", "bin", "next")
	runIn(t, buildCtx, app, nextEnv(), node, nextBin, "build")

	// The supervisor, with a token and its default confinement: jobs
	// write only beneath <state_dir>/data. The page's "delay per batch" is
	// inject.slow_batch, so this one allows fault injection. The app
	// reads the token from a file, as it would read <state_dir>/api-token.
	const token = "nextjs-e2e-token-7c2a9d41"
	state := t.TempDir()
	dataRoot := filepath.Join(state, "data")
	p := startSupervisor(t, state, serviceDefaults+"allow_inject: true\n", "MEMVISOR_TOKEN="+token)
	tokenFile := filepath.Join(t.TempDir(), "api-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := startNext(t, node, nextBin, app, p.base, tokenFile, dataRoot)

	t.Run("route handler allow-list", func(t *testing.T) {
		checkProxyRefusals(t, base, token, dataRoot)
	})
	t.Run("page in chromium", func(t *testing.T) {
		drivePage(t, chrome, base, dataRoot, p)
	})

	// A supervisor as installed: its own token (generated into the state
	// directory, which the app reads), its default data root, and no
	// fault injection. The page shows the supervisor's own field errors.
	state2 := t.TempDir()
	strict := startSupervisor(t, state2, serviceDefaults)
	base2 := startNext(t, node, nextBin, app, strict.base, filepath.Join(state2, "api-token"), filepath.Join(state2, "data"))
	t.Run("page on a supervisor without fault injection", func(t *testing.T) {
		drivePageStrict(t, chrome, base2, filepath.Join(state2, "data"), strict)
	})

	for _, s := range []*proc{p, strict} {
		if err := s.stop(syscall.SIGTERM, 20*time.Second); err != nil {
			t.Errorf("stop: %v", err)
		}
	}
}

// startNext runs `next start` on a free loopback port in front of the
// supervisor at url, and returns the app's base URL. It is stopped when
// the test ends.
func startNext(t *testing.T, node, nextBin, app, url, tokenFile, dataRoot string) string {
	t.Helper()
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	nextLog := &lockedBuffer{}
	cmd := exec.Command(node, nextBin, "start", "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	cmd.Dir = app
	cmd.Env = nextEnv("NODE_ENV=production", "MEMVISOR_URL="+url, "MEMVISOR_TOKEN_FILE="+tokenFile, "MEMVISOR_DATA_ROOT="+dataRoot)
	cmd.Stdout, cmd.Stderr = nextLog, nextLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	nextDone := make(chan error, 1)
	go func() { nextDone <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-nextDone:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-nextDone
		}
		if t.Failed() {
			t.Logf("next start (%s):\n%s", base, nextLog.String())
		}
	})
	waitHTTP(t, base+"/", nextDone, nextLog)
	return base
}

// waitHTTP waits until url answers 200.
func waitHTTP(t *testing.T, url string, exited <-chan error, log *lockedBuffer) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("next start exited: %v\n%s", err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("next start not ready after 60s\n%s", log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func checkProxyRefusals(t *testing.T, base, token, dataRoot string) {
	spec := func(extra string) string {
		return `{"source":{"type":"synthetic","count":10},"target":{"type":"jsonl","path":"` + dataRoot + `/refused.jsonl"}` + extra + `}`
	}
	cases := []struct {
		name, method, path, ctype, body string
		want                            int
	}{
		{"a route the page does not use", "GET", "/api/memvisor/metrics", "", "", 404},
		{"the job list", "GET", "/api/memvisor/v1/jobs", "", "", 405},
		{"a job's view", "GET", "/api/memvisor/v1/jobs/some-job", "", "", 404},
		{"failed items", "GET", "/api/memvisor/v1/jobs/some-job/failed", "", "", 404},
		{"retry-failed", "POST", "/api/memvisor/v1/jobs/some-job/retry-failed", "application/json", "{}", 404},
		{"delete", "DELETE", "/api/memvisor/v1/jobs/some-job", "", "", 405},
		{"a dot segment", "POST", "/api/memvisor/v1/jobs/..%2F..%2Fmetrics/pause", "application/json", "{}", 404},
		{"not JSON", "POST", "/api/memvisor/v1/jobs", "text/plain", spec(""), 415},
		{"another source type", "POST", "/api/memvisor/v1/jobs", "application/json",
			`{"source":{"type":"jsonl","path":"/etc/passwd"},"target":{"type":"jsonl","path":"` + dataRoot + `/x.jsonl"}}`, 400},
		{"a target outside the data root", "POST", "/api/memvisor/v1/jobs", "application/json",
			`{"source":{"type":"synthetic","count":10},"target":{"type":"jsonl","path":"/tmp/x.jsonl"}}`, 400},
		{"a fault injection", "POST", "/api/memvisor/v1/jobs", "application/json", spec(`,"inject":{"crash_on_start":true}`), 400},
		{"a case-folded key", "POST", "/api/memvisor/v1/jobs", "application/json", spec(`,"State_dir":"/tmp"`), 400},
		{"a large body", "POST", "/api/memvisor/v1/jobs", "application/json", spec(`,"id":"` + strings.Repeat("a", 20<<10) + `"`), 413},
	}
	for _, c := range cases {
		req, err := http.NewRequest(c.method, base+c.path, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		if c.ctype != "" {
			req.Header.Set("Content-Type", c.ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: %s %s: got %d, want %d: %s", c.name, c.method, c.path, resp.StatusCode, c.want, body)
		}
		if bytes.Contains(body, []byte(token)) {
			t.Errorf("%s: the answer holds the token", c.name)
		}
	}
	// The page itself never holds the token.
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if bytes.Contains(page, []byte(token)) {
		t.Error("the page holds the token")
	}
}

// pageJob is what the page shows of its job.
type pageJob struct {
	Status         string  `json:"status"`
	ProgressEvents int     `json:"progressEvents"`
	Processed      string  `json:"processed"`
	Percent        float64 `json:"percent"`
	RSS            string  `json:"rss"`
	ChartPoints    int     `json:"chartPoints"`
	Pause          bool    `json:"pause"`
	Resume         bool    `json:"resume"`
	Cancel         bool    `json:"cancel"`
	JobID          string  `json:"jobId"`
	Error          string  `json:"error"`
}

const readPage = `(() => {
	const q = (s) => document.querySelector(s);
	const job = q('#job');
	if (!job) return { error: q('#error') ? q('#error').textContent : '' };
	return {
		status: job.dataset.status,
		progressEvents: Number(job.dataset.progressEvents),
		processed: q('#processed').textContent,
		percent: parseFloat(q('#bar').dataset.percent),
		rss: q('#rss').textContent,
		chartPoints: Number(q('[data-testid=chart]').dataset.points),
		pause: !q('#pause').disabled,
		resume: !q('#resume').disabled,
		cancel: !q('#cancel').disabled,
		jobId: job.dataset.job,
		error: q('#error') ? q('#error').textContent : '',
	};
})()`

// waitPage polls the page until cond holds, for at most timeout.
func waitPage(t *testing.T, ctx context.Context, what string, timeout time.Duration, cond func(pageJob) bool) pageJob {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, err := chromedp.Run(ctx, chromedp.Evaluate[pageJob](readPage))
		if err != nil {
			t.Fatalf("read the page: %v", err)
		}
		if cond(got) {
			return got
		}
		if got.Error != "" {
			t.Fatalf("waiting for %s, the page shows an error: %s", what, got.Error)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page never showed %s within %s: %+v", what, timeout, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fill sets a React-controlled input the way typing does.
func fill(id, value string) chromedp.Action[chromedp.Void] {
	v, _ := json.Marshal(value)
	eval := chromedp.Evaluate[bool](fmt.Sprintf(`(() => {
		const el = document.getElementById(%q);
		Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(el, %s);
		el.dispatchEvent(new Event('input', { bubbles: true }));
		return true;
	})()`, id, v))
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := eval(ctx, tg)
		return err
	})
}

// newBrowser starts headless Chromium and returns a context for its tab,
// with a timeout for the actions after the start. It stops with the test.
func newBrowser(t *testing.T, chrome string) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chrome),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1000, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(cancelCtx)
	// The first action starts the browser; a timeout on its context would
	// stop the browser, so only later actions get one.
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	ctx, cancel := context.WithTimeout(bctx, 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func drivePage(t *testing.T, chrome, base, dataRoot string, p *proc) {
	ctx := newBrowser(t, chrome)

	// A target outside the data root: the route handler refuses it, and
	// the page says which field is wrong.
	err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#start-form[data-ready=true]`)),
		fill("target", "/tmp/elsewhere.jsonl"),
		chromedp.Click(chromedp.CSS(`#start`)),
		chromedp.WaitVisible(chromedp.CSS(`#error`)),
	)
	if err != nil {
		t.Fatalf("start a refused migration: %v", err)
	}
	if msg, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#error`))); err != nil || !strings.Contains(msg, "target.path") {
		t.Errorf("the page's error for a target outside the data root: %q, %v; want it to name target.path", msg, err)
	}

	// Start a migration slow enough to pause: 6000 items in batches of 50,
	// 50 ms apart.
	err = chromedp.Do(ctx,
		fill("count", "6000"),
		fill("target", filepath.Join(dataRoot, "nextjs.jsonl")),
		fill("throttle", "50"),
		chromedp.Click(chromedp.CSS(`#start`)),
		chromedp.WaitVisible(chromedp.CSS(`#job`)),
	)
	if err != nil {
		t.Fatalf("start a migration from the page: %v", err)
	}
	running := waitPage(t, ctx, "progress arriving over SSE", 60*time.Second, func(j pageJob) bool {
		return j.Status == "running" && j.ProgressEvents > 0 && j.Percent > 0 && j.ChartPoints > 0 && j.Pause
	})
	if !running.Pause || running.Resume || !running.Cancel {
		t.Errorf("buttons while running: %+v, want pause and cancel", running)
	}
	id := running.JobID

	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#pause`))); err != nil {
		t.Fatal(err)
	}
	// The status can arrive over SSE before the pause request's own answer
	// re-enables the buttons; a user sees Resume enabled a moment later.
	paused := waitPage(t, ctx, "the job paused, with Resume enabled", 30*time.Second, func(j pageJob) bool { return j.Status == "paused" && j.Resume })
	if paused.Pause || !paused.Resume || paused.Percent >= 100 {
		t.Errorf("page while paused: %+v, want resume enabled and the job unfinished", paused)
	}
	if v := p.get(id); v.Status != "paused" {
		t.Errorf("API after pause: %+v", v)
	}

	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#resume`))); err != nil {
		t.Fatal(err)
	}
	done := waitPage(t, ctx, "the job completed", 120*time.Second, func(j pageJob) bool { return j.Status == "completed" })
	if done.Percent != 100 || done.Pause || done.Resume || done.Cancel || !strings.HasPrefix(done.Processed, "6,000") {
		t.Errorf("page when completed: %+v, want 100%% of 6,000 and no buttons", done)
	}
	if v := p.get(id); v.Status != "completed" || v.Progress.Processed != 6000 {
		t.Errorf("API after the page: %+v, want completed with 6000 processed", v)
	}

	time.Sleep(500 * time.Millisecond) // the bar's CSS transition
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	// ArtifactDir is a temporary directory unless go test has -artifacts.
	path := filepath.Join(t.ArtifactDir(), "nextjs.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
	if keep := os.Getenv("MEMVISOR_NEXTJS_SCREENSHOT"); keep != "" {
		_ = os.WriteFile(keep, shot, 0o644)
	}

	// A second migration, cancelled from the page.
	err = chromedp.Do(ctx,
		fill("count", "100000"),
		fill("target", filepath.Join(dataRoot, "cancelled.jsonl")),
		chromedp.Click(chromedp.CSS(`#start`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	second := waitPage(t, ctx, "a second job running", 60*time.Second, func(j pageJob) bool {
		return j.JobID != id && j.Status == "running" && j.ProgressEvents > 0 && j.Cancel
	})
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#cancel`))); err != nil {
		t.Fatal(err)
	}
	waitPage(t, ctx, "the job cancelled", 30*time.Second, func(j pageJob) bool { return j.Status == "cancelled" })
	if v := p.get(second.JobID); v.Status != "cancelled" || v.Progress.Processed >= 100000 {
		t.Errorf("API after cancel: %+v", v)
	}
}

// waitError polls the page until its error names want, and returns it.
func waitError(t *testing.T, ctx context.Context, want string) string {
	t.Helper()
	const read = `document.querySelector('#error') ? document.querySelector('#error').textContent : ''`
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg, err := chromedp.Run(ctx, chromedp.Evaluate[string](read))
		if err != nil {
			t.Fatalf("read the page's error: %v", err)
		}
		if strings.Contains(msg, want) {
			return msg
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page's error never named %q: %q", want, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// drivePageStrict drives the page in front of a supervisor with its
// default confinement and no fault injection: the supervisor, not the
// route handler, refuses a target that escapes its data root and a delay
// per batch, the page shows its field errors, and a plain migration
// still runs to the end.
func drivePageStrict(t *testing.T, chrome, base, dataRoot string, p *proc) {
	ctx := newBrowser(t, chrome)

	// A path beneath the data root by its letters, but through a symlink
	// to a directory outside it: the route handler lets it pass, the
	// supervisor resolves it and refuses it, and nothing is written.
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dataRoot, "outside")); err != nil {
		t.Fatal(err)
	}
	err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#start-form[data-ready=true]`)),
		fill("count", "2000"),
		fill("target", filepath.Join(dataRoot, "outside", "escaped.jsonl")),
		fill("throttle", "0"),
		chromedp.Click(chromedp.CSS(`#start`)),
	)
	if err != nil {
		t.Fatalf("start a migration into a symlink: %v", err)
	}
	msg := waitError(t, ctx, "target.path")
	t.Logf("the page's error for a target through a symlink: %q", msg)
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("the refused job wrote outside the data root: %v", entries)
	}

	// A delay per batch is fault injection, which this supervisor refuses.
	err = chromedp.Do(ctx,
		fill("target", filepath.Join(dataRoot, "strict.jsonl")),
		fill("throttle", "50"),
		chromedp.Click(chromedp.CSS(`#start`)),
	)
	if err != nil {
		t.Fatalf("start a throttled migration: %v", err)
	}
	msg = waitError(t, ctx, "allow_inject")
	if !strings.Contains(msg, "inject:") || !strings.Contains(msg, "delay per batch to 0") {
		t.Errorf("the page's error for a refused delay: %q, want the inject field and what to do", msg)
	}
	code, body := p.do("GET", "/v1/jobs", nil)
	var list struct {
		Jobs []jobView `json:"jobs"`
	}
	if err := json.Unmarshal(body, &list); code != http.StatusOK || err != nil || len(list.Jobs) != 0 {
		t.Errorf("jobs after two refused starts: %d %s, want none", code, body)
	}

	// Without the delay, the same migration runs.
	err = chromedp.Do(ctx,
		fill("throttle", "0"),
		chromedp.Click(chromedp.CSS(`#start`)),
		chromedp.WaitVisible(chromedp.CSS(`#job`)),
	)
	if err != nil {
		t.Fatalf("start a migration without a delay: %v", err)
	}
	done := waitPage(t, ctx, "the job completed", 120*time.Second, func(j pageJob) bool { return j.Status == "completed" })
	if done.Percent != 100 || !strings.HasPrefix(done.Processed, "2,000") {
		t.Errorf("page when completed: %+v, want 100%% of 2,000", done)
	}
	if v := p.get(done.JobID); v.Status != "completed" || v.Progress.Processed != 2000 {
		t.Errorf("API after the page: %+v, want completed with 2000 processed", v)
	}
	if _, err := os.Stat(filepath.Join(dataRoot, "strict.jsonl")); err != nil {
		t.Errorf("the target: %v", err)
	}
}
