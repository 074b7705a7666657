package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	"github.com/memvisor/memvisor/pkg/checkpoint"
)

// snapshotChunk is the size of one stored piece of a snapshot file.
const snapshotChunk = 1 << 20

// SaveSnapshot stores a job's cache snapshot, replacing the one before:
// meta and the contents of its files (parts[0] the match index, parts[1]
// the external ids), read in pieces, so the node never holds a file in
// memory. It writes only while l is current.
func (s *Store) SaveSnapshot(ctx context.Context, l *Lease, meta checkpoint.Snapshot, parts [2]io.Reader) error {
	body, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("encode snapshot of job %s: %w", l.holder, err)
	}
	err = s.fenced(ctx, l, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM snapshot_chunks WHERE job_id = $1`, l.holder); err != nil {
			return err
		}
		buf := make([]byte, snapshotChunk)
		for part, r := range parts {
			n := 0
			var rerr error
			done := false
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"snapshot_chunks"}, []string{"job_id", "part", "n", "data"},
				pgx.CopyFromFunc(func() ([]any, error) {
					if done {
						return nil, nil
					}
					k, err := io.ReadFull(r, buf)
					if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
						done = true
						if k == 0 {
							return nil, nil
						}
					} else if err != nil {
						rerr = err
						return nil, err
					}
					row := []any{l.holder, part, n, buf[:k]}
					n++
					return row, nil
				}))
			if rerr != nil {
				return fmt.Errorf("read snapshot part %d: %w", part, rerr)
			}
			if err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO snapshots (job_id, epoch, meta, written_at) VALUES ($1, $2, $3, now())
			ON CONFLICT (job_id) DO UPDATE SET epoch = excluded.epoch, meta = excluded.meta, written_at = excluded.written_at`,
			l.holder, l.epoch, string(body))
		return err
	})
	if err != nil {
		return fmt.Errorf("save snapshot %s of job %s: %w", meta.File, l.holder, err)
	}
	return nil
}

// LoadSnapshot writes job id's stored snapshot files to parts, piece by
// piece, and returns its meta, or checkpoint.ErrNotExist when it has
// none. It reads in one transaction, so a snapshot replaced meanwhile is
// never mixed with the one before.
func (s *Store) LoadSnapshot(ctx context.Context, id string, parts [2]io.Writer) (checkpoint.Snapshot, error) {
	var meta checkpoint.Snapshot
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var body []byte
		err := tx.QueryRow(ctx, `SELECT meta FROM snapshots WHERE job_id = $1`, id).Scan(&body)
		if errors.Is(err, pgx.ErrNoRows) {
			return checkpoint.ErrNotExist
		}
		if err != nil {
			return err
		}
		if err := json.Unmarshal(body, &meta); err != nil {
			return fmt.Errorf("decode meta: %w", err)
		}
		for part, w := range parts {
			// One piece at a time: a snapshot is too big to read whole.
			for n := 0; ; n++ {
				var data []byte
				err := tx.QueryRow(ctx, `SELECT data FROM snapshot_chunks WHERE job_id = $1 AND part = $2 AND n = $3`, id, part, n).Scan(&data)
				if errors.Is(err, pgx.ErrNoRows) {
					break
				}
				if err != nil {
					return err
				}
				if _, err := w.Write(data); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return checkpoint.Snapshot{}, fmt.Errorf("load snapshot of job %s: %w", id, err)
	}
	return meta, nil
}
