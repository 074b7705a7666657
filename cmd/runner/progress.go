package main

import (
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"
	"github.com/schollz/progressbar/v3"

	"github.com/memvisor/memvisor/internal/logkey"
	"github.com/memvisor/memvisor/internal/memstat"
	"github.com/memvisor/memvisor/plugin"
)

// progress shows a bar on a terminal and a log line per interval
// otherwise.
type progress struct {
	bar      *progressbar.ProgressBar
	log      zerolog.Logger
	interval time.Duration
	last     time.Time
}

func newProgress(w io.Writer, tty bool, interval time.Duration, log zerolog.Logger) *progress {
	p := &progress{log: log, interval: interval}
	if tty {
		p.bar = progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("migrating"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("items"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

func (p *progress) update(st plugin.State, pr plugin.Progress, cacheBytes int64) {
	if p.bar != nil {
		if pr.TotalKnown && p.bar.GetMax64() != pr.Total {
			p.bar.ChangeMax64(pr.Total)
		}
		p.bar.Describe(fmt.Sprintf("%s | created %d skipped %d failed %d | rss %.0fMB", st, pr.Created, pr.Skipped, pr.Failed, logkey.MB(memstat.RSS())))
		_ = p.bar.Set64(pr.Processed)
		return
	}
	now := time.Now()
	if now.Sub(p.last) < p.interval && !st.Finished() {
		return
	}
	p.last = now
	ev := p.log.Info().Str("context", "progress").Str("state", string(st)).
		Int64("processed", pr.Processed).Int64("created", pr.Created).Int64("updated", pr.Updated).
		Int64("skipped", pr.Skipped).Int64("failed", pr.Failed).
		Float64("itemsPerSec", float64(int64(pr.ItemsPerSec))).
		Float64("rssMB", logkey.MB(memstat.RSS())).
		Float64("cacheMB", logkey.MB(uint64(cacheBytes)))
	if pr.TotalKnown && pr.Total > 0 {
		ev.Int64("total", pr.Total).Float64("percent", float64(pr.Processed*1000/pr.Total)/10)
		if pr.ItemsPerSec > 0 {
			ev.Str("eta", (time.Duration(float64(pr.Total-pr.Processed)/pr.ItemsPerSec) * time.Second).Round(time.Second).String())
		}
	}
	ev.Msg("progress")
}

func (p *progress) stop() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
