package job

import "time"

// Memory is the job's memory policy. Percentages are of Limit, the
// budget. A zero Limit means "take it from the cgroup, or else a share of
// host RAM" (see pkg/supervise).
type Memory struct {
	Limit           ByteSize `json:"limit"`
	WarningPercent  float64  `json:"warning_percent"`
	CriticalPercent float64  `json:"critical_percent"`
	KillPercent     float64  `json:"kill_percent"`
	// GCPercent is the heap share of Limit above which the batcher asks
	// for GC every 10 batches, as the original tool did.
	GCPercent float64 `json:"gc_percent"`
	// SampleInterval is how often the supervisor samples the runner.
	SampleInterval Duration `json:"sample_interval"`
	// CriticalSamples is how many consecutive samples must stay critical
	// after a GC request before a graceful restart.
	CriticalSamples int `json:"critical_samples"`
	// GCCooldown is how long the supervisor waits after a GC request
	// before it judges the result or asks again.
	GCCooldown Duration `json:"gc_cooldown"`
	// RPCTimeout bounds Stats and GC calls; a runner that misses it is hung.
	RPCTimeout Duration `json:"rpc_timeout"`
	// DrainTimeout bounds a graceful drain.
	DrainTimeout  Duration      `json:"drain_timeout"`
	RestartBudget RestartBudget `json:"restart_budget"`
	// CacheMaxEntries bounds the match-value cache; 0 is unbounded.
	CacheMaxEntries int `json:"cache_max_entries"`
	// GuardGCPercent and GuardDrainPercent place the runner's own memory
	// guard lines (see runner.GuardFor). Zero means the default: the GC
	// line at critical_percent, the drain line midway between critical
	// and kill.
	GuardGCPercent    float64 `json:"guard_gc_percent,omitempty"`
	GuardDrainPercent float64 `json:"guard_drain_percent,omitempty"`
}

// MinLimit is the smallest budget a job may set. A runner that has just
// started a small job (synthetic source, jsonl target, 1,000 items in its
// cache) measured 17 MiB of RSS; at 32 MiB the guard's default lines (85%
// and 90%: 27 and 29 MiB) leave it 10 MiB to work in before it drains a
// runner that has barely started. Below that, every start would drain.
const MinLimit = 32 << 20

// GuardPercents returns the guard's GC and drain lines in percent of the
// budget, with the defaults filled in.
func (m Memory) GuardPercents() (gc, drain float64) {
	gc, drain = m.GuardGCPercent, m.GuardDrainPercent
	if gc == 0 {
		gc = m.CriticalPercent
	}
	if drain == 0 {
		drain = (m.CriticalPercent + m.KillPercent) / 2
	}
	return gc, drain
}

// GuardLines returns the runner's memory guard lines in bytes of budget:
// collect once above gc, drain above drain (docs/design.md, "The memory
// policy"). This is the one place they are derived; the supervisor and a
// standalone `runner run` both call it. A zero budget turns both off.
func (m Memory) GuardLines(budget uint64) (gc, drain uint64) {
	if budget == 0 {
		return 0, 0
	}
	gcPct, drainPct := m.GuardPercents()
	return uint64(float64(budget) * gcPct / 100), uint64(float64(budget) * drainPct / 100)
}

// RestartBudget allows at most Max restarts that made no progress within
// Window, as an Erlang/OTP supervisor's intensity and period.
type RestartBudget struct {
	Max    int      `json:"max"`
	Window Duration `json:"window"`
}

// DefaultMemory returns the policy defaults (docs/design.md, "The memory
// policy").
func DefaultMemory() Memory {
	return Memory{
		WarningPercent:  75,
		CriticalPercent: 85,
		KillPercent:     95,
		GCPercent:       70,
		SampleInterval:  Duration(250 * time.Millisecond),
		CriticalSamples: 4,
		GCCooldown:      Duration(time.Second),
		RPCTimeout:      Duration(5 * time.Second),
		DrainTimeout:    Duration(30 * time.Second),
		RestartBudget:   RestartBudget{Max: 5, Window: Duration(time.Minute)},
	}
}

func (m Memory) validate(v *Errors, p string) {
	if m.Limit < 0 {
		v.Add(p+".limit", "must not be negative")
	}
	if m.Limit > 0 && m.Limit < MinLimit {
		v.Add(p+".limit", "must be at least %s, above the runner's idle footprint (got %s)", ByteSize(MinLimit), m.Limit)
	}
	pct := func(name string, x float64) {
		if x <= 0 || x > 100 {
			v.Add(p+"."+name, "must be above 0 and at most 100 (got %g)", x)
		}
	}
	pct("warning_percent", m.WarningPercent)
	pct("critical_percent", m.CriticalPercent)
	pct("kill_percent", m.KillPercent)
	pct("gc_percent", m.GCPercent)
	if !(m.WarningPercent < m.CriticalPercent && m.CriticalPercent < m.KillPercent) {
		v.Add(p, "warning_percent < critical_percent < kill_percent must hold (got %g, %g, %g)",
			m.WarningPercent, m.CriticalPercent, m.KillPercent)
	}
	if m.SampleInterval < Duration(10*time.Millisecond) {
		v.Add(p+".sample_interval", "must be at least 10ms (got %s)", m.SampleInterval)
	}
	if m.CriticalSamples < 1 {
		v.Add(p+".critical_samples", "must be at least 1 (got %d)", m.CriticalSamples)
	}
	if m.GCCooldown < 0 {
		v.Add(p+".gc_cooldown", "must not be negative")
	}
	if m.RPCTimeout < Duration(100*time.Millisecond) {
		v.Add(p+".rpc_timeout", "must be at least 100ms (got %s)", m.RPCTimeout)
	}
	if m.DrainTimeout < Duration(100*time.Millisecond) {
		v.Add(p+".drain_timeout", "must be at least 100ms (got %s)", m.DrainTimeout)
	}
	if m.RestartBudget.Max < 0 {
		v.Add(p+".restart_budget.max", "must not be negative")
	}
	if m.RestartBudget.Window <= 0 {
		v.Add(p+".restart_budget.window", "must be positive (got %s)", m.RestartBudget.Window)
	}
	if m.GuardGCPercent < 0 || m.GuardGCPercent > 100 {
		v.Add(p+".guard_gc_percent", "must be between 0 (the default) and 100 (got %g)", m.GuardGCPercent)
	}
	if m.GuardDrainPercent < 0 || m.GuardDrainPercent > 100 {
		v.Add(p+".guard_drain_percent", "must be between 0 (the default) and 100 (got %g)", m.GuardDrainPercent)
	}
	if gc, drain := m.GuardPercents(); m.KillPercent > 0 {
		if m.GuardGCPercent != 0 && gc >= m.KillPercent {
			v.Add(p+".guard_gc_percent", "must be below kill_percent (%g), or the supervisor kills before the guard collects (got %g)", m.KillPercent, gc)
		}
		if m.GuardDrainPercent != 0 && drain >= m.KillPercent {
			v.Add(p+".guard_drain_percent", "must be below kill_percent (%g), or the supervisor kills before the guard drains (got %g)", m.KillPercent, drain)
		}
		if gc >= drain {
			v.Add(p+".guard_gc_percent", "must be below the drain line (%g%% of the budget), so a collection is tried before a drain (got %g)", drain, gc)
		}
	}
	if m.CacheMaxEntries < 0 {
		v.Add(p+".cache_max_entries", "must not be negative")
	}
}
