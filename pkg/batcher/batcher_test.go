package batcher_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/memvisor/memvisor/pkg/batcher"
	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/connector/jsonl"
	"github.com/memvisor/memvisor/pkg/faillog"
	"github.com/memvisor/memvisor/pkg/job"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture is a job over jsonl files in a temporary directory.
type fixture struct {
	t    *testing.T
	dir  string
	spec job.Spec
}

func newFixture(t *testing.T, source string) *fixture {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "source.jsonl")
	if err := os.WriteFile(src, []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	s := job.Default()
	s.ID = "t"
	s.StateDir = filepath.Join(dir, "state")
	s.Source = job.Endpoint{Type: job.TypeJSONL, Path: src}
	s.Target = job.Endpoint{Type: job.TypeJSONL, Path: filepath.Join(dir, "target.jsonl")}
	s.Match = job.Match{SourceField: "email", TargetField: "email"}
	s.BatchSize = 7
	s.Concurrency = 3
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, dir: dir, spec: s}
}

// open opens the job's connectors and a batcher, with the options changed
// by mod.
func (f *fixture) open(mod func(*batcher.Options)) (*batcher.Batcher, func()) {
	f.t.Helper()
	if err := os.MkdirAll(f.spec.Dir(), 0o755); err != nil {
		f.t.Fatal(err)
	}
	src, err := jsonl.OpenSource(f.spec.Source.Path)
	if err != nil {
		f.t.Fatal(err)
	}
	tgt, err := jsonl.OpenTarget(f.spec.Target.Path, zerolog.Nop())
	if err != nil {
		f.t.Fatal(err)
	}
	o := batcher.Options{Spec: f.spec, Source: src, Target: tgt, Dir: f.spec.Dir(), Logger: zerolog.Nop(), Resume: true}
	if mod != nil {
		mod(&o)
	}
	b, err := batcher.New(o)
	if err != nil {
		f.t.Fatal(err)
	}
	return b, func() { src.Close(); tgt.Close() }
}

// run runs the job once with the options changed by mod.
func (f *fixture) run(ctx context.Context, mod func(*batcher.Options)) (batcher.Result, error) {
	f.t.Helper()
	b, done := f.open(mod)
	defer done()
	return b.Run(ctx)
}

type targetLine struct {
	ItemID     int64                      `json:"item_id"`
	ExternalID string                     `json:"external_id"`
	Fields     map[string]json.RawMessage `json:"fields"`
}

// target reads the target file: the last line per item wins.
func (f *fixture) target() map[int64]targetLine {
	f.t.Helper()
	out := map[int64]targetLine{}
	fh, err := os.Open(f.spec.Target.Path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		var l targetLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			f.t.Fatalf("target line %q: %v", sc.Text(), err)
		}
		if old, ok := out[l.ItemID]; ok && l.ExternalID == "" {
			l.ExternalID = old.ExternalID
		}
		out[l.ItemID] = l
	}
	return out
}

func (f *fixture) failures() []faillog.Entry {
	var out []faillog.Entry
	if err := faillog.Each(filepath.Join(f.spec.Dir(), batcher.FailedFile), func(e faillog.Entry) error {
		out = append(out, e)
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
	return out
}

func line(id int, email string, extra string) string {
	return fmt.Sprintf(`{"item_id": %d, "fields": {"email": %q%s}}`+"\n", id, email, extra)
}

func TestCreateDeduplicatesWithinAndAcrossBatches(t *testing.T) {
	var src strings.Builder
	// 30 items: keys repeat across and within batches (batch size 7),
	// differ only in case and spaces, or are empty.
	for i := 1; i <= 30; i++ {
		email := fmt.Sprintf("user%d@x.io", i%10)
		if i%10 == 3 {
			email = fmt.Sprintf("  USER%d@X.IO ", i%10)
		}
		if i%11 == 0 {
			email = ""
		}
		src.WriteString(line(i, email, ""))
	}
	src.WriteString("this line is broken\n")
	f := newFixture(t, src.String())
	res, err := f.run(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != batcher.StatusCompleted || !res.Checkpoint.Done {
		t.Fatalf("result %+v, want completed and done", res)
	}
	tg := f.target()
	keys := map[string]int{}
	empties := 0
	for _, l := range tg {
		var e string
		json.Unmarshal(l.Fields["email"], &e)
		k := strings.ToLower(strings.TrimSpace(e))
		if k == "" {
			empties++
			continue
		}
		keys[k]++
	}
	if len(keys) != 10 {
		t.Errorf("target has %d distinct keys, want 10: %v", len(keys), keys)
	}
	for k, n := range keys {
		if n != 1 {
			t.Errorf("key %q is in the target %d times", k, n)
		}
	}
	if empties != 2 {
		t.Errorf("target has %d items without a key, want 2 (items 11 and 22)", empties)
	}
	c := res.Checkpoint.Counters
	if c.Processed != 31 || c.Created != 12 || c.Skipped != 18 || c.Failed != 1 {
		t.Errorf("counters %+v, want processed 31 created 12 skipped 18 failed 1", c)
	}
	fails := f.failures()
	if len(fails) != 1 || fails[0].Line != 31 || fails[0].Category != connector.CategoryValidation || fails[0].Raw == "" {
		t.Errorf("failures %+v, want line 31 as a validation failure with its raw text", fails)
	}

	// Running a finished job again changes nothing.
	before, _ := os.ReadFile(f.spec.Target.Path)
	res, err = f.run(t.Context(), nil)
	if err != nil || !res.AlreadyDone {
		t.Fatalf("second run: %+v %v, want AlreadyDone", res, err)
	}
	after, _ := os.ReadFile(f.spec.Target.Path)
	if string(before) != string(after) {
		t.Error("a second run of a finished job changed the target")
	}
}

func TestModes(t *testing.T) {
	target := `{"item_id":1,"external_id":"x1","fields":{"email":"a@x.io","name":"Old A"}}` + "\n" +
		`{"item_id":2,"external_id":"x2","fields":{"email":"b@x.io","name":"Old B"}}` + "\n"
	source := line(10, "A@x.io", `, "name": "New A"`) + line(11, "c@x.io", `, "name": "New C"`) + line(12, "", `, "name": "No key"`)
	cases := []struct {
		mode                             job.Mode
		dup                              job.OnDuplicate
		created, updated, skipped, faild int64
		names                            map[int64]string
	}{
		{job.ModeCreate, job.DuplicateSkip, 2, 0, 1, 0, map[int64]string{1: "Old A", 3: "New C", 4: "No key"}},
		{job.ModeCreate, job.DuplicateUpdate, 2, 1, 0, 0, map[int64]string{1: "New A", 3: "New C"}},
		{job.ModeCreate, job.DuplicateError, 2, 0, 0, 1, map[int64]string{1: "Old A", 3: "New C"}},
		{job.ModeUpdate, job.DuplicateSkip, 0, 1, 2, 0, map[int64]string{1: "New A", 2: "Old B"}},
		{job.ModeUpsert, job.DuplicateSkip, 2, 1, 0, 0, map[int64]string{1: "New A", 3: "New C"}},
	}
	for _, c := range cases {
		t.Run(string(c.mode)+"/"+string(c.dup), func(t *testing.T) {
			f := newFixture(t, source)
			os.WriteFile(f.spec.Target.Path, []byte(target), 0o644)
			f.spec.Mode, f.spec.OnDuplicate = c.mode, c.dup
			f.spec.Concurrency = 1 // target ids in source order
			res, err := f.run(t.Context(), nil)
			if err != nil {
				t.Fatal(err)
			}
			got := res.Checkpoint.Counters
			if got.Created != c.created || got.Updated != c.updated || got.Skipped != c.skipped || got.Failed != c.faild {
				t.Errorf("counters %+v, want created %d updated %d skipped %d failed %d", got, c.created, c.updated, c.skipped, c.faild)
			}
			tg := f.target()
			for id, name := range c.names {
				var n string
				json.Unmarshal(tg[id].Fields["name"], &n)
				if n != name {
					t.Errorf("item %d name %q, want %q", id, n, name)
				}
			}
			if c.dup == job.DuplicateError {
				fs := f.failures()
				if len(fs) != 1 || fs[0].Category != connector.CategoryDuplicate || fs[0].SourceID != 10 {
					t.Errorf("failures %+v, want source 10 as a duplicate", fs)
				}
			}
		})
	}
}

// killingTarget aborts the run after n writes, as a kill would: the writes
// so far are in the file, the batch is not committed.
type killingTarget struct {
	connector.Target
	left   atomic.Int64
	cancel context.CancelFunc
}

func (k *killingTarget) Create(ctx context.Context, ext string, f connector.Fields) (int64, error) {
	if k.left.Add(-1) < 0 {
		k.cancel()
		return 0, ctx.Err()
	}
	return k.Target.Create(ctx, ext, f)
}

func TestResumeAfterInterruptedBatchIsExactlyOnce(t *testing.T) {
	var src strings.Builder
	for i := 1; i <= 100; i++ {
		email := fmt.Sprintf("u%d@x.io", i%40)
		if i%9 == 0 {
			email = ""
		}
		src.WriteString(line(i, email, ""))
	}
	f := newFixture(t, src.String())
	f.spec.Concurrency = 1 // deterministic order of writes
	for attempt, stopAfter := range []int64{5, 3, 8, 1, 13} {
		ctx, cancel := context.WithCancel(t.Context())
		_, err := f.run(ctx, func(o *batcher.Options) {
			k := &killingTarget{Target: o.Target, cancel: cancel}
			k.left.Store(stopAfter)
			o.Target = k
		})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("attempt %d: got %v, want the run aborted", attempt, err)
		}
	}
	res, err := f.run(t.Context(), nil)
	if err != nil || res.Status != batcher.StatusCompleted {
		t.Fatalf("final run: %+v %v", res, err)
	}
	tg := f.target()
	byExt := map[string]int{}
	byKey := map[string]int{}
	for _, l := range tg {
		byExt[l.ExternalID]++
		var e string
		json.Unmarshal(l.Fields["email"], &e)
		if e != "" {
			byKey[e]++
		}
	}
	for k, n := range byKey {
		if n != 1 {
			t.Errorf("key %s created %d times", k, n)
		}
	}
	for e, n := range byExt {
		if n != 1 {
			t.Errorf("external id %s created %d times", e, n)
		}
	}
	// 40 distinct keys (u0..u39) and 11 items without a key.
	if len(byKey) != 40 || len(tg) != 51 {
		t.Errorf("target has %d keys and %d items, want 40 and 51", len(byKey), len(tg))
	}
	c := res.Checkpoint.Counters
	if c.Processed != 100 || c.Created != 51 || c.Skipped != 49 {
		t.Errorf("counters %+v, want processed 100, created 51, skipped 49", c)
	}
}

func TestCorruptCheckpointIsAnError(t *testing.T) {
	f := newFixture(t, line(1, "a@x.io", "")+line(2, "b@x.io", ""))
	if _, err := f.run(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	path := checkpoint.Path(f.spec.Dir())
	data, _ := os.ReadFile(path)
	for name, bad := range map[string][]byte{
		"truncated":    data[:len(data)/2],
		"flipped byte": flip(data),
		"empty":        {},
	} {
		t.Run(name, func(t *testing.T) {
			os.WriteFile(path, bad, 0o644)
			_, err := f.run(t.Context(), nil)
			var ce *checkpoint.CorruptError
			if !errors.As(err, &ce) || ce.Path != path {
				t.Fatalf("got %v, want a CorruptError naming %s", err, path)
			}
			if !strings.Contains(err.Error(), "--reset-checkpoint") {
				t.Errorf("error does not say how to recover: %v", err)
			}
			after, _ := os.ReadFile(path)
			if string(after) != string(bad) {
				t.Error("the corrupt checkpoint was replaced")
			}
		})
	}
}

func flip(b []byte) []byte {
	out := append([]byte(nil), b...)
	i := strings.Index(string(out), `\"seq\":`)
	if i < 0 {
		i = len(out) / 2
	}
	out[i+8] ^= 0x01
	return out
}

func TestFullDiskStopsWithCheckpointIntact(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full on this system")
	}
	var src strings.Builder
	for i := 1; i <= 20; i++ {
		if i == 10 {
			src.WriteString("{not an item\n")
			continue
		}
		src.WriteString(line(i, fmt.Sprintf("u%d@x.io", i), ""))
	}
	f := newFixture(t, src.String())
	f.spec.Concurrency = 1
	// First run: batch 1 (items 1-7) commits, batch 2 is interrupted.
	ctx, cancel := context.WithCancel(t.Context())
	_, err := f.run(ctx, func(o *batcher.Options) {
		k := &killingTarget{Target: o.Target, cancel: cancel}
		k.left.Store(9)
		o.Target = k
	})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("first run: %v", err)
	}
	before, err := checkpoint.Load(f.spec.Dir())
	if err != nil || before.Seq != 1 {
		t.Fatalf("checkpoint after first run: %+v %v", before, err)
	}
	// The disk fills up: every write to failed.jsonl gets ENOSPC.
	failed := filepath.Join(f.spec.Dir(), batcher.FailedFile)
	os.Remove(failed)
	if err := os.Symlink("/dev/full", failed); err != nil {
		t.Fatal(err)
	}
	_, err = f.run(t.Context(), nil)
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("run on a full disk: got %v, want an error saying the disk is full", err)
	}
	after, err := checkpoint.Load(f.spec.Dir())
	if err != nil || after.Seq != before.Seq || after.Source != before.Source {
		t.Fatalf("checkpoint after the failed run: %+v %v, want it unchanged (%+v)", after, err, before)
	}
	// Space is back: the job resumes and completes exactly once.
	os.Remove(failed)
	res, err := f.run(t.Context(), nil)
	if err != nil || res.Status != batcher.StatusCompleted {
		t.Fatalf("run after space is back: %+v %v", res, err)
	}
	if n := len(f.target()); n != 19 {
		t.Errorf("target has %d items, want 19", n)
	}
	if fs := f.failures(); len(fs) != 1 || fs[0].Line != 10 {
		t.Errorf("failures %+v, want line 10", fs)
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	target := `{"item_id":1,"external_id":"x1","fields":{"email":"a@x.io","name":"Old"}}` + "\n"
	f := newFixture(t, line(10, "a@x.io", `, "name": "New"`)+line(11, "b@x.io", "")+line(12, "b@x.io", "")+"junk\n")
	os.WriteFile(f.spec.Target.Path, []byte(target), 0o644)
	f.spec.DryRun = true
	f.spec.OnDuplicate = job.DuplicateUpdate
	if _, err := f.run(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(f.spec.Target.Path)
	if string(after) != target {
		t.Fatalf("dry run changed the target:\n%s", after)
	}
	if _, err := checkpoint.Load(f.spec.Dir()); !errors.Is(err, checkpoint.ErrNotExist) {
		t.Errorf("dry run left a checkpoint: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(f.spec.Dir(), batcher.DryRunFile))
	if err != nil {
		t.Fatal(err)
	}
	var rep batcher.DryRunReport
	json.Unmarshal(data, &rep)
	if rep.WouldCreate != 1 || rep.WouldUpdate != 2 || rep.WouldFail != 1 || rep.FieldChanges["name"] != 1 {
		t.Errorf("report %+v, want create 1, update 2 (one of them a duplicate of a new item), fail 1, name changed once", rep)
	}
	if len(rep.Updates) != 1 || string(rep.Updates[0].Fields[0].From) != `"Old"` {
		t.Errorf("diffs %+v", rep.Updates)
	}
}

func TestRetryFailedAfterFixingSource(t *testing.T) {
	src := line(1, "a@x.io", "") + "{broken\n" + line(3, "c@x.io", "") + `{"item_id": 4}` + "\n"
	f := newFixture(t, src)
	res, err := f.run(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Checkpoint.Counters.Failed != 2 {
		t.Fatalf("failed %d, want 2", res.Checkpoint.Counters.Failed)
	}
	// Fix the two lines in place; the first fix changes the line's length.
	fixed := line(1, "a@x.io", "") + line(2, "b@x.io", `, "note": "fixed"`) + line(3, "c@x.io", "") + line(4, "d@x.io", "")
	os.WriteFile(f.spec.Source.Path, []byte(fixed), 0o644)
	res, err = f.run(t.Context(), func(o *batcher.Options) { o.RetryFailed = true })
	if err != nil {
		t.Fatal(err)
	}
	c := res.Checkpoint.Counters
	if c.Failed != 0 || c.Created != 4 || c.Processed != 4 {
		t.Errorf("counters after retry %+v, want failed 0, created 4, processed 4", c)
	}
	if n := len(f.failures()); n != 0 {
		t.Errorf("failed.jsonl still has %d entries", n)
	}
	if n := len(f.target()); n != 4 {
		t.Errorf("target has %d items, want 4", n)
	}
}

func TestDrainSnapshotsAndResumes(t *testing.T) {
	var src strings.Builder
	for i := 1; i <= 50; i++ {
		src.WriteString(line(i, fmt.Sprintf("u%d@x.io", i%30), ""))
	}
	f := newFixture(t, src.String())
	var b *batcher.Batcher
	b, done := f.open(func(o *batcher.Options) {
		o.BeforeItem = func(i int64) {
			if i == 20 {
				b.Drain()
			}
		}
	})
	res, err := b.Run(t.Context())
	done()
	if err != nil {
		t.Fatal(err)
	}
	// The drain came as item 21 was read: the batch then in flight
	// commits, and the job stops on a batch boundary.
	if idx := res.Checkpoint.Source.Index; res.Status != batcher.StatusDrained || idx == 0 || idx > 21 || idx%7 != 0 || res.Checkpoint.Snapshot == nil {
		t.Fatalf("drain result %+v, want drained on a batch boundary by item 21, with a snapshot", res)
	}
	snap := filepath.Join(f.spec.Dir(), res.Checkpoint.Snapshot.File)
	if _, err := os.Stat(snap); err != nil {
		t.Fatalf("snapshot file: %v", err)
	}
	// The resumed run restores the snapshot and finishes exactly once.
	res, err = f.run(t.Context(), nil)
	if err != nil || res.Status != batcher.StatusCompleted {
		t.Fatalf("resume: %+v %v", res, err)
	}
	if n := len(f.target()); n != 30 {
		t.Errorf("target has %d items, want 30", n)
	}
	if c := res.Checkpoint.Counters; c.Created != 30 || c.Skipped != 20 {
		t.Errorf("counters %+v, want created 30, skipped 20", c)
	}
}

// drainingTarget hides the jsonl target's sequential writes, so the batch
// is written concurrently, as against an API, and asks for a drain as its
// nth write starts. Counting and asking happen under one lock, so no
// write starts between the nth and the drain request.
type drainingTarget struct {
	connector.Target
	n     int64
	mu    sync.Mutex
	calls int64
	drain func()
}

func (d *drainingTarget) count() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.calls++; d.calls == d.n {
		d.drain()
	}
}

func (d *drainingTarget) Create(ctx context.Context, ext string, f connector.Fields) (int64, error) {
	d.count()
	return d.Target.Create(ctx, ext, f)
}

func (d *drainingTarget) Update(ctx context.Context, id int64, f connector.Fields) error {
	d.count()
	return d.Target.Update(ctx, id, f)
}

func TestDrainMidBatchStopsAtItemsAndResumesExactlyOnce(t *testing.T) {
	for _, mode := range []job.Mode{job.ModeCreate, job.ModeUpsert} {
		t.Run(string(mode), func(t *testing.T) {
			var src strings.Builder
			for i := 1; i <= 250; i++ {
				email := fmt.Sprintf("u%d@x.io", i%90) // duplicates inside a batch
				if i%11 == 0 {
					email = ""
				}
				src.WriteString(line(i, email, ""))
			}
			f := newFixture(t, src.String())
			f.spec.BatchSize = 100
			f.spec.Concurrency = 5
			f.spec.Mode = mode
			// Three drains, at the 7th, 20th and 33rd write of a run: the
			// second and third land in a batch that a drain already split.
			var linesBefore int
			for attempt, at := range []int64{7, 20, 33} {
				var b *batcher.Batcher
				b, done := f.open(func(o *batcher.Options) {
					o.Target = &drainingTarget{Target: o.Target, n: at, drain: func() { b.Drain() }}
				})
				res, err := b.Run(t.Context())
				done()
				if err != nil {
					t.Fatal(err)
				}
				p := res.Checkpoint.Partial
				if res.Status != batcher.StatusDrained || p == nil {
					t.Fatalf("attempt %d: %+v, want drained with a partial batch", attempt, res)
				}
				written := len(f.target()) - linesBefore
				linesBefore += written
				// The drain waits for the writes in flight (at most
				// concurrency), never for the rest of the batch.
				if max := int(at) + f.spec.Concurrency; written > max {
					t.Errorf("attempt %d: %d items written, want at most %d", attempt, written, max)
				}
				if p.Count() >= p.Len {
					t.Errorf("attempt %d: partial batch has %d of %d done, want it unfinished", attempt, p.Count(), p.Len)
				}
				cp, err := checkpoint.Load(f.spec.Dir())
				if err != nil || cp.Partial == nil || cp.Partial.Count() != p.Count() {
					t.Fatalf("attempt %d: durable checkpoint %+v %v, want the partial batch", attempt, cp.Partial, err)
				}
			}
			res, err := f.run(t.Context(), nil)
			if err != nil || res.Status != batcher.StatusCompleted {
				t.Fatalf("final run: %+v %v", res, err)
			}
			if res.Checkpoint.Partial != nil {
				t.Errorf("completed checkpoint keeps a partial batch: %+v", res.Checkpoint.Partial)
			}
			checkExactlyOnce(t, f, res, 250, 90, 22)
		})
	}
}

// checkExactlyOnce checks that the target holds each key and each
// external id once, and that the counters add up.
func checkExactlyOnce(t *testing.T, f *fixture, res batcher.Result, items, keys, noKey int) {
	t.Helper()
	byExt := map[string]int{}
	byKey := map[string]int{}
	for _, l := range f.target() {
		byExt[l.ExternalID]++
		var e string
		json.Unmarshal(l.Fields["email"], &e)
		if e != "" {
			byKey[e]++
		}
	}
	for k, n := range byKey {
		if n != 1 {
			t.Errorf("key %s created %d times", k, n)
		}
	}
	for e, n := range byExt {
		if n != 1 {
			t.Errorf("external id %s created %d times", e, n)
		}
	}
	if len(byKey) != keys || len(byExt) != keys+noKey {
		t.Errorf("target has %d keys and %d items, want %d and %d", len(byKey), len(byExt), keys, keys+noKey)
	}
	c := res.Checkpoint.Counters
	if c.Processed != int64(items) || c.Created != int64(keys+noKey) || c.Created+c.Updated+c.Skipped != int64(items) {
		t.Errorf("counters %+v, want processed %d, created %d", c, items, keys+noKey)
	}
}

func TestKillAfterPartialDrainIsExactlyOnce(t *testing.T) {
	var src strings.Builder
	for i := 1; i <= 120; i++ {
		src.WriteString(line(i, fmt.Sprintf("u%d@x.io", i%50), ""))
	}
	f := newFixture(t, src.String())
	f.spec.BatchSize = 60
	f.spec.Concurrency = 4
	var b *batcher.Batcher
	b, done := f.open(func(o *batcher.Options) {
		o.Target = &drainingTarget{Target: o.Target, n: 9, drain: func() { b.Drain() }}
	})
	res, err := b.Run(t.Context())
	done()
	if err != nil || res.Checkpoint.Partial == nil {
		t.Fatalf("drain: %+v %v, want a partial batch", res, err)
	}
	// The next runner dies after 5 more creates, before any commit: the
	// one after it must find them by external id and not repeat them.
	ctx, cancel := context.WithCancel(t.Context())
	_, err = f.run(ctx, func(o *batcher.Options) {
		k := &killingTarget{Target: o.Target, cancel: cancel}
		k.left.Store(5)
		o.Target = k
	})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("killed run: %v, want it aborted", err)
	}
	res, err = f.run(t.Context(), nil)
	if err != nil || res.Status != batcher.StatusCompleted {
		t.Fatalf("final run: %+v %v", res, err)
	}
	checkExactlyOnce(t, f, res, 120, 50, 0)
}

// queuedTarget lets the first n writes through; every later write waits,
// as behind a spent rate limit, until a drain's hold makes it give up
// unsent. The write that fills the last free slot asks for the drain.
type queuedTarget struct {
	connector.Target
	n, slots int64
	calls    atomic.Int64
	waiting  atomic.Int64
	drain    func()
	stuck    atomic.Int64 // writes that waited out the test's bound: the hold never came
	passed   atomic.Int64
}

func (q *queuedTarget) Create(ctx context.Context, ext string, f connector.Fields) (int64, error) {
	if q.calls.Add(1) > q.n {
		if q.waiting.Add(1) == q.slots {
			q.drain()
		}
		select {
		case <-connector.Hold(ctx):
			return 0, fmt.Errorf("create %s: %w", ext, connector.ErrNotSent)
		case <-time.After(5 * time.Second):
			q.stuck.Add(1)
		}
	}
	q.passed.Add(1)
	return q.Target.Create(ctx, ext, f)
}

func TestDrainDoesNotWaitForWritesQueuedBehindARateLimit(t *testing.T) {
	var src strings.Builder
	for i := 1; i <= 60; i++ {
		src.WriteString(line(i, fmt.Sprintf("u%d@x.io", i), ""))
	}
	f := newFixture(t, src.String())
	f.spec.BatchSize = 60
	f.spec.Concurrency = 5
	var b *batcher.Batcher
	q := &queuedTarget{n: 10, slots: 5}
	b, done := f.open(func(o *batcher.Options) {
		q.Target, q.drain = o.Target, func() { b.Drain() }
		o.Target = q
	})
	res, err := b.Run(t.Context())
	done()
	if err != nil {
		t.Fatal(err)
	}
	if n := q.stuck.Load(); n > 0 {
		t.Fatalf("%d writes waited for their rate limit although the drain held them", n)
	}
	p := res.Checkpoint.Partial
	if res.Status != batcher.StatusDrained || p == nil || int64(p.Count()) != q.passed.Load() {
		t.Fatalf("drain: %+v (partial %+v), want the %d writes made recorded as done", res, p, q.passed.Load())
	}
	if c := res.Checkpoint.Counters; c.Failed != 0 || c.Processed != q.passed.Load() {
		t.Errorf("counters %+v: the held writes must be neither done nor failed", c)
	}
	res, err = f.run(t.Context(), nil)
	if err != nil || res.Status != batcher.StatusCompleted {
		t.Fatalf("resume: %+v %v", res, err)
	}
	checkExactlyOnce(t, f, res, 60, 60, 0)
	if len(f.failures()) != 0 {
		t.Errorf("failed.jsonl has %d entries, want none", len(f.failures()))
	}
}
