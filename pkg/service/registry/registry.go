package registry

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Status is where a job stands, as the API reports it.
type Status string

// The job states.
const (
	StatusQueued    Status = "queued"
	StatusRunning   Status = "running"
	StatusPaused    Status = "paused"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
)

// Statuses lists every state, in lifecycle order.
var Statuses = []Status{StatusQueued, StatusRunning, StatusPaused, StatusCompleted, StatusFailed, StatusCancelled}

// Valid reports whether s is a known state.
func (s Status) Valid() bool {
	for _, x := range Statuses {
		if s == x {
			return true
		}
	}
	return false
}

// Finished reports whether s is an end state.
func (s Status) Finished() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Active reports whether a job in state s still owns its source and target.
func (s Status) Active() bool { return !s.Finished() }

// Counts are the item counters last known for a job.
type Counts struct {
	Total            int64            `json:"total"`
	TotalKnown       bool             `json:"total_known"`
	Processed        int64            `json:"processed"`
	Created          int64            `json:"created"`
	Updated          int64            `json:"updated"`
	Skipped          int64            `json:"skipped"`
	Failed           int64            `json:"failed"`
	Offset           int64            `json:"offset"`
	Batches          int64            `json:"batches"`
	ErrorsByCategory map[string]int64 `json:"errors_by_category,omitempty"`
}

// Restarts counts runner restarts by kind.
type Restarts struct {
	Graceful int64 `json:"graceful"`
	Crash    int64 `json:"crash"`
	Hang     int64 `json:"hang"`
	Kill     int64 `json:"kill"`
}

// Record is one job.
type Record struct {
	ID  string `json:"id"`
	Seq uint64 `json:"seq"`
	// Spec is the job spec as the service will run it (job.Spec as JSON).
	Spec json.RawMessage `json:"spec"`
	// Pair identifies the source and target; see Create.
	Pair   string `json:"pair"`
	Status Status `json:"status"`
	// RetryFailed makes the next start process failed.jsonl again.
	RetryFailed bool `json:"retry_failed,omitempty"`
	// Reason says why the job is in its state (a failure, a shutdown).
	Reason string `json:"reason,omitempty"`

	Counts      Counts   `json:"counts"`
	Restarts    Restarts `json:"restarts"`
	GCRequests  int64    `json:"gc_requests"`
	PeakRSS     uint64   `json:"peak_rss,omitempty"`
	BudgetBytes uint64   `json:"budget_bytes,omitempty"`
	// Runs counts the supervisor runs of the job (starts and resumes).
	Runs int `json:"runs"`

	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
}

// Errors returned by the registry, matched with errors.Is.
var (
	ErrNotFound = errors.New("job not found")
	ErrExists   = errors.New("job id already exists")
	// ErrActivePair means another active job has the same source and
	// target.
	ErrActivePair = errors.New("an active job already has the same source and target")
	ErrBadCursor  = errors.New("bad cursor")
	ErrLocked     = errors.New("registry is open in another process")
)

// ConflictError names the active job that holds a pair.
type ConflictError struct{ ID string }

func (e *ConflictError) Error() string { return fmt.Sprintf("%v: job %s", ErrActivePair, e.ID) }
func (e *ConflictError) Unwrap() error { return ErrActivePair }

var (
	bucketJobs  = []byte("jobs")
	bucketOrder = []byte("order")
)

// DB is an open registry.
type DB struct {
	db *bolt.DB
}

// Open opens or creates the registry file at path. It fails with ErrLocked
// within timeout when another process has it open.
func Open(path string, timeout time.Duration) (*DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open registry %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open registry %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketJobs, bucketOrder} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create registry buckets: %w", err)
	}
	return &DB{db: db}, nil
}

// Close closes the file.
func (d *DB) Close() error { return d.db.Close() }

// Create adds a new job. It fails with ErrExists if the id is taken, and
// with a *ConflictError (ErrActivePair) if an active job has the same Pair.
// It sets Seq.
func (d *DB) Create(rec *Record) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		if jobs.Get([]byte(rec.ID)) != nil {
			return fmt.Errorf("create job %s: %w", rec.ID, ErrExists)
		}
		if err := activeOnPair(jobs, rec.Pair, ""); err != nil {
			return fmt.Errorf("create job %s: %w", rec.ID, err)
		}
		order := tx.Bucket(bucketOrder)
		seq, err := order.NextSequence()
		if err != nil {
			return err
		}
		rec.Seq = seq
		if err := order.Put(seqKey(seq), []byte(rec.ID)); err != nil {
			return err
		}
		return put(jobs, rec)
	})
}

// Get returns the job id.
func (d *DB) Get(id string) (Record, error) {
	var rec Record
	err := d.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketJobs).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("get job %s: %w", id, ErrNotFound)
		}
		return json.Unmarshal(v, &rec)
	})
	return rec, err
}

// Update reads job id, lets fn change it, and writes it back in one
// transaction. If fn returns an error, nothing is written.
func (d *DB) Update(id string, fn func(*Record) error) (Record, error) {
	var rec Record
	err := d.db.Update(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		v := jobs.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("update job %s: %w", id, ErrNotFound)
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode job %s: %w", id, err)
		}
		if err := fn(&rec); err != nil {
			return err
		}
		rec.ID = id
		return put(jobs, &rec)
	})
	return rec, err
}

// Delete removes job id.
func (d *DB) Delete(id string) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		v := jobs.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("delete job %s: %w", id, ErrNotFound)
		}
		var rec Record
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode job %s: %w", id, err)
		}
		if err := tx.Bucket(bucketOrder).Delete(seqKey(rec.Seq)); err != nil {
			return err
		}
		return jobs.Delete([]byte(id))
	})
}

// ListOptions selects a page of jobs.
type ListOptions struct {
	// Statuses keeps only jobs in one of these states; empty keeps all.
	Statuses []Status
	// Cursor is the NextCursor of the previous page; empty starts at the
	// oldest job.
	Cursor string
	// Limit is the page size; at most 1000, default 50.
	Limit int
}

// Page is one page of jobs, oldest first.
type Page struct {
	Jobs []Record
	// NextCursor is empty on the last page.
	NextCursor string
}

// List returns a page of jobs in creation order.
func (d *DB) List(opt ListOptions) (Page, error) {
	limit := opt.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 1000)
	var start uint64 = 1
	if opt.Cursor != "" {
		n, err := strconv.ParseUint(opt.Cursor, 10, 64)
		if err != nil || n == 0 {
			return Page{}, fmt.Errorf("list jobs: %w %q", ErrBadCursor, opt.Cursor)
		}
		start = n
	}
	keep := func(s Status) bool {
		if len(opt.Statuses) == 0 {
			return true
		}
		for _, x := range opt.Statuses {
			if x == s {
				return true
			}
		}
		return false
	}
	var page Page
	err := d.db.View(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		c := tx.Bucket(bucketOrder).Cursor()
		for k, id := c.Seek(seqKey(start)); k != nil; k, id = c.Next() {
			if len(page.Jobs) == limit {
				page.NextCursor = strconv.FormatUint(binary.BigEndian.Uint64(k), 10)
				return nil
			}
			v := jobs.Get(id)
			if v == nil {
				continue
			}
			var rec Record
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode job %s: %w", id, err)
			}
			if keep(rec.Status) {
				page.Jobs = append(page.Jobs, rec)
			}
		}
		return nil
	})
	return page, err
}

// All returns every job in the given states, oldest first.
func (d *DB) All(statuses ...Status) ([]Record, error) {
	var out []Record
	opt := ListOptions{Statuses: statuses, Limit: 1000}
	for {
		p, err := d.List(opt)
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

// Count returns the number of jobs in each state.
func (d *DB) Count() (map[Status]int, error) {
	n := map[Status]int{}
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(_, v []byte) error {
			var rec struct {
				Status Status `json:"status"`
			}
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			n[rec.Status]++
			return nil
		})
	})
	return n, err
}

func put(b *bolt.Bucket, rec *Record) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode job %s: %w", rec.ID, err)
	}
	return b.Put([]byte(rec.ID), data)
}

func seqKey(n uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, n)
	return k
}

// Reactivate is Update for a transition that makes a finished job active
// again (a resume of a failed job, a retry of failed items): it fails with
// a *ConflictError if another active job has taken the same Pair meanwhile.
func (d *DB) Reactivate(id string, fn func(*Record) error) (Record, error) {
	var rec Record
	err := d.db.Update(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		v := jobs.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("update job %s: %w", id, ErrNotFound)
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode job %s: %w", id, err)
		}
		if err := activeOnPair(jobs, rec.Pair, id); err != nil {
			return fmt.Errorf("reactivate job %s: %w", id, err)
		}
		if err := fn(&rec); err != nil {
			return err
		}
		rec.ID = id
		return put(jobs, &rec)
	})
	return rec, err
}

// activeOnPair returns a *ConflictError naming an active job, other than
// except, that migrates the same source and target (pair), if there is one.
func activeOnPair(jobs *bolt.Bucket, pair, except string) error {
	if pair == "" {
		return nil
	}
	return jobs.ForEach(func(k, v []byte) error {
		if string(k) == except {
			return nil
		}
		var other Record
		if err := json.Unmarshal(v, &other); err != nil {
			return err
		}
		if other.Pair == pair && other.Status.Active() {
			return &ConflictError{ID: other.ID}
		}
		return nil
	})
}
