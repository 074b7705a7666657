package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/schollz/progressbar/v3"

	"github.com/memvisor/memvisor/internal/logkey"
	"github.com/memvisor/memvisor/pkg/supervise"
)

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// terminal serializes the progress bar and the log lines on stderr. A log
// line first clears the bar's line; the bar redraws at its next update.
type terminal struct {
	mu    sync.Mutex
	w     io.Writer
	barOn bool
}

func (t *terminal) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.barOn {
		if _, err := io.WriteString(t.w, "\r\033[2K"); err != nil {
			return 0, err
		}
	}
	return t.w.Write(p)
}

// barWriter is the bar's way to the terminal.
type barWriter struct{ t *terminal }

func (b barWriter) Write(p []byte) (int, error) {
	b.t.mu.Lock()
	defer b.t.mu.Unlock()
	return b.t.w.Write(p)
}

// display shows a running job: a bar on a terminal, a log line every
// interval otherwise.
type display struct {
	sup      *supervise.Supervisor
	term     *terminal
	log      zerolog.Logger
	bar      *progressbar.ProgressBar
	interval time.Duration

	start     time.Time
	startDone int64
	started   bool
}

func newDisplay(sup *supervise.Supervisor, term *terminal, log zerolog.Logger, tty bool, interval time.Duration) *display {
	d := &display{sup: sup, term: term, log: log, interval: interval}
	if tty {
		d.interval = 250 * time.Millisecond
		term.barOn = true
		d.bar = progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(barWriter{term}),
			progressbar.OptionSetDescription("starting"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("items"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionFullWidth(),
		)
	}
	return d
}

// loop refreshes the display until ctx is done. The first signal on sigs
// has already asked for a drain (it cancelled Run's context); a second
// one aborts the run.
func (d *display) loop(ctx context.Context, sigs <-chan os.Signal) {
	t := time.NewTicker(d.interval)
	defer t.Stop()
	signals := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
			signals++
			if signals >= 2 {
				d.log.Warn().Msg("second signal: killing the runner without a drain")
				d.sup.Abort()
			} else {
				d.log.Info().Msg("signal received: draining the runner; send another to kill it at once")
			}
		case <-t.C:
			d.refresh()
		}
	}
}

func (d *display) refresh() {
	st := d.sup.Status()
	p := st.Progress
	now := time.Now()
	if !d.started && st.State == supervise.StateRunning {
		d.started, d.start, d.startDone = true, now, p.Processed
	}
	rate := p.ItemsPerSec
	if rate <= 0 && d.started {
		if el := now.Sub(d.start).Seconds(); el > 1 {
			rate = float64(p.Processed-d.startDone) / el
		}
	}
	mem := st.Memory
	if d.bar != nil {
		if p.TotalKnown && d.bar.GetMax64() != p.Total {
			d.bar.ChangeMax64(p.Total)
		}
		desc := fmt.Sprintf("%s | rss %.0f/%.0f MiB %s", st.State, mib(mem.RSS), mib(mem.Budget), mem.Level)
		if n := st.Restarts.Total(); n > 0 {
			desc += fmt.Sprintf(" | %d restarts", n)
		}
		d.bar.Describe(desc)
		_ = d.bar.Set64(p.Processed)
		return
	}
	ev := d.log.Info().Str("context", "progress").Str("state", st.State).
		Int64("processed", p.Processed).Int64("created", p.Created).Int64("updated", p.Updated).
		Int64("skipped", p.Skipped).Int64("failed", p.Failed).
		Float64("itemsPerSec", float64(int64(rate))).
		Float64(logkey.RSSMB, round1(mib(mem.RSS))).Float64(logkey.BudgetMB, round1(mib(mem.Budget))).
		Float64(logkey.UsagePercent, round1(mem.Percent)).Str(logkey.MemoryLevel, string(mem.Level)).
		Int("restarts", st.Restarts.Total()).Int("gc_requests", st.GCRequests)
	if p.TotalKnown && p.Total > 0 {
		ev.Int64("total", p.Total).Float64("percent", round1(float64(p.Processed)*100/float64(p.Total)))
		if rate > 0 && p.Processed < p.Total {
			ev.Str("eta", (time.Duration(float64(p.Total-p.Processed)/rate) * time.Second).Round(time.Second).String())
		}
	}
	ev.Msg("progress")
}

func (d *display) finish() {
	if d.bar == nil {
		return
	}
	d.refresh()
	_ = d.bar.Exit()
	d.term.mu.Lock()
	d.term.barOn = false
	_, _ = io.WriteString(d.term.w, "\n")
	d.term.mu.Unlock()
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
