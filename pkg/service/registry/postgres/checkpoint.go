package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/memvisor/memvisor/pkg/checkpoint"
)

// SaveCheckpoint commits cp for the job that l leases. It first checks the
// lease locally (Fence), then lets the database check the epoch in the same
// statement that writes: the write happens only while l's epoch is the
// lease's current one and unexpired, and the lease row is share-locked
// until the commit, so no takeover can slip between the check and the
// write. A refused write returns ErrLeaseLost and marks l lost.
func (s *Store) SaveCheckpoint(ctx context.Context, l *Lease, cp checkpoint.Checkpoint) error {
	if err := l.Fence(); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	if jobLease(cp.JobID) != l.name {
		return fmt.Errorf("save checkpoint of job %s under lease %s: the lease is another job's", cp.JobID, l.name)
	}
	body, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint of job %s: %w", cp.JobID, err)
	}
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO checkpoints (job_id, epoch, seq, body, written_at)
		SELECT $1, $2, $3, $4, now() FROM (
			SELECT 1 FROM leases
			WHERE name = $5 AND epoch = $2 AND node = $6 AND expires_at > now()
			FOR SHARE) AS live
		ON CONFLICT (job_id) DO UPDATE
			SET epoch = excluded.epoch, seq = excluded.seq, body = excluded.body, written_at = excluded.written_at
			WHERE checkpoints.epoch <= excluded.epoch`,
		cp.JobID, l.epoch, cp.Seq, string(body), l.name, s.node)
	if err != nil {
		return fmt.Errorf("save checkpoint of job %s: %w", cp.JobID, err)
	}
	if tag.RowsAffected() == 0 {
		l.markLost()
		return fmt.Errorf("save checkpoint of job %s at epoch %d: refused: %w", cp.JobID, l.epoch, ErrLeaseLost)
	}
	return nil
}

// LoadCheckpoint returns job id's last checkpoint and the epoch that wrote
// it, or checkpoint.ErrNotExist.
func (s *Store) LoadCheckpoint(ctx context.Context, id string) (checkpoint.Checkpoint, int64, error) {
	var (
		cp    checkpoint.Checkpoint
		epoch int64
		body  []byte
	)
	err := s.pool.QueryRow(ctx, `SELECT epoch, body FROM checkpoints WHERE job_id = $1`, id).Scan(&epoch, &body)
	if errors.Is(err, pgx.ErrNoRows) {
		return cp, 0, fmt.Errorf("load checkpoint of job %s: %w", id, checkpoint.ErrNotExist)
	}
	if err != nil {
		return cp, 0, fmt.Errorf("load checkpoint of job %s: %w", id, err)
	}
	if err := json.Unmarshal(body, &cp); err != nil {
		return cp, 0, fmt.Errorf("load checkpoint of job %s: %w", id, &checkpoint.CorruptError{Path: "postgres:checkpoints/" + id, Reason: err.Error()})
	}
	return cp, epoch, nil
}
