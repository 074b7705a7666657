package supervise

import (
	"fmt"
	"slices"
	"time"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/plugin"
)

// Level is a runner's memory level, as docs/design.md ("The memory policy") defines them.
type Level string

// The levels, in rising order.
const (
	LevelOK       Level = "ok"
	LevelWarning  Level = "warning"
	LevelCritical Level = "critical"
	LevelKill     Level = "kill"
)

// Rank orders the levels: 0 for ok up to 3 for kill. The service's level
// gauge reports it.
func (l Level) Rank() int {
	switch l {
	case LevelWarning:
		return 1
	case LevelCritical:
		return 2
	case LevelKill:
		return 3
	}
	return 0
}

// PolicyConfig holds the thresholds of a Policy. Percentages are of
// BudgetBytes.
type PolicyConfig struct {
	BudgetBytes     uint64
	WarningPercent  float64
	CriticalPercent float64
	KillPercent     float64
	// CriticalSamples is how many consecutive samples must stay critical,
	// once GCCooldown has passed after a GC request, before a graceful
	// restart.
	CriticalSamples int
	// GCCooldown is how long a GC request is given to take effect.
	GCCooldown time.Duration
	// GuardGCBytes and GuardDrainBytes are the runner's own guard lines
	// (see GuardFor).
	GuardGCBytes, GuardDrainBytes uint64
}

// NewPolicyConfig takes the thresholds from a job's memory block and the
// budget in force.
func NewPolicyConfig(m job.Memory, budget uint64) PolicyConfig {
	c := PolicyConfig{
		BudgetBytes:     budget,
		WarningPercent:  m.WarningPercent,
		CriticalPercent: m.CriticalPercent,
		KillPercent:     m.KillPercent,
		CriticalSamples: m.CriticalSamples,
		GCCooldown:      m.GCCooldown.D(),
	}
	c.GuardGCBytes, c.GuardDrainBytes = m.GuardLines(budget)
	return c
}

// Bytes returns the usage at percent of the budget.
func (c PolicyConfig) Bytes(percent float64) uint64 {
	return uint64(float64(c.BudgetBytes) * percent / 100)
}

// GuardFor returns the lines of the runner's own memory guard that the
// config carries (docs/design.md, "The memory policy"). NewPolicyConfig
// takes them from job.Memory.GuardLines, the one place they are derived:
// by default the GC line is the critical line, where the supervisor would
// ask for a collection, and the drain line is halfway between the critical
// and the kill line, above anything a collection is expected to cure and
// far enough below the kill line that a drain of about one write and one
// commit finishes before the supervisor's kill. A budget of zero turns
// both lines off.
func GuardFor(cfg PolicyConfig) plugin.Guard {
	if cfg.BudgetBytes == 0 {
		return plugin.Guard{}
	}
	return plugin.Guard{GCBytes: cfg.GuardGCBytes, DrainBytes: cfg.GuardDrainBytes}
}

// Sample is one reading of a runner's memory.
type Sample struct {
	Time time.Time
	// RSSBytes is the runner's resident set, read from outside.
	RSSBytes uint64
	// HeapBytes is the runner's live heap (heap objects) from its last
	// Stats, or 0 when not known.
	HeapBytes uint64
}

// Usage is the figure the policy judges: the larger of RSS and the live
// heap. RSS is what the kernel and a cgroup limit count, so it is the
// figure that matters; the heap term covers a reading of RSS that failed
// or a heap whose pages are swapped out. Usage is always measured against
// the budget, never against the heap's own current size.
func (s Sample) Usage() uint64 { return max(s.RSSBytes, s.HeapBytes) }

// ActionKind names what the policy asks the supervisor to do.
type ActionKind string

// The actions.
const (
	// ActionLevel reports a level change: log it and emit it.
	ActionLevel ActionKind = "level"
	// ActionGC asks the runner to collect garbage and return memory.
	ActionGC ActionKind = "gc"
	// ActionRestart asks for a graceful restart: drain, then a new runner.
	ActionRestart ActionKind = "restart"
	// ActionKill asks for SIGKILL now, then a new runner.
	ActionKill ActionKind = "kill"
)

// Action is one thing the supervisor should do, with the reason.
type Action struct {
	Kind ActionKind
	// From and To are the levels of an ActionLevel; To is the level in
	// force for the other kinds.
	From, To   Level
	Reason     string
	UsageBytes uint64
	Percent    float64
}

// Policy is the memory policy of one job: a pure state machine. Samples
// go in and actions come out; time is the samples' own, so a test drives
// it with a fake clock. It is not safe for concurrent use: one loop owns
// it.
//
// The rules, for usage as a share of the budget:
//   - a change of level (ok < warning < critical) is reported once;
//   - on entering critical, GC is requested, unless one was requested
//     within GCCooldown;
//   - once GCCooldown has passed after that request, every further
//     critical sample counts; CriticalSamples of them in a row ask for a
//     graceful restart; a sample below critical ends the episode;
//   - when the runner answers a GC request (GCDone) still at or above
//     critical, after a steady climb (usage rose by more than half a
//     percent of the budget in each of the last three intervals) that,
//     at its slowest interval's rate, would reach KillPercent within two
//     sample intervals, a graceful restart is asked for at once: a fast
//     leak would otherwise cross the ceiling before the cooldown ends,
//     and be killed instead of drained. A spike that GC frees is not;
//   - from the warning level up, when the last samples climb, usage
//     projected at the median of their rates to now + the drain time +
//     one sample interval at or above KillPercent asks for a graceful
//     restart at once, whatever the GC cooldown says: the drain must
//     finish before the leak reaches the kill line. One GC round trip
//     comes first (unless a GC already answered during the climb): the
//     restart follows its answer (GCDone) unless the GC took usage off
//     the projected course, as it does for a spike, or follows anyway
//     when the answer is late. The drain time is
//     learned from earlier drains (DrainDone), DefaultDrainTime until
//     then. The projection starts from the trend, not from a last step
//     steeper than it, so that a spike goes to GC first and is left
//     alone when GC frees it;
//   - usage at or above KillPercent asks for a kill at once, as does a
//     runner that misses an RPC deadline (Unresponsive).
//
// After a restart or a kill, the policy asks for nothing more (except a
// kill, if a draining runner keeps growing) until Reset is called for
// the next runner.
type Policy struct {
	cfg PolicyConfig

	level      Level
	gcAt       time.Time // the GC request of the current critical episode
	lastGC     time.Time // the last GC request of this runner
	afterGC    int       // consecutive critical samples after the cooldown
	restarting bool
	killed     bool
	recent     [climbSamples]Sample // the last samples, oldest first
	nrecent    int
	climbRate  float64       // bytes a second, set by climbing
	lastAt     time.Time     // the last sample's time
	predictAt  time.Time     // a projection asked for GC then; its answer is awaited
	gcDoneAt   time.Time     // the last GC answer
	interval   time.Duration // between the last two samples

	// drainTime is the learned time a drain takes. It outlives Reset:
	// it is a property of the job and its target, not of one runner.
	drainTime time.Duration
}

// climbSamples is how many samples (three intervals) make a steady climb.
const climbSamples = 4

// DefaultDrainTime is the drain time the policy assumes before it has
// seen a drain: a drain at item granularity is about one write and one
// commit, and a second leaves room for a slow target.
const DefaultDrainTime = time.Second

// NewPolicy returns a policy at level ok.
func NewPolicy(cfg PolicyConfig) *Policy {
	if cfg.CriticalSamples < 1 {
		cfg.CriticalSamples = 1
	}
	return &Policy{cfg: cfg, level: LevelOK, drainTime: DefaultDrainTime}
}

// Config returns the thresholds.
func (p *Policy) Config() PolicyConfig { return p.cfg }

// Level returns the level of the last sample.
func (p *Policy) Level() Level { return p.level }

// Reset starts over for a new runner process. The learned drain time is
// kept.
func (p *Policy) Reset() {
	*p = Policy{cfg: p.cfg, level: LevelOK, drainTime: p.drainTime}
}

// DrainTime returns the drain time the policy expects.
func (p *Policy) DrainTime() time.Duration { return p.drainTime }

// DrainDone learns from a finished drain that took d. A slower drain
// than expected is believed at once, since underestimating it is what
// turns a drain into a kill; a faster one only pulls the estimate down
// by a quarter of the difference, so that one lucky drain does not
// undo it. A zero or negative d (a runner that did not say) is ignored.
func (p *Policy) DrainDone(d time.Duration) {
	if d <= 0 {
		return
	}
	if d >= p.drainTime {
		p.drainTime = d
		return
	}
	p.drainTime -= (p.drainTime - d) / 4
}

// growth returns the recent growth rate in bytes a second, when the
// last of the climbSamples samples rose and so did the trend. The rate is
// the median of the intervals' rates (a flat or falling one counts as
// zero): a leak rises at a steady pace, though a collection of the
// runner's own can flatten one interval; a one-off spike is one steep
// step among slow ones, which the median ignores, and is left to GC. A
// last interval that did not rise means the climb has stopped, for now.
func (p *Policy) growth() (rate float64, ok bool) {
	if p.nrecent < climbSamples {
		return 0, false
	}
	var rates [climbSamples - 1]float64
	for i := 1; i < climbSamples; i++ {
		prev, cur := p.recent[i-1], p.recent[i]
		dt := cur.Time.Sub(prev.Time).Seconds()
		if dt <= 0 {
			return 0, false
		}
		if cur.Usage() > prev.Usage() {
			rates[i-1] = float64(cur.Usage()-prev.Usage()) / dt
		}
	}
	if rates[len(rates)-1] == 0 {
		return 0, false
	}
	slices.Sort(rates[:])
	rate = rates[len(rates)/2]
	return rate, rate > 0
}

// predict reports whether, at the recent growth rate, usage would reach
// the kill line before a drain started now could finish: by now + the
// learned drain time + one sample interval (the time the next sample
// would take to notice). It judges only from the warning level up:
// below it, the runner's own GOMEMLIMIT collections still shape the
// curve, and a climb that stops there (a prefetch filling its cache)
// must not restart the runner.
func (p *Policy) predict(s Sample) (string, bool) {
	usage := s.Usage()
	rate, ok := p.growth()
	if !ok {
		return "", false
	}
	// The projection starts from where the trend puts usage now: a last
	// step steeper than the trend may be a spike that GC frees, and is
	// left to the GC request.
	prev := p.recent[climbSamples-2]
	if last := p.recent[climbSamples-1]; !last.Time.Equal(s.Time) {
		prev = last // s was not remembered: the trend runs from the last one that was
	}
	base := min(float64(usage), float64(prev.Usage())+rate*s.Time.Sub(prev.Time).Seconds())
	return p.project(usage, base, rate)
}

// project reports whether usage, or base on its trend, rising at rate
// would reach the kill line within the drain time and one sample
// interval, and says so.
func (p *Policy) project(usage uint64, base, rate float64) (string, bool) {
	if p.Percent(usage) < p.cfg.WarningPercent || rate <= 0 {
		return "", false
	}
	horizon := p.drainTime + p.interval
	ceiling := p.cfg.Bytes(p.cfg.KillPercent)
	if base+rate*horizon.Seconds() < float64(ceiling) {
		return "", false
	}
	eta := time.Duration(float64(ceiling-min(usage, ceiling)) / rate * float64(time.Second))
	return fmt.Sprintf("usage %.1f%% of the budget is climbing %.1f MiB/s and would reach kill_percent %g in about %s, "+
		"before a drain (about %s) and the next sample could finish",
		p.Percent(usage), rate/(1<<20), p.cfg.KillPercent, eta.Round(time.Millisecond), p.drainTime.Round(time.Millisecond)), true
}

// gcWait is how long a projection waits for the answer to the GC it asked
// for before it drains anyway.
func (p *Policy) gcWait() time.Duration { return max(2*p.interval, 500*time.Millisecond) }

// Percent returns usage as a percentage of the budget.
func (p *Policy) Percent(usage uint64) float64 {
	if p.cfg.BudgetBytes == 0 {
		return 0
	}
	return float64(usage) / float64(p.cfg.BudgetBytes) * 100
}

func (p *Policy) levelFor(pct float64) Level {
	switch {
	case pct >= p.cfg.KillPercent:
		return LevelKill
	case pct >= p.cfg.CriticalPercent:
		return LevelCritical
	case pct >= p.cfg.WarningPercent:
		return LevelWarning
	}
	return LevelOK
}

// climbSpacing is the least time between two remembered samples. With a
// fast sample_interval, the samples of a trend are thinned to this
// spacing, so that a trend spans at least three of them (450ms): a spike
// whose pages take a few samples to fill on a loaded machine is one step,
// not a trend.
const climbSpacing = 150 * time.Millisecond

// remember keeps s among the recent samples.
func (p *Policy) remember(s Sample) {
	if !p.lastAt.IsZero() {
		p.interval = s.Time.Sub(p.lastAt)
	}
	p.lastAt = s.Time
	if p.nrecent > 0 && s.Time.Sub(p.recent[p.nrecent-1].Time) < climbSpacing {
		return
	}
	if p.nrecent == climbSamples {
		copy(p.recent[:], p.recent[1:])
		p.nrecent--
	}
	p.recent[p.nrecent] = s
	p.nrecent++
}

// climbing reports whether the recent samples are a steady climb that
// would reach the kill ceiling within two sample intervals, and how soon.
// The climb's rate is its slowest interval's: a leak rises at a steady
// pace, while a one-off spike is one steep step among slow ones (the
// cache's own growth), and must be left to GC.
func (p *Policy) climbing() (time.Duration, bool) {
	if p.nrecent < climbSamples {
		return 0, false
	}
	step := p.cfg.Bytes(0.5)
	rate := 0.0 // bytes a second, the slowest interval's
	for i := 1; i < climbSamples; i++ {
		prev, cur := p.recent[i-1], p.recent[i]
		dt := cur.Time.Sub(prev.Time).Seconds()
		if cur.Usage() <= prev.Usage()+step || dt <= 0 {
			return 0, false
		}
		r := float64(cur.Usage()-prev.Usage()) / dt
		if i == 1 || r < rate {
			rate = r
		}
	}
	first, last := p.recent[0], p.recent[climbSamples-1]
	ceiling := p.cfg.Bytes(p.cfg.KillPercent)
	if last.Usage() >= ceiling {
		return 0, true
	}
	eta := time.Duration(float64(ceiling-last.Usage()) / rate * float64(time.Second))
	interval := last.Time.Sub(first.Time) / (climbSamples - 1)
	p.climbRate = rate
	return eta, eta <= 2*interval
}

// Observe takes one sample and returns what to do, in order.
func (p *Policy) Observe(s Sample) []Action {
	if p.killed {
		return nil
	}
	p.remember(s)
	usage := s.Usage()
	pct := p.Percent(usage)
	lvl := p.levelFor(pct)
	act := func(kind ActionKind, reason string) Action {
		return Action{Kind: kind, From: p.level, To: lvl, Reason: reason, UsageBytes: usage, Percent: pct}
	}
	var out []Action
	if lvl != p.level {
		out = append(out, act(ActionLevel, p.levelReason(pct, lvl)))
	}
	from := p.level
	p.level = lvl
	if lvl == LevelKill {
		p.killed = true
		a := act(ActionKill, fmt.Sprintf("usage %.1f%% of the budget is at or above kill_percent %g", pct, p.cfg.KillPercent))
		a.From = from
		return append(out, a)
	}
	if p.restarting {
		return out
	}
	if reason, ok := p.predict(s); ok {
		// Whatever the GC cooldown says: waiting for it is what lets a
		// fast leak reach the kill line. One GC round trip comes first,
		// unless one already answered during this climb: a spike that
		// fills over several samples (a loaded machine stretches it)
		// looks like a leak until GC frees it.
		switch {
		case !p.gcDoneAt.IsZero() && !p.gcDoneAt.Before(p.recent[0].Time):
			p.restarting = true
			return append(out, act(ActionRestart, reason+"; a GC during the climb did not stop it"))
		case p.predictAt.IsZero() && !p.lastGC.IsZero() && p.gcDoneAt.Before(p.lastGC):
			// A GC asked for on entering critical is still out: its
			// answer decides.
			p.predictAt = p.lastGC
		case p.predictAt.IsZero():
			p.predictAt, p.lastGC = s.Time, s.Time
			return append(out, act(ActionGC, reason+"; asking for a GC first, which frees a spike"))
		}
		if s.Time.Sub(p.predictAt) >= p.gcWait() {
			p.restarting = true
			return append(out, act(ActionRestart, reason+"; the GC asked for did not answer in time"))
		}
		return out // the GC answer decides
	}
	switch lvl {
	case LevelCritical:
		if p.gcAt.IsZero() {
			if !p.lastGC.IsZero() && s.Time.Sub(p.lastGC) < p.cfg.GCCooldown {
				// A GC asked for moments ago is still taking effect.
				p.gcAt = p.lastGC
				return out
			}
			p.gcAt, p.lastGC, p.afterGC = s.Time, s.Time, 0
			return append(out, act(ActionGC, fmt.Sprintf("usage %.1f%% of the budget is at or above critical_percent %g", pct, p.cfg.CriticalPercent)))
		}
		if s.Time.Sub(p.gcAt) < p.cfg.GCCooldown {
			return out
		}
		p.afterGC++
		if p.afterGC >= p.cfg.CriticalSamples {
			p.restarting = true
			return append(out, act(ActionRestart, fmt.Sprintf(
				"usage still %.1f%% of the budget, at or above critical_percent %g, for %d samples after a GC request",
				pct, p.cfg.CriticalPercent, p.afterGC)))
		}
	default:
		p.gcAt, p.afterGC = time.Time{}, 0
	}
	return out
}

// GCDone takes the runner's answer to a GC request: its RSS after the
// collection. If memory is still critical and the samples before the
// request were a steady climb toward the ceiling, it asks for a graceful
// restart now rather than after the cooldown.
func (p *Policy) GCDone(at time.Time, rssAfter uint64) []Action {
	if p.killed || p.restarting {
		return nil
	}
	p.gcDoneAt = at
	after := Sample{Time: at, RSSBytes: rssAfter}
	pct := p.Percent(after.Usage())
	if !p.predictAt.IsZero() {
		// The GC a projection asked for: drain at once unless it freed
		// enough to take usage off the projected course.
		p.predictAt = time.Time{}
		rate, ok := p.growth()
		if !ok {
			return nil
		}
		reason, ok := p.project(rssAfter, float64(rssAfter), rate)
		if !ok {
			return nil
		}
		p.restarting = true
		return []Action{{
			Kind: ActionRestart, From: p.level, To: p.level, UsageBytes: rssAfter, Percent: pct,
			Reason: "after a GC, " + reason,
		}}
	}
	if p.gcAt.IsZero() {
		return nil
	}
	if pct < p.cfg.CriticalPercent {
		return nil
	}
	eta, ok := p.climbing()
	if !ok {
		return nil
	}
	p.restarting = true
	return []Action{{
		Kind: ActionRestart, From: p.level, To: p.level, UsageBytes: after.Usage(), Percent: pct,
		Reason: fmt.Sprintf("GC left usage at %.1f%% of the budget, which is climbing %.0f MiB/s and would reach kill_percent %g in about %s",
			pct, p.climbRate/(1<<20), p.cfg.KillPercent, eta.Round(time.Millisecond)),
	}}
}

func (p *Policy) levelReason(pct float64, to Level) string {
	if to.Rank() > p.level.Rank() {
		return fmt.Sprintf("usage %.1f%% of the budget reached %s_percent %g", pct, to, p.threshold(to))
	}
	return fmt.Sprintf("usage %.1f%% of the budget fell below %s_percent %g", pct, p.level, p.threshold(p.level))
}

func (p *Policy) threshold(l Level) float64 {
	switch l {
	case LevelWarning:
		return p.cfg.WarningPercent
	case LevelCritical:
		return p.cfg.CriticalPercent
	case LevelKill:
		return p.cfg.KillPercent
	}
	return 0
}

// Unresponsive reports that the runner missed the deadline of call; the
// answer is a kill. It returns nothing if a kill was already asked for.
func (p *Policy) Unresponsive(call string, timeout time.Duration) []Action {
	if p.killed {
		return nil
	}
	p.killed = true
	return []Action{{
		Kind: ActionKill, From: p.level, To: p.level,
		Reason: fmt.Sprintf("runner did not answer %s within %s", call, timeout),
	}}
}
