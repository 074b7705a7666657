// Package batcher runs a migration's pipeline: source ─▶ dedup ─▶ target,
// one batch at a time, with a durable checkpoint after every batch.
//
// # The pipeline
//
// Before the first batch the match cache (pkg/slimcache) is filled: from
// the cache snapshot of the last drain plus the target writes made after
// it, or else by reading the whole target a page at a time. Then, for each
// batch of batch_size records:
//
//  1. The batch is read from the source at the checkpoint's cursor.
//  2. Each item's match value is normalized and looked up; the item is
//     planned as a create, an update, a skip or a failure according to
//     mode and on_duplicate. An item with no match value is matched by its
//     external_id only, so it is created exactly once.
//  3. The writes run, concurrency at a time. A create's id goes into the
//     cache as soon as it is confirmed, so a later item with the same
//     match value, in this batch or any other, is never created again.
//  4. When every write is confirmed, the target syncs (a jsonl target
//     fsyncs), failed.jsonl syncs, and the checkpoint is committed
//     (pkg/checkpoint). Only then does the next batch start.
//
// # Drains inside a batch
//
// A drain or a cancel is seen before every write: no write is issued
// after it, the writes in flight (at most concurrency) complete, and the
// checkpoint is committed with its cursor still at the batch's start and a
// bitmap of the batch's done items (checkpoint.Partial). A resume reads
// the same batch again, to the same length, and does only the items not
// marked done. So a drain takes about one write and one commit, whatever
// the batch size or the target's speed (docs/design.md, "Graceful restart
// protocol"). The next batch is read and prepared while a batch commits,
// but nothing of it is planned or written before that commit is durable.
//
// # Exactly once
//
// A runner can die at any instant. The checkpoint records the target's
// Mark after the batch's writes; on resume, the writes found in the
// target after that Mark are the ones the dead runner made in the batch it
// never committed. They are collected by external_id, and the redone batch
// counts those items as created instead of creating them again. Everything
// else in the redone batch is found by the cache. A torn checkpoint is an
// error, never a silent start from zero.
//
// # Memory
//
// The runner holds the cache and one batch. Failures stream to
// failed.jsonl; counters are fixed-size. Every 10 batches the heap is
// compared with the job's memory budget and, above gc_percent (70% by
// default), a collection is forced, as the original tool did; so is one
// after a prefetch whose cache is over 100 MB. The memory lines
// (migration_start, migration_end, Pre-fetch complete) use the original
// tool's field names.
package batcher
