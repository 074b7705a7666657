package runner_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/memvisor/memvisor/internal/memstat"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/runner"
	"github.com/memvisor/memvisor/plugin"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func spec(t *testing.T, count int64, inject job.Inject) job.Spec {
	t.Helper()
	dir := t.TempDir()
	s := job.Default()
	s.ID = "h"
	s.StateDir = filepath.Join(dir, "state")
	s.Source = job.Endpoint{Type: job.TypeSynthetic, Count: count, Seed: 1}
	s.Target = job.Endpoint{Type: job.TypeJSONL, Path: filepath.Join(dir, "target.jsonl")}
	s.Match = job.Match{SourceField: "email", TargetField: "email"}
	s.BatchSize = 100
	s.Inject = inject
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

func start(t *testing.T, s job.Spec) *runner.Host {
	t.Helper()
	h := runner.New(zerolog.Nop())
	t.Cleanup(func() { h.Close() })
	data, _ := json.Marshal(s)
	if err := h.Start(t.Context(), plugin.StartRequest{Job: data, Resume: true}); err != nil {
		t.Fatal(err)
	}
	return h
}

func wait(t *testing.T, h *runner.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := h.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestStartTwiceAndLock(t *testing.T) {
	s := spec(t, 200000, job.Inject{SlowBatch: job.Duration(5 * time.Millisecond)})
	h := start(t, s)
	data, _ := json.Marshal(s)
	if err := h.Start(t.Context(), plugin.StartRequest{Job: data, Resume: true}); !errors.Is(err, runner.ErrStarted) {
		t.Errorf("second Start: %v, want ErrStarted", err)
	}
	other := runner.New(zerolog.Nop())
	defer other.Close()
	err := other.Start(t.Context(), plugin.StartRequest{Job: data, Resume: true})
	if !errors.Is(err, runner.ErrLocked) {
		t.Fatalf("a second runner on the same job: %v, want ErrLocked", err)
	}
	// A refused Start leaves the runner usable.
	st, _ := other.Stats(t.Context())
	if st.State != plugin.StateIdle {
		t.Errorf("refused runner is %s, want idle", st.State)
	}
	if err := h.Cancel(t.Context()); err != nil {
		t.Fatal(err)
	}
	wait(t, h)
	st, _ = h.Stats(t.Context())
	if st.State != plugin.StateCancelled {
		t.Errorf("state after Cancel: %s", st.State)
	}
}

func TestDrainThenResumeInANewHost(t *testing.T) {
	s := spec(t, 20000, job.Inject{SlowBatch: job.Duration(2 * time.Millisecond)})
	h := start(t, s)
	for i := 0; i < 1000; i++ {
		if st, _ := h.Stats(t.Context()); st.Progress.Batches > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cp, err := h.Drain(t.Context(), time.Now().Add(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	st, _ := h.Stats(t.Context())
	// The checkpoint's offset is a batch boundary; a batch the drain
	// split is recorded beside it.
	if st.State != plugin.StateDrained || cp.Done || cp.Offset == 0 || cp.Offset%100 != 0 || cp.Progress.Processed < cp.Offset {
		t.Fatalf("after drain: state %s checkpoint %+v", st.State, cp)
	}
	h.Close()
	if _, err := os.Stat(filepath.Join(s.Dir(), "checkpoint.json")); err != nil {
		t.Fatal(err)
	}

	h2 := start(t, s)
	var events []plugin.Event
	if err := h2.Watch(t.Context(), func(ev plugin.Event) error { events = append(events, ev); return nil }); err != nil {
		t.Fatal(err)
	}
	last := events[len(events)-1]
	if last.Kind != plugin.EventDone || last.State != plugin.StateCompleted || last.Progress.Processed != 20000 {
		t.Fatalf("last event %+v", last)
	}
	if last.Progress.Created+last.Progress.Skipped != 20000 {
		t.Errorf("progress %+v does not add up", last.Progress)
	}
}

func TestSpikeFiresOnceAndGCFreesIt(t *testing.T) {
	s := spec(t, 3000, job.Inject{SpikeBytes: 64 << 20, SpikeAtItem: 50})
	h := start(t, s)
	wait(t, h)
	before, _ := h.Stats(t.Context())
	res, err := h.GC(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if before.HeapObjectsBytes < 64<<20 || res.After.HeapObjectsBytes > res.Before.HeapObjectsBytes-32<<20 {
		t.Errorf("heap before %d, GC %d -> %d: the spike was not held until the GC request and freed by it",
			before.HeapObjectsBytes, res.Before.HeapObjectsBytes, res.After.HeapObjectsBytes)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "inject-spike.fired")); err != nil {
		t.Errorf("the spike did not record that it fired: %v", err)
	}
}

func TestBadJobIsRefused(t *testing.T) {
	h := runner.New(zerolog.Nop())
	defer h.Close()
	err := h.Start(t.Context(), plugin.StartRequest{Job: []byte(`{"id":"x","batch_size":-1}`)})
	var v job.Errors
	if !errors.As(err, &v) {
		t.Fatalf("got %v, want job.Errors", err)
	}
	if st, _ := h.Stats(t.Context()); st.State != plugin.StateIdle {
		t.Errorf("state %s after a refused job", st.State)
	}
}

func TestUnwritableStateDirIsAClearError(t *testing.T) {
	s := spec(t, 10, job.Inject{})
	// The state dir's parent is a file, so the directory cannot be made.
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, []byte("x"), 0o644)
	s.StateDir = filepath.Join(blocker, "state")
	h := runner.New(zerolog.Nop())
	defer h.Close()
	data, _ := json.Marshal(s)
	err := h.Start(t.Context(), plugin.StartRequest{Job: data, Resume: true})
	if err == nil || !strings.Contains(err.Error(), "create state directory") || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("got %v, want an error saying the state directory cannot be created", err)
	}
}

// targetItems counts the target's lines by external id.
func targetItems(t *testing.T, s job.Spec) map[string]int {
	t.Helper()
	data, err := os.ReadFile(s.Target.Path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var v struct {
			ExternalID string `json:"external_id"`
		}
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("target line %q: %v", l, err)
		}
		out[v.ExternalID]++
	}
	return out
}

func TestDrainWithSlowTargetStopsInsideTheBatch(t *testing.T) {
	s := spec(t, 700, job.Inject{SlowWrite: job.Duration(10 * time.Millisecond)})
	s.BatchSize = 500
	s.Concurrency = 5
	h := start(t, s)
	time.Sleep(100 * time.Millisecond)
	cp, err := h.Drain(t.Context(), time.Now().Add(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// A whole batch takes a second of writes: the drain waited only for
	// the writes in flight.
	if cp.Progress.Processed >= 500 || cp.Offset != 0 || cp.Reason != plugin.DrainRequested || cp.DrainDuration <= 0 {
		t.Fatalf("drain checkpoint %+v, want fewer than 500 items done, at offset 0, requested, with a duration", cp)
	}
	if got := h.DrainReason(); got != plugin.DrainRequested {
		t.Errorf("DrainReason = %q", got)
	}
	h.Close()

	s.Inject.SlowWrite = 0
	h2 := start(t, s)
	wait(t, h2)
	st, _ := h2.Stats(t.Context())
	if st.State != plugin.StateCompleted || st.Progress.Processed != 700 || st.Progress.Created != 700 {
		t.Fatalf("resumed run: state %s progress %+v", st.State, st.Progress)
	}
	items := targetItems(t, s)
	for ext, n := range items {
		if n != 1 {
			t.Errorf("%s written %d times", ext, n)
		}
	}
	if len(items) != 700 {
		t.Errorf("target holds %d items, want 700", len(items))
	}
}

func TestGuardDrainsALeakingRunner(t *testing.T) {
	s := spec(t, 1_000_000, job.Inject{
		LeakBytesPerSecond: 200 << 20,
		SlowBatch:          job.Duration(5 * time.Millisecond),
	})
	rss := memstat.RSS()
	h := runner.New(zerolog.Nop())
	t.Cleanup(func() { h.Close() })
	data, _ := json.Marshal(s)
	g := plugin.Guard{GCBytes: rss + 24<<20, DrainBytes: rss + 48<<20}
	if err := h.Start(t.Context(), plugin.StartRequest{Job: data, Resume: true, Guard: g}); err != nil {
		t.Fatal(err)
	}
	var last plugin.Event
	if err := h.Watch(t.Context(), func(ev plugin.Event) error { last = ev; return nil }); err != nil {
		t.Fatal(err)
	}
	if last.Kind != plugin.EventDone || last.State != plugin.StateDrained || last.Reason != plugin.DrainGuard || last.DrainDuration <= 0 {
		t.Fatalf("last event %+v, want drained by the memory guard, with a duration", last)
	}
	if last.Progress.Processed >= 1_000_000 {
		t.Errorf("the job finished (%d items) before the leak crossed the drain line", last.Progress.Processed)
	}
	st, _ := h.Stats(t.Context())
	if st.GuardGCs < 1 {
		t.Errorf("GuardGCs = %d, want the GC line crossed first", st.GuardGCs)
	}
}

func TestGuardCollectsASpikeWithoutDraining(t *testing.T) {
	s := spec(t, 3000, job.Inject{SpikeBytes: 96 << 20, SpikeAtItem: 50, SlowBatch: job.Duration(2 * time.Millisecond)})
	rss := memstat.RSS()
	h := runner.New(zerolog.Nop())
	t.Cleanup(func() { h.Close() })
	data, _ := json.Marshal(s)
	if err := h.Start(t.Context(), plugin.StartRequest{Job: data, Resume: true}); err != nil {
		t.Fatal(err)
	}
	// The lines can come after Start, as when the budget changes. The
	// spike crosses both: the drain waits for the collection's answer.
	g := plugin.Guard{GCBytes: rss + 32<<20, DrainBytes: rss + 64<<20}
	if raceEnabled {
		// The spike's shadow memory stays in RSS after the collection.
		g.DrainBytes = 0
	}
	if err := h.SetGuard(t.Context(), g); err != nil {
		t.Fatal(err)
	}
	wait(t, h)
	st, _ := h.Stats(t.Context())
	if st.State != plugin.StateCompleted || st.GuardGCs < 1 || st.HeapObjectsBytes > 64<<20 {
		t.Fatalf("state %s, guard GCs %d, heap %d: want completed, the spike collected by the guard",
			st.State, st.GuardGCs, st.HeapObjectsBytes)
	}
}

func TestGuardForDerivesLinesFromThePolicy(t *testing.T) {
	m := job.DefaultMemory()
	got := runner.GuardFor(100<<20, m)
	if want := (plugin.Guard{GCBytes: 85 << 20, DrainBytes: 90 << 20}); got != want {
		t.Errorf("defaults: got %+v, want %+v", got, want)
	}
	m.GuardGCPercent, m.GuardDrainPercent = 70, 80
	if got, want := runner.GuardFor(100<<20, m), (plugin.Guard{GCBytes: 70 << 20, DrainBytes: 80 << 20}); got != want {
		t.Errorf("set percents: got %+v, want %+v", got, want)
	}
	if got := runner.GuardFor(0, m); got != (plugin.Guard{}) {
		t.Errorf("no budget: got %+v, want the guard off", got)
	}
}
