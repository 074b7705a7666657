package batcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"

	"github.com/memvisor/memvisor/internal/atomicfile"
	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/faillog"
)

// DryRunFile is the dry-run report's name in the job's state directory.
const DryRunFile = "dry-run.json"

// maxDiffs bounds how many item diffs the report keeps; counts cover all.
const maxDiffs = 100

// DryRunReport is dry-run.json: what a real run would do, computed against
// the target as it is, with nothing written to it.
type DryRunReport struct {
	JobID       string           `json:"job_id"`
	Processed   int64            `json:"processed"`
	WouldCreate int64            `json:"would_create"`
	WouldUpdate int64            `json:"would_update"`
	WouldSkip   int64            `json:"would_skip"`
	WouldFail   int64            `json:"would_fail"`
	ByCategory  map[string]int64 `json:"failed_by_category,omitempty"`
	// FieldChanges counts, per target field, the updates that would
	// change it.
	FieldChanges map[string]int64 `json:"field_changes,omitempty"`
	// Updates are the first updates with their per-field diffs.
	Updates []ItemDiff `json:"updates,omitempty"`
	// Failures are the first items that would fail.
	Failures []faillog.Entry `json:"failures,omitempty"`
}

// ItemDiff is one would-be update.
type ItemDiff struct {
	SourceID int64       `json:"source_id"`
	TargetID int64       `json:"target_id"`
	Fields   []FieldDiff `json:"fields"`
}

// FieldDiff is one changed field.
type FieldDiff struct {
	Field string          `json:"field"`
	From  json.RawMessage `json:"from"`
	To    json.RawMessage `json:"to"`
}

type dryRun struct {
	rep DryRunReport
}

// runDry reads the whole source (from the start) and plans every item, but
// writes nothing to the target and commits no checkpoint.
func (b *Batcher) runDry(ctx context.Context) (Result, error) {
	b.dry = &dryRun{rep: DryRunReport{JobID: b.o.Spec.ID, ByCategory: map[string]int64{}, FieldChanges: map[string]int64{}}}
	b.setTotal(ctx)
	if err := b.buildCache(ctx, checkpoint.Checkpoint{}); err != nil {
		return Result{}, err
	}
	b.setPhase("dry-run")
	cur := connector.Cursor{}
	for {
		if s := b.stopRequested(); s != "" {
			return Result{Status: s}, nil
		}
		n := b.o.Spec.BatchSize
		if m := b.o.Spec.MaxItems; m > 0 {
			n = int(min(int64(n), m-cur.Index))
		}
		if n <= 0 {
			break
		}
		recs, next, err := b.o.Source.Read(ctx, cur, n)
		if errors.Is(err, io.EOF) && len(recs) == 0 {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return Result{}, fmt.Errorf("read source at item %d: %w", cur.Index, err)
		}
		if err := b.processBatch(ctx, recs); err != nil {
			return Result{}, err
		}
		cur = next
		b.mu.Lock()
		b.prog.Offset = cur.Index
		b.prog.Batches++
		b.mu.Unlock()
	}
	rep := b.dry.rep
	if err := atomicfile.Write(filepath.Join(b.o.Dir, DryRunFile), 0o644, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}); err != nil {
		return Result{}, fmt.Errorf("write dry-run report: %w", err)
	}
	b.setPhase("completed")
	b.log.Info().Int64("would_create", rep.WouldCreate).Int64("would_update", rep.WouldUpdate).
		Int64("would_skip", rep.WouldSkip).Int64("would_fail", rep.WouldFail).
		Str("report", filepath.Join(b.o.Dir, DryRunFile)).Msg("dry run complete; nothing was written to the target")
	return Result{Status: StatusCompleted}, nil
}

// executeDry stands in for execute: creates get placeholder ids (negative,
// so they can never collide with real ones) and go into the cache, so
// later duplicates are planned as a real run would plan them.
func (b *Batcher) executeDry(ctx context.Context, tasks []task) {
	r := &b.dry.rep
	for i := range tasks {
		t := &tasks[i]
		switch t.op {
		case opCreate:
			b.dryNext--
			t.targetID = b.dryNext
			b.mu.Lock()
			if t.key != "" {
				b.cache.Put(t.key, t.targetID)
			} else {
				b.emptyExt.Put(t.extID, t.targetID)
			}
			b.mu.Unlock()
			r.WouldCreate++
		case opUpdate:
			r.WouldUpdate++
			if t.targetID > 0 {
				b.diff(ctx, t)
			}
		case opSkip, opDone:
			r.WouldSkip++
		case opFail:
			r.WouldFail++
			r.ByCategory[string(t.fail.Category)]++
			if len(r.Failures) < maxDiffs {
				r.Failures = append(r.Failures, *t.fail)
			}
		default:
			continue
		}
		r.Processed++
	}
}

func (b *Batcher) diff(ctx context.Context, t *task) {
	cur, err := b.o.Target.Get(ctx, t.targetID)
	if err != nil {
		b.log.Warn().Err(err).Int64("target_id", t.targetID).Msg("read target item for the dry-run diff")
		return
	}
	var d []FieldDiff
	for _, k := range sortedKeys(t.fields) {
		to := t.fields[k]
		from := cur[k]
		if equalJSON(from, to) {
			continue
		}
		b.dry.rep.FieldChanges[k]++
		d = append(d, FieldDiff{Field: k, From: orNull(from), To: orNull(to)})
	}
	if len(d) > 0 && len(b.dry.rep.Updates) < maxDiffs {
		b.dry.rep.Updates = append(b.dry.rep.Updates, ItemDiff{SourceID: t.rec.Item.ID, TargetID: t.targetID, Fields: d})
	}
}

func sortedKeys(f connector.Fields) []string {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func orNull(v json.RawMessage) json.RawMessage {
	if len(v) == 0 {
		return json.RawMessage("null")
	}
	return v
}

// equalJSON compares two values ignoring insignificant white space.
func equalJSON(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var x, y bytes.Buffer
	if json.Compact(&x, a) != nil || json.Compact(&y, b) != nil {
		return false
	}
	return bytes.Equal(x.Bytes(), y.Bytes())
}
