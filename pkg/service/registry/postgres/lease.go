package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Lease errors, matched with errors.Is.
var (
	// ErrLeaseLost means this node no longer owns the lease: it expired
	// (the node was paused, partitioned or slow to renew), or another node
	// holds it with a higher epoch. The owner must stop writing at once.
	ErrLeaseLost = errors.New("lease lost: this node no longer owns it, another may")
	// ErrHeld means another node holds the lease.
	ErrHeld = errors.New("lease held by another node")
	// ErrNoJob means the queue has no job this node can claim now.
	ErrNoJob = errors.New("no job to claim")
)

// HeldError says who holds a lease and for how long at most.
type HeldError struct {
	Name   string
	Node   string
	Holder string
	Epoch  int64
	// Remaining is the time left on the lease by the database's clock: a
	// new owner waits at least this long.
	Remaining time.Duration
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("%v: %s is held by node %s (epoch %d) for up to %s more", ErrHeld, e.Name, e.Node, e.Epoch, e.Remaining.Round(time.Millisecond))
}

func (e *HeldError) Unwrap() error { return ErrHeld }

// Log keys.
const (
	logLease = "lease"
	logJobID = "job_id"
	logEpoch = "epoch"
)

func jobLease(id string) string { return "job/" + id }

// Lease is one node's hold on a job or a quota share, with its fencing
// epoch. Fence is the cheap local check a writer makes before each target
// write; the checkpoint write checks the epoch again in SQL.
type Lease struct {
	s      *Store
	name   string
	holder string
	epoch  int64

	mu         sync.Mutex
	validUntil time.Time // local (monotonic) clock
	lost       bool
	lostCh     chan struct{}
}

// Name returns the lease's name (job/<id> or quota/<key>/<slot>).
func (l *Lease) Name() string { return l.name }

// Epoch returns the fencing epoch: it grows by one with every new owner.
func (l *Lease) Epoch() int64 { return l.epoch }

// Lost is closed when the lease is known lost.
func (l *Lease) Lost() <-chan struct{} { return l.lostCh }

// Fence returns ErrLeaseLost once the lease may have passed to another
// node. It reads only memory, so a writer calls it before every write.
//
// Its deadline is the local time at which the last successful acquire or
// renewal was sent, plus a little less than the TTL. The database set the
// expiry from its own clock after that request arrived, so the local
// deadline comes first: a node that renews no more (paused, partitioned,
// SIGSTOPped) stops writing before any other node can acquire the lease.
func (l *Lease) Fence() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.lost && !l.s.now().Before(l.validUntil) {
		l.markLostLocked()
	}
	if l.lost {
		return fmt.Errorf("%s epoch %d: %w", l.name, l.epoch, ErrLeaseLost)
	}
	return nil
}

// Remaining returns how long from now the lease's holder may still
// write: the time left to Fence's deadline, or 0 once the lease is lost.
func (l *Lease) Remaining() time.Duration {
	if l.Fence() != nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(l.validUntil.Sub(l.s.now()), 0)
}

func (l *Lease) markLost() {
	l.mu.Lock()
	l.markLostLocked()
	l.mu.Unlock()
}

func (l *Lease) markLostLocked() {
	if !l.lost {
		l.lost = true
		close(l.lostCh)
	}
}

// safeTTL is the part of the TTL a holder trusts locally: a tenth is left
// as a margin for clock rate differences and scheduling.
func (s *Store) safeTTL() time.Duration { return s.ttl - s.ttl/10 }

func (l *Lease) extend(sent time.Time) {
	l.mu.Lock()
	if !l.lost {
		l.validUntil = sent.Add(l.s.safeTTL())
	}
	l.mu.Unlock()
}

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Acquire takes the lease name for this node, with holder (a job id)
// recorded beside it. It fails with a *HeldError while any node, this one
// included, holds a live lease of that name: a new owner always waits the
// old lease out, even when the old owner is an earlier run of this node
// that may still be writing.
func (s *Store) Acquire(ctx context.Context, name, holder string) (*Lease, error) {
	return s.acquire(ctx, s.pool, name, holder)
}

// AcquireJob takes job id's lease.
func (s *Store) AcquireJob(ctx context.Context, id string) (*Lease, error) {
	return s.Acquire(ctx, jobLease(id), id)
}

func (s *Store) acquire(ctx context.Context, q querier, name, holder string) (*Lease, error) {
	sent := s.now()
	var epoch int64
	err := q.QueryRow(ctx, `
		INSERT INTO leases (name, node, holder, epoch, expires_at)
		VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4))
		ON CONFLICT (name) DO UPDATE
			SET node = excluded.node, holder = excluded.holder,
			    epoch = leases.epoch + 1, expires_at = excluded.expires_at
			WHERE leases.expires_at <= now()
		RETURNING epoch`, name, s.node, holder, s.ttl.Seconds()).Scan(&epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		he := &HeldError{Name: name}
		var secs float64
		qerr := q.QueryRow(ctx, `SELECT node, holder, epoch, extract(epoch FROM expires_at - now())::float8 FROM leases WHERE name = $1`,
			name).Scan(&he.Node, &he.Holder, &he.Epoch, &secs)
		if qerr != nil {
			return nil, fmt.Errorf("acquire %s: %w", name, ErrHeld)
		}
		he.Remaining = time.Duration(max(secs, 0) * float64(time.Second))
		return nil, he
	}
	if err != nil {
		return nil, fmt.Errorf("acquire %s: %w", name, err)
	}
	l := &Lease{s: s, name: name, holder: holder, epoch: epoch, lostCh: make(chan struct{})}
	l.extend(sent)
	return l, nil
}

// Renew extends the lease by the TTL from now. It fails with ErrLeaseLost
// if the lease expired before the renewal reached the database, even when
// no other node took it: the local deadline has passed by then, and the
// writer has stopped. Any other error (the database unreachable) leaves the
// lease to run out at its local deadline.
func (l *Lease) Renew(ctx context.Context) error {
	if err := l.Fence(); err != nil {
		return err
	}
	sent := l.s.now()
	var ok bool
	err := l.s.pool.QueryRow(ctx, `
		UPDATE leases SET expires_at = now() + make_interval(secs => $4)
		WHERE name = $1 AND node = $2 AND epoch = $3 AND expires_at > now()
		RETURNING true`, l.name, l.s.node, l.epoch, l.s.ttl.Seconds()).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		l.markLost()
		return fmt.Errorf("renew %s epoch %d: %w", l.name, l.epoch, ErrLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("renew %s: %w", l.name, err)
	}
	l.extend(sent)
	return nil
}

// Release gives the lease up, so another node need not wait it out. The
// row stays, expired, so the next owner's epoch is higher still.
func (l *Lease) Release(ctx context.Context) error {
	l.markLost()
	_, err := l.s.pool.Exec(ctx, `
		UPDATE leases SET expires_at = '-infinity'
		WHERE name = $1 AND node = $2 AND epoch = $3`, l.name, l.s.node, l.epoch)
	if err != nil {
		return fmt.Errorf("release %s: %w", l.name, err)
	}
	return nil
}

// Keeper renews leases in the background, every third of the TTL, until it
// is closed or a lease is lost. It does not release them: the owner does,
// after its writer has stopped.
type Keeper struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Keep starts renewing leases.
func (s *Store) Keep(leases ...*Lease) *Keeper {
	ctx, cancel := context.WithCancel(context.Background())
	k := &Keeper{cancel: cancel}
	interval := s.ttl / 3
	for _, l := range leases {
		if l == nil {
			continue
		}
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-l.Lost():
					return
				case <-t.C:
				}
				rctx, rcancel := context.WithTimeout(ctx, interval)
				err := l.Renew(rctx)
				rcancel()
				switch {
				case errors.Is(err, ErrLeaseLost):
					s.log.Error().Err(err).Str(logLease, l.name).Str(logJobID, l.holder).Int64(logEpoch, l.epoch).
						Msg("lease lost; the job's writer stops at its next fence check")
					return
				case err != nil && ctx.Err() == nil:
					// The lease still runs until its local deadline; the
					// next tick tries again.
					s.log.Warn().Err(err).Str(logLease, l.name).Str(logJobID, l.holder).Int64(logEpoch, l.epoch).
						Msg("lease renewal failed")
				}
			}
		}()
	}
	return k
}

// Close stops renewing and waits for the renewals in flight.
func (k *Keeper) Close() {
	k.cancel()
	k.wg.Wait()
}
