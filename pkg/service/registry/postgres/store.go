package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/service/registry"
)

// Options configure a Store.
type Options struct {
	// Node names this node in leases and in a job's view; required.
	Node string
	// LeaseTTL is how long a lease lives without a renewal; 15s if zero.
	LeaseTTL time.Duration
	// QuotaKeys returns the quota keys of a job: one per set of Podio
	// credentials it uses (QuotaKey hashes credentials into a key), none
	// for a job that shares no quota. Nil: no job shares a quota.
	QuotaKeys func(registry.Record) ([]string, error)
	// QuotaShares is how many jobs with one quota key may run at once
	// across the fleet, each with its share of the quota; 1 if zero.
	QuotaShares int
	// Logger gets the keeper's renewal failures and lost leases; zerolog's
	// Nop logger if zero.
	Logger zerolog.Logger
	// Now is the node's clock for its local lease deadlines (monotonic);
	// time.Now if nil. Lease expiry itself is on the database's clock.
	Now func() time.Time
}

// DefaultLeaseTTL is the lease_ttl default.
const DefaultLeaseTTL = 15 * time.Second

// Store is the registry, queue, leases and checkpoints of a fleet, in
// PostgreSQL. It is safe for concurrent use, by many nodes at once.
type Store struct {
	pool      *pgxpool.Pool
	ownsPool  bool
	node      string
	ttl       time.Duration
	quotaKeys func(registry.Record) ([]string, error)
	shares    int
	now       func() time.Time
	log       zerolog.Logger
}

// Open connects to the database at dsn, migrates its schema and returns a
// Store that owns the connection pool.
func Open(ctx context.Context, dsn string, opt Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message can quote the DSN, password included.
		return nil, errors.New("postgres_url: cannot parse it as a PostgreSQL URL or key=value string")
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	s, err := New(ctx, pool, opt)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.ownsPool = true
	return s, nil
}

// New migrates the schema through pool and returns a Store on it. The
// caller keeps the pool.
func New(ctx context.Context, pool *pgxpool.Pool, opt Options) (*Store, error) {
	if opt.Node == "" {
		return nil, errors.New("postgres registry: node_id must not be empty")
	}
	s := &Store{pool: pool, node: opt.Node, ttl: opt.LeaseTTL, quotaKeys: opt.QuotaKeys, shares: opt.QuotaShares, now: opt.Now, log: opt.Logger}
	if s.ttl <= 0 {
		s.ttl = DefaultLeaseTTL
	}
	if s.shares <= 0 {
		s.shares = 1
	}
	if s.now == nil {
		s.now = time.Now
	}
	if _, err := Migrate(ctx, pool); err != nil {
		return nil, err
	}
	return s, nil
}

// Close closes the pool if the Store opened it.
func (s *Store) Close() error {
	if s.ownsPool {
		s.pool.Close()
	}
	return nil
}

// Node returns this node's name.
func (s *Store) Node() string { return s.node }

// LeaseTTL returns the lease lifetime.
func (s *Store) LeaseTTL() time.Duration { return s.ttl }

const activeStatuses = "('queued', 'running', 'paused')"

// ErrQueueFull is returned by Create when maxQueued jobs are queued
// already: registry.ErrQueueFull, which the API answers with 429.
var ErrQueueFull = registry.ErrQueueFull

// queueLock is the advisory lock key that makes Create's queue bound and
// its insert one step across nodes ("mvqueue" in ASCII).
const queueLock int64 = 0x6d767175657565

// Create adds rec as a new job and sets rec.Seq. It fails, writing nothing,
// with registry.ErrExists if the id is taken; with a
// *registry.ConflictError (registry.ErrActivePair) if rec is active and an
// active job has the same Pair; and with ErrQueueFull if maxQueued > 0,
// rec is queued and maxQueued jobs are queued already. The database
// decides, so two nodes racing on one id or pair cannot both win.
func (s *Store) Create(ctx context.Context, rec *registry.Record, maxQueued int) error {
	if !rec.Status.Valid() {
		return fmt.Errorf("create job %s: unknown status %q", rec.ID, rec.Status)
	}
	qk := []string{}
	if s.quotaKeys != nil {
		keys, err := s.quotaKeys(*rec)
		if err != nil {
			return fmt.Errorf("create job %s: quota key: %w", rec.ID, err)
		}
		// Sorted and unique: claims take quota leases in one order, so two
		// claims cannot deadlock on them.
		for _, k := range keys {
			if k != "" {
				qk = append(qk, k)
			}
		}
		slices.Sort(qk)
		qk = slices.Compact(qk)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode job %s: %w", rec.ID, err)
	}
	bounded := maxQueued > 0 && rec.Status == registry.StatusQueued
	var seq int64
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if bounded {
			// Creates that count the queue take turns; others need not.
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", queueLock); err != nil {
				return err
			}
		}
		err := tx.QueryRow(ctx, `
			INSERT INTO jobs (id, pair, status, quota_keys, record) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (id) DO NOTHING RETURNING seq`,
			rec.ID, rec.Pair, string(rec.Status), qk, string(data)).Scan(&seq)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return registry.ErrExists
		case err != nil:
			return err
		}
		if bounded {
			var n int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM jobs WHERE status = 'queued'`).Scan(&n); err != nil {
				return err
			}
			if n > maxQueued {
				return fmt.Errorf("%w (%d jobs are queued)", ErrQueueFull, maxQueued)
			}
		}
		return nil
	})
	if err != nil {
		// Named after the transaction ended: holding its connection while
		// asking another of the pool could exhaust the pool.
		return fmt.Errorf("create job %s: %w", rec.ID, s.pairConflict(ctx, err, rec.Pair, rec.ID))
	}
	rec.Seq = uint64(seq)
	return nil
}

// pairConflict turns a violation of jobs_active_pair into a ConflictError
// naming the job that holds the pair.
func (s *Store) pairConflict(ctx context.Context, err error, pair, except string) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23505" || pe.ConstraintName != "jobs_active_pair" {
		return err
	}
	// The violation's own message says nothing a caller needs.
	var holder string
	qerr := s.pool.QueryRow(ctx, `SELECT id FROM jobs WHERE pair = $1 AND id <> $2 AND status IN `+activeStatuses+` LIMIT 1`,
		pair, except).Scan(&holder)
	if qerr != nil {
		// The holder finished meanwhile; the conflict stands for this call.
		return registry.ErrActivePair
	}
	return &registry.ConflictError{ID: holder}
}

func scanRecord(row pgx.Row) (registry.Record, error) {
	var (
		seq  int64
		data []byte
		rec  registry.Record
	)
	if err := row.Scan(&seq, &data); err != nil {
		return rec, err
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, fmt.Errorf("decode job: %w", err)
	}
	rec.Seq = uint64(seq)
	return rec, nil
}

// Get returns the job id.
func (s *Store) Get(ctx context.Context, id string) (registry.Record, error) {
	rec, err := scanRecord(s.pool.QueryRow(ctx, `SELECT seq, record FROM jobs WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return rec, fmt.Errorf("get job %s: %w", id, registry.ErrNotFound)
	}
	if err != nil {
		return rec, fmt.Errorf("get job %s: %w", id, err)
	}
	return rec, nil
}

// Update reads job id, lets fn change it, and writes it back in one
// transaction, with the row locked against other nodes. If fn returns an
// error, nothing is written. A change that makes the job active, or
// changes its Pair while active, while another active job holds the pair
// fails with a *registry.ConflictError: the unique index checks every
// write, so no separate "reactivate" is needed.
func (s *Store) Update(ctx context.Context, id string, fn func(*registry.Record) error) (registry.Record, error) {
	var rec registry.Record
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		rec, err = scanRecord(tx.QueryRow(ctx, `SELECT seq, record FROM jobs WHERE id = $1 FOR UPDATE`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("update job %s: %w", id, registry.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("update job %s: %w", id, err)
		}
		seq := rec.Seq
		if err := fn(&rec); err != nil {
			return err
		}
		rec.ID, rec.Seq = id, seq
		if !rec.Status.Valid() {
			return fmt.Errorf("update job %s: unknown status %q", id, rec.Status)
		}
		data, err := json.Marshal(&rec)
		if err != nil {
			return fmt.Errorf("encode job %s: %w", id, err)
		}
		_, err = tx.Exec(ctx, `UPDATE jobs SET pair = $2, status = $3, record = $4, updated_at = now() WHERE id = $1`,
			id, rec.Pair, string(rec.Status), string(data))
		if err != nil {
			return fmt.Errorf("update job %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return rec, s.pairConflict(ctx, err, rec.Pair, id)
	}
	return rec, nil
}

// Delete removes job id, with its checkpoint and lease.
func (s *Store) Delete(ctx context.Context, id string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM jobs WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("delete job %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("delete job %s: %w", id, registry.ErrNotFound)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM leases WHERE name = $1`, jobLease(id)); err != nil {
			return fmt.Errorf("delete job %s: %w", id, err)
		}
		return nil
	})
}

// List returns a page of jobs in creation order. The cursor is the seq of
// the next job, as in the bbolt registry.
func (s *Store) List(ctx context.Context, opt registry.ListOptions) (registry.Page, error) {
	limit := opt.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 1000)
	var start int64 = 1
	if opt.Cursor != "" {
		n, err := strconv.ParseInt(opt.Cursor, 10, 64)
		if err != nil || n <= 0 {
			return registry.Page{}, fmt.Errorf("list jobs: %w %q", registry.ErrBadCursor, opt.Cursor)
		}
		start = n
	}
	statuses := make([]string, len(opt.Statuses))
	for i, st := range opt.Statuses {
		statuses[i] = string(st)
	}
	rows, err := s.pool.Query(ctx, `
		SELECT seq, record FROM jobs
		WHERE seq >= $1 AND (cardinality($2::text[]) = 0 OR status = ANY($2))
		ORDER BY seq LIMIT $3`, start, statuses, limit+1)
	if err != nil {
		return registry.Page{}, fmt.Errorf("list jobs: %w", err)
	}
	defer rows.Close()
	var page registry.Page
	for rows.Next() {
		rec, err := scanRecord(rows)
		if err != nil {
			return registry.Page{}, fmt.Errorf("list jobs: %w", err)
		}
		if len(page.Jobs) == limit {
			page.NextCursor = strconv.FormatUint(rec.Seq, 10)
			break
		}
		page.Jobs = append(page.Jobs, rec)
	}
	if err := rows.Err(); err != nil {
		return registry.Page{}, fmt.Errorf("list jobs: %w", err)
	}
	return page, nil
}

// Count returns the number of jobs in each state, from the status column
// alone.
func (s *Store) Count(ctx context.Context) (map[registry.Status]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT status, count(*) FROM jobs GROUP BY status`)
	if err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	defer rows.Close()
	n := map[registry.Status]int{}
	for rows.Next() {
		var st string
		var c int
		if err := rows.Scan(&st, &c); err != nil {
			return nil, fmt.Errorf("count jobs: %w", err)
		}
		n[registry.Status(st)] = c
	}
	return n, rows.Err()
}

// Owner returns the node that holds job id's lease, and whether the lease
// is live; it is the `node` of a job's view.
func (s *Store) Owner(ctx context.Context, id string) (node string, live bool, err error) {
	err = s.pool.QueryRow(ctx, `SELECT node, expires_at > now() FROM leases WHERE name = $1`, jobLease(id)).Scan(&node, &live)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("owner of job %s: %w", id, err)
	}
	return node, live, nil
}
