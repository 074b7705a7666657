package supervise_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/plugin"
)

// fakeRunner is a runner for the tests: it runs a job of spec.Source.Count
// items in batches of spec.BatchSize, appends each item's index to
// <job dir>/fake-output, commits a checkpoint after every batch, and
// carries out the job's inject: block as the real runner does. Its
// memory is real: a leak or a spike maps and touches anonymous memory
// (MAP_POPULATE, so neither the Go heap nor the race detector's shadow
// distorts the figures), and GC unmaps the spike.
type fakeRunner struct {
	log zerolog.Logger

	mu       sync.Mutex
	state    plugin.State
	errMsg   string
	spec     job.Spec
	dir      string
	cp       fakeCheckpoint
	out      *os.File
	stop     bool
	jobDone  chan struct{}
	watchers map[chan plugin.Event]struct{}
	hung     bool

	// guard is the memory guard the supervisor gave; crossing its drain
	// line drains the fake as the real runner's guard does: it finishes
	// the batch, commits, and ends its Watch stream with StateDrained
	// and plugin.DrainGuard.
	guard      plugin.Guard
	guardSince time.Time // when the guard began a drain

	leakPending int64
	leaked      [][]byte
	leakBytes   uint64
	garbage     [][]byte
	garbageSize uint64

	report fakeReport
}

// fakeReport is what the benchmarks learn from inside a fake runner, in
// the file $MEMVISOR_FAKE_REPORT_DIR/<pid>.json: when its RSS first
// reached $MEMVISOR_FAKE_CRITICAL_BYTES, when the first GC request came,
// and its peak RSS, read after every allocation.
type fakeReport struct {
	PID     int   `json:"pid"`
	Crossed int64 `json:"crossed_unix_nano"`
	GC      int64 `json:"gc_unix_nano"`
	PeakRSS int64 `json:"peak_rss"`
	// First and FirstRSS are the time and RSS of the first reading, so
	// that the leak's rate can be told.
	First    int64 `json:"first_unix_nano"`
	FirstRSS int64 `json:"first_rss"`
	critical int64
	dir      string
}

func (f *fakeRunner) noteMemoryLocked(gc bool) {
	r := &f.report
	if r.dir == "" {
		return
	}
	now := time.Now().UnixNano()
	rss := int64(selfRSS())
	if r.First == 0 {
		r.First, r.FirstRSS = now, rss
	}
	r.PeakRSS = max(r.PeakRSS, rss)
	if r.Crossed == 0 && r.critical > 0 && rss >= r.critical {
		r.Crossed = now
	}
	if gc && r.GC == 0 {
		r.GC = now
	}
	data, _ := json.Marshal(r)
	_ = os.WriteFile(filepath.Join(r.dir, strconv.Itoa(r.PID)+".json"), data, 0o644)
}

type fakeCheckpoint struct {
	Offset  int64 `json:"offset"`
	Batches int64 `json:"batches"`
	OutSize int64 `json:"out_size"`
}

func newFakeRunner(log zerolog.Logger) *fakeRunner {
	f := &fakeRunner{log: log, state: plugin.StateIdle, watchers: map[chan plugin.Event]struct{}{}}
	f.report.PID = os.Getpid()
	f.report.dir = os.Getenv("MEMVISOR_FAKE_REPORT_DIR")
	f.report.critical, _ = strconv.ParseInt(os.Getenv("MEMVISOR_FAKE_CRITICAL_BYTES"), 10, 64)
	return f
}

// block stands for a hung runner: every call blocks for good.
func (f *fakeRunner) block() {
	f.mu.Lock()
	hung := f.hung
	f.mu.Unlock()
	if hung {
		select {}
	}
}

func (f *fakeRunner) Start(_ context.Context, req plugin.StartRequest) error {
	var spec job.Spec
	if err := json.Unmarshal(req.Job, &spec); err != nil {
		return fmt.Errorf("decode job: %w: %w", plugin.ErrInvalidJob, err)
	}
	if spec.Inject.CrashOnStart {
		f.log.Error().Msg("crashing on start, as the job asks")
		os.Exit(3)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state != plugin.StateIdle {
		return plugin.ErrAlreadyStarted
	}
	f.spec, f.dir, f.guard = spec, spec.Dir(), req.Guard
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(f.dir, "fake-checkpoint"))
	switch {
	case err == nil:
		if !req.Resume {
			return plugin.ErrCheckpointExists
		}
		if err := json.Unmarshal(data, &f.cp); err != nil {
			return fmt.Errorf("read checkpoint: %w", err)
		}
	case !os.IsNotExist(err):
		return err
	}
	out, err := os.OpenFile(filepath.Join(f.dir, "fake-output"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	// Whatever a killed runner wrote after its last checkpoint is redone.
	if err := out.Truncate(f.cp.OutSize); err != nil {
		return err
	}
	if _, err := out.Seek(f.cp.OutSize, 0); err != nil {
		return err
	}
	f.out = out
	f.state = plugin.StateRunning
	f.jobDone = make(chan struct{})
	f.log.Info().Int64("offset", f.cp.Offset).Bool("resume", req.Resume).Msg("fake job started")
	go f.run()
	return nil
}

// fire records a one-off fault before it fires, so that a resumed runner
// does not fire it again.
func (f *fakeRunner) fire(name string) bool {
	p := filepath.Join(f.dir, "fired-"+name)
	if _, err := os.Stat(p); err == nil {
		return false
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		panic(err)
	}
	return true
}

func mapPopulated(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_ANON|syscall.MAP_PRIVATE|syscall.MAP_POPULATE)
	if err != nil {
		panic(err)
	}
	return b
}

func (f *fakeRunner) run() {
	defer close(f.jobDone)
	spec := f.spec
	inj := spec.Inject
	n := spec.Source.Count
	if spec.MaxItems > 0 {
		n = min(n, spec.MaxItems)
	}
	w := bufio.NewWriter(f.out)
	for {
		f.mu.Lock()
		offset, stop := f.cp.Offset, f.stop
		f.mu.Unlock()
		if stop || offset >= n {
			break
		}
		end := min(offset+int64(spec.BatchSize), n)
		for i := offset; i < end; i++ {
			item := i + 1
			if inj.CrashAtItem == item && f.fire("crash") {
				w.Flush() // a torn batch: written, not committed
				f.log.Error().Int64("item", item).Msg("crashing, as the job asks")
				os.Exit(2)
			}
			if inj.HangAtItem == item && f.fire("hang") {
				f.log.Error().Int64("item", item).Msg("hanging, as the job asks")
				f.mu.Lock()
				f.hung = true
				f.mu.Unlock()
				select {}
			}
			if inj.SpikeAtItem == item && f.fire("spike") {
				// Hold the lock while the pages fill, so that a GC asked
				// for as RSS crosses critical frees the whole spike.
				f.mu.Lock()
				b := mapPopulated(int(inj.SpikeBytes))
				f.garbage = append(f.garbage, b)
				f.garbageSize += uint64(len(b))
				f.mu.Unlock()
			}
			if inj.LeakBytesPerItem > 0 {
				f.leakPending += int64(inj.LeakBytesPerItem)
				if f.leakPending >= 256<<10 {
					b := mapPopulated(int(f.leakPending))
					f.mu.Lock()
					f.leaked = append(f.leaked, b)
					f.leakBytes += uint64(len(b))
					f.noteMemoryLocked(false)
					if d := f.guard.DrainBytes; d > 0 && f.guardSince.IsZero() && f.state == plugin.StateRunning && selfRSS() >= d {
						f.log.Warn().Uint64("drain_bytes", d).Msg("memory guard: draining")
						f.guardSince = time.Now()
						f.stop, f.state = true, plugin.StateDraining
					}
					f.mu.Unlock()
					f.leakPending = 0
				}
			}
			fmt.Fprintf(w, "%d\n", i)
		}
		if err := w.Flush(); err != nil {
			f.fail(err)
			return
		}
		if d := inj.SlowBatch.D(); d > 0 {
			time.Sleep(d)
		}
		size, _ := f.out.Seek(0, 1)
		cp := fakeCheckpoint{Offset: end, Batches: f.cp.Batches + 1, OutSize: size}
		data, _ := json.Marshal(cp)
		tmp := filepath.Join(f.dir, "fake-checkpoint.tmp")
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			f.fail(err)
			return
		}
		if err := os.Rename(tmp, filepath.Join(f.dir, "fake-checkpoint")); err != nil {
			f.fail(err)
			return
		}
		f.mu.Lock()
		f.cp = cp
		f.broadcastLocked(plugin.EventCheckpoint)
		f.mu.Unlock()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.cp.Offset >= n:
		f.state = plugin.StateCompleted
		f.broadcastLocked(plugin.EventDone)
	case f.state == plugin.StateDraining:
		f.state = plugin.StateDrained
		if !f.guardSince.IsZero() {
			ev := f.eventLocked(plugin.EventDone)
			ev.Reason, ev.DrainDuration = plugin.DrainGuard, time.Since(f.guardSince)
			f.sendLocked(ev)
		}
	}
}

func (f *fakeRunner) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state, f.errMsg = plugin.StateFailed, err.Error()
	f.broadcastLocked(plugin.EventDone)
}

func (f *fakeRunner) progressLocked() plugin.Progress {
	n := f.spec.Source.Count
	return plugin.Progress{
		Total: n, TotalKnown: true, Processed: f.cp.Offset, Created: f.cp.Offset,
		Batches: f.cp.Batches, Offset: f.cp.Offset,
	}
}

func (f *fakeRunner) broadcastLocked(kind plugin.EventKind) {
	f.sendLocked(f.eventLocked(kind))
}

func (f *fakeRunner) eventLocked(kind plugin.EventKind) plugin.Event {
	return plugin.Event{Kind: kind, Time: time.Now(), State: f.state, Progress: f.progressLocked(), Error: f.errMsg}
}

func (f *fakeRunner) sendLocked(ev plugin.Event) {
	for ch := range f.watchers {
		select {
		case ch <- ev:
		default: // a slow watcher misses progress, never the end
			if ev.Kind == plugin.EventDone {
				go func() { ch <- ev }()
			}
		}
	}
}

func selfRSS() uint64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(data)
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(string(f[1]), 10, 64)
	return pages * uint64(os.Getpagesize())
}

func (f *fakeRunner) figures() plugin.MemFigures {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	f.mu.Lock()
	defer f.mu.Unlock()
	sim := f.leakBytes + f.garbageSize
	return plugin.MemFigures{RSSBytes: selfRSS(), HeapObjectsBytes: ms.HeapAlloc + sim, TotalMappedBytes: ms.Sys + sim}
}

func (f *fakeRunner) Stats(context.Context) (plugin.Stats, error) {
	f.block()
	m := f.figures()
	f.mu.Lock()
	defer f.mu.Unlock()
	return plugin.Stats{
		State: f.state, Error: f.errMsg, PID: os.Getpid(),
		RSSBytes: m.RSSBytes, HeapObjectsBytes: m.HeapObjectsBytes, TotalMappedBytes: m.TotalMappedBytes,
		Progress: f.progressLocked(),
	}, nil
}

func (f *fakeRunner) GC(context.Context) (plugin.GCResult, error) {
	f.block()
	f.mu.Lock()
	f.noteMemoryLocked(true)
	f.mu.Unlock()
	start := time.Now()
	before := f.figures()
	f.mu.Lock()
	for _, b := range f.garbage {
		_ = syscall.Munmap(b)
	}
	f.garbage, f.garbageSize = nil, 0
	f.mu.Unlock()
	runtime.GC()
	debug.FreeOSMemory()
	after := f.figures()
	f.log.Info().Uint64("rss_before", before.RSSBytes).Uint64("rss_after", after.RSSBytes).Msg("collected")
	return plugin.GCResult{Before: before, After: after, Duration: time.Since(start)}, nil
}

func (f *fakeRunner) stopJob(to plugin.State) (plugin.Checkpoint, error) {
	f.mu.Lock()
	switch f.state {
	case plugin.StateIdle:
		f.mu.Unlock()
		return plugin.Checkpoint{}, plugin.ErrNotStarted
	case plugin.StateCompleted:
		cp := plugin.Checkpoint{Batches: f.cp.Batches, Offset: f.cp.Offset, Done: true, Progress: f.progressLocked()}
		f.mu.Unlock()
		return cp, nil
	case plugin.StateRunning:
		f.stop = true
		f.state = plugin.StateDraining
	}
	done := f.jobDone
	f.mu.Unlock()
	<-done
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == plugin.StateCompleted {
		return plugin.Checkpoint{Batches: f.cp.Batches, Offset: f.cp.Offset, Done: true, Progress: f.progressLocked()}, nil
	}
	f.state = to
	if to == plugin.StateCancelled {
		f.broadcastLocked(plugin.EventDone)
	}
	return plugin.Checkpoint{Batches: f.cp.Batches, Offset: f.cp.Offset, Progress: f.progressLocked()}, nil
}

func (f *fakeRunner) Drain(context.Context, time.Time) (plugin.Checkpoint, error) {
	f.block()
	cp, err := f.stopJob(plugin.StateDrained)
	if d := f.spec.Inject.SlowDrain.D(); d > 0 {
		time.Sleep(d)
	}
	return cp, err
}

func (f *fakeRunner) Cancel(context.Context) error {
	f.block()
	_, err := f.stopJob(plugin.StateCancelled)
	return err
}

func (f *fakeRunner) Watch(ctx context.Context, fn func(plugin.Event) error) error {
	ch := make(chan plugin.Event, 64)
	f.mu.Lock()
	first := plugin.Event{Kind: plugin.EventProgress, Time: time.Now(), State: f.state, Progress: f.progressLocked()}
	f.watchers[ch] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.watchers, ch)
		f.mu.Unlock()
	}()
	if err := fn(first); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-ch:
			if err := fn(ev); err != nil {
				return err
			}
			if ev.Kind == plugin.EventDone {
				return nil
			}
		}
	}
}

func (f *fakeRunner) HeapProfile(context.Context) ([]byte, error) {
	f.block()
	var b bytes.Buffer
	if err := pprof.Lookup("heap").WriteTo(&b, 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func (f *fakeRunner) SetGuard(_ context.Context, g plugin.Guard) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.guard = g
	return nil
}
