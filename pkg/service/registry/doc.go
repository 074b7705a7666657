// Package registry holds the types of the service's durable list of jobs
// (Record, Status, ListOptions, the errors) and its single-host
// implementation, DB: a bbolt file that only the running service opens
// (bbolt holds an exclusive flock on it, so a second service on the same
// state dir fails to open it instead of sharing it). The interface the
// service uses, and that every implementation keeps, is
// service.Registry in pkg/service.
//
// Each job is one JSON record keyed by its id. A second bucket indexes the
// ids by a sequence number in creation order, so that List pages with a
// stable cursor, and another by state, so that a page of one state (the
// scheduler's oldest queued job) reads only jobs in that state. A third
// maps a hash of each active job's Pair to its id, and a fourth counts the
// jobs in each state, so that Create checks for an
// active job on the same source and target, and for a full queue, in the
// same transaction and without reading any other record: two concurrent
// requests cannot both win, and a create costs the same with ten jobs or
// ten thousand.
package registry
