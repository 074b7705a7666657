// Package runner hosts one job in a runner process. Host implements
// plugin.Runner, so cmd/runner serves it to the supervisor over gRPC, and
// `runner run` drives the same Host directly in the foreground.
//
// A Host takes the job's lock (<state_dir>/<id>/job.lock, an flock the
// kernel releases when the process dies, so two runners never work on one
// job), opens the job's connectors, and runs pkg/batcher in the
// background. It reports memory from inside (runtime/metrics, and RSS from
// /proc/self/statm), forces a collection on request, and drains: the batch
// in flight finishes, the checkpoint and a cache snapshot are committed,
// and the job stops so a fresh runner can resume it.
//
// It also carries out the job file's inject: block, for the examples and
// the tests. A one-off fault (crash_at_item, hang_at_item, spike_at_item)
// records in the state directory that it fired, before it fires, so a
// resumed runner does not fire it again; leak_bytes_per_item leaks in
// every runner. A hang blocks the job's goroutines and every RPC handler,
// so the supervisor sees a runner that no longer answers.
package runner
