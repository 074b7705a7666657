// Package service is memvisor's long-running mode, `supervisor serve`: the
// job registry, the HTTP API v1 with its OpenAPI document, Server-Sent
// Events, the Prometheus metrics, the status page and the systemd
// notifications.
//
// Serve ties the parts together. It opens the registry (the Registry
// interface; by default the bbolt file under state_dir that only this
// process opens, or WithRegistry's), resumes the jobs that were
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
// Every transition is decided by one pure function, transition, from the
// facts the Manager gathers, and applied inside one registry update. The
// Manager's mutex guards only its in-memory state: registry writes and
// removals of job directories never run under it, so a status request
// never waits for an fsync. The Supervisor interface declares only what
// the service uses of pkg/supervise, with pkg/supervise's own Status,
// Memory and Event types; package servicetest has a simulated one for
// tests.
//
// Job states: queued -> running -> completed | failed | cancelled | paused.
// A paused or failed job can be resumed (it continues from its last
// checkpoint), a completed or failed one can retry its failed items, and a
// finished one (completed, failed, cancelled) can be deleted. A job is
// active while it is queued, running or paused; a second active job for
// the same source and target is refused.
//
// A posted spec is the job file's schema, decoded by job.ParseAPI (exact
// keys, no environment expansion), with these choices of the service:
// state_dir is the service's (<state_dir>/jobs), an id is made up when
// there is none, the memory keys the body leaves out come from the
// config's memory.defaults, memory.limit defaults to the job's share of
// memory.budget and may not exceed it, and log.mask_values in the config
// turns masking on for every job. Package confine then decides what the
// job may touch (allowed_roots, podio_api_urls, allowed_credentials,
// allow_inject) before the job is accepted (docs/design.md, "Security
// model").
//
// Every route except /, /status.js, /status.css, /healthz, /readyz and
// /v1/openapi.json needs "Authorization: Bearer <token>", compared in
// constant time; with no token configured, Serve makes one in
// <state_dir>/api-token. browser.go holds the defences against web pages
// (Host allow-list, cross-origin protection, JSON-only bodies, CSP and
// nosniff). The status page takes the token from its address fragment or
// asks for it, and keeps it in the tab's sessionStorage; it reads event
// streams with fetch, since EventSource cannot send the header. Log lines
// name the route pattern and the status, never headers, queries or bodies.
//
// GET /v1/jobs/{id} reads the job's record from the registry (a bbolt
// memory map) and, while it runs, its supervisor's in-memory snapshot; it
// never reads the job's files. Event streams get progress at most four
// times a second per job, memory samples as the supervisor takes them,
// and a subscriber that falls behind is dropped (its client reconnects and
// starts again from a snapshot).
package service
