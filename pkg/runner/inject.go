package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/atomicfile"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/job"
)

// injector carries out the job file's inject: block. A one-off fault
// (crash, hang, spike) writes a marker file in the state directory before
// it fires, so a resumed runner does not fire it again. The leak is in
// every runner: it is what a leaking job does.
type injector struct {
	cfg job.Inject
	dir string
	log zerolog.Logger

	mu    sync.Mutex
	leak  [][]byte // retained for the life of the process
	spike []byte   // dropped on the next GC request

	hung chan struct{} // nil until a hang fires; never closed
}

func newInjector() *injector { return &injector{} }

func (in *injector) configure(cfg job.Inject, dir string, log zerolog.Logger) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.cfg, in.dir, in.log = cfg, dir, log
}

// fired reports whether a one-off fault already fired for this job, and
// otherwise records durably that it fires now.
func (in *injector) fireOnce(name string) bool {
	path := filepath.Join(in.dir, "inject-"+name+".fired")
	if _, err := os.Stat(path); err == nil {
		return false
	}
	if err := atomicfile.WriteBytes(path, 0o644, []byte(time.Now().UTC().Format(time.RFC3339Nano)+"\n")); err != nil {
		in.log.Error().Err(err).Str("inject", name).Msg("record injected fault; not firing it")
		return false
	}
	return true
}

// leakInterval spaces the allocations of leak_bytes_per_second.
const leakInterval = 10 * time.Millisecond

// leakOverTime carries out leak_bytes_per_second: memory retained at a
// steady rate, whatever the job does, until ctx is done or stop closes.
func (in *injector) leakOverTime(ctx context.Context, stop <-chan struct{}) {
	in.mu.Lock()
	rate := int64(in.cfg.LeakBytesPerSecond)
	in.mu.Unlock()
	if rate <= 0 {
		return
	}
	t := time.NewTicker(leakInterval)
	defer t.Stop()
	last := time.Now()
	var owed float64
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case now := <-t.C:
			// Pay by elapsed time, so a late tick does not slow the leak.
			owed += float64(rate) * now.Sub(last).Seconds()
			last = now
			n := int(owed)
			if n <= 0 {
				continue
			}
			owed -= float64(n)
			in.retain(n)
		}
	}
}

// retain allocates n bytes, touches every page so they show in RSS, and
// keeps them for the life of the process.
func (in *injector) retain(n int) {
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	in.mu.Lock()
	in.leak = append(in.leak, b)
	in.mu.Unlock()
}

// slowTarget carries out slow_write: every write waits d first, as
// against a rate-limited API. It hides the wrapped target's optional
// interfaces, so writes run concurrently, up to the job's concurrency.
type slowTarget struct {
	connector.Target
	d time.Duration
}

func (s slowTarget) wait(ctx context.Context) error {
	t := time.NewTimer(s.d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (s slowTarget) Create(ctx context.Context, externalID string, f connector.Fields) (int64, error) {
	if err := s.wait(ctx); err != nil {
		return 0, err
	}
	return s.Target.Create(ctx, externalID, f)
}

func (s slowTarget) Update(ctx context.Context, id int64, f connector.Fields) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.Target.Update(ctx, id, f)
}

// beforeItem runs before each source record; index is 0-based and the
// job file counts items from 1.
func (in *injector) beforeItem(index int64) {
	in.mu.Lock()
	cfg := in.cfg
	in.mu.Unlock()
	item := index + 1
	if n := int(cfg.LeakBytesPerItem); n > 0 {
		in.retain(n)
	}
	if cfg.SpikeAtItem == item && cfg.SpikeBytes > 0 && in.fireOnce("spike") {
		n := int(cfg.SpikeBytes)
		// Hold the lock while the pages fill: a GC asked for as RSS
		// crosses critical then waits, and frees the whole spike.
		in.mu.Lock()
		b := make([]byte, n)
		for i := 0; i < n; i += 4096 {
			b[i] = 1
		}
		in.spike = b
		in.mu.Unlock()
		in.log.Warn().Str("inject", "spike").Int64("item", item).Int("bytes", n).
			Msg("injected memory spike: garbage that the next garbage collection frees")
	}
	if cfg.CrashAtItem == item && in.fireOnce("crash") {
		in.log.Error().Str("inject", "crash").Int64("item", item).Msg("injected crash")
		panic(fmt.Sprintf("injected fault: crash at item %d", item))
	}
	if cfg.HangAtItem == item && in.fireOnce("hang") {
		in.log.Error().Str("inject", "hang").Int64("item", item).Msg("injected hang: every goroutine of the job blocks")
		in.mu.Lock()
		in.hung = make(chan struct{})
		in.mu.Unlock()
		in.gate()
	}
}

// gate blocks forever once a hang has fired. Every RPC handler and the
// job's goroutines pass through it, so the runner stops answering.
func (in *injector) gate() {
	in.mu.Lock()
	h := in.hung
	in.mu.Unlock()
	if h != nil {
		<-h
	}
}

// releaseSpike drops the spike's memory. The spike stands for garbage that
// only a full collection reclaims, so it goes when GC is asked for.
func (in *injector) releaseSpike() {
	in.mu.Lock()
	in.spike = nil
	in.mu.Unlock()
}

func (in *injector) slowDrain() {
	in.mu.Lock()
	d := in.cfg.SlowDrain
	in.mu.Unlock()
	if d > 0 {
		time.Sleep(d.D())
	}
}

func (in *injector) afterCommit() {
	in.mu.Lock()
	d := in.cfg.SlowBatch
	in.mu.Unlock()
	in.gate()
	if d > 0 {
		time.Sleep(d.D())
	}
}
