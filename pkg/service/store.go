package service

import (
	"context"

	"github.com/memvisor/memvisor/pkg/service/registry"
)

// Registry is the durable list of jobs the Manager keeps. registry.DB (one
// bbolt file, single host) implements it; a shared implementation for a
// fleet of nodes implements the same contract. The record and error types
// live in pkg/service/registry so that implementations need not import
// this package.
//
// Every method is safe for concurrent use. Errors are matched with
// errors.Is against the registry package's sentinels.
type Registry interface {
	// Create adds rec as a new job and sets rec.Seq to a number larger
	// than that of every job created before it. It fails, writing
	// nothing, with registry.ErrExists if rec.ID is taken; with a
	// *registry.ConflictError (registry.ErrActivePair) if rec is active
	// and another active job has the same non-empty Pair; and with
	// registry.ErrQueueFull if maxQueued > 0, rec is queued, and
	// maxQueued jobs are queued already. The checks and the insert are
	// one atomic step, and their cost does not grow with the number of
	// jobs.
	Create(ctx context.Context, rec *registry.Record, maxQueued int) error
	// Get returns job id, or registry.ErrNotFound.
	Get(ctx context.Context, id string) (registry.Record, error)
	// Update reads job id, lets fn change it, and writes it back in one
	// atomic step, returning what it wrote. If fn returns an error,
	// nothing is written and Update returns that error. fn may be called
	// more than once (a retried transaction), so it must change nothing
	// but the record. ID and Seq keep their values whatever fn does. It
	// fails with registry.ErrNotFound, and with a *registry.ConflictError
	// if the change makes the job active (or changes its Pair while
	// active) while another active job holds its Pair.
	Update(ctx context.Context, id string, fn func(*registry.Record) error) (registry.Record, error)
	// Delete removes job id, or fails with registry.ErrNotFound.
	Delete(ctx context.Context, id string) error
	// List returns a page of jobs in Seq order, oldest first, keeping
	// only opt.Statuses when it is not empty. A cursor that the registry
	// did not return fails with registry.ErrBadCursor. A page has at
	// most opt.Limit jobs (50 when 0, never more than 1000).
	List(ctx context.Context, opt registry.ListOptions) (registry.Page, error)
	// Count returns the number of jobs in each state, without reading
	// every record.
	Count(ctx context.Context) (map[registry.Status]int, error)
	// Close releases the registry; no method may be called after it.
	Close() error
}

var _ Registry = (*registry.DB)(nil)

// allJobs returns every job in the given states, oldest first, a page at a
// time.
func allJobs(ctx context.Context, reg Registry, statuses ...registry.Status) ([]registry.Record, error) {
	var out []registry.Record
	opt := registry.ListOptions{Statuses: statuses, Limit: 1000}
	for {
		p, err := reg.List(ctx, opt)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Jobs...)
		if p.NextCursor == "" {
			return out, nil
		}
		opt.Cursor = p.NextCursor
	}
}
