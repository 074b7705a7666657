package batcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/memvisor/memvisor/internal/atomicfile"
	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/faillog"
)

// retryFailed processes the items of failed.jsonl again. Items that fail
// again go to a new failures log, which replaces failed.jsonl atomically
// at the end; an interrupted retry leaves failed.jsonl as it was, and
// running it again is safe, because items it already created are found
// in the target.
//
// Items are fetched again by id where the source can (synthetic, Podio).
// Otherwise, and for malformed lines, the source is read once more from
// the start and the failed lines are picked by line number, so a line
// fixed in place, even with a different length, is read as fixed.
func (b *Batcher) retryFailed(ctx context.Context) (Result, error) {
	b.setPhase("retry-failed")
	path := filepath.Join(b.o.Dir, FailedFile)
	if err := b.fails.Close(); err != nil {
		return Result{}, err
	}
	tmp := path + ".retry"
	next, err := faillog.Open(tmp, 0)
	if err != nil {
		return Result{}, err
	}
	defer next.Close()
	b.fails = next

	b.mu.Lock()
	before := b.prog.Counters
	b.prog.Failed = 0
	b.prog.ByCategory = nil
	b.mu.Unlock()

	getter, _ := b.o.Source.(connector.ItemGetter)
	byLine := map[int64]bool{}
	byIndex := map[int64]bool{}
	var batch []connector.Record
	var retried int64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		retried += int64(len(batch))
		err := b.processBatch(ctx, batch)
		batch = batch[:0]
		return err
	}
	err = faillog.Each(path, func(e faillog.Entry) error {
		if getter != nil && e.SourceID > 0 {
			it, err := getter.GetItem(ctx, e.SourceID)
			rec := connector.Record{Pos: e.Pos, Item: it}
			if err != nil {
				rec.Item.ID = e.SourceID
				rec.Err = fmt.Errorf("fetch source item %d again: %w", e.SourceID, err)
			}
			batch = append(batch, rec)
			if len(batch) >= b.o.Spec.BatchSize {
				return flush()
			}
			return nil
		}
		if e.Line > 0 {
			byLine[e.Line] = true
		} else {
			byIndex[e.Pos.Index] = true
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return Result{}, fmt.Errorf("retry failed items: %w", err)
	}
	if len(byLine)+len(byIndex) > 0 {
		cur := connector.Cursor{}
		for len(byLine)+len(byIndex) > 0 {
			recs, nxt, err := b.o.Source.Read(ctx, cur, b.o.Spec.BatchSize)
			if errors.Is(err, io.EOF) && len(recs) == 0 {
				break
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return Result{}, fmt.Errorf("read source again at item %d: %w", cur.Index, err)
			}
			for _, r := range recs {
				line := r.Pos.Line + 1
				if byLine[line] && (r.Pos.Line > 0 || r.Pos.Offset > 0 || r.Pos.Index == 0) {
					delete(byLine, line)
					batch = append(batch, r)
				} else if byIndex[r.Pos.Index] {
					delete(byIndex, r.Pos.Index)
					batch = append(batch, r)
				}
			}
			if len(batch) >= b.o.Spec.BatchSize || len(recs) == 0 {
				if err := flush(); err != nil {
					return Result{}, err
				}
			}
			cur = nxt
		}
		if err := flush(); err != nil {
			return Result{}, err
		}
		if n := len(byLine) + len(byIndex); n > 0 {
			b.log.Warn().Int("entries", n).Msg("some failed entries point past the end of the source; they stay in failed.jsonl")
			// Keep them: they were not retried.
			if err := faillog.Each(path, func(e faillog.Entry) error {
				if (e.Line > 0 && byLine[e.Line]) || (e.Line == 0 && byIndex[e.Pos.Index] && (getter == nil || e.SourceID == 0)) {
					b.mu.Lock()
					b.prog.Failed++
					b.mu.Unlock()
					return next.Append(e)
				}
				return nil
			}); err != nil {
				return Result{}, err
			}
		}
	}

	size, err := next.Sync()
	if err != nil {
		return Result{}, err
	}
	if err := b.checkFence(); err != nil {
		return Result{}, err
	}
	mark, err := b.o.Target.Sync(ctx)
	if err != nil {
		return Result{}, err
	}
	b.mu.Lock()
	// The retried items were processed once already.
	b.prog.Processed -= retried
	p := b.prog.Counters
	cp := b.cp
	cp.Counters = p
	cp.Counters.ByCategory = cloneCounts(p.ByCategory)
	cp.FailedBytes = size
	cp.FailedRecords = next.Added()
	cp.Target = mark
	cp.Time = b.now().UTC()
	b.mu.Unlock()
	// The fleet gets the new log first, whole: until it has it, the old
	// one stays in force everywhere.
	if err := b.commitRemote(ctx, cp, tmp, 0, 0); err != nil {
		return Result{}, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return Result{}, fmt.Errorf("replace failures log: %w", err)
	}
	if err := atomicfile.SyncDir(b.o.Dir); err != nil {
		return Result{}, err
	}
	if err := checkpoint.Save(b.o.Dir, cp); err != nil {
		return Result{}, err
	}
	b.cp = cp
	b.log.Info().Int64("retried", retried).Int64("failed_before", before.Failed).Int64("failed_now", p.Failed).
		Int64("created", p.Created-before.Created).Int64("updated", p.Updated-before.Updated).
		Msg("retry of failed items complete")
	return Result{Status: StatusCompleted, Checkpoint: cp}, nil
}
