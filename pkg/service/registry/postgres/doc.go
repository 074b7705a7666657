// Package postgres keeps a fleet's shared state in PostgreSQL: the job
// registry, the queue, per-job leases with a fencing epoch, Podio quota
// leases, and checkpoints (docs/design.md, "Growing past one host"). Every
// `serve` node of a fleet opens a Store on the same database; the bbolt
// registry (package registry) stays the single-host default.
//
// # Schema
//
// The tables are created by versioned migrations embedded from
// migrations/NNNN_name.sql, applied at start-up by Migrate (New calls it)
// and recorded in schema_migrations. Nodes that start at once serialize on
// an advisory lock, so each migration runs once; a database migrated by a
// newer memvisor is refused with ErrSchemaNewer.
//
// # Registry
//
// Store implements pkg/service's Registry contract (Create with a queue
// bound, Get, Update, Delete, List, Count, Close), as the bbolt registry
// does. Each record is a
// JSON column beside the few columns SQL needs (status, pair, seq). A
// partial unique index allows one active job per source and target pair,
// and the primary key one job per id, so two nodes that receive the same
// request at once cannot both accept it.
//
// # Queue: SELECT ... FOR UPDATE SKIP LOCKED, not River
//
// Claim takes the oldest job that no live lease covers: a queued job, or a
// running job whose owner's lease ran out (failover). It reads candidates
// with FOR UPDATE SKIP LOCKED, so claiming nodes never wait on each other,
// and takes the job's lease in the same transaction. River was the
// alternative; it was not chosen because a memvisor job is not a short
// task run by a worker function: it is a long-lived runner process that
// must hold a fenced lease for hours, resume from a checkpoint, and be
// paused and resumed by the API. River would add its own job table and
// states beside the registry's, and the lease and the fence would still
// have to be written here. One table serves as both registry and queue.
//
// # Leases: rows with a fencing epoch, not advisory locks
//
// A lease is a row (name, node, epoch, expires_at). Acquiring it succeeds
// only when the row is absent or expired by the database's clock, and adds
// one to the epoch; renewing it succeeds only while it is unexpired and
// the epoch is still the caller's. Session advisory locks were rejected:
// they belong to one connection, so a pool that reconnects silently loses
// them while the node keeps writing, a node paused by SIGSTOP keeps them
// for as long as its TCP connection looks alive (often far longer than
// lease_ttl), and they carry no epoch that a later write could be checked
// against. A lease row expires on time whatever the old owner does, and
// its epoch fences the old owner's writes in SQL.
//
// Fencing works at two levels:
//
//   - Lease.Fence is a memory-only check, made before each target write
//     (the runner keeps the deadline Claim.Remaining gives it). Its deadline is the local time at which the last
//     successful renewal was sent plus nine tenths of lease_ttl. The
//     database set the expiry later, from the time the request arrived, so
//     an owner that stops renewing stops writing before any other node can
//     acquire the lease: within one write.
//   - SaveCheckpoint writes only while the lease row still holds the
//     writer's epoch and is unexpired (INSERT ... SELECT ... FOR SHARE on
//     the lease row, so a takeover cannot interleave). AppendFailed checks
//     the same way. A node whose clock lied to Fence is still refused
//     here.
//
// A new owner always waits the old lease out: Acquire returns a *HeldError
// with the time remaining, even to the same node id, because an earlier
// run of that node may still be alive and writing.
//
// # Shared Podio quota
//
// Podio counts its rate limit per user per API key. A job gets a quota key
// for each set of Podio credentials it uses, source and target (QuotaKey:
// a SHA-256 of the API URL, the client id and the principal, never a
// secret), and Claim takes, for each key, one of QuotaShares quota leases
// (quota/<key>/<slot>) with the job's lease, in key order. With
// the default of one share, two jobs with the same credentials never run
// at once across the fleet; with N shares, N run and each must hold its
// rate to 1/N of the quota.
//
// # Failure log
//
// A job's failed items are rows of failed_items, appended under the job's
// lease with the same epoch check as checkpoints. A checkpoint records the
// log's length at its commit, so a new owner drops the failures recorded
// after it: their items are processed again.
//
// # Notices
//
// Notify and Listen carry small messages between nodes over one
// LISTEN/NOTIFY channel: a pause or cancel for the node that owns a job,
// or a job's events for SSE clients connected to another node. A Listener
// holds a connection of its own and reconnects with backoff; since
// notices sent while it was away are lost, it then delivers a resync
// notice, and its reader re-reads the tables.
//
// # Use in serve
//
// With postgres_url set, serve (pkg/service) opens a Store as its
// registry, loops on Claim while it has a free runner slot, Keeps the
// claim's leases, kills the job's runner once Claim.Fence fails, and
// Releases the claim once the runner has stopped. It shows Owner as a
// job's node and relays pause, cancel and job changes with Notify and
// Listen. A claimed job's runner commits through serve's fleet ledger:
// AppendFailed and SaveCheckpoint under the claim's lease, and before
// each runner starts, LoadCheckpoint and FailedItems bring the node's own
// state directory in step with the fleet.
//
// ErrQueueFull is registry.ErrQueueFull.
package postgres
