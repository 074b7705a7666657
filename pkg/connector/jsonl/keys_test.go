package jsonl_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/connector/jsonl"
)

type keyed struct {
	id  int64
	ext string
	val string
}

// scanBoth returns what ScanKeys and a full Scan see for field.
func scanBoth(t *testing.T, content []byte, field string) (fast, full []keyed, ferr, serr error) {
	p := filepath.Join(t.TempDir(), "t.jsonl")
	os.WriteFile(p, content, 0o644)
	tg, err := jsonl.OpenTarget(p, zerolog.Nop())
	if err != nil {
		return nil, nil, err, err
	}
	defer tg.Close()
	_, ferr = tg.ScanKeys(t.Context(), 0, field, func(id int64, ext string, v json.RawMessage) error {
		fast = append(fast, keyed{id, ext, compact(v)})
		return nil
	})
	_, serr = tg.Scan(t.Context(), 0, func(it connector.TargetItem) error {
		full = append(full, keyed{it.ID, it.ExternalID, compact(it.Fields[field])})
		return nil
	})
	return
}

func compact(v json.RawMessage) string {
	if len(v) == 0 {
		return ""
	}
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		return "INVALID:" + string(v)
	}
	return b.String()
}

func TestScanKeysMatchesScan(t *testing.T) {
	content := []byte(`{"item_id":1,"external_id":"17","fields":{"email":"a@x.io","n":1}}
{"item_id":2,"fields":{"n":[1,{"a":"}"}],"email":"b\"@x.io"}}
{"item_id":3,"external_id":"e\"3","fields":{"em\u0061il":"c@x.io"}}
{ "item_id" : 4, "external_id": "4", "fields": {"email": "spaced@x.io"}}
{"item_id":5,"external_id":"5","fields":{}}
{"item_id":6,"external_id":"6","fields":{"email":null,"x":true,"y":-1.5e3}}
`)
	fast, full, ferr, serr := scanBoth(t, content, "email")
	if ferr != nil || serr != nil {
		t.Fatal(ferr, serr)
	}
	if len(fast) != 6 || len(full) != 6 {
		t.Fatalf("got %d and %d items", len(fast), len(full))
	}
	for i := range fast {
		if fast[i] != full[i] {
			t.Errorf("line %d: ScanKeys %+v, Scan %+v", i+1, fast[i], full[i])
		}
	}
}

func FuzzScanKeys(f *testing.F) {
	f.Add([]byte(`{"item_id":1,"external_id":"17","fields":{"email":"a@x.io","n":[1,2,{"q":"]"}]}}`), "email")
	f.Add([]byte(`{"item_id":2,"fields":{"email":"x\\"}}`), "email")
	f.Add([]byte(`{"item_id":3,"external_id":"1","fields":{"a":{"b":"}"},"email":1e5}}`), "a")
	f.Fuzz(func(t *testing.T, line []byte, field string) {
		if bytes.ContainsAny(line, "\n\r") {
			return
		}
		fast, full, ferr, serr := scanBoth(t, append(line, '\n'), field)
		if serr != nil {
			return // not a valid target line; ScanKeys may reject it too
		}
		if ferr != nil {
			t.Fatalf("ScanKeys failed on a line Scan reads: %v", ferr)
		}
		if len(fast) != len(full) {
			t.Fatalf("ScanKeys %v, Scan %v", fast, full)
		}
		for i := range fast {
			if fast[i] != full[i] {
				t.Fatalf("ScanKeys %+v, Scan %+v", fast[i], full[i])
			}
		}
	})
}
