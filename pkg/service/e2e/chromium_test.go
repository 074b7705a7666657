package e2e_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumPath finds Debian's chromium.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
	return ""
}

// TestStatusPageInChromium starts a job from the status page in headless
// Chromium, against bin/supervisor serve and the real runner, watches its progress bar reach 100%, checks the memory chart
// and the buttons, and saves a screenshot.
func TestStatusPageInChromium(t *testing.T) {
	chrome := chromiumPath(t)
	p := startSupervisor(t, t.TempDir(), "")

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chrome),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1200, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelCtx := chromedp.NewContext(actx)
	defer cancelCtx()
	// The first action starts the browser; a timeout on its context
	// would stop the browser, so only later actions get one.
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	ctx, cancel := context.WithTimeout(bctx, 60*time.Second)
	defer cancel()

	target := filepath.Join(t.TempDir(), "target.jsonl")
	spec, _ := json.Marshal(map[string]any{
		"id":         "browser-job",
		"source":     map[string]any{"type": "synthetic", "count": 4000, "seed": 7},
		"target":     map[string]any{"type": "jsonl", "path": target},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 40,
		// A leak that GC cannot free: the chart shows the warning and
		// critical crossings, a GC request and a graceful restart.
		"inject": map[string]any{"slow_batch": "25ms", "leak_bytes_per_item": "25KiB"},
		"memory": map[string]any{"limit": "128MiB", "sample_interval": "100ms"},
	})
	err := chromedp.Do(ctx,
		// The page takes the token from the address's fragment, which
		// the browser never sends.
		chromedp.Navigate(p.base+"/#token="+p.token),
		chromedp.WaitVisible(chromedp.CSS(`#new`)),
		chromedp.Click(chromedp.CSS(`#new summary`)),
		chromedp.SetValue(chromedp.CSS(`#spec`), string(spec)),
		chromedp.Click(chromedp.CSS(`#start`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-job="browser-job"] .status`)),
	)
	if err != nil {
		t.Fatalf("start a job from the page: %v", err)
	}
	// While it runs: the pause button is enabled and the chart has drawn.
	type pageState struct {
		Status      string  `json:"status"`
		PauseOn     bool    `json:"pause"`
		ResumeOn    bool    `json:"resume"`
		Percent     float64 `json:"percent"`
		InkedPixels int     `json:"inked"`
	}
	var midway pageState
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		midway, err = chromedp.Run(ctx, chromedp.Evaluate[pageState](`(() => {
			const el = document.querySelector('[data-job="browser-job"]');
			const c = el.querySelector('canvas'), g = c.getContext('2d');
			const px = g.getImageData(0, 0, c.width, c.height).data;
			let inked = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) inked++;
			return { status: el.querySelector('.status').textContent,
				pause: !el.querySelector('[data-act=pause]').disabled,
				resume: !el.querySelector('[data-act=resume]').disabled,
				percent: parseFloat(el.querySelector('.bar').dataset.percent), inked };
		})()`))
		if err != nil {
			t.Fatal(err)
		}
		if midway.Status == "running" && midway.InkedPixels > 500 && midway.Percent > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page never showed the job running with a chart: %+v", midway)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !midway.PauseOn || midway.ResumeOn {
		t.Errorf("buttons while running: pause %v resume %v, want pause only", midway.PauseOn, midway.ResumeOn)
	}
	// Pause from the page, then resume, then let it finish.
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`[data-job="browser-job"] [data-act=pause]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-job="browser-job"].paused`)),
		chromedp.Click(chromedp.CSS(`[data-job="browser-job"] [data-act=resume]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-job="browser-job"] .bar[data-percent="100"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-job="browser-job"].completed`)),
	)
	if err != nil {
		t.Fatalf("pause, resume and finish from the page: %v\n%s", err, p.stderr.String())
	}
	status, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`[data-job="browser-job"] .status`)))
	if err != nil {
		t.Fatal(err)
	}
	if status != "completed" {
		t.Errorf("status on the page: %q", status)
	}
	time.Sleep(500 * time.Millisecond) // the bar's CSS transition
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.ArtifactDir()
	path := filepath.Join(dir, "status-page.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
	if keep := os.Getenv("MEMVISOR_SCREENSHOT"); keep != "" {
		_ = os.WriteFile(keep, shot, 0o644)
	}
	v := p.get("browser-job")
	if v.Status != "completed" || v.Progress.Processed != 4000 || v.Runs != 2 {
		t.Errorf("API after the page: %+v, want completed with 4000 processed in 2 runs", v)
	}
	if err := p.stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
}
