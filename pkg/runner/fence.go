package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/plugin"
)

// leasePoll is how often a fleet runner asks its supervisor how long it
// may still write. The answer is a deadline on the runner's own monotonic
// clock, so a runner that stops hearing from the supervisor (both were
// stopped, the supervisor hangs) stops writing when it passes.
const leasePoll = 100 * time.Millisecond

// ledgerCallTimeout bounds one call to the supervisor's Ledger.
const ledgerCallTimeout = 30 * time.Second

// leaseFence is a fleet runner's view of its job's lease (see
// docs/design.md, "Growing past one host"). Check reads only memory, so
// the batcher asks it before every write.
type leaseFence struct {
	l    plugin.Ledger
	log  zerolog.Logger
	base time.Time
	// until is the deadline, as time since base.
	until atomic.Int64
}

// newLeaseFence asks l once, so that a runner whose lease is already lost
// never starts.
func newLeaseFence(ctx context.Context, l plugin.Ledger, log zerolog.Logger) (*leaseFence, error) {
	f := &leaseFence{l: l, log: log, base: time.Now()}
	if err := f.refresh(ctx); err != nil {
		return nil, err
	}
	if err := f.check(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *leaseFence) refresh(ctx context.Context) error {
	sent := time.Since(f.base)
	ctx, cancel := context.WithTimeout(ctx, ledgerCallTimeout)
	defer cancel()
	d, err := f.l.Lease(ctx)
	if err != nil {
		return fmt.Errorf("ask the supervisor for the job's lease: %w", err)
	}
	// The deadline counts from when the question was sent: the answer may
	// have been delayed, never the lease.
	f.until.Store(int64(sent + d))
	return nil
}

// check fails once the deadline has passed.
func (f *leaseFence) check() error {
	if time.Since(f.base) < time.Duration(f.until.Load()) {
		return nil
	}
	return plugin.ErrFenced
}

// run refreshes the deadline until done is closed or ctx ends.
func (f *leaseFence) run(ctx context.Context, done <-chan struct{}) {
	t := time.NewTicker(leasePoll)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			if err := f.refresh(ctx); err != nil && ctx.Err() == nil {
				f.log.Warn().Err(err).Msg("lease not renewed; writes stop when it runs out")
			}
		}
	}
}

// ledgerRemote commits a batcher's checkpoints through the supervisor's
// Ledger.
type ledgerRemote struct{ l plugin.Ledger }

func (r ledgerRemote) AppendFailures(ctx context.Context, after int64, lines [][]byte) error {
	ctx, cancel := context.WithTimeout(ctx, ledgerCallTimeout)
	defer cancel()
	return r.l.AppendFailures(ctx, after, lines)
}

func (r ledgerRemote) Commit(ctx context.Context, cp checkpoint.Checkpoint) error {
	data, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, ledgerCallTimeout)
	defer cancel()
	return r.l.Commit(ctx, data, cp.FailedRecords)
}
