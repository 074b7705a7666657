package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/memvisor/memvisor/pkg/checkpoint"
)

// SaveCheckpoint commits cp for the job that l leases, and cuts the job's
// failure log to its first cp.FailedRecords records (any beyond them were
// logged by a runner that stopped before its commit). It checks the lease
// locally (Fence), then lets the database check the epoch in the one
// statement that writes: it writes only while l's epoch is the lease's
// current one and unexpired, and the lease row is share-locked until the
// commit, so no takeover can slip between the check and the write. One
// statement is one round trip: a fleet job commits every batch. A refused
// write returns ErrLeaseLost and marks l lost.
func (s *Store) SaveCheckpoint(ctx context.Context, l *Lease, cp checkpoint.Checkpoint) error {
	if err := l.Fence(); err != nil {
		return fmt.Errorf("save checkpoint %d of job %s: %w", cp.Seq, cp.JobID, err)
	}
	if jobLease(cp.JobID) != l.name {
		return fmt.Errorf("save checkpoint of job %s under lease %s: the lease is another job's", cp.JobID, l.name)
	}
	body, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint of job %s: %w", cp.JobID, err)
	}
	tag, err := s.pool.Exec(ctx, `
		WITH live AS (
			SELECT 1 FROM leases
			WHERE name = $5 AND epoch = $2 AND node = $6 AND expires_at > now()
			FOR SHARE
		), cut AS (
			DELETE FROM failed_items
			WHERE job_id = $1 AND n > $7 AND EXISTS (SELECT 1 FROM live)
		)
		INSERT INTO checkpoints (job_id, epoch, seq, body, written_at, failed)
		SELECT $1, $2, $3, $4, now(), $7 FROM live
		ON CONFLICT (job_id) DO UPDATE
			SET epoch = excluded.epoch, seq = excluded.seq, body = excluded.body,
			    written_at = excluded.written_at, failed = excluded.failed`,
		cp.JobID, l.epoch, cp.Seq, string(body), l.name, s.node, cp.FailedRecords)
	if err != nil {
		return fmt.Errorf("save checkpoint %d of job %s: %w", cp.Seq, cp.JobID, err)
	}
	if tag.RowsAffected() == 0 {
		l.markLost()
		return fmt.Errorf("save checkpoint %d of job %s at epoch %d: refused: %w", cp.Seq, cp.JobID, l.epoch, ErrLeaseLost)
	}
	return nil
}

// Stored is a checkpoint as the database holds it.
type Stored struct {
	checkpoint.Checkpoint
	// Epoch is the lease epoch that wrote it.
	Epoch int64
	// Failed is the length of the job's failure log at the commit.
	Failed int64
}

// LoadCheckpoint returns job id's last checkpoint, or checkpoint.ErrNotExist.
func (s *Store) LoadCheckpoint(ctx context.Context, id string) (Stored, error) {
	var (
		st   Stored
		body []byte
	)
	err := s.pool.QueryRow(ctx, `SELECT epoch, failed, body FROM checkpoints WHERE job_id = $1`, id).Scan(&st.Epoch, &st.Failed, &body)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, fmt.Errorf("load checkpoint of job %s: %w", id, checkpoint.ErrNotExist)
	}
	if err != nil {
		return st, fmt.Errorf("load checkpoint of job %s: %w", id, err)
	}
	if err := json.Unmarshal(body, &st.Checkpoint); err != nil {
		return st, fmt.Errorf("load checkpoint of job %s: %w", id, &checkpoint.CorruptError{Path: "postgres:checkpoints/" + id, Reason: err.Error()})
	}
	return st, nil
}

// liveLease is the condition, on a row of leases locked FOR SHARE, that
// the writer holding epoch $2 of lease $1 on node $3 still owns it.
const liveLease = `SELECT 1 FROM leases WHERE name = $1 AND epoch = $2 AND node = $3 AND expires_at > now() FOR SHARE`

// fenced runs fn in a transaction that first checks, and share-locks, the
// writer's lease: fn runs only while l is still the lease's current epoch.
func (s *Store) fenced(ctx context.Context, l *Lease, fn func(pgx.Tx) error) error {
	if err := l.Fence(); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, liveLease, l.name, l.epoch, s.node).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			l.markLost()
			return fmt.Errorf("%s epoch %d: %w", l.name, l.epoch, ErrLeaseLost)
		}
		if err != nil {
			return err
		}
		return fn(tx)
	})
}

// AppendFailed adds records to the failure log of the job that l leases,
// as records after+1, after+2, ..., first dropping any records beyond
// after, and returns the log's new length. It writes only while l is
// current.
func (s *Store) AppendFailed(ctx context.Context, l *Lease, after int64, records []json.RawMessage) (int64, error) {
	if after < 0 {
		return 0, fmt.Errorf("record failures of job %s after record %d: negative position", l.holder, after)
	}
	n := after
	err := s.fenced(ctx, l, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM failed_items WHERE job_id = $1 AND n > $2`, l.holder, after); err != nil {
			return err
		}
		var have int64
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM failed_items WHERE job_id = $1`, l.holder).Scan(&have); err != nil {
			return err
		}
		if have != after {
			return fmt.Errorf("the log holds %d records, not %d: %w", have, after, ErrFailedGap)
		}
		rows := make([][]any, len(records))
		for i, r := range records {
			n++
			rows[i] = []any{l.holder, n, l.epoch, string(r)}
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"failed_items"}, []string{"job_id", "n", "epoch", "record"}, pgx.CopyFromRows(rows))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("record failures of job %s: %w", l.holder, err)
	}
	return n, nil
}

// ErrFailedGap means a failure record was appended after a position the
// log has not reached: the writer's count and the log disagree.
var ErrFailedGap = errors.New("failure log position out of step")

// FailedItems returns up to limit records of job id's failure log after
// position after, and the position of the last one returned.
func (s *Store) FailedItems(ctx context.Context, id string, after int64, limit int) ([]json.RawMessage, int64, error) {
	limit = min(max(limit, 1), 1000)
	rows, err := s.pool.Query(ctx, `SELECT n, record FROM failed_items WHERE job_id = $1 AND n > $2 ORDER BY n LIMIT $3`, id, after, limit)
	if err != nil {
		return nil, after, fmt.Errorf("read failures of job %s: %w", id, err)
	}
	defer rows.Close()
	var out []json.RawMessage
	last := after
	for rows.Next() {
		var rec []byte
		if err := rows.Scan(&last, &rec); err != nil {
			return nil, after, fmt.Errorf("read failures of job %s: %w", id, err)
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, after, fmt.Errorf("read failures of job %s: %w", id, err)
	}
	return out, last, nil
}
