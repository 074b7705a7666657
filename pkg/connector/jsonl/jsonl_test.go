package jsonl_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/connector/jsonl"
)

func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSourceReadsItemsAndMalformedLines(t *testing.T) {
	p := writeFile(t, "src.jsonl", `{"item_id": 1, "fields": {"email": "a@x.io"}}

not json
{"item_id": "x", "fields": {}}
{"fields": {"email": "b@x.io"}}
{"item_id": 5}
{"item_id": 6, "fields": {"email": "c@x.io", "n": 3}}`)
	src, err := jsonl.OpenSource(p)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	recs, next, err := src.Read(t.Context(), connector.Cursor{}, 100)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	type want struct {
		id   int64
		line int64
		bad  bool
	}
	wants := []want{{1, 0, false}, {0, 2, true}, {0, 3, true}, {0, 4, true}, {5, 5, true}, {6, 6, false}}
	if len(recs) != len(wants) {
		t.Fatalf("got %d records, want %d", len(recs), len(wants))
	}
	for i, w := range wants {
		r := recs[i]
		if r.Item.ID != w.id || r.Pos.Line != w.line || (r.Err != nil) != w.bad || r.Pos.Index != int64(i) {
			t.Errorf("record %d: got id %d line %d index %d err %v, want id %d line %d bad %v", i, r.Item.ID, r.Pos.Line, r.Pos.Index, r.Err, w.id, w.line, w.bad)
		}
	}
	if next.Index != 6 || next.Line != 7 {
		t.Errorf("next cursor %+v, want index 6 line 7", next)
	}
	if _, _, err := src.Read(t.Context(), next, 10); !errors.Is(err, io.EOF) {
		t.Errorf("read at end: got %v, want io.EOF", err)
	}
	// Re-reading a record by its position gives the same record.
	again, _, err := src.Read(t.Context(), recs[5].Pos, 1)
	if err != nil || len(again) != 1 || again[0].Item.ID != 6 {
		t.Fatalf("re-read at %+v: %v %+v", recs[5].Pos, err, again)
	}
}

func TestSourceResumesAtCursor(t *testing.T) {
	var b strings.Builder
	for i := 1; i <= 25; i++ {
		b.WriteString(`{"item_id": ` + itoa(i) + `, "fields": {"k": ` + itoa(i) + "}}\n")
	}
	p := writeFile(t, "src.jsonl", b.String())
	src, _ := jsonl.OpenSource(p)
	defer src.Close()
	var ids []int64
	cur := connector.Cursor{}
	for {
		recs, next, err := src.Read(t.Context(), cur, 7)
		if errors.Is(err, io.EOF) {
			break
		}
		for _, r := range recs {
			ids = append(ids, r.Item.ID)
		}
		// A fresh source opened at the cursor continues where this one is.
		fresh, _ := jsonl.OpenSource(p)
		got, _, _ := fresh.Read(t.Context(), next, 1)
		fresh.Close()
		if len(got) == 1 && got[0].Item.ID != int64(len(ids)+1) {
			t.Fatalf("fresh source at %+v read id %d, want %d", next, got[0].Item.ID, len(ids)+1)
		}
		cur = next
	}
	if len(ids) != 25 || ids[24] != 25 {
		t.Fatalf("read %v", ids)
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestTargetRepairsTornLastLine(t *testing.T) {
	good := `{"item_id":1,"external_id":"10","fields":{"email":"a@x.io"}}` + "\n"
	p := writeFile(t, "tgt.jsonl", good+`{"item_id":2,"external_id":"11","fie`)
	var logs bytes.Buffer
	tg, err := jsonl.OpenTarget(p, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "torn last line") {
		t.Errorf("repair was not logged: %q", logs.String())
	}
	id, err := tg.Create(t.Context(), "12", connector.Fields{"email": json.RawMessage(`"b@x.io"`)})
	if err != nil || id != 2 {
		t.Fatalf("Create: id %d err %v, want id 2", id, err)
	}
	if _, err := tg.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	tg.Close()
	data, _ := os.ReadFile(p)
	want := good + `{"item_id":2,"external_id":"12","fields":{"email":"b@x.io"}}` + "\n"
	if string(data) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", data, want)
	}
}

func TestTargetScanSinceMarkAndUpdate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tgt.jsonl")
	tg, err := jsonl.OpenTarget(p, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for i := range 3 {
		if _, err := tg.Create(ctx, itoa(100+i), connector.Fields{"n": json.RawMessage(itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	mark, err := tg.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := tg.Create(ctx, "200", connector.Fields{"n": json.RawMessage("9")})
	if err := tg.Update(ctx, 1, connector.Fields{"n": json.RawMessage("42")}); err != nil {
		t.Fatal(err)
	}
	var after []connector.TargetItem
	if _, err := tg.Scan(ctx, mark, func(it connector.TargetItem) error { after = append(after, it); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(after) != 2 || after[0].ID != id || after[0].ExternalID != "200" || after[1].ID != 1 || after[1].ExternalID != "" {
		t.Fatalf("scan after mark: %+v", after)
	}
	got, err := tg.Get(ctx, 1)
	if err != nil || string(got["n"]) != "42" {
		t.Fatalf("Get(1) = %s, %v; want n 42", got["n"], err)
	}
	if _, err := tg.Get(ctx, 99); !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("Get(99): %v, want ErrNotFound", err)
	}
	found, ok, err := tg.LookupExternal(ctx, "101")
	if err != nil || !ok || found != 2 {
		t.Fatalf("LookupExternal(101) = %d %v %v", found, ok, err)
	}
	tg.Close()
	// A reopened target continues the ids.
	tg2, _ := jsonl.OpenTarget(p, zerolog.Nop())
	defer tg2.Close()
	if id, _ := tg2.Create(ctx, "300", connector.Fields{}); id != 5 {
		t.Fatalf("id after reopen = %d, want 5", id)
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", "quote\"back\\slash", "ctl\x00\x01\x1f\n\r\t", "utf8 é ✓", "bad \xff utf8", "sep \u2028 \u2029"} {
		want, _ := json.Marshal(s)
		want = bytes.ReplaceAll(want, []byte(`\u003c`), []byte("<"))
		got := jsonl.AppendString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("AppendString(%q) = %s: not valid JSON: %v", s, got, err)
			continue
		}
		var wantBack string
		json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Errorf("AppendString(%q) decodes to %q, encoding/json to %q", s, back, wantBack)
		}
	}
}

func FuzzDecodeItem(f *testing.F) {
	f.Add([]byte(`{"item_id": 1, "fields": {"a": 1}}`))
	f.Add([]byte(`{"item_id": -1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, line []byte) {
		it, err := jsonl.DecodeItem(line)
		if err == nil && (it.ID <= 0 || it.Fields == nil) {
			t.Fatalf("accepted %q as %+v", line, it)
		}
		if err == nil {
			// What was accepted survives the target encoding.
			out := jsonl.AppendLine(nil, it.ID, "x", it.Fields)
			var v map[string]any
			if jerr := json.Unmarshal(out, &v); jerr != nil {
				t.Fatalf("encoded line %q is not JSON: %v", out, jerr)
			}
		}
	})
}

func TestTargetSkipsItsMarkerLine(t *testing.T) {
	p := writeFile(t, "marked.jsonl", jsonl.TargetMarker)
	tg, err := jsonl.OpenTarget(p, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	id, err := tg.Create(t.Context(), "7", connector.Fields{"email": json.RawMessage(`"a@x.io"`)})
	if err != nil || id != 1 {
		t.Fatalf("Create on a marked target: id %d err %v, want id 1", id, err)
	}
	var got []string
	if _, err := tg.Scan(t.Context(), 0, func(it connector.TargetItem) error {
		got = append(got, it.ExternalID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "7" {
		t.Errorf("scan: got %q, want the one item and not the marker", got)
	}
	if _, err := tg.Get(t.Context(), 1); err != nil {
		t.Errorf("Get after the marker: %v", err)
	}
	tg.Close()
	tg, err = jsonl.OpenTarget(p, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if id, err := tg.Create(t.Context(), "8", connector.Fields{}); err != nil || id != 2 {
		t.Errorf("after a reopen: id %d err %v, want 2", id, err)
	}
}
