package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/memvisor/memvisor/pkg/service/registry"
)

// Claim is a job this node took from the queue: the job's lease, and the
// quota share it runs under, if it uses a shared quota.
type Claim struct {
	Record registry.Record
	Job    *Lease
	// Quotas holds a share of each quota the job uses, in key order.
	Quotas []*Lease
	// QuotaShares is how many jobs may share the quota at once. They
	// share it through Podio's own counters, which every job's rate gate
	// reads from the answers: no job is promised a fixed part of it.
	QuotaShares int
}

// Leases returns the claim's leases, for Keep.
func (c *Claim) Leases() []*Lease { return append([]*Lease{c.Job}, c.Quotas...) }

// Fence fails once either lease is lost.
func (c *Claim) Fence() error {
	if err := c.Job.Fence(); err != nil {
		return err
	}
	for _, q := range c.Quotas {
		if err := q.Fence(); err != nil {
			return err
		}
	}
	return nil
}

// Remaining returns how long from now the claim's holder may still write:
// the least time left on any of its leases.
func (c *Claim) Remaining() time.Duration {
	d := c.Job.Remaining()
	for _, q := range c.Quotas {
		d = min(d, q.Remaining())
	}
	return d
}

// Release gives up the claim's leases: after the job finished or paused,
// and its writer stopped.
func (c *Claim) Release(ctx context.Context) error {
	var errs []error
	for _, q := range c.Quotas {
		errs = append(errs, q.Release(ctx))
	}
	errs = append(errs, c.Job.Release(ctx))
	return errors.Join(errs...)
}

// claimBatch is how many candidate jobs one Claim looks at; the rest wait
// for the next call.
const claimBatch = 16

// Claim takes the oldest job that no live node owns: a queued job, or a
// running job whose owner's lease has expired (the owner died, hangs, or
// is cut off; failover). It takes the job's lease, and a share of its
// quota if it has a quota key, marks the job running on this node, and
// returns ErrNoJob when there is nothing to take.
//
// The queue is the jobs table itself, read with SELECT ... FOR UPDATE SKIP
// LOCKED: nodes claiming at once skip each other's candidates instead of
// waiting, and the lease rows, not the row locks, say who owns a job once
// the transaction ends.
func (s *Store) Claim(ctx context.Context) (*Claim, error) {
	var c *Claim
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT j.id, j.quota_keys FROM jobs j
			LEFT JOIN leases l ON l.name = 'job/' || j.id
			WHERE j.status IN ('queued', 'running') AND (l.name IS NULL OR l.expires_at <= now())
			  -- Jobs whose quota is all taken would fill the batch and
			  -- starve the jobs behind them.
			  AND NOT EXISTS (
				SELECT 1 FROM unnest(j.quota_keys) AS k(key)
				WHERE (SELECT count(*) FROM leases q
				       WHERE q.name LIKE 'quota/' || k.key || '/%' AND q.expires_at > now()) >= $2)
			ORDER BY j.seq LIMIT $1
			FOR UPDATE OF j SKIP LOCKED`, claimBatch, s.shares)
		if err != nil {
			return err
		}
		type cand struct {
			id     string
			quotas []string
		}
		var cands []cand
		for rows.Next() {
			var x cand
			if err := rows.Scan(&x.id, &x.quotas); err != nil {
				rows.Close()
				return err
			}
			cands = append(cands, x)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, x := range cands {
			c, err = s.claimOne(ctx, tx, x.id, x.quotas)
			if err != nil || c != nil {
				return err
			}
		}
		return ErrNoJob
	})
	if err != nil {
		if errors.Is(err, ErrNoJob) {
			return nil, ErrNoJob
		}
		return nil, fmt.Errorf("claim a job: %w", err)
	}
	return c, nil
}

// claimOne takes job id's leases inside a savepoint, so that a job whose
// quota is spent leaves no trace; it returns nil, nil for such a job.
func (s *Store) claimOne(ctx context.Context, tx pgx.Tx, id string, quotas []string) (*Claim, error) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer sp.Rollback(ctx)
	c := &Claim{QuotaShares: s.shares}
	for _, key := range quotas {
		var share *Lease
		for slot := range s.shares {
			share, err = s.acquire(ctx, sp, fmt.Sprintf("quota/%s/%d", key, slot), id)
			if err == nil {
				break
			}
			if !errors.Is(err, ErrHeld) {
				return nil, err
			}
		}
		if share == nil {
			return nil, nil
		}
		c.Quotas = append(c.Quotas, share)
	}
	c.Job, err = s.acquire(ctx, sp, jobLease(id), id)
	if errors.Is(err, ErrHeld) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	c.Record, err = scanRecord(sp.QueryRow(ctx, `SELECT seq, record FROM jobs WHERE id = $1`, id))
	if err != nil {
		return nil, err
	}
	c.Record.Status = registry.StatusRunning
	c.Record.Updated = time.Now().UTC()
	data, err := json.Marshal(&c.Record)
	if err != nil {
		return nil, err
	}
	if _, err := sp.Exec(ctx, `UPDATE jobs SET status = 'running', node = $2, record = $3, updated_at = now() WHERE id = $1`,
		id, s.node, string(data)); err != nil {
		return nil, err
	}
	if err := sp.Commit(ctx); err != nil {
		return nil, err
	}
	return c, nil
}
