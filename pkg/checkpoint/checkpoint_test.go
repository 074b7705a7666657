package checkpoint_test

import (
	"errors"
	"os"
	"path/filepath"
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
	})
}
