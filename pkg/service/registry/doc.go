// Package registry is the service's durable list of jobs: a bbolt file that
// only the running service opens (bbolt holds an exclusive flock on it, so a
// second service on the same state dir fails to open it instead of sharing
// it).
//
// Each job is one JSON record keyed by its id, and a second bucket indexes
// the ids by a sequence number in creation order, so that List pages with a
// stable cursor. Create checks in the same transaction that no other active
// job has the same source and target, so two concurrent requests cannot
// both win.
package registry
