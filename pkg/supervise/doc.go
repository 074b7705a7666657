// Package supervise keeps one job's runner process within its memory
// budget and restarts it from its checkpoint when it must.
//
// The parts:
//   - Policy (policy.go) is the memory policy of DESIGN.md section 4 as a
//     pure state machine: Samples in, Actions out, time taken from the
//     samples. Usage is the larger of the runner's RSS (read from
//     outside) and its live heap (from its Stats), measured against the
//     budget, never against the heap's own size. Warning at 75%,
//     critical at 85% (ask for GC, then judge again after gc_cooldown),
//     a graceful restart when usage stays critical for critical_samples
//     samples after that, and a kill at 95% or when the runner misses an
//     RPC deadline.
//   - BudgetSource (budget.go) settles the budget when the job file does
//     not: the cgroup's limit (v2 memory.max, else v1
//     memory.limit_in_bytes), else a share of host RAM.
//   - RestartBudget (restart.go) is an Erlang/OTP-style intensity and
//     period with exponential backoff. Only a restart of a runner that
//     committed no new checkpoint counts, so a leak that restarts a
//     runner that makes progress never fails the job, and a crash loop
//     does, with a reason that says so.
//   - Supervisor (supervisor.go) is the loop. For every start it makes a
//     new plugin client (go-plugin cannot restart one), calls Start,
//     follows the Watch stream, polls Stats and samples RSS every
//     sample_interval (250ms by default), feeds the policy and acts: GC
//     over RPC; a graceful restart (Drain with a deadline, then Kill,
//     then a new runner that resumes); a kill (SIGKILL, then resume). A
//     process that exits is a crash, an RPC past its deadline a hang.
//   - One runner per job (lock.go): the supervisor holds an flock on
//     <state_dir>/<id>/supervisor.lock for the job's life and writes the
//     runner's pid to runner.pid, so a supervisor restarted after a crash
//     kills the runner its predecessor left behind before it starts a
//     new one. The runner takes its own job.lock as well.
//
// Every goroutine the Supervisor starts is joined before Run returns.
package supervise
