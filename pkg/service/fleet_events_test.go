package service_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/supervise"
	"github.com/memvisor/memvisor/plugin"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func ev(kind supervise.EventKind, ms int, processed int64) supervise.Event {
	return supervise.Event{Kind: kind, Time: t0.Add(time.Duration(ms) * time.Millisecond),
		Progress: plugin.Progress{Processed: processed}, Memory: supervise.Memory{RSS: uint64(ms + 1)}}
}

// name writes an event as kind@ms, progress with its count.
func name(e supervise.Event) string {
	ms := e.Time.Sub(t0).Milliseconds()
	if e.Kind == supervise.EventProgress {
		return fmt.Sprintf("progress:%d@%d", e.Progress.Processed, ms)
	}
	return fmt.Sprintf("%s@%d", e.Kind, ms)
}

// The relay sends a job's progress and memory events at most every
// RelayEvery each, the rare ones (level, gc, restart) always, and a held
// progress event as soon as it may, or before a rare event: the other
// nodes' clients see the owner's order and end on its latest count.
func TestRelayThrottle(t *testing.T) {
	P, M := supervise.EventProgress, supervise.EventMemory
	for _, tc := range []struct {
		name string
		in   []supervise.Event
		want string
	}{
		{"the first of each kind goes at once",
			[]supervise.Event{ev(P, 0, 1), ev(M, 0, 0)}, "progress:1@0 memory@0"},
		{"progress is held, and the latest goes with the next memory event once due",
			[]supervise.Event{ev(P, 0, 1), ev(P, 100, 2), ev(P, 200, 3), ev(M, 250, 0), ev(M, 500, 0)},
			"progress:1@0 memory@250 progress:3@200"},
		{"progress itself, once due",
			[]supervise.Event{ev(P, 0, 1), ev(P, 300, 2), ev(P, 600, 3)}, "progress:1@0 progress:3@600"},
		{"memory at 4 Hz goes at 2 Hz",
			[]supervise.Event{ev(M, 0, 0), ev(M, 250, 0), ev(M, 500, 0), ev(M, 750, 0), ev(M, 1000, 0)},
			"memory@0 memory@500 memory@1000"},
		{"rare events always go, after the held progress",
			[]supervise.Event{ev(P, 0, 1), ev(P, 10, 2), ev(supervise.EventLevel, 20, 0), ev(supervise.EventGC, 30, 0),
				ev(supervise.EventRestart, 40, 0), ev(supervise.EventLevel, 50, 0)},
			"progress:1@0 progress:2@10 level@20 gc@30 restart@40 level@50"},
		{"the supervisor's done and unknown kinds are not relayed",
			[]supervise.Event{ev(supervise.EventDone, 0, 5), ev("status", 10, 0), ev("bogus", 20, 0)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var th service.RelayThrottle
			var got []string
			for _, e := range tc.in {
				for _, o := range th.Admit(e) {
					got = append(got, name(o))
				}
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Errorf("got  %s\nwant %s", g, tc.want)
			}
		})
	}
}

// Over a long random run, the rate bound holds, no rare event is lost, and
// the other nodes end on the owner's last count.
func TestRelayThrottleBoundsAnyRun(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	kinds := []supervise.EventKind{supervise.EventProgress, supervise.EventProgress, supervise.EventProgress,
		supervise.EventMemory, supervise.EventLevel, supervise.EventGC, supervise.EventRestart}
	for run := range 50 {
		var th service.RelayThrottle
		var in, out []supervise.Event
		var sent []time.Time // when each of out goes: at the event that let it
		admit := func(e supervise.Event) {
			for _, o := range th.Admit(e) {
				out, sent = append(out, o), append(sent, e.Time)
			}
		}
		ms, processed := 0, int64(0)
		for range 2000 {
			ms += rng.IntN(40)
			k := kinds[rng.IntN(len(kinds))]
			if rng.IntN(10) > 0 && k != supervise.EventProgress {
				k = supervise.EventProgress // mostly progress, as a fast job sends
			}
			processed++
			e := ev(k, ms, processed)
			in = append(in, e)
			admit(e)
		}
		// A memory sample after the end of progress flushes what was held.
		ms += 1000
		admit(ev(supervise.EventMemory, ms, 0))

		var rareIn, rareOut []string
		for _, e := range in {
			if e.Kind != supervise.EventProgress && e.Kind != supervise.EventMemory {
				rareIn = append(rareIn, name(e))
			}
		}
		var last = map[supervise.EventKind]time.Time{}
		progress, memory := 0, 0
		for i, e := range out {
			switch e.Kind {
			case supervise.EventProgress, supervise.EventMemory:
				beforeRare := i+1 < len(out) && out[i+1].Kind != supervise.EventProgress && out[i+1].Kind != supervise.EventMemory
				if l, ok := last[e.Kind]; ok && sent[i].Sub(l) < service.RelayEvery && !beforeRare {
					t.Fatalf("run %d: %s sent only %s after the last %s", run, name(e), sent[i].Sub(l), e.Kind)
				}
				last[e.Kind] = sent[i]
				if e.Kind == supervise.EventProgress {
					progress++
				} else {
					memory++
				}
			default:
				rareOut = append(rareOut, name(e))
			}
		}
		if strings.Join(rareOut, " ") != strings.Join(rareIn, " ") {
			t.Fatalf("run %d: rare events relayed %v, want all of %v", run, rareOut, rareIn)
		}
		secs := float64(ms)/1000 + 1
		if limit := 2*secs + float64(len(rareIn)); float64(progress) > limit || float64(memory) > 2*secs+1 {
			t.Errorf("run %d: %d progress and %d memory notices in %.1fs (%d rare events): over the bound", run, progress, memory, secs, len(rareIn))
		}
		var lastProgress int64
		for _, e := range out {
			if e.Kind == supervise.EventProgress {
				lastProgress = e.Progress.Processed
			}
		}
		var wantLast int64
		for _, e := range in {
			if e.Kind == supervise.EventProgress {
				wantLast = e.Progress.Processed
			}
		}
		if lastProgress != wantLast {
			t.Errorf("run %d: the last relayed progress counts %d, want the owner's last, %d", run, lastProgress, wantLast)
		}
	}
}

// A relayed event makes the same SSE frame on another node as on the
// owner; one too large for a notice loses its error map, or is dropped.
func TestRelayedFrameIsTheOwners(t *testing.T) {
	rl := t0.Add(time.Minute)
	mem := supervise.Memory{RSS: 100 << 20, Heap: 60 << 20, Budget: 256 << 20, Level: supervise.LevelWarning, Percent: 39.1,
		WarningBytes: 192 << 20, CriticalBytes: 217 << 20, KillBytes: 243 << 20}
	for _, e := range []supervise.Event{
		{Kind: supervise.EventProgress, Time: t0, Progress: plugin.Progress{Total: 1000, TotalKnown: true, Processed: 420,
			Created: 400, Updated: 10, Skipped: 5, Failed: 5, Batches: 9, ItemsPerSec: 812.5, RateLimitedUntil: rl,
			ErrorsByCategory: map[string]int64{"validation": 3, "conflict": 2}}},
		{Kind: supervise.EventMemory, Time: t0, Memory: mem},
		{Kind: supervise.EventLevel, Time: t0, Memory: mem, From: supervise.LevelOK, Level: supervise.LevelWarning, Reason: "usage 76% <of> budget"},
		{Kind: supervise.EventGC, Time: t0, Memory: mem, Reason: "critical"},
		{Kind: supervise.EventRestart, Time: t0, Memory: mem, RestartKind: supervise.RestartKind("graceful"), Reason: "drain"},
	} {
		owner, _ := service.RelayFrame("job-1", e, false)
		other, ok := service.RelayFrame("job-1", e, true)
		if !ok || !bytes.Equal(owner, other) {
			t.Errorf("%s: relayed frame\n%s\nwant the owner's\n%s", e.Kind, other, owner)
		}
	}

	big := map[string]int64{}
	for i := range 2000 {
		big[fmt.Sprintf("category-%04d", i)] = int64(i)
	}
	e := supervise.Event{Kind: supervise.EventProgress, Time: t0, Progress: plugin.Progress{Processed: 7, ErrorsByCategory: big}}
	frame, ok := service.RelayFrame("job-1", e, true)
	if !ok || bytes.Contains(frame, []byte("errors_by_category")) || !bytes.Contains(frame, []byte(`"processed":7`)) {
		t.Errorf("an event with a large error map: ok %v, frame %.300s; want it relayed without the map", ok, frame)
	}
	huge := supervise.Event{Kind: supervise.EventGC, Time: t0, Reason: strings.Repeat("x", service.RelayData)}
	if _, ok := service.RelayFrame("job-1", huge, true); ok {
		t.Error("an event too large for a notice was relayed")
	}
}
