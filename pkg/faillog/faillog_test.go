package faillog_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/faillog"
)

func TestAppendSyncPageAndTruncate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "failed.jsonl")
	w, err := faillog.Open(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 25; i++ {
		if err := w.Append(faillog.Entry{SourceID: int64(i), Category: connector.CategoryValidation, Error: "bad"}); err != nil {
			t.Fatal(err)
		}
	}
	mark, err := w.Sync()
	if err != nil {
		t.Fatal(err)
	}
	w.Append(faillog.Entry{SourceID: 99, Category: connector.CategoryNetwork, Retryable: true, Error: "after the mark"})
	w.Close()

	// Pages of 10 by byte offset cover every entry once.
	var ids []int64
	var from int64
	for {
		page, next, err := faillog.ReadPage(path, from, 10)
		for _, e := range page {
			ids = append(ids, e.SourceID)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(page) != 10 {
			t.Fatalf("a middle page has %d entries", len(page))
		}
		from = next
	}
	if len(ids) != 26 || ids[0] != 1 || ids[25] != 99 {
		t.Fatalf("read %v", ids)
	}

	// Reopening at the checkpoint's size drops what came after it.
	w, err = faillog.Open(path, mark)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	n := 0
	faillog.Each(path, func(faillog.Entry) error { n++; return nil })
	if n != 25 {
		t.Fatalf("after reopening at the mark: %d entries, want 25", n)
	}
	if _, err := faillog.Open(path, mark+1000); err == nil {
		t.Fatal("opening at a size past the end succeeded")
	}
}

func TestTornLastLineEndsThePage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "failed.jsonl")
	os.WriteFile(path, []byte(`{"source_id":1,"category":"validation","error":"x","pos":{"index":0},"time":"2026-01-01T00:00:00Z","retryable":false}`+"\n"+`{"source_id":2,"categ`), 0o644)
	page, _, err := faillog.ReadPage(path, 0, 10)
	if !errors.Is(err, io.EOF) || len(page) != 1 || page[0].SourceID != 1 {
		t.Fatalf("got %v %v, want the one complete entry and EOF", page, err)
	}
}
