package batcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/faillog"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/slimcache"
)

// op is what happens to one source record.
type op int

const (
	opNone op = iota
	opCreate
	opUpdate
	opSkip
	opFail
	opDone // created by an interrupted runner before the checkpoint
	opWait // depends on a create earlier in the same batch
)

type task struct {
	i        int // the record's place in its page
	rec      connector.Record
	key      string // normalized match value, "" if none
	extID    string
	fields   connector.Fields // mapped to target field names
	encoded  []byte           // fields encoded by the target, if it can
	op       op
	targetID int64
	fail     *faillog.Entry
	// held is set on a create or update that a stop kept from being
	// issued: the item is not done, and a resume does it.
	held bool
}

// processBatch plans and writes one batch. It returns an error only for
// what stops the job (ctx cancelled, failures log unwritable); a failed
// item is recorded and counted.
func (b *Batcher) processBatch(ctx context.Context, recs []connector.Record) error {
	_, err := b.processTasks(ctx, b.prepareAll(recs, nil), nil)
	return err
}

// prepareAll prepares a batch's records, leaving out those that skip
// marks done. It reads nothing the batch before it writes, so the loop
// runs it while that batch commits.
func (b *Batcher) prepareAll(recs []connector.Record, skip *checkpoint.Partial) []task {
	tasks := make([]task, 0, len(recs))
	enc, _ := b.o.Target.(connector.FieldEncoder)
	if b.dry != nil {
		enc = nil
	}
	var buf []byte // one allocation for the batch's encodings
	for i := range recs {
		if skip.IsDone(i) {
			continue
		}
		if b.o.BeforeItem != nil {
			b.o.BeforeItem(recs[i].Pos.Index)
		}
		tasks = append(tasks, b.prepare(recs[i]))
		t := &tasks[len(tasks)-1]
		t.i = i
		if enc != nil && t.op == opNone {
			if buf == nil {
				buf = make([]byte, 0, len(recs)*256)
			}
			start := len(buf)
			buf = enc.EncodeFields(buf, t.fields)
			t.encoded = buf[start:len(buf):len(buf)]
		}
	}
	return tasks
}

// processTasks plans and writes prepared tasks. With part, a stop ends
// the batch early: no write is issued after it, the writes in flight
// complete, and part marks every task that is done. It then reports
// stopped.
func (b *Batcher) processTasks(ctx context.Context, tasks []task, part *checkpoint.Partial) (stopped bool, err error) {
	stoppable := part != nil
	pending := tasks
	for len(pending) > 0 {
		if stoppable && b.stopping.Load() {
			return true, nil
		}
		b.plan(ctx, pending)
		held, err := b.execute(ctx, pending, stoppable)
		if err != nil {
			return false, err
		}
		// Items that waited on a create in the same batch are planned
		// again now that the create's id (or its failure) is known.
		var again []task
		for _, t := range pending {
			if t.op == opWait {
				t.op = opNone
				again = append(again, t)
			}
		}
		if len(again) == len(pending) && !held {
			return false, errors.New("internal error: batch planning made no progress")
		}
		if err := b.account(pending, part); err != nil {
			return false, err
		}
		if held {
			return true, nil
		}
		pending = again
	}
	return false, nil
}

// prepare decodes what planning needs: the match key, the external id,
// the fields under their target names.
func (b *Batcher) prepare(rec connector.Record) task {
	t := task{rec: rec}
	if rec.Err != nil {
		t.op = opFail
		t.fail = b.failure(rec, connector.CategoryValidation, false, rec.Err, nil)
		return t
	}
	t.extID = connector.ExternalID(rec.Item.ID)
	if sf := b.o.Spec.Match.SourceField; sf != "" {
		t.key, _ = slimcache.NormalizeJSON(rec.Item.Fields[sf])
	}
	if len(b.o.Spec.FieldMapping) == 0 {
		t.fields = rec.Item.Fields
	} else {
		t.fields = make(connector.Fields, len(rec.Item.Fields))
		for k, v := range rec.Item.Fields {
			t.fields[b.o.Spec.TargetField(k)] = v
		}
	}
	return t
}

// plan decides each task's operation against the cache. Creates are added
// to the cache as they complete; a later item with the same key in the
// same batch waits for the create's id.
func (b *Batcher) plan(ctx context.Context, tasks []task) {
	creating := map[string]bool{}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range tasks {
		t := &tasks[i]
		if t.op != opNone {
			continue
		}
		if id, ok := b.recovered[t.extID]; ok {
			t.op, t.targetID = opDone, id
			continue
		}
		if t.key == "" {
			b.planNoKey(t)
			continue
		}
		if creating[t.key] {
			switch {
			case b.o.Spec.Mode == job.ModeCreate && b.o.Spec.OnDuplicate == job.DuplicateSkip:
				t.op = opSkip
			case b.o.Spec.Mode == job.ModeCreate && b.o.Spec.OnDuplicate == job.DuplicateError:
				t.op = opFail
				t.fail = b.failure(t.rec, connector.CategoryDuplicate, false,
					fmt.Errorf("an item with the same %s was created from an earlier source item of this job", b.o.Spec.Match.SourceField), nil)
			default:
				t.op = opWait
			}
			continue
		}
		id, found := b.lookupLocked(ctx, t.key)
		switch b.o.Spec.Mode {
		case job.ModeCreate:
			switch {
			case !found:
				t.op = opCreate
				creating[t.key] = true
			case b.o.Spec.OnDuplicate == job.DuplicateSkip:
				t.op, t.targetID = opSkip, id
			case b.o.Spec.OnDuplicate == job.DuplicateUpdate:
				t.op, t.targetID = opUpdate, id
			default:
				t.op = opFail
				t.fail = b.failure(t.rec, connector.CategoryDuplicate, false,
					fmt.Errorf("target item %d already has this %s", id, b.o.Spec.Match.SourceField), nil)
			}
		case job.ModeUpdate:
			if found {
				t.op, t.targetID = opUpdate, id
			} else {
				t.op = opSkip
			}
		case job.ModeUpsert:
			if found {
				t.op, t.targetID = opUpdate, id
			} else {
				t.op = opCreate
				creating[t.key] = true
			}
		}
	}
}

// planNoKey handles an item without a match value: it is never matched
// to another item, and is deduplicated by its external id alone.
func (b *Batcher) planNoKey(t *task) {
	if id, ok := b.emptyExt.Get(t.extID); ok {
		t.op, t.targetID = opSkip, id
		return
	}
	if b.o.Spec.Mode == job.ModeUpdate {
		t.op = opSkip
		return
	}
	t.op = opCreate
}

// lookupLocked consults the cache and, where a bounded cache cannot prove
// absence, the target.
func (b *Batcher) lookupLocked(ctx context.Context, key string) (int64, bool) {
	id, found, certain := b.cache.Lookup(key)
	if found || certain || b.finder == nil {
		return id, found
	}
	b.mu.Unlock()
	id, found, err := b.finder.FindByMatch(ctx, b.o.Spec.Match.TargetField, key)
	b.mu.Lock()
	if err != nil {
		// Treat as present only if found; a lookup error leaves the item
		// to be created, and the target's own external_id check guards
		// against a duplicate of the same source item.
		b.log.Warn().Err(err).Msg("look up match value in target")
		return 0, false
	}
	if found {
		b.cache.Put(key, id)
	}
	return id, found
}

// execute performs the planned writes with bounded concurrency and waits
// for all of them. When stoppable and a stop is asked for, it issues no
// further write, marks the writes it did not issue held, waits for the
// ones in flight, and reports held. A write in flight that is still
// waiting to be sent (behind a rate limit) gives up and is held too.
func (b *Batcher) execute(ctx context.Context, tasks []task, stoppable bool) (held bool, err error) {
	if b.dry != nil {
		b.executeDry(ctx, tasks)
		return false, nil
	}
	wctx := ctx
	if stoppable {
		wctx = connector.WithHold(ctx, b.hold)
		defer func() {
			for i := range tasks {
				held = held || tasks[i].held
			}
		}()
	}
	stop := func(i int) bool {
		if !stoppable || !b.stopping.Load() {
			return false
		}
		for j := i; j < len(tasks); j++ {
			if t := &tasks[j]; t.op == opCreate || t.op == opUpdate {
				t.held, held = true, true
			}
		}
		return held
	}
	if sq, ok := b.o.Target.(connector.Sequential); ok && sq.SequentialWrites() {
		for i := range tasks {
			if err := ctx.Err(); err != nil {
				return false, err
			}
			if t := &tasks[i]; t.op == opCreate || t.op == opUpdate {
				if stop(i) {
					break
				}
				b.write(wctx, t)
			}
		}
		return held, ctx.Err()
	}
	sem := make(chan struct{}, b.o.Spec.Concurrency)
	var wg sync.WaitGroup
	for i := range tasks {
		t := &tasks[i]
		if t.op != opCreate && t.op != opUpdate {
			continue
		}
		if err := ctx.Err(); err != nil {
			wg.Wait()
			return false, err
		}
		if stop(i) {
			break
		}
		sem <- struct{}{}
		// Waiting for a slot can take a whole write: look again.
		if stop(i) {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			b.write(wctx, t)
		}()
	}
	wg.Wait()
	// A write that failed because the job is being aborted is not an
	// item failure: the batch will be redone.
	return held, ctx.Err()
}

func (b *Batcher) write(ctx context.Context, t *task) {
	if b.checkFence() != nil {
		// Not sent: the batch is redone by the job's next owner.
		t.held = true
		return
	}
	if b.o.AfterWrite != nil {
		defer b.o.AfterWrite()
	}
	enc, _ := b.o.Target.(connector.FieldEncoder)
	if t.encoded == nil {
		enc = nil
	}
	switch t.op {
	case opCreate:
		var id int64
		var err error
		if enc != nil {
			id, err = enc.CreateEncoded(ctx, t.extID, t.encoded)
		} else {
			id, err = b.o.Target.Create(ctx, t.extID, t.fields)
		}
		if err != nil {
			b.writeFailed(ctx, t, err)
			return
		}
		t.targetID = id
		b.mu.Lock()
		if t.key != "" {
			b.cache.Put(t.key, id)
		} else {
			b.emptyExt.Put(t.extID, id)
		}
		b.mu.Unlock()
	case opUpdate:
		var err error
		if enc != nil {
			err = enc.UpdateEncoded(ctx, t.targetID, t.encoded)
		} else {
			err = b.o.Target.Update(ctx, t.targetID, t.fields)
		}
		if err != nil {
			b.writeFailed(ctx, t, err)
		}
	}
}

func (b *Batcher) writeFailed(ctx context.Context, t *task, err error) {
	if ctx.Err() != nil {
		return
	}
	if errors.Is(err, connector.ErrNotSent) {
		// A drain held it before it was sent: not done, not failed.
		t.held = true
		return
	}
	cat, retry := connector.Classify(err)
	var detail []byte
	var ie *connector.ItemError
	if errors.As(err, &ie) {
		detail = ie.Detail
	}
	t.op = opFail
	t.fail = b.failure(t.rec, cat, retry, err, detail)
}

// account records the outcome of every task that is not waiting or held,
// and marks it done in part.
func (b *Batcher) account(tasks []task, part *checkpoint.Partial) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range tasks {
		t := &tasks[i]
		if t.held {
			continue
		}
		switch t.op {
		case opWait:
			continue
		case opCreate, opDone:
			b.prog.Created++
		case opUpdate:
			b.prog.Updated++
		case opSkip:
			b.prog.Skipped++
		case opFail:
			b.prog.Failed++
			if b.prog.ByCategory == nil {
				b.prog.ByCategory = map[string]int64{}
			}
			b.prog.ByCategory[string(t.fail.Category)]++
			if b.fails != nil { // a dry run keeps failures in its report
				if err := b.fails.Append(*t.fail); err != nil {
					return err
				}
			}
		}
		b.prog.Processed++
		if part != nil {
			part.Set(t.i)
		}
	}
	return nil
}

func (b *Batcher) failure(rec connector.Record, cat connector.Category, retry bool, err error, detail []byte) *faillog.Entry {
	msg := err.Error()
	if b.o.Spec.Log.MaskValues {
		msg = b.mask(msg, rec)
	}
	e := &faillog.Entry{
		Time:      b.now().UTC(),
		SourceID:  rec.Item.ID,
		Pos:       rec.Pos,
		Category:  cat,
		Retryable: retry,
		Error:     msg,
		Detail:    detail,
	}
	if rec.Pos.Line > 0 || rec.Pos.Offset > 0 || rec.Raw != nil {
		e.Line = rec.Pos.Line + 1
	}
	if rec.Raw != nil && !b.o.Spec.Log.MaskValues {
		e.Raw = string(rec.Raw)
	}
	return e
}

// mask replaces the item's match value in a message with a short hash.
func (b *Batcher) mask(msg string, rec connector.Record) string {
	sf := b.o.Spec.Match.SourceField
	if sf == "" || rec.Item.Fields == nil {
		return msg
	}
	raw := string(rec.Item.Fields[sf])
	if len(raw) < 3 {
		return msg
	}
	return strings.ReplaceAll(msg, raw, MaskValue(raw))
}

// MaskValue returns a short, stable stand-in for a match value.
func MaskValue(v string) string {
	sum := sha256.Sum256([]byte(v))
	return "<masked:" + hex.EncodeToString(sum[:4]) + ">"
}
