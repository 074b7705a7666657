// Package supervise keeps one job's runner process within its memory
// budget and restarts it from its checkpoint when it must.
//
// The parts:
//   - Policy (policy.go) is the memory policy of docs/design.md, "The
//     memory policy", as a pure state machine: Samples in, Actions out,
//     time taken from the samples. Usage is the larger of the runner's
//     RSS (read from outside) and its live heap (from its Stats),
//     measured against the budget, never against the heap's own size.
//     Warning at 75%, critical at 85% (ask for GC, then judge again after
//     gc_cooldown), a graceful restart when usage stays critical for
//     critical_samples samples after that, or at once when the growth
//     rate of the last samples says the kill line would be reached before
//     a drain (its time learned from earlier drains) could finish; a kill
//     at 95% or when the runner misses an RPC deadline.
//   - GuardFor (policy.go) derives the lines of the runner's own memory
//     guard, given at every Start: GC at the critical line, drain halfway
//     between critical and kill. A runner whose guard drains it ends its
//     Watch stream drained with the reason "memory guard"; that is a
//     graceful restart like one the policy asks for.
//   - BudgetSource (budget.go) settles the budget when the job file does
//     not: the cgroup's limit (v2 memory.max, else v1
//     memory.limit_in_bytes), else a share of host RAM.
//   - RestartBudget (restart.go) is an Erlang/OTP-style intensity and
//     period with exponential backoff. Only a restart of a runner that
//     committed no new checkpoint counts, so a leak that restarts a
//     runner that makes progress never fails the job, and a crash loop
//     does, with a reason that says so.
//   - A session (session.go) is one runner's life. For every start it
//     makes a new plugin client (go-plugin cannot restart one), calls
//     Start, follows the Watch stream, polls Stats and samples RSS every
//     sample_interval (250ms by default), feeds the policy and acts: GC
//     over RPC; a graceful restart (Drain with a deadline, then Kill); a
//     kill (SIGKILL). Its select loop only records facts (what was asked
//     of the runner, how it ended); decide, one pure function, turns them
//     into the outcome: the job's end, or a restart of a kind (graceful,
//     crash, hang, kill).
//   - Supervisor (supervisor.go) strings sessions together: after every
//     restart the next runner resumes from the checkpoint, within the
//     RestartBudget.
//   - Log lines carry the field names of internal/logkey, one meaning
//     each.
//   - One runner per job (lock.go): the supervisor holds an flock on
//     <state_dir>/<id>/supervisor.lock for the job's life and writes the
//     runner's pid to runner.pid, so a supervisor restarted after a crash
//     kills the runner its predecessor left behind before it starts a
//     new one. The runner takes its own job.lock as well.
//
// Every goroutine the Supervisor starts is joined before Run returns.
package supervise
