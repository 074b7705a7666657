package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	bucketJobs  = []byte("jobs")
	bucketOrder = []byte("order")
	// bucketPairs indexes the active jobs by a hash of their Pair, so that
	// a create checks one key instead of decoding every record.
	bucketPairs = []byte("pairs")
	// bucketCounts holds the number of jobs in each state.
	bucketCounts = []byte("counts")
	// bucketByStatus indexes the jobs by state: status, 0, seq -> id. A
	// page of one state (the scheduler's oldest queued job) reads only
	// the jobs in that state.
	bucketByStatus = []byte("by-status")
)

func statusKey(s Status, seq uint64) []byte {
	return append(append([]byte(s), 0), seqKey(seq)...)
}

// DB is the bbolt registry: one file that only the running service opens
// (bbolt holds an exclusive flock on it).
type DB struct {
	db *bolt.DB
}

// Open opens or creates the registry file at path. It fails with ErrLocked
// within timeout when another process has it open. A file written before
// the indexes existed is indexed once, here.
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
		if tx.Bucket(bucketPairs) != nil && tx.Bucket(bucketCounts) != nil && tx.Bucket(bucketByStatus) != nil {
			return nil
		}
		return reindex(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create registry buckets: %w", err)
	}
	return &DB{db: db}, nil
}

// reindex builds the pair index and the state counts from the records.
func reindex(tx *bolt.Tx) error {
	for _, b := range [][]byte{bucketPairs, bucketCounts, bucketByStatus} {
		if tx.Bucket(b) != nil {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		if _, err := tx.CreateBucket(b); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
		var rec Record
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode job %s: %w", k, err)
		}
		return index(tx, nil, &rec)
	})
}

// Close closes the file.
func (d *DB) Close() error { return d.db.Close() }

// Create adds a new job; see the Registry interface in pkg/service.
func (d *DB) Create(_ context.Context, rec *Record, maxQueued int) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		if jobs.Get([]byte(rec.ID)) != nil {
			return fmt.Errorf("create job %s: %w", rec.ID, ErrExists)
		}
		if err := pairFree(tx, rec.Pair, rec.ID); err != nil {
			return fmt.Errorf("create job %s: %w", rec.ID, err)
		}
		if maxQueued > 0 && rec.Status == StatusQueued && count(tx, StatusQueued) >= uint64(maxQueued) {
			return fmt.Errorf("create job %s: %w (%d jobs are queued)", rec.ID, ErrQueueFull, maxQueued)
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
		if err := index(tx, nil, rec); err != nil {
			return err
		}
		return put(jobs, rec)
	})
}

// Get returns the job id.
func (d *DB) Get(_ context.Context, id string) (Record, error) {
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
// transaction; see the Registry interface in pkg/service.
func (d *DB) Update(_ context.Context, id string, fn func(*Record) error) (Record, error) {
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
		old := rec
		if err := fn(&rec); err != nil {
			return err
		}
		rec.ID, rec.Seq = id, old.Seq
		if rec.Status.Active() && (!old.Status.Active() || rec.Pair != old.Pair) {
			if err := pairFree(tx, rec.Pair, id); err != nil {
				return fmt.Errorf("update job %s: %w", id, err)
			}
		}
		if err := index(tx, &old, &rec); err != nil {
			return err
		}
		return put(jobs, &rec)
	})
	return rec, err
}

// Delete removes job id.
func (d *DB) Delete(_ context.Context, id string) error {
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
		if err := index(tx, &rec, nil); err != nil {
			return err
		}
		return jobs.Delete([]byte(id))
	})
}

// List returns a page of jobs in creation order.
func (d *DB) List(_ context.Context, opt ListOptions) (Page, error) {
	limit := opt.pageLimit()
	var start uint64 = 1
	if opt.Cursor != "" {
		n, err := strconv.ParseUint(opt.Cursor, 10, 64)
		if err != nil || n == 0 {
			return Page{}, fmt.Errorf("list jobs: %w %q", ErrBadCursor, opt.Cursor)
		}
		start = n
	}
	var page Page
	if len(opt.Statuses) == 1 {
		return d.listStatus(opt.Statuses[0], start, limit)
	}
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
			if opt.keeps(rec.Status) {
				page.Jobs = append(page.Jobs, rec)
			}
		}
		return nil
	})
	return page, err
}

// listStatus is List for one state, through the state index: it reads
// only the records it returns.
func (d *DB) listStatus(st Status, start uint64, limit int) (Page, error) {
	var page Page
	err := d.db.View(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		prefix := append([]byte(st), 0)
		c := tx.Bucket(bucketByStatus).Cursor()
		for k, id := c.Seek(statusKey(st, start)); k != nil && bytes.HasPrefix(k, prefix); k, id = c.Next() {
			if len(page.Jobs) == limit {
				page.NextCursor = strconv.FormatUint(binary.BigEndian.Uint64(k[len(prefix):]), 10)
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
			page.Jobs = append(page.Jobs, rec)
		}
		return nil
	})
	return page, err
}

// Count returns the number of jobs in each state, from a counter the
// writes keep, not by reading the records.
func (d *DB) Count(_ context.Context) (map[Status]int, error) {
	n := map[Status]int{}
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCounts).ForEach(func(k, v []byte) error {
			if c := binary.BigEndian.Uint64(v); c > 0 {
				n[Status(k)] = int(c)
			}
			return nil
		})
	})
	return n, err
}

func count(tx *bolt.Tx, s Status) uint64 {
	v := tx.Bucket(bucketCounts).Get([]byte(s))
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func addCount(tx *bolt.Tx, s Status, delta int64) error {
	n := int64(count(tx, s)) + delta
	return tx.Bucket(bucketCounts).Put([]byte(s), seqKey(uint64(max(n, 0))))
}

func pairHash(pair string) []byte {
	h := sha256.Sum256([]byte(pair))
	return h[:]
}

// pairFree returns a *ConflictError naming the active job, other than id,
// that holds pair, if there is one.
func pairFree(tx *bolt.Tx, pair, id string) error {
	if pair == "" {
		return nil
	}
	holder := tx.Bucket(bucketPairs).Get(pairHash(pair))
	if holder != nil && string(holder) != id {
		return &ConflictError{ID: string(holder)}
	}
	return nil
}

// index moves a job's entries in the pair index and the state counts from
// its old record to its new one; nil stands for no record.
func index(tx *bolt.Tx, old, rec *Record) error {
	pairs, byStatus := tx.Bucket(bucketPairs), tx.Bucket(bucketByStatus)
	if old != nil {
		if err := addCount(tx, old.Status, -1); err != nil {
			return err
		}
		if err := byStatus.Delete(statusKey(old.Status, old.Seq)); err != nil {
			return err
		}
		if old.Pair != "" && old.Status.Active() {
			k := pairHash(old.Pair)
			if string(pairs.Get(k)) == old.ID {
				if err := pairs.Delete(k); err != nil {
					return err
				}
			}
		}
	}
	if rec != nil {
		if err := addCount(tx, rec.Status, 1); err != nil {
			return err
		}
		if err := byStatus.Put(statusKey(rec.Status, rec.Seq), []byte(rec.ID)); err != nil {
			return err
		}
		if rec.Pair != "" && rec.Status.Active() {
			if err := pairs.Put(pairHash(rec.Pair), []byte(rec.ID)); err != nil {
				return err
			}
		}
	}
	return nil
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
