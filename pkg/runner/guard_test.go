package runner_test

import (
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/runner"
)

// TestGuardDecisions drives the guard with made-up measurements every
// 10 ms, under the default lines of a 128 MiB budget (GC at 85%, drain at
// 90%, the supervisor's kill line at 95%), and checks what a user would
// see: whether the runner drains, and whether a leak's peak stays under
// the kill line once the drain has run for the time the guard allows it.
func TestGuardDecisions(t *testing.T) {
	const budget = 128 << 20
	mem := job.DefaultMemory()
	lines := runner.GuardFor(budget, mem)
	kill := uint64(budget * mem.KillPercent / 100)
	const tick = 10 * time.Millisecond
	const mib = 1 << 20

	// leak returns usage climbing perSecond from 20 MiB.
	leak := func(perSecond float64) func(time.Duration) uint64 {
		return func(at time.Duration) uint64 { return 20*mib + uint64(perSecond*at.Seconds()) }
	}
	// spike returns usage flat at base (plus slow bytes a second), with
	// size filled in over fill from start, until the collection frees it.
	spike := func(base, size uint64, slow float64, start, fill time.Duration) func(time.Duration) uint64 {
		return func(at time.Duration) uint64 {
			u := base + uint64(slow*at.Seconds())
			switch {
			case at < start:
			case at < start+fill:
				u += uint64(float64(size) * float64(at-start) / float64(fill))
			default:
				u += size
			}
			return u
		}
	}

	for _, tc := range []struct {
		name  string
		usage func(time.Duration) uint64
		// gcTakes is how long a collection runs; freed is whether it frees
		// the spike.
		gcTakes    time.Duration
		frees      bool
		wantDrain  bool
		wantClimb  bool // the drain was early, on a sustained climb
		peakPerSec float64
	}{
		{name: "80 MiB/s leak collects and drains ahead of the lines",
			usage: leak(80 * mib), gcTakes: 80 * time.Millisecond, wantDrain: true, wantClimb: true, peakPerSec: 80 * mib},
		{name: "80 MiB/s leak with a slow collection drains once it has finished",
			usage: leak(80 * mib), gcTakes: 150 * time.Millisecond, wantDrain: true, wantClimb: true, peakPerSec: 80 * mib},
		{name: "80 MiB/s leak whose collection returns 5 MiB of garbage drains ahead of the lines",
			usage: func(at time.Duration) uint64 {
				u := leak(80 * mib)(at)
				if u > 90*mib {
					u -= 5 * mib
				}
				return u
			},
			gcTakes: 30 * time.Millisecond, wantDrain: true, wantClimb: true, peakPerSec: 80 * mib},
		{name: "20 MiB/s leak drains ahead of the drain line",
			usage: leak(20 * mib), gcTakes: 50 * time.Millisecond, wantDrain: true, wantClimb: true, peakPerSec: 20 * mib},
		{name: "a leak that pauses now and then drains at the latest at the drain line",
			usage: func(at time.Duration) uint64 {
				// Flat for 300 ms in every 500: never a sustained climb.
				n := at / (500 * time.Millisecond)
				r := min(at%(500*time.Millisecond), 200*time.Millisecond)
				return 20*mib + uint64(100*mib*(float64(n)*0.2+r.Seconds()))
			},
			gcTakes: 20 * time.Millisecond, wantDrain: true},
		{name: "spike filled in 50 ms is freed by one collection: no drain",
			usage: spike(25*mib, 95*mib, 0, time.Second, 50*time.Millisecond), gcTakes: 150 * time.Millisecond, frees: true},
		{name: "spike filled in 300 ms is freed by one collection: no drain",
			usage: spike(25*mib, 95*mib, 0, time.Second, 300*time.Millisecond), gcTakes: 150 * time.Millisecond, frees: true},
		{name: "spike filled in 2 s (as under the race detector) is freed by one collection: no drain",
			usage: spike(25*mib, 160*mib, 0, time.Second, 2*time.Second), gcTakes: 50 * time.Millisecond, frees: true},
		{name: "spike on top of a slow climb is freed by one collection: no drain",
			usage: spike(25*mib, 92*mib, 1*mib, time.Second, 80*time.Millisecond), gcTakes: 150 * time.Millisecond, frees: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := runner.NewGuardSim(lines)
			var gcStart time.Duration
			var freed bool
			collections := 0
			var drainedAt time.Duration
			for at := time.Duration(0); at < 5*time.Second && g.Drains == 0; at += tick {
				if g.Collecting() && at-gcStart >= tc.gcTakes {
					g.FinishGC()
					freed = tc.frees
				}
				u := tc.usage(at)
				if freed {
					u = 25 * mib // the spike is gone
				}
				g.Measure(at, u)
				if g.Collections > collections {
					collections, gcStart = g.Collections, at
				}
				drainedAt = at
			}
			if got := g.Drains > 0; got != tc.wantDrain {
				t.Fatalf("drained = %v (at %v, usage %d MiB, collections %d), want %v",
					got, drainedAt, g.DrainUsage/mib, g.Collections, tc.wantDrain)
			}
			if !tc.wantDrain {
				if g.Collections != 1 {
					t.Errorf("collections = %d, want 1", g.Collections)
				}
				return
			}
			if got := g.DrainClimb > 0; got != tc.wantClimb {
				t.Errorf("drain on a sustained climb = %v (climb %.1f MiB/s, usage %d MiB), want %v",
					got, g.DrainClimb/mib, g.DrainUsage/mib, tc.wantClimb)
			}
			if tc.wantClimb {
				if g.DrainUsage >= lines.DrainBytes {
					t.Errorf("drained at %d MiB, want ahead of the drain line (%d MiB)", g.DrainUsage/mib, lines.DrainBytes/mib)
				}
				// What the leak adds while a drain runs for the time the
				// guard allows it must stay under the kill line.
				if peak := g.DrainUsage + uint64(tc.peakPerSec*runner.DrainLead.Seconds()); peak >= kill {
					t.Errorf("drained at %d MiB: the leak reaches %d MiB during the drain, at or above the kill line (%d MiB)",
						g.DrainUsage/mib, peak/mib, kill/mib)
				}
			} else if g.DrainUsage < lines.DrainBytes {
				t.Errorf("drained at %d MiB without a sustained climb, below the drain line (%d MiB)", g.DrainUsage/mib, lines.DrainBytes/mib)
			}
		})
	}
}
