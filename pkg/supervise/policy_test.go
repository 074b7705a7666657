package supervise_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/supervise"
)

// step is one sample at a time after t0, and the actions it must give,
// written "level:ok>warning", "gc", "restart" or "kill".
type step struct {
	at        time.Duration
	rss, heap uint64
	want      []string
}

func describe(acts []supervise.Action) []string {
	var out []string
	for _, a := range acts {
		switch a.Kind {
		case supervise.ActionLevel:
			out = append(out, fmt.Sprintf("level:%s>%s", a.From, a.To))
		default:
			out = append(out, string(a.Kind))
		}
	}
	return out
}

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func TestPolicy(t *testing.T) {
	cfg := supervise.PolicyConfig{
		BudgetBytes: 1000, WarningPercent: 75, CriticalPercent: 85, KillPercent: 95,
		CriticalSamples: 3, GCCooldown: time.Second,
	}
	ms := time.Millisecond
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"quiet", []step{
			{0, 100, 50, nil}, {250 * ms, 740, 0, nil}, {500 * ms, 0, 0, nil},
		}},
		{"warning and back", []step{
			{0, 700, 0, nil},
			{250 * ms, 750, 0, []string{"level:ok>warning"}},
			{500 * ms, 800, 0, nil},
			{750 * ms, 749, 0, []string{"level:warning>ok"}},
		}},
		{"spike cured by one GC", []step{
			{0, 700, 0, nil},
			{250 * ms, 900, 0, []string{"level:ok>critical", "gc"}},
			{500 * ms, 900, 0, nil}, // cooling down
			{750 * ms, 400, 0, []string{"level:critical>ok"}},
			{1000 * ms, 400, 0, nil},
			{5000 * ms, 400, 0, nil},
		}},
		{"leak: GC does not help, restart after cooldown and K samples", []step{
			// 20 bytes a second: too slow for the projection to reach
			// the kill line within the drain time.
			{0, 860, 0, []string{"level:ok>critical", "gc"}},
			{250 * ms, 865, 0, nil},
			{500 * ms, 870, 0, nil},
			{750 * ms, 875, 0, nil},
			{1000 * ms, 880, 0, nil}, // first sample after the cooldown: 1
			{1250 * ms, 885, 0, nil}, // 2
			{1500 * ms, 890, 0, []string{"restart"}},
			{1750 * ms, 930, 0, nil}, // draining: no second restart
			{2000 * ms, 940, 0, nil},
			{2250 * ms, 950, 0, []string{"level:critical>kill", "kill"}}, // a draining runner that keeps growing
			{2500 * ms, 990, 0, nil},                                     // killed: nothing more until Reset
		}},
		{"critical samples must be consecutive", []step{
			{0, 900, 0, []string{"level:ok>critical", "gc"}},
			{1000 * ms, 900, 0, nil}, // 1
			{1250 * ms, 900, 0, nil}, // 2
			{1500 * ms, 800, 0, []string{"level:critical>warning"}},
			{1750 * ms, 900, 0, []string{"level:warning>critical", "gc"}}, // the last GC was 1.75s ago: a new episode
			{2000 * ms, 900, 0, nil},
			{2750 * ms, 900, 0, nil}, // 1
			{3000 * ms, 900, 0, nil}, // 2
			{3250 * ms, 900, 0, []string{"restart"}},
		}},
		{"re-entering critical within the cooldown asks no second GC", []step{
			{0, 900, 0, []string{"level:ok>critical", "gc"}},
			{250 * ms, 500, 0, []string{"level:critical>ok"}},
			{500 * ms, 900, 0, []string{"level:ok>critical"}},
			{750 * ms, 900, 0, nil},
			{1000 * ms, 900, 0, nil}, // 1
			{1250 * ms, 900, 0, nil}, // 2
			{1500 * ms, 900, 0, []string{"restart"}},
		}},
		{"re-entering critical after the cooldown asks GC again", []step{
			{0, 900, 0, []string{"level:ok>critical", "gc"}},
			{250 * ms, 500, 0, []string{"level:critical>ok"}},
			{3000 * ms, 900, 0, []string{"level:ok>critical", "gc"}},
		}},
		{"straight to the ceiling", []step{
			{0, 100, 0, nil},
			{250 * ms, 950, 0, []string{"level:ok>kill", "kill"}},
			{500 * ms, 100, 0, nil},
		}},
		{"the heap counts when it is larger than RSS", []step{
			{0, 100, 760, []string{"level:ok>warning"}},
			{250 * ms, 100, 860, []string{"level:warning>critical", "gc"}},
		}},
		{"no GC cooldown", []step{
			{0, 900, 0, []string{"level:ok>critical", "gc"}},
			{1, 900, 0, nil},
			{2, 900, 0, nil},
			{3, 900, 0, []string{"restart"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			if tc.name == "no GC cooldown" {
				c.GCCooldown = 0
			}
			p := supervise.NewPolicy(c)
			for i, s := range tc.steps {
				got := describe(p.Observe(supervise.Sample{Time: t0.Add(s.at), RSSBytes: s.rss, HeapBytes: s.heap}))
				if !reflect.DeepEqual(got, s.want) {
					t.Fatalf("step %d (t=%v rss=%d heap=%d): got %q, want %q", i, s.at, s.rss, s.heap, got, s.want)
				}
			}
		})
	}
}

func TestPolicyReasonsAndFigures(t *testing.T) {
	p := supervise.NewPolicy(supervise.NewPolicyConfig(job.DefaultMemory(), 1<<30))
	acts := p.Observe(supervise.Sample{Time: t0, RSSBytes: 900 << 20})
	if len(acts) != 2 {
		t.Fatalf("got %d actions, want level and gc", len(acts))
	}
	gc := acts[1]
	if gc.Kind != supervise.ActionGC || gc.UsageBytes != 900<<20 || gc.Percent < 87.8 || gc.Percent > 87.9 {
		t.Errorf("gc action: got %+v", gc)
	}
	if want := "usage 87.9% of the budget is at or above critical_percent 85"; gc.Reason != want {
		t.Errorf("gc reason: got %q, want %q", gc.Reason, want)
	}
	if want := "usage 87.9% of the budget reached critical_percent 85"; acts[0].Reason != want {
		t.Errorf("level reason: got %q, want %q", acts[0].Reason, want)
	}
	// Defaults: cooldown 1s, 4 samples.
	var restart supervise.Action
	for i := 1; i <= 8; i++ {
		for _, a := range p.Observe(supervise.Sample{Time: t0.Add(time.Duration(i) * 250 * time.Millisecond), RSSBytes: 900 << 20}) {
			if a.Kind == supervise.ActionRestart {
				restart = a
				if i != 7 {
					t.Errorf("restart at sample %d, want 7 (cooldown 1s, then 4 samples)", i)
				}
			}
		}
	}
	if !strings.Contains(restart.Reason, "for 4 samples after a GC request") {
		t.Errorf("restart reason: got %q", restart.Reason)
	}
}

func TestPolicyUnresponsiveAndReset(t *testing.T) {
	p := supervise.NewPolicy(supervise.NewPolicyConfig(job.DefaultMemory(), 1000))
	acts := p.Unresponsive("Stats", 5*time.Second)
	if got := describe(acts); !reflect.DeepEqual(got, []string{"kill"}) {
		t.Fatalf("Unresponsive: got %q, want a kill", got)
	}
	if want := "runner did not answer Stats within 5s"; acts[0].Reason != want {
		t.Errorf("reason: got %q, want %q", acts[0].Reason, want)
	}
	if got := p.Unresponsive("GC", time.Second); got != nil {
		t.Errorf("second Unresponsive: got %v, want nothing", got)
	}
	if got := p.Observe(supervise.Sample{Time: t0, RSSBytes: 990}); got != nil {
		t.Errorf("after a kill: got %v, want nothing until Reset", describe(got))
	}
	p.Reset()
	if p.Level() != supervise.LevelOK {
		t.Errorf("level after Reset: %s", p.Level())
	}
	if got := describe(p.Observe(supervise.Sample{Time: t0, RSSBytes: 900})); !reflect.DeepEqual(got, []string{"level:ok>critical", "gc"}) {
		t.Errorf("after Reset: got %q", got)
	}
}

func TestGoMemLimitIsBelowWarning(t *testing.T) {
	cfg := supervise.NewPolicyConfig(job.DefaultMemory(), 1000<<20)
	got := supervise.GoMemLimit(cfg)
	if want := int64(700 << 20); got != want {
		t.Errorf("GoMemLimit: got %d, want %d (70%% of the budget)", got, want)
	}
	if uint64(got) >= cfg.Bytes(cfg.WarningPercent) {
		t.Errorf("GoMemLimit %d is not below the warning level %d", got, cfg.Bytes(cfg.WarningPercent))
	}
}

func TestRestartBudget(t *testing.T) {
	none := supervise.BackoffConfig{Initial: 100 * time.Millisecond, Max: time.Second, Jitter: -1}
	t.Run("crash loop spends it", func(t *testing.T) {
		b := supervise.NewRestartBudget(3, time.Minute, none)
		wantDelay := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}
		for i := range 3 {
			d, n, ok := b.Restart(t0.Add(time.Duration(i)*time.Second), false)
			if !ok || n != i+1 || d != wantDelay[i] {
				t.Fatalf("restart %d: got delay %v count %d ok %v, want %v %d true", i, d, n, ok, wantDelay[i], i+1)
			}
		}
		if _, n, ok := b.Restart(t0.Add(3*time.Second), false); ok || n != 4 {
			t.Errorf("4th restart in the window: got count %d ok %v, want 4 false", n, ok)
		}
	})
	t.Run("progress costs nothing and resets the backoff", func(t *testing.T) {
		b := supervise.NewRestartBudget(1, time.Minute, none)
		for i := range 50 {
			if d, _, ok := b.Restart(t0.Add(time.Duration(i)*time.Second), true); !ok || d != 0 {
				t.Fatalf("restart %d after progress: got delay %v ok %v, want 0 true", i, d, ok)
			}
		}
		if d, n, ok := b.Restart(t0.Add(time.Minute), false); !ok || n != 1 || d != 100*time.Millisecond {
			t.Errorf("first failure: got %v %d %v", d, n, ok)
		}
		if d, _, ok := b.Restart(t0.Add(time.Minute+time.Second), true); !ok || d != 0 {
			t.Errorf("after progress: got %v %v", d, ok)
		}
		if d, _, ok := b.Restart(t0.Add(time.Minute+2*time.Second), false); ok {
			t.Errorf("second failure in the window: got ok with delay %v, want the budget spent", d)
		}
	})
	t.Run("failures age out of the window", func(t *testing.T) {
		b := supervise.NewRestartBudget(2, 10*time.Second, none)
		for i := range 10 {
			if _, n, ok := b.Restart(t0.Add(time.Duration(i)*6*time.Second), false); !ok || n > 2 {
				t.Fatalf("restart %d, 6s apart: got count %d ok %v", i, n, ok)
			}
		}
	})
	t.Run("max 0 allows no restart without progress", func(t *testing.T) {
		b := supervise.NewRestartBudget(0, time.Minute, none)
		if _, _, ok := b.Restart(t0, false); ok {
			t.Error("got ok")
		}
	})
	t.Run("backoff is capped", func(t *testing.T) {
		b := supervise.NewRestartBudget(100, time.Hour, none)
		var d time.Duration
		for i := range 20 {
			d, _, _ = b.Restart(t0.Add(time.Duration(i)*time.Second), false)
		}
		if d != time.Second {
			t.Errorf("delay after 20 failures: got %v, want the 1s cap", d)
		}
	})
}

// TestPolicyGCDone covers the answer to a GC request: a fast leak that GC
// does not cure drains at once; a spike that GC frees, a slow climb, and
// a GC that brought usage below critical do not.
func TestPolicyGCDone(t *testing.T) {
	cfg := supervise.PolicyConfig{
		BudgetBytes: 1000, WarningPercent: 75, CriticalPercent: 85, KillPercent: 95,
		CriticalSamples: 3, GCCooldown: time.Second,
	}
	ms := time.Millisecond
	for _, tc := range []struct {
		name     string
		samples  []uint64 // every 250ms; the last one asks for GC
		rssAfter uint64
		want     []string
	}{
		{"fast leak GC cannot cure", []uint64{600, 680, 760, 860}, 870, []string{"restart"}},
		{"spike GC frees", []uint64{200, 210, 220, 900}, 230, nil},
		{"slow climb waits for the cooldown", []uint64{820, 830, 840, 860}, 865, nil},
		{"no steady climb", []uint64{700, 700, 700, 870}, 875, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := supervise.NewPolicy(cfg)
			// Drains learned to be near instant, so that the projection
			// of Observe leaves these climbs to the GC answer.
			for range 60 {
				p.DrainDone(time.Millisecond)
			}
			var last []supervise.Action
			for i, rss := range tc.samples {
				last = p.Observe(supervise.Sample{Time: t0.Add(time.Duration(i) * 250 * ms), RSSBytes: rss})
			}
			if got := describe(last); len(got) == 0 || got[len(got)-1] != "gc" {
				t.Fatalf("last sample gave %q, want a GC request", got)
			}
			at := t0.Add(time.Duration(len(tc.samples)-1)*250*ms + 30*ms)
			if got := describe(p.GCDone(at, tc.rssAfter)); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("GCDone: got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestPolicyPredicts covers the predictive rule: a climb that would reach
// the kill line before a drain could finish drains at once, whatever the
// GC cooldown says; a spike, a climb below the warning level, and a climb
// that stopped do not.
func TestPolicyPredicts(t *testing.T) {
	cfg := supervise.PolicyConfig{
		BudgetBytes: 1000, WarningPercent: 75, CriticalPercent: 85, KillPercent: 95,
		CriticalSamples: 3, GCCooldown: time.Second,
	}
	ms := time.Millisecond
	// answer is the runner's answer to a GC request, 10ms after the
	// sample of its index, and the actions it must give.
	type answer struct {
		rss  uint64
		want []string
	}
	for _, tc := range []struct {
		name  string
		drain []time.Duration // drains learned before the samples
		steps []step
		gc    map[int]answer
	}{
		{"fast steady leak: GC first, then a drain at once", nil, []step{
			{0, 700, 0, nil},
			{250 * ms, 740, 0, nil},
			{500 * ms, 780, 0, []string{"level:ok>warning"}},
			// 160 B/s: 820 + 160 * (1s + 250ms) = 1020, past the kill line.
			{750 * ms, 820, 0, []string{"gc"}},
			{1000 * ms, 860, 0, []string{"level:warning>critical"}}, // draining: no GC, no second restart
			{1250 * ms, 960, 0, []string{"level:critical>kill", "kill"}},
		}, map[int]answer{3: {825, []string{"restart"}}}},
		{"a GC that answered during the climb: a drain at once", nil, []step{
			{0, 700, 0, nil},
			{250 * ms, 740, 0, nil},
			{500 * ms, 780, 0, []string{"level:ok>warning"}},
			{750 * ms, 820, 0, []string{"gc"}},
			// The GC freed a little, not enough to leave the course.
			{1000 * ms, 860, 0, []string{"level:warning>critical", "restart"}},
		}, map[int]answer{3: {700, nil}}},
		{"the GC answer is late: a drain anyway", nil, []step{
			{0, 700, 0, nil},
			{250 * ms, 740, 0, nil},
			{500 * ms, 780, 0, []string{"level:ok>warning"}},
			{750 * ms, 820, 0, []string{"gc"}},
			{1000 * ms, 860, 0, []string{"level:warning>critical"}},
			{1250 * ms, 900, 0, []string{"restart"}}, // 500ms without an answer
		}, nil},
		{"during the GC cooldown, after a GC that did not help", nil, []step{
			{0, 860, 0, []string{"level:ok>critical", "gc"}},
			{250 * ms, 880, 0, nil},
			{500 * ms, 900, 0, nil},
			// 80 B/s: 920 + 100 = 1020, while the cooldown runs to 1s.
			{750 * ms, 920, 0, []string{"restart"}},
		}, map[int]answer{0: {860, nil}}},
		{"during the GC cooldown, the GC still out decides", nil, []step{
			{0, 860, 0, []string{"level:ok>critical", "gc"}},
			{150 * ms, 880, 0, nil},
			{300 * ms, 900, 0, nil},
			// 133 B/s: 920 + 133 * 1.15s > 950; the GC asked for at 0 is
			// out, and not late yet.
			{450 * ms, 920, 0, nil},
		}, map[int]answer{3: {921, []string{"restart"}}}},
		{"below the warning level nothing is projected", nil, []step{
			{0, 300, 0, nil},
			{250 * ms, 450, 0, nil},
			{500 * ms, 600, 0, nil},
			{750 * ms, 740, 0, nil},
		}, nil},
		{"a spike above a slow trend goes to GC and is left alone when freed", nil, []step{
			{0, 700, 0, nil},
			{250 * ms, 710, 0, nil},
			{500 * ms, 720, 0, nil},
			// The trend puts usage at 730, rising 40 B/s: far from 950.
			{750 * ms, 900, 0, []string{"level:ok>critical", "gc"}},
			{1000 * ms, 740, 0, []string{"level:critical>ok"}},
			{1250 * ms, 745, 0, nil},
			{1500 * ms, 748, 0, nil},
		}, map[int]answer{3: {735, nil}}},
		{"a steady fill cannot be told from a leak until GC frees it", nil, []step{
			{0, 300, 0, nil},
			{250 * ms, 500, 0, nil},
			{500 * ms, 700, 0, nil},
			{750 * ms, 900, 0, []string{"level:ok>critical", "gc"}},
			{1000 * ms, 320, 0, []string{"level:critical>ok"}},
			{1250 * ms, 330, 0, nil},
		}, map[int]answer{3: {310, nil}}},
		{"a steady fill that GC does not free drains", nil, []step{
			{0, 300, 0, nil},
			{250 * ms, 500, 0, nil},
			{500 * ms, 700, 0, nil},
			{750 * ms, 900, 0, []string{"level:ok>critical", "gc"}},
		}, map[int]answer{3: {900, []string{"restart"}}}},
		{"a leak with one flat interval (a collection of the runner's own)", nil, []step{
			{0, 700, 0, nil},
			{250 * ms, 780, 0, []string{"level:ok>warning"}},
			{500 * ms, 780, 0, nil},
			// Rates 320, 0, 320 B/s: median 320; 860 + 320 * 1.25s > 950.
			{750 * ms, 860, 0, []string{"level:warning>critical", "gc"}},
		}, map[int]answer{3: {860, []string{"restart"}}}},
		{"a climb that stopped", nil, []step{
			{0, 700, 0, nil},
			{250 * ms, 800, 0, []string{"level:ok>warning"}},
			{500 * ms, 900, 0, []string{"level:warning>critical", "gc"}},
			{750 * ms, 900, 0, nil},
			{1000 * ms, 900, 0, nil},
		}, nil},
		{"a slow leak waits for the cooldown with the default drain time", nil, []step{
			{0, 840, 0, []string{"level:ok>warning"}},
			{250 * ms, 850, 0, []string{"level:warning>critical", "gc"}},
			{500 * ms, 860, 0, nil},
			// 40 B/s: 870 + 40 * 1.25s = 920.
			{750 * ms, 870, 0, nil},
		}, map[int]answer{1: {850, nil}}},
		{"a slow drain learned earlier widens the horizon", []time.Duration{3 * time.Second}, []step{
			{0, 840, 0, []string{"level:ok>warning"}},
			{250 * ms, 850, 0, []string{"level:warning>critical", "gc"}},
			{500 * ms, 860, 0, nil},
			// 40 B/s: 870 + 40 * 3.25s = 1000, and the GC at 250ms
			// answered during the climb.
			{750 * ms, 870, 0, []string{"restart"}},
		}, map[int]answer{1: {850, nil}}},
		{"fast sampling: a fill shorter than three spaced samples is a step", nil, []step{
			// Every 50ms; only samples 150ms apart make a trend.
			{0, 600, 0, nil},
			{50 * ms, 650, 0, nil},
			{100 * ms, 700, 0, nil},
			{150 * ms, 750, 0, []string{"level:ok>warning"}},
			{200 * ms, 800, 0, nil},
			{250 * ms, 850, 0, []string{"level:warning>critical", "gc"}},
			{300 * ms, 900, 0, nil},
			{350 * ms, 900, 0, nil},
		}, nil},
		{"fast sampling: a fill that goes on is a trend", nil, []step{
			{0, 600, 0, nil},
			{50 * ms, 620, 0, nil},
			{100 * ms, 640, 0, nil},
			{150 * ms, 660, 0, nil},
			{200 * ms, 680, 0, nil},
			{250 * ms, 700, 0, nil},
			{300 * ms, 720, 0, nil},
			{350 * ms, 740, 0, nil},
			{400 * ms, 760, 0, []string{"level:ok>warning"}},
			// 400 B/s over 0, 150, 300 and 450ms: 780 + 400 * (1s + 50ms) > 950.
			{450 * ms, 780, 0, []string{"gc"}},
		}, map[int]answer{9: {780, []string{"restart"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := supervise.NewPolicy(cfg)
			for _, d := range tc.drain {
				p.DrainDone(d)
			}
			for i, s := range tc.steps {
				got := describe(p.Observe(supervise.Sample{Time: t0.Add(s.at), RSSBytes: s.rss, HeapBytes: s.heap}))
				if !reflect.DeepEqual(got, s.want) {
					t.Fatalf("step %d (t=%v rss=%d): got %q, want %q", i, s.at, s.rss, got, s.want)
				}
				if a, ok := tc.gc[i]; ok {
					got := describe(p.GCDone(t0.Add(s.at+10*ms), a.rss))
					if !reflect.DeepEqual(got, a.want) {
						t.Fatalf("GC answer after step %d (rss %d): got %q, want %q", i, a.rss, got, a.want)
					}
				}
			}
		})
	}
}

func TestPolicyLearnsDrainTime(t *testing.T) {
	p := supervise.NewPolicy(supervise.NewPolicyConfig(job.DefaultMemory(), 1000))
	steps := []struct {
		drain time.Duration
		want  time.Duration
	}{
		{0, supervise.DefaultDrainTime},            // not said: ignored
		{-time.Second, supervise.DefaultDrainTime}, // nonsense: ignored
		{3 * time.Second, 3 * time.Second},         // slower: believed at once
		{time.Second, 2500 * time.Millisecond},     // faster: a quarter of the way
		{2500 * time.Millisecond, 2500 * time.Millisecond},
	}
	for i, s := range steps {
		p.DrainDone(s.drain)
		if got := p.DrainTime(); got != s.want {
			t.Fatalf("step %d, drain %v: got %v, want %v", i, s.drain, got, s.want)
		}
	}
	p.Reset()
	if got := p.DrainTime(); got != 2500*time.Millisecond {
		t.Errorf("after Reset: got %v, want the learned 2.5s kept", got)
	}
}

func TestGuardFor(t *testing.T) {
	cfg := supervise.NewPolicyConfig(job.DefaultMemory(), 1000)
	g := supervise.GuardFor(cfg)
	if g.GCBytes != 850 || g.DrainBytes != 900 {
		t.Errorf("GuardFor: got GC %d drain %d, want 850 and 900", g.GCBytes, g.DrainBytes)
	}
	m := job.DefaultMemory()
	m.GuardGCPercent, m.GuardDrainPercent = 70, 80
	if g := supervise.GuardFor(supervise.NewPolicyConfig(m, 1000)); g.GCBytes != 700 || g.DrainBytes != 800 {
		t.Errorf("guard percents from the job: got GC %d drain %d, want 700 and 800", g.GCBytes, g.DrainBytes)
	}
	if kill := cfg.Bytes(cfg.KillPercent); !(g.GCBytes < g.DrainBytes && g.DrainBytes < kill) {
		t.Errorf("lines out of order: gc %d, drain %d, kill %d", g.GCBytes, g.DrainBytes, kill)
	}
	cfg.BudgetBytes = 0
	if g := supervise.GuardFor(cfg); g.GCBytes != 0 || g.DrainBytes != 0 {
		t.Errorf("no budget: got %+v, want both lines off", g)
	}
}
