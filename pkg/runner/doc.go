// Package runner hosts one job in a runner process. Host implements
// plugin.Runner, so cmd/runner serves it to the supervisor over gRPC, and
// `runner run` drives the same Host directly in the foreground.
//
// A Host takes the job's lock (<state_dir>/<id>/job.lock, an flock the
// kernel releases when the process dies, so two runners never work on one
// job), opens the job's connectors, and runs pkg/batcher in the
// background. It reports memory from inside (runtime/metrics, and RSS from
// /proc/self/statm), forces a collection on request, and drains: no write
// is issued after the request, the writes in flight finish, the checkpoint
// (with the done items of the partial batch) and a cache snapshot are
// committed, and the job stops so a fresh runner can resume it.
//
// The memory guard (guard.go) watches the runner's own RSS between the
// supervisor's samples: every write is counted, and every 1,024th write,
// every commit and every 10 ms its goroutine reads /proc/self/statm. Above
// the GC line it collects once, in a goroutine of its own, and again only
// once usage has been below the line. Above the drain line it drains the
// job the way the Drain RPC does, and the job ends drained with the
// reason "memory guard"; but first it waits for a collection in progress,
// or collects if none was tried since usage was below the GC line, so a
// spike that a collection frees costs no restart. When usage climbs (the
// median rise over the last five 100 ms windows: a leak), both lines are
// compared with usage plus that climb over the time a drain takes
// (250 ms), so the collection and then the drain start early enough
// that the leak's climb during them stays under the kill line; the
// order of the rules is the same, so a spike, however slowly it fills,
// still gets the collection that frees it. GuardFor derives both
// lines from a budget and the job's memory policy, for the supervisor and
// for `runner run` alike.
//
// It also carries out the job file's inject: block, for the examples and
// the tests. A one-off fault (crash_at_item, hang_at_item, spike_at_item)
// records in the state directory that it fired, before it fires, so a
// resumed runner does not fire it again; leak_bytes_per_item and
// leak_bytes_per_second leak in every runner, and slow_write slows every
// write. A hang blocks the job's goroutines and every RPC handler,
// so the supervisor sees a runner that no longer answers.
package runner
