package checkpoint_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/connector"
)

func sample() checkpoint.Checkpoint {
	return checkpoint.Checkpoint{
		JobID: "j", SpecHash: "abc", Seq: 7,
		Source: connector.Cursor{Index: 3500, Offset: 123456, Line: 3501},
		Target: 98765, FailedBytes: 321,
		Counters: checkpoint.Counters{Processed: 3500, Created: 3000, Skipped: 499, Failed: 1, ByCategory: map[string]int64{"validation": 1}},
		Snapshot: &checkpoint.Snapshot{File: "cache-00000007.snap", Target: 90000, Entries: 3000},
		Time:     time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := checkpoint.Load(dir); !errors.Is(err, checkpoint.ErrNotExist) {
		t.Fatalf("Load of an empty dir: %v, want ErrNotExist", err)
	}
	want := sample()
	if err := checkpoint.Save(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := checkpoint.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != want.Seq || got.Source != want.Source || got.Target != want.Target || *got.Snapshot != *want.Snapshot ||
		got.Counters.ByCategory["validation"] != 1 || !got.Time.Equal(want.Time) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	// No temporary file is left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("dir holds %d files, want only %s", len(ents), checkpoint.FileName)
	}
}

func TestPreparedCheckpointIsInvisibleUntilCommit(t *testing.T) {
	dir := t.TempDir()
	first := sample()
	checkpoint.Save(dir, first)
	next := sample()
	next.Seq = 8
	p, err := checkpoint.Prepare(dir, next)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := checkpoint.Load(dir); got.Seq != 7 {
		t.Fatalf("a prepared checkpoint is visible: seq %d", got.Seq)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := checkpoint.Load(dir); got.Seq != 8 {
		t.Fatalf("after commit: seq %d, want 8", got.Seq)
	}
	q, _ := checkpoint.Prepare(dir, first)
	q.Abort()
	if got, _ := checkpoint.Load(dir); got.Seq != 8 {
		t.Fatalf("an aborted checkpoint replaced the file: seq %d", got.Seq)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("abort left %d files", len(ents))
	}
}

func TestMoveAside(t *testing.T) {
	dir := t.TempDir()
	checkpoint.Save(dir, sample())
	to, err := checkpoint.MoveAside(dir, time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(to) != "checkpoint.json.reset-20260506T070809Z" {
		t.Errorf("moved to %s", to)
	}
	if _, err := checkpoint.Load(dir); !errors.Is(err, checkpoint.ErrNotExist) {
		t.Errorf("after MoveAside: %v, want ErrNotExist", err)
	}
}

// FuzzDecode feeds damaged checkpoint files to Decode: each is rejected
// with a CorruptError, or decodes to exactly what was saved; none panics.
func FuzzDecode(f *testing.F) {
	dir := f.TempDir()
	checkpoint.Save(dir, sample())
	good, _ := os.ReadFile(checkpoint.Path(dir))
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("{}"))
	f.Add([]byte(""))
	withPartial := sample()
	withPartial.Partial = checkpoint.NewPartial(500)
	withPartial.Partial.Set(3)
	checkpoint.Save(dir, withPartial)
	v2, _ := os.ReadFile(checkpoint.Path(dir))
	f.Add(v2)
	f.Fuzz(func(t *testing.T, data []byte) {
		cp, err := checkpoint.Decode("checkpoint.json", data)
		if err != nil {
			var ce *checkpoint.CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, checkpoint.ErrCorrupt) {
				t.Fatalf("error %v is not a CorruptError", err)
			}
			return
		}
		if cp.Seq < 0 || cp.Source.Index < 0 {
			t.Fatalf("accepted a negative position: %+v", cp)
		}
		if p := cp.Partial; p != nil && (p.Len < 1 || len(p.Done) != (p.Len+7)/8) {
			t.Fatalf("accepted a bad partial batch: %+v", p)
		}
		for i := -1; cp.Partial != nil && i <= cp.Partial.Len; i++ {
			cp.Partial.IsDone(i) // must not panic
		}
	})
}

func TestPartialBatchRoundTrip(t *testing.T) {
	dir := t.TempDir()
	cp := sample()
	cp.Partial = checkpoint.NewPartial(500)
	for _, i := range []int{0, 1, 7, 8, 499} {
		cp.Partial.Set(i)
	}
	if err := checkpoint.Save(dir, cp); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(checkpoint.Path(dir))
	if !strings.Contains(string(raw), `"version": 2`) {
		t.Errorf("a checkpoint with a partial batch is not version 2:\n%s", raw)
	}
	got, err := checkpoint.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Partial == nil || got.Partial.Len != 500 {
		t.Fatalf("partial = %+v, want 500 records", got.Partial)
	}
	if n := got.Partial.Count(); n != 5 {
		t.Errorf("done count = %d, want 5", n)
	}
	for i := 0; i < 500; i++ {
		want := i == 0 || i == 1 || i == 7 || i == 8 || i == 499
		if got.Partial.IsDone(i) != want {
			t.Errorf("IsDone(%d) = %v, want %v", i, got.Partial.IsDone(i), want)
		}
	}
}

func TestVersion1CheckpointStillLoads(t *testing.T) {
	dir := t.TempDir()
	// Written by the build before partial batches existed.
	body := `{"job_id":"j","spec_hash":"abc","seq":3,"source":{"index":1500},"target":4096,"failed_bytes":0,"counters":{"processed":1500,"created":1500,"updated":0,"skipped":0,"failed":0},"done":false,"time":"2026-01-02T03:04:05Z"}`
	writeEnvelope(t, dir, 1, body)
	got, err := checkpoint.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != 3 || got.Source.Index != 1500 || got.Partial != nil {
		t.Fatalf("got %+v", got)
	}
	// A plain checkpoint is still written as version 1.
	if err := checkpoint.Save(dir, got); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(checkpoint.Path(dir))
	if !strings.Contains(string(raw), `"version": 1`) {
		t.Errorf("a checkpoint without a partial batch is not version 1:\n%s", raw)
	}
}

func TestBadPartialBatchIsCorrupt(t *testing.T) {
	for name, tc := range map[string]struct {
		version int
		partial string
	}{
		"bitmap too short":     {2, `{"len":500,"done":"AAAA"}`},
		"zero records":         {2, `{"len":0,"done":""}`},
		"partial in version 1": {1, `{"len":8,"done":"AQ=="}`},
		"future version":       {3, `{"len":8,"done":"AQ=="}`},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			body := `{"job_id":"j","spec_hash":"abc","seq":3,"source":{"index":1500},"target":4096,"failed_bytes":0,"counters":{"processed":1500,"created":1500,"updated":0,"skipped":0,"failed":0},"partial":` + tc.partial + `,"done":false,"time":"2026-01-02T03:04:05Z"}`
			writeEnvelope(t, dir, tc.version, body)
			_, err := checkpoint.Load(dir)
			if !errors.Is(err, checkpoint.ErrCorrupt) {
				t.Fatalf("Load: %v, want ErrCorrupt", err)
			}
		})
	}
}

func writeEnvelope(t *testing.T, dir string, version int, body string) {
	t.Helper()
	sum := sha256.Sum256([]byte(body))
	env := fmt.Sprintf(`{"format":"memvisor-checkpoint","version":%d,"sha256":"%s","body":%s}`, version, hex.EncodeToString(sum[:]), body)
	if err := os.WriteFile(checkpoint.Path(dir), []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
}
