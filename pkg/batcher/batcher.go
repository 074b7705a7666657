package batcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/logkey"
	"github.com/memvisor/memvisor/internal/memstat"
	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/faillog"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/slimcache"
)

// Errors.
var (
	// ErrHasCheckpoint refuses a fresh start of a job that already
	// committed batches: that needs Resume.
	ErrHasCheckpoint = errors.New("the job has a checkpoint")
	// ErrSpecChanged refuses a resume whose source, target, match or mode
	// differ from the ones the checkpoint was made with.
	ErrSpecChanged = errors.New("the job changed since its checkpoint")
	// ErrNoFinder means a bounded cache was asked for with a target that
	// cannot look items up by value.
	ErrNoFinder = errors.New("target cannot look items up by match value")
)

// Status says how Run ended.
type Status string

// The end states of Run.
const (
	StatusCompleted Status = "completed"
	// StatusDrained: stopped on request after a commit, with a snapshot;
	// a resume continues.
	StatusDrained Status = "drained"
	// StatusCancelled: stopped for good after a commit.
	StatusCancelled Status = "cancelled"
)

// Options configure a Batcher.
type Options struct {
	Spec   job.Spec
	Source connector.Source
	Target connector.Target
	// Dir is the job's state directory; it must exist.
	Dir    string
	Logger zerolog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Resume continues from the checkpoint if there is one. Without it,
	// a job with a checkpoint is refused with ErrHasCheckpoint.
	Resume bool
	// RetryFailed processes failed.jsonl again instead of the source.
	RetryFailed bool
	// BeforeItem is called with each record's source index before it is
	// processed. Fault injection uses it; it may block or panic.
	BeforeItem func(index int64)
	// BeforeGC is called before every collection the batcher forces.
	BeforeGC func()
	// AfterCommit is called after every committed batch.
	AfterCommit func(checkpoint.Checkpoint)
	// AfterWrite is called after every target write completes, from the
	// writing goroutine. The runner's memory guard counts writes with it,
	// so it must be cheap and must not block.
	AfterWrite func()
	// Limit is the memory budget for the GC hygiene rules; 0 turns the
	// percentage rules off.
	Limit int64
	// Remote, in a fleet, records every commit, while the next batch is
	// written; the next commit waits for it (see commit).
	Remote Remote
	// Fence, if set, is asked before every target write and every
	// commit. Its first error (the job's lease is lost) stops the job at
	// once: nothing is written or committed after it, and Run returns an
	// error wrapping ErrFenced.
	Fence func() error
}

// Progress is a snapshot of the counters.
type Progress struct {
	checkpoint.Counters
	Total      int64
	TotalKnown bool
	Batches    int64
	Offset     int64
	Phase      string
}

// Batcher runs one job's pipeline. Run it once.
type Batcher struct {
	o   Options
	log zerolog.Logger
	now func() time.Time

	stopMu sync.Mutex
	stop   Status // "" while running; drained or cancelled once asked
	// stopping is set with stop; writers read it before every write.
	stopping atomic.Bool
	// hold is closed with the first stop: writes still waiting to be
	// sent (behind a rate limit) give up with connector.ErrNotSent.
	hold     chan struct{}
	holdOnce sync.Once

	mu       sync.Mutex // guards the fields below and the caches
	prog     Progress
	cache    *slimcache.Cache
	emptyExt *slimcache.Cache // external ids of target items without a match value
	// recovered holds the creates a killed runner made after its last
	// checkpoint, by external id, so the redone batch does not repeat them.
	recovered map[string]int64

	fresh  bool // the job had no checkpoint
	finder connector.MatchFinder
	fails  *faillog.Writer
	// failBase is the number of failure records fails opened with.
	failBase int64
	// fenced holds the first error Fence returned.
	fenced atomic.Pointer[error]
	// remoteDone gets the result of the Remote commit in flight.
	remoteDone chan error
	// lastSnap is when the loop last saved a cache snapshot, or started.
	lastSnap time.Time
	cp       checkpoint.Checkpoint
	dry      *dryRun
	dryNext  int64
}

// New checks the options and returns a Batcher.
func New(o Options) (*Batcher, error) {
	if o.Source == nil || o.Target == nil {
		return nil, errors.New("new batcher: source and target are required")
	}
	if o.Dir == "" {
		return nil, errors.New("new batcher: state directory is required")
	}
	b := &Batcher{o: o, log: o.Logger, now: o.Now, hold: make(chan struct{})}
	if b.now == nil {
		b.now = time.Now
	}
	if o.Spec.Memory.CacheMaxEntries > 0 {
		f, ok := o.Target.(connector.MatchFinder)
		if !ok {
			return nil, fmt.Errorf("memory.cache_max_entries: %w; set it to 0 for this target", ErrNoFinder)
		}
		b.finder = f
	}
	return b, nil
}

// Drain asks Run to stop issuing writes at once, wait for the writes in
// flight, commit a checkpoint that records which items of the batch are
// done, and write a cache snapshot, so a new runner resumes quickly. It
// never waits for the rest of the batch.
func (b *Batcher) Drain() { b.setStop(StatusDrained) }

// Cancel asks Run to stop for good, as a drain does.
func (b *Batcher) Cancel() { b.setStop(StatusCancelled) }

func (b *Batcher) setStop(s Status) {
	b.stopMu.Lock()
	defer b.stopMu.Unlock()
	if b.stop == "" || s == StatusCancelled {
		b.stop = s
	}
	b.stopping.Store(true)
	b.holdOnce.Do(func() { close(b.hold) })
}

func (b *Batcher) stopRequested() Status {
	b.stopMu.Lock()
	defer b.stopMu.Unlock()
	return b.stop
}

// Progress returns the current counters.
func (b *Batcher) Progress() Progress {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.prog
	p.ByCategory = cloneCounts(p.ByCategory)
	return p
}

// CacheStats returns the match cache's entries and estimated bytes.
func (b *Batcher) CacheStats() (entries, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cache == nil {
		return 0, 0
	}
	entries = int64(b.cache.Len())
	bytes = b.cache.EstimatedBytes()
	if b.emptyExt != nil {
		entries += int64(b.emptyExt.Len())
		bytes += b.emptyExt.EstimatedBytes()
	}
	return entries, bytes
}

// RateLimitedUntil reports when the source's or target's rate limit lifts,
// or the zero time when neither is limited.
func (b *Batcher) RateLimitedUntil() time.Time {
	var t time.Time
	for _, c := range []any{b.o.Source, b.o.Target} {
		if rl, ok := c.(connector.RateLimited); ok {
			if u := rl.RateLimitedUntil(); u.After(t) {
				t = u
			}
		}
	}
	return t
}

func (b *Batcher) setPhase(p string) {
	b.mu.Lock()
	b.prog.Phase = p
	b.mu.Unlock()
}

// Result is how Run ended.
type Result struct {
	Status     Status
	Checkpoint checkpoint.Checkpoint
	// AlreadyDone is set when the job had finished before this run.
	AlreadyDone bool
}

// Run runs the job until the source is exhausted (or max_items reached),
// a stop is requested, or ctx is cancelled. A cancelled ctx aborts the
// batch in flight without committing it; the next run redoes it.
func (b *Batcher) Run(ctx context.Context) (Result, error) {
	if b.o.Spec.DryRun {
		return b.runDry(ctx)
	}
	cp, err := b.loadCheckpoint()
	if err != nil {
		return Result{}, err
	}
	b.mu.Lock() // Progress may be read already
	b.cp = cp
	b.prog.Counters = cp.Counters
	b.prog.Counters.ByCategory = cloneCounts(cp.Counters.ByCategory)
	b.prog.Batches = cp.Seq
	b.prog.Offset = cp.Source.Index
	b.mu.Unlock()
	b.setTotal(ctx)

	if cp.Done && !b.o.RetryFailed {
		b.log.Info().Str("job", b.o.Spec.ID).Int64("processed", cp.Counters.Processed).
			Msg("job already completed; nothing to do, the target is unchanged")
		return Result{Status: StatusCompleted, Checkpoint: cp, AlreadyDone: true}, nil
	}

	b.logMemory("migration_start")
	if err := b.buildCache(ctx, cp); err != nil {
		return Result{}, err
	}
	if b.fresh {
		// Commit where the target ends before the first write, so that a
		// runner killed in the first batch is resumed like any other.
		mark, err := b.o.Target.Sync(ctx)
		if err != nil {
			return Result{}, fmt.Errorf("sync target: %w", err)
		}
		cp.Target, cp.Time = mark, b.now().UTC()
		if err := b.commitRemote(ctx, cp, "", 0, 0); err != nil {
			return Result{}, err
		}
		if err := checkpoint.Save(b.o.Dir, cp); err != nil {
			return Result{}, err
		}
		b.cp = cp
	}
	failPath := filepath.Join(b.o.Dir, FailedFile)
	if cp.FailedRecords == 0 && cp.FailedBytes > 0 {
		// A checkpoint from before failure records were counted.
		if cp.FailedRecords, err = countLines(failPath, cp.FailedBytes); err != nil {
			return Result{}, err
		}
		b.cp.FailedRecords = cp.FailedRecords
	}
	fails, err := faillog.Open(failPath, cp.FailedBytes)
	if err != nil {
		return Result{}, err
	}
	defer fails.Close()
	b.fails, b.failBase = fails, cp.FailedRecords

	var res Result
	if b.o.RetryFailed {
		res, err = b.retryFailed(ctx)
	} else {
		res, err = b.loop(ctx)
	}
	// The last commit counts only once the Remote has it too.
	if werr := b.waitRemote(); err == nil && werr != nil {
		return Result{}, werr
	}
	return res, err
}

// FailedFile is failed.jsonl's name in the job's state directory.
const FailedFile = "failed.jsonl"

func (b *Batcher) loadCheckpoint() (checkpoint.Checkpoint, error) {
	hash := SpecHash(b.o.Spec)
	cp, err := checkpoint.Load(b.o.Dir)
	switch {
	case errors.Is(err, checkpoint.ErrNotExist):
		b.fresh = true
		return checkpoint.Checkpoint{JobID: b.o.Spec.ID, SpecHash: hash}, nil
	case err != nil:
		return checkpoint.Checkpoint{}, err
	}
	if !b.o.Resume {
		return checkpoint.Checkpoint{}, fmt.Errorf("start job %s: %w (%d batches committed, at source item %d); resume it, or remove %s to start over",
			b.o.Spec.ID, ErrHasCheckpoint, cp.Seq, cp.Source.Index, b.o.Dir)
	}
	if cp.SpecHash != hash {
		return checkpoint.Checkpoint{}, fmt.Errorf("resume job %s: %w: source, target, match, mode or field mapping differ from the checkpoint's; use a new job id for a different migration",
			b.o.Spec.ID, ErrSpecChanged)
	}
	b.log.Info().Str("job", b.o.Spec.ID).Int64("seq", cp.Seq).Int64("offset", cp.Source.Index).
		Bool("done", cp.Done).Msg("resuming from checkpoint")
	return cp, nil
}

// SpecHash identifies what a job migrates: a resume must not change it.
func SpecHash(s job.Spec) string {
	v := struct {
		Source, Target job.Endpoint
		Match          job.Match
		Mode           job.Mode
		OnDuplicate    job.OnDuplicate
		FieldMapping   map[string]string
		MaxItems       int64
	}{withoutQuotaShare(s.Source), withoutQuotaShare(s.Target), s.Match, s.Mode, s.OnDuplicate, s.FieldMapping, s.MaxItems}
	data, _ := json.Marshal(v)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

// withoutQuotaShare leaves a Podio endpoint's quota_share out of the spec
// hash: a fleet sets it for each run from its configuration, and a change
// of pace is no change of what is migrated.
func withoutQuotaShare(e job.Endpoint) job.Endpoint {
	if e.Podio != nil && e.Podio.QuotaShare != 0 {
		p := *e.Podio
		p.QuotaShare = 0
		e.Podio = &p
	}
	return e
}

func (b *Batcher) setTotal(ctx context.Context) {
	n, ok, err := b.o.Source.Total(ctx)
	if err != nil {
		b.log.Warn().Err(err).Msg("count source items; progress will have no total")
		return
	}
	if max := b.o.Spec.MaxItems; max > 0 && (!ok || n > max) {
		n, ok = max, true
	}
	b.mu.Lock()
	b.prog.Total, b.prog.TotalKnown = n, ok
	b.mu.Unlock()
}

func (b *Batcher) cacheOptions(hint int) slimcache.Options {
	return slimcache.Options{
		// The cache is rebuilt from the target at every start and every
		// write goes through it, so entries do not go stale during a job.
		TTL:             -1,
		MaxEntries:      b.o.Spec.Memory.CacheMaxEntries,
		ExpectedEntries: hint,
		Now:             b.now,
	}
}

// buildCache fills the match cache from a snapshot plus the target writes
// made after it, or else by prefetching the whole target. It also finds
// the creates made after the checkpoint by a runner that was killed.
func (b *Batcher) buildCache(ctx context.Context, cp checkpoint.Checkpoint) error {
	b.setPhase("prefetch")
	start := b.now()
	var since connector.Mark
	restored := false
	if s := cp.Snapshot; s != nil {
		c, ext, err := b.loadSnapshot(s)
		if err != nil {
			b.log.Warn().Err(err).Str("snapshot", s.File).Msg("cache snapshot unusable; prefetching the target instead")
		} else {
			b.mu.Lock() // CacheStats may be read already
			b.cache, b.emptyExt, since, restored = c, ext, s.Target, true
			b.mu.Unlock()
		}
	}
	if !restored {
		b.mu.Lock()
		b.cache = slimcache.New(b.cacheOptions(int(cp.Counters.Created)))
		b.emptyExt = slimcache.New(b.cacheOptions(0))
		b.mu.Unlock()
	}
	var seen int64
	err := b.scanKeys(ctx, since, func(id int64, ext string, val json.RawMessage) {
		seen++
		b.mu.Lock()
		b.addTargetItem(id, ext, val)
		b.mu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("prefetch target: %w", err)
	}
	b.recovered = map[string]int64{}
	if !b.fresh && !b.o.Spec.DryRun {
		if err := b.scanKeys(ctx, cp.Target, func(id int64, ext string, _ json.RawMessage) {
			if ext != "" {
				b.recovered[ext] = id
			}
		}); err != nil {
			return fmt.Errorf("read target writes after the checkpoint: %w", err)
		}
		if len(b.recovered) > 0 {
			b.log.Info().Int("items", len(b.recovered)).
				Msg("found creates made after the last checkpoint by an interrupted runner; they will not be repeated")
		}
	}
	est := b.cache.EstimatedBytes() + b.emptyExt.EstimatedBytes()
	ev := b.log.Info().Int("totalCached", b.cache.Len()+b.emptyExt.Len()).
		Float64("estimatedMemoryMB", float64(est*10>>20)/10).
		Dur("took", b.now().Sub(start))
	if restored {
		ev.Int64("replayed", seen).Msg("Cache restored from snapshot")
	} else {
		ev.Msg("Pre-fetch complete")
	}
	if est > 100<<20 {
		b.collect("prefetch")
	}
	return nil
}

// matchTargetField is the target field that holds the match value.
func (b *Batcher) matchTargetField() string {
	if tf := b.o.Spec.Match.TargetField; tf != "" {
		return tf
	}
	if sf := b.o.Spec.Match.SourceField; sf != "" {
		return b.o.Spec.TargetField(sf)
	}
	return ""
}

// scanKeys streams the target's items after since, with the value of the
// match field, through the target's cheap path when it has one.
func (b *Batcher) scanKeys(ctx context.Context, since connector.Mark, fn func(id int64, ext string, val json.RawMessage)) error {
	field := b.matchTargetField()
	if ks, ok := b.o.Target.(connector.KeyScanner); ok {
		_, err := ks.ScanKeys(ctx, since, field, func(id int64, ext string, val json.RawMessage) error {
			fn(id, ext, val)
			return nil
		})
		return err
	}
	_, err := b.o.Target.Scan(ctx, since, func(it connector.TargetItem) error {
		var val json.RawMessage
		if field != "" {
			val = it.Fields[field]
		}
		fn(it.ID, it.ExternalID, val)
		return nil
	})
	return err
}

func (b *Batcher) addTargetItem(id int64, ext string, val json.RawMessage) {
	key := ""
	if val != nil {
		key, _ = slimcache.NormalizeJSON(val)
	}
	if key != "" {
		b.cache.Put(key, id)
		return
	}
	if ext != "" {
		b.emptyExt.Put(ext, id)
	}
}

// SnapshotFiles names the two files of a cache snapshot in dir: the match
// index (file, named in the checkpoint) and, beside it, the external ids
// of target items without a match value.
func SnapshotFiles(dir, file string) (main, ext string) {
	main = filepath.Join(dir, file)
	return main, strings.TrimSuffix(main, ".snap") + ".ext.snap"
}

func snapshotFile(seq int64) string { return fmt.Sprintf("cache-%08d.snap", seq) }

func (b *Batcher) loadSnapshot(s *checkpoint.Snapshot) (*slimcache.Cache, *slimcache.Cache, error) {
	main, ext := SnapshotFiles(b.o.Dir, s.File)
	c, err := slimcache.LoadFile(main, b.cacheOptions(0))
	if err != nil {
		return nil, nil, err
	}
	e, err := slimcache.LoadFile(ext, b.cacheOptions(0))
	if err != nil {
		return nil, nil, err
	}
	return c, e, nil
}

// loop runs batches from the checkpoint's cursor. The next page is read
// and prepared while the current batch commits; nothing of it is planned
// or written before the commit is durable.
//
// A stop (drain or cancel) is seen before every write: the batch in
// flight stops issuing writes, waits for the ones already issued, and is
// committed as a partial batch, with the cursor at its start and a bitmap
// of its done items. A resume reads the same batch again and does only
// the others (docs/design.md, "Graceful restart protocol").
func (b *Batcher) loop(ctx context.Context) (Result, error) {
	b.setPhase("running")
	b.lastSnap = b.now()
	cur := b.cp.Source
	page := b.readAhead(ctx, cur, b.cp.Partial)
	for {
		if s := b.stopRequested(); s != "" {
			<-page
			return b.stopWith(s, b.cp.Partial)
		}
		r := <-page
		if r.end {
			return b.finish(cur)
		}
		if r.err != nil {
			return Result{}, fmt.Errorf("read source at item %d: %w", cur.Index, r.err)
		}
		stopped, err := b.processTasks(ctx, r.tasks, r.part)
		if err != nil {
			return Result{}, err
		}
		if stopped {
			return b.stopWith(b.stopRequested(), r.part)
		}
		page = b.readAhead(ctx, r.next, nil)
		if err := b.commit(ctx, r.next, false, b.periodicSnapshot(), nil); err != nil {
			<-page
			return Result{}, err
		}
		cur = r.next
	}
}

type pageResult struct {
	tasks []task
	// part records which records of the page are done; it starts from
	// the checkpoint's partial batch when the page is that batch.
	part *checkpoint.Partial
	next connector.Cursor
	end  bool
	err  error
}

// readAhead reads and prepares the page at cur in the background:
// decoding, normalizing match values and mapping fields need nothing from
// the batch still committing, so they overlap its fsyncs. Planning and
// writing wait for the commit. With resume, the page is that partial
// batch again, read to the same length, and its done records are left out.
func (b *Batcher) readAhead(ctx context.Context, cur connector.Cursor, resume *checkpoint.Partial) <-chan pageResult {
	ch := make(chan pageResult, 1)
	n := b.o.Spec.BatchSize
	if resume != nil {
		n = resume.Len
	}
	if limit := b.o.Spec.MaxItems; limit > 0 {
		n = int(min(int64(n), limit-cur.Index))
	}
	if n <= 0 {
		ch <- pageResult{end: true}
		return ch
	}
	go func() {
		recs, next, err := b.o.Source.Read(ctx, cur, n)
		switch {
		case errors.Is(err, io.EOF) && len(recs) == 0:
			ch <- pageResult{end: true}
		case err != nil && !errors.Is(err, io.EOF):
			ch <- pageResult{err: err}
		default:
			size := len(recs)
			if resume != nil {
				size = max(size, resume.Len)
			}
			part := checkpoint.NewPartial(size)
			for i := range part.Len {
				if resume.IsDone(i) {
					part.Set(i)
				}
			}
			ch <- pageResult{tasks: b.prepareAll(recs, part), part: part, next: next}
		}
	}()
	return ch
}

func (b *Batcher) finish(cur connector.Cursor) (Result, error) {
	if err := b.commit(context.Background(), cur, true, nil, nil); err != nil {
		return Result{}, err
	}
	b.setPhase("completed")
	p := b.Progress()
	b.logMemory("migration_end")
	b.log.Info().Int64("processed", p.Processed).Int64("created", p.Created).Int64("updated", p.Updated).
		Int64("skipped", p.Skipped).Int64("failed", p.Failed).Msg("job completed")
	return Result{Status: StatusCompleted, Checkpoint: b.cp}, nil
}

// stopWith commits a snapshot (for a drain) and the checkpoint, with the
// partial batch at the cursor if part records any done item, and returns.
func (b *Batcher) stopWith(s Status, part *checkpoint.Partial) (Result, error) {
	var snap *checkpoint.Snapshot
	if s == StatusDrained {
		var err error
		if snap, err = b.writeSnapshot(b.cp.Seq); err != nil {
			// The checkpoint is still good without a snapshot; the next
			// runner prefetches instead.
			b.log.Warn().Err(err).Msg("write cache snapshot")
		}
	}
	if part != nil && part.Count() == 0 {
		part = nil
	}
	if err := b.commit(context.Background(), b.cp.Source, false, snap, part); err != nil {
		return Result{}, err
	}
	b.setPhase(string(s))
	ev := b.log.Info().Str("status", string(s)).Int64("seq", b.cp.Seq).Int64("offset", b.cp.Source.Index)
	if part != nil {
		ev.Int("batchDone", part.Count()).Int("batchLen", part.Len)
	}
	ev.Msg("job stopped after committing")
	return Result{Status: s, Checkpoint: b.cp}, nil
}

// periodicSnapshot saves the cache for the commit about to be made once
// snapshot_interval has passed since the last one, so that a runner that
// is killed, not drained, restores its cache too. It returns nil when it
// is not time, or when the save fails: the older snapshot stays valid.
// It is named for the commit's number, so it never replaces the file the
// committed checkpoint names.
func (b *Batcher) periodicSnapshot() *checkpoint.Snapshot {
	iv := b.o.Spec.SnapshotInterval.D()
	if iv <= 0 || b.now().Sub(b.lastSnap) < iv {
		return nil
	}
	b.lastSnap = b.now()
	snap, err := b.writeSnapshot(b.cp.Seq + 1)
	if err != nil {
		b.log.Warn().Err(err).Msg("write cache snapshot; the last one stays in use")
		return nil
	}
	return snap
}

// writeSnapshot saves the cache. It runs when no write is in flight, so
// the target's sync and the two files, each with its own fsyncs, run side
// by side: a drain's latency is one write and about two commits, not
// five fsyncs in a row.
func (b *Batcher) writeSnapshot(seq int64) (*checkpoint.Snapshot, error) {
	main, ext := SnapshotFiles(b.o.Dir, snapshotFile(seq))
	b.mu.Lock()
	defer b.mu.Unlock()
	var (
		wg               sync.WaitGroup
		mark             connector.Mark
		serr, merr, eerr error
	)
	wg.Add(3)
	go func() { defer wg.Done(); mark, serr = b.o.Target.Sync(context.Background()) }()
	go func() { defer wg.Done(); merr = b.cache.SaveFile(main) }()
	go func() { defer wg.Done(); eerr = b.emptyExt.SaveFile(ext) }()
	wg.Wait()
	if err := errors.Join(serr, merr, eerr); err != nil {
		return nil, err
	}
	return &checkpoint.Snapshot{File: filepath.Base(main), Target: mark, Entries: int64(b.cache.Len())}, nil
}

// commit makes the batch durable: target writes, failures, then the
// checkpoint. Only then may the next batch start. When the target can
// flush and sync separately, the checkpoint's temporary file is written
// and fsynced while the target's fsync runs; it is renamed into place only
// after both are done, so the order the invariant needs is kept.
//
// With a Remote (a fleet), the checkpoint is then recorded there while
// the next batch is written: the next commit first waits for it, and
// stops the job if it was refused. So the state directory may be one
// commit ahead of the fleet, never behind, and the fleet never records a
// commit whose target writes are not durable.
func (b *Batcher) commit(ctx context.Context, next connector.Cursor, done bool, snap *checkpoint.Snapshot, part *checkpoint.Partial) error {
	// A job that may no longer write flushes nothing to the target.
	if err := b.checkFence(); err != nil {
		return err
	}
	if err := b.waitRemote(); err != nil {
		return err
	}
	prev := b.cp
	fsize, err := b.fails.Sync()
	if err != nil {
		return err
	}
	var pending *checkpoint.Pending
	if fl, ok := b.o.Target.(connector.Flusher); ok {
		mark, err := fl.Flush(ctx)
		if err != nil {
			return fmt.Errorf("write target before checkpoint: %w", err)
		}
		cp := b.nextCheckpoint(next, mark, fsize, done, snap, part)
		var serr error
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			var synced connector.Mark
			synced, serr = b.o.Target.Sync(ctx)
			if serr == nil && synced != mark {
				serr = fmt.Errorf("target moved from %d to %d during the commit", mark, synced)
			}
		}()
		pending, err = checkpoint.Prepare(b.o.Dir, cp)
		wg.Wait()
		if serr != nil || err != nil {
			if pending != nil {
				pending.Abort()
			}
			if serr != nil {
				return fmt.Errorf("sync target before checkpoint: %w", serr)
			}
			return err
		}
		if err := pending.Commit(); err != nil {
			return err
		}
		return b.committedThenRemote(ctx, cp, prev)
	}
	mark, err := b.o.Target.Sync(ctx)
	if err != nil {
		return fmt.Errorf("sync target before checkpoint: %w", err)
	}
	cp := b.nextCheckpoint(next, mark, fsize, done, snap, part)
	if err := checkpoint.Save(b.o.Dir, cp); err != nil {
		return err
	}
	return b.committedThenRemote(ctx, cp, prev)
}

// committedThenRemote records cp as committed and starts recording it,
// with the failures logged since prev, in the Remote.
func (b *Batcher) committedThenRemote(ctx context.Context, cp, prev checkpoint.Checkpoint) error {
	if err := b.committed(cp); err != nil {
		return err
	}
	if b.o.Remote != nil {
		ch := make(chan error, 1)
		b.remoteDone = ch
		path := filepath.Join(b.o.Dir, FailedFile)
		go func() { ch <- b.commitRemote(ctx, cp, path, prev.FailedBytes, prev.FailedRecords) }()
	}
	return nil
}

// waitRemote waits for the Remote commit in flight, if any, and returns
// its error.
func (b *Batcher) waitRemote() error {
	if b.remoteDone == nil {
		return nil
	}
	err := <-b.remoteDone
	b.remoteDone = nil
	return err
}

func (b *Batcher) nextCheckpoint(next connector.Cursor, mark connector.Mark, fsize int64, done bool, snap *checkpoint.Snapshot, part *checkpoint.Partial) checkpoint.Checkpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	cp := b.cp
	if next != cp.Source || done || cp.Counters.Processed != b.prog.Processed {
		// A commit that moves nothing (a drain right after a batch) keeps
		// its number: Seq growing means progress.
		cp.Seq++
	}
	cp.Source = next
	cp.Partial = part.Clone()
	cp.Target = mark
	cp.FailedBytes = fsize
	cp.FailedRecords = b.failBase + b.fails.Added()
	cp.Counters = b.prog.Counters
	cp.Counters.ByCategory = cloneCounts(b.prog.ByCategory)
	cp.Done = done
	cp.Time = b.now().UTC()
	if snap != nil {
		// Otherwise an older snapshot stays valid: the writes after its
		// mark are replayed from the target.
		cp.Snapshot = snap
	}
	return cp
}

// committed records a checkpoint that is now durable.
func (b *Batcher) committed(cp checkpoint.Checkpoint) error {
	old := b.cp.Snapshot
	b.mu.Lock()
	b.cp = cp
	b.prog.Batches = cp.Seq
	b.prog.Offset = cp.Source.Index
	b.mu.Unlock()
	if old != nil && (cp.Snapshot == nil || old.File != cp.Snapshot.File) {
		b.removeSnapshot(old.File)
	}
	if b.o.AfterCommit != nil {
		b.o.AfterCommit(cp)
	}
	if cp.Seq%10 == 0 {
		b.gcHygiene()
	}
	return nil
}

func (b *Batcher) removeSnapshot(file string) {
	main, ext := SnapshotFiles(b.o.Dir, file)
	os.Remove(main)
	os.Remove(ext)
}

// gcHygiene follows the original tool: every 10 batches, GC when the heap
// is above gc_percent of the budget.
func (b *Batcher) gcHygiene() {
	if b.o.Limit <= 0 {
		return
	}
	m := memstat.Read()
	pct := float64(m.HeapObjectsBytes) * 100 / float64(b.o.Limit)
	if pct > b.o.Spec.Memory.GCPercent {
		b.collect(fmt.Sprintf("heap at %.0f%% of the budget", pct))
	}
}

func (b *Batcher) collect(reason string) {
	if b.o.BeforeGC != nil {
		b.o.BeforeGC()
	}
	before := memstat.Read()
	runtime.GC()
	debug.FreeOSMemory()
	after := memstat.Read()
	b.log.Info().Str("context", "gc").Str("reason", reason).
		Float64(logkey.HeapObjectsBeforeMB, logkey.MB(before.HeapObjectsBytes)).
		Float64(logkey.HeapObjectsAfterMB, logkey.MB(after.HeapObjectsBytes)).
		Float64(logkey.RSSBeforeMB, logkey.MB(before.RSSBytes)).
		Float64(logkey.RSSAfterMB, logkey.MB(after.RSSBytes)).Msg("forced garbage collection")
}

// logMemory writes the memory line at the original tool's moments
// (migration_start, migration_end, Pre-fetch complete), with the field
// names of internal/logkey.
func (b *Batcher) logMemory(ctx string) {
	m := memstat.Read()
	ev := b.log.Info().Str(logkey.Context, ctx).
		Float64(logkey.HeapObjectsMB, logkey.MB(m.HeapObjectsBytes)).
		Float64(logkey.HeapMappedMB, logkey.MB(m.HeapTotalBytes)).
		Float64(logkey.RSSMB, logkey.MB(m.RSSBytes))
	if b.o.Limit > 0 {
		ev.Float64(logkey.HeapObjectsPercent, float64(int(float64(m.HeapObjectsBytes)*1000/float64(b.o.Limit)))/10)
		ev.Float64(logkey.BudgetMB, logkey.MB(uint64(b.o.Limit)))
	}
	ev.Msg(ctx)
}

func cloneCounts(m map[string]int64) map[string]int64 {
	if m == nil {
		return nil
	}
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
