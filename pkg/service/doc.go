// Package service is memvisor's long-running mode, `supervisor serve`: the
// job registry, the HTTP API v1 with its OpenAPI document, Server-Sent
// Events, the Prometheus metrics, the status page and the systemd
// notifications.
//
// Serve ties the parts together. It opens the registry (a bbolt file under
// state_dir that only this process opens), resumes the jobs that were
// running when the previous process stopped, listens, tells systemd it is
// ready, and runs until its context is cancelled. It then stops taking
// requests, drains every running job so that its runner commits a
// checkpoint, and records those jobs as queued, so the next start resumes
// them.
//
// A Manager owns the lifecycle of jobs: it queues them when
// max_concurrent_jobs are running, starts one Supervisor per job through a
// Factory, and turns pause, resume, cancel and retry-failed requests into
// state transitions that it refuses (ErrConflict) when they make no sense.
// The Supervisor interface declares only what the service uses of
// pkg/supervise; package servicetest has a simulated one for tests.
//
// Job states: queued -> running -> completed | failed | cancelled | paused.
// A paused or failed job can be resumed (it continues from its last
// checkpoint), a completed or failed one can retry its failed items, and a
// finished one (completed, failed, cancelled) can be deleted. A job is
// active while it is queued, running or paused; a second active job for
// the same source and target is refused.
package service
