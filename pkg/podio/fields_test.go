package podio_test

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/podio"
	"github.com/memvisor/memvisor/pkg/slimcache"
)

func raws(vals ...string) []json.RawMessage {
	out := make([]json.RawMessage, len(vals))
	for i, v := range vals {
		out[i] = json.RawMessage(v)
	}
	return out
}

// Every type: Podio's read form -> flat form -> the target's write form,
// and the match key the flat form normalizes to.
func TestFieldConversion(t *testing.T) {
	target := func(typ string) *podio.FieldDef {
		return &podio.FieldDef{ExternalID: "f", Type: typ, Multiple: true,
			Options: []podio.Option{{ID: 7, Text: "Lost"}, {ID: 8, Text: "Won"}, {ID: 9, Text: "Open"}}}
	}
	refs := map[int64]int64{100: 900}
	for _, tc := range []struct {
		typ, values      string
		flat, write, key string
	}{
		{"text", `[{"value":"Hello"}]`, `"Hello"`, `"Hello"`, "hello"},
		{"number", `[{"value":"12.5000"}]`, `12.5`, `12.5`, "12.5"},
		{"money", `[{"value":"12.5000","currency":"EUR"}]`, `{"currency":"EUR","value":"12.50"}`, `{"currency":"EUR","value":"12.50"}`, "12.50"},
		{"date", `[{"start":"2024-01-02 10:00:00","start_date":"2024-01-02","start_time":"10:00:00","end":"2024-01-03 00:00:00","end_date":"2024-01-03","end_time":null}]`,
			`{"end":"2024-01-03","start":"2024-01-02 10:00:00"}`, `{"end_date":"2024-01-03","start_utc":"2024-01-02 10:00:00"}`, ""},
		// Podio answers times in the user's zone and in UTC; the flat form
		// is UTC, and it is written back as UTC.
		{"date", `[{"start":"2024-01-02 11:00:00","start_date":"2024-01-02","start_time":"11:00:00","start_utc":"2024-01-02 10:00:00","start_date_utc":"2024-01-02","start_time_utc":"10:00:00"}]`,
			`{"start":"2024-01-02 10:00:00"}`, `{"start_utc":"2024-01-02 10:00:00"}`, ""},
		{"category", `[{"value":{"id":1,"text":"Open","status":"active"}},{"value":{"id":2,"text":"Won"}}]`, `["Open","Won"]`, `[9,8]`, "open,won"},
		{"question", `[{"value":{"id":3,"text":"Lost"}}]`, `["Lost"]`, `[7]`, "lost"},
		{"app", `[{"value":{"item_id":100,"title":"x","app":{"app_id":1}}}]`, `[{"item_id":100}]`, `[900]`, "100"},
		{"contact", `[{"value":{"profile_id":5,"name":"Ada"}}]`, `[{"profile_id":5}]`, `[5]`, "5"},
		{"email", `[{"type":"work","value":"Ada@Example.com"}]`, `[{"type":"work","value":"Ada@Example.com"}]`, `[{"type":"work","value":"Ada@Example.com"}]`, "ada@example.com"},
		{"phone", `[{"type":"mobile","value":"+45 1234"}]`, `[{"type":"mobile","value":"+45 1234"}]`, `[{"type":"mobile","value":"+45 1234"}]`, "+45 1234"},
		{"location", `[{"value":"Main St 1","formatted":"Main St 1","lat":1.5,"lng":2.5}]`, `[{"lat":1.5,"lng":2.5,"value":"Main St 1"}]`, `[{"lat":1.5,"lng":2.5,"value":"Main St 1"}]`, "main st 1"},
		{"duration", `[{"value":3600}]`, `3600`, `3600`, "3600"},
		{"progress", `[{"value":40}]`, `40`, `40`, "40"},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			var vals []json.RawMessage
			if err := json.Unmarshal([]byte(tc.values), &vals); err != nil {
				t.Fatal(err)
			}
			flat := podio.Flatten([]podio.APIField{{ExternalID: "f", Type: tc.typ, Values: vals}})["f"]
			if string(flat) != tc.flat {
				t.Fatalf("flat: got %s, want %s", flat, tc.flat)
			}
			if key, _ := slimcache.NormalizeJSON(flat); key != tc.key {
				t.Errorf("match key: got %q, want %q", key, tc.key)
			}
			w, dropped, err := podio.Unflatten(target(tc.typ), flat, func(id int64) (int64, bool) { id, ok := refs[id]; return id, ok })
			if err != nil || len(dropped) > 0 {
				t.Fatalf("write form: %v, dropped %v", err, dropped)
			}
			got, _ := json.Marshal(w)
			if string(got) != tc.write {
				t.Fatalf("write form: got %s, want %s", got, tc.write)
			}
		})
	}
}

func TestFlattenSkipsEmptyAndUnknown(t *testing.T) {
	f := podio.Flatten([]podio.APIField{
		{ExternalID: "pic", Type: "image", Values: raws(`{"value":{"file_id":1}}`)},
		{ExternalID: "empty", Type: "text"},
		{ExternalID: "calc", Type: "calculation", Values: raws(`{"value":"4.0000"}`)},
	})
	if len(f) != 1 || string(f["calc"]) != "4" {
		t.Fatalf("got %v, want only calc=4", f)
	}
}

// A calculation without a result (a date calculation with no date) is
// left out: mapped onto a writable field, a null would clear it. A date
// calculation with a result flattens as a date, in UTC.
func TestCalculationsNeverClear(t *testing.T) {
	f := podio.Flatten([]podio.APIField{
		{ExternalID: "none", Type: "calculation", Values: raws(`{"value":null}`)},
		{ExternalID: "nodate", Type: "calculation", Values: raws(`{"start":null}`)},
		{ExternalID: "when", Type: "calculation", Values: raws(`{"start":"2024-01-02 11:00:00","start_date":"2024-01-02","start_time":"11:00:00","start_utc":"2024-01-02 10:00:00"}`)},
		{ExternalID: "txt", Type: "calculation", Values: raws(`{"value":"gold"}`)},
	})
	if _, ok := f["none"]; ok {
		t.Errorf("a calculation without a result flattened to %s", f["none"])
	}
	if _, ok := f["nodate"]; ok {
		t.Errorf("a date calculation without a date flattened to %s", f["nodate"])
	}
	if got := string(f["when"]); got != `{"start":"2024-01-02 10:00:00"}` {
		t.Errorf("date calculation: %s", got)
	}
	if got := string(f["txt"]); got != `"gold"` {
		t.Errorf("text calculation: %s", got)
	}
}

// Options are matched by text between apps, never by id.
func TestCategoryByText(t *testing.T) {
	fd := &podio.FieldDef{ExternalID: "status", Type: "category",
		Options: []podio.Option{{ID: 41, Text: "Open"}, {ID: 42, Text: "Won"}}}
	for _, tc := range []struct {
		flat string
		want string
		err  bool
	}{
		{`["Won"]`, `[42]`, false},
		{`["  won "]`, `[42]`, false}, // case and space are forgiven
		{`"Open"`, `[41]`, false},
		{`[{"id":1,"text":"Open"}]`, `[41]`, false}, // the source's id is ignored
		{`["Archived"]`, ``, true},                  // no such option in the target
		{`[2]`, ``, true},                           // an id means nothing across apps
		{`["Open","Won"]`, ``, true},                // the target takes one option
	} {
		t.Run(tc.flat, func(t *testing.T) {
			w, _, err := podio.Unflatten(fd, json.RawMessage(tc.flat), nil)
			if tc.err {
				var ie *connector.ItemError
				if !errors.As(err, &ie) || ie.Category != connector.CategoryValidation || ie.Retryable {
					t.Fatalf("got %v, %v; want a validation error", w, err)
				}
				return
			}
			got, _ := json.Marshal(w)
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %s, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestReferencesToItemsNotMigratedAreDropped(t *testing.T) {
	fd := &podio.FieldDef{ExternalID: "parent", Type: "app"}
	w, dropped, err := podio.Unflatten(fd, json.RawMessage(`[{"item_id":1},{"item_id":2}]`),
		func(id int64) (int64, bool) { return id * 10, id == 1 })
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(w); string(got) != `[10]` || len(dropped) != 1 {
		t.Fatalf("got %s, dropped %v; want [10] and one dropped", got, dropped)
	}
}

func TestValueErrors(t *testing.T) {
	for _, tc := range []struct{ typ, flat string }{
		{"number", `"abc"`},
		{"money", `12`},
		{"progress", `140`},
		{"duration", `1.5`},
		{"date", `{"end":"2024-01-01"}`},
		{"text", `{"a":1}`},
		{"calculation", `1`},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			_, _, err := podio.Unflatten(&podio.FieldDef{ExternalID: "f", Type: tc.typ}, json.RawMessage(tc.flat), nil)
			if cat, _ := connector.Classify(err); cat != connector.CategoryValidation {
				t.Fatalf("got %v (category %s), want a validation error", err, cat)
			}
		})
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

func contains(s, sub string) bool { return sub != "" && strings.Contains(s, sub) }
