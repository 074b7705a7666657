package podio_test

import (
	"encoding/json"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/podio"
	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

const (
	clientID     = "memvisor"
	clientSecret = "client-secret-xyz"
	srcApp       = 30001
	dstApp       = 30002
	srcToken     = "source-app-token"
	dstToken     = "target-app-token"
	username     = "ada@example.com"
	password     = "pw-123"
)

// allTypes is an app with a field of every type the connector carries.
// The target app has the same fields with other ids, options in another
// order, and one field ("notes") that only its label matches.
func allTypes(appID int64, target bool) podioemu.App {
	cat := []podioemu.Option{{Text: "Open"}, {Text: "Won"}, {Text: "Lost"}}
	multi := []podioemu.Option{{Text: "Red"}, {Text: "Green"}, {Text: "Blue"}}
	q := []podioemu.Option{{Text: "Yes"}, {Text: "No"}}
	notes := "notes"
	token := srcToken
	if target {
		cat = []podioemu.Option{{Text: "Lost"}, {Text: "Won"}, {Text: "Open"}, {Text: "Archived"}}
		multi = []podioemu.Option{{Text: "Blue"}, {Text: "Green"}, {Text: "Red"}}
		q = []podioemu.Option{{Text: "No"}, {Text: "Yes"}}
		notes = "remarks"
		token = dstToken
	}
	return podioemu.App{AppID: appID, Name: fmt.Sprintf("App %d", appID), AppToken: token, Fields: []podioemu.Field{
		{ExternalID: "title", Type: "text", Label: "Title"},
		{ExternalID: "amount", Type: "number", Label: "Amount"},
		{ExternalID: "price", Type: "money", Label: "Price"},
		{ExternalID: "due", Type: "date", Label: "Due"},
		{ExternalID: "status", Type: "category", Label: "Status", Options: cat},
		{ExternalID: "colors", Type: "category", Label: "Colors", Options: multi, Multiple: true},
		{ExternalID: "parent", Type: "app", Label: "Parent", ReferencedApps: []int64{appID}},
		{ExternalID: "owner", Type: "contact", Label: "Owner"},
		{ExternalID: "email", Type: "email", Label: "Email"},
		{ExternalID: "phone", Type: "phone", Label: "Phone"},
		{ExternalID: "address", Type: "location", Label: "Address"},
		{ExternalID: "effort", Type: "duration", Label: "Effort"},
		{ExternalID: "done", Type: "progress", Label: "Done"},
		{ExternalID: "answer", Type: "question", Label: "Answer", Options: q},
		{ExternalID: "score", Type: "calculation", Label: "Score"},
		{ExternalID: notes, Type: "text", Label: "Notes"},
	}}
}

// sourceItem is item i of the source app, in seed form. parent is the id
// of an earlier item to reference, or 0.
func sourceItem(i int, parent int64) podioemu.Item {
	f := map[string]any{
		"title":   fmt.Sprintf("Item %05d", i),
		"amount":  float64(i) + 0.25,
		"price":   map[string]any{"value": fmt.Sprintf("%d.50", i%1000), "currency": []string{"EUR", "USD", "DKK"}[i%3]},
		"due":     map[string]any{"start": fmt.Sprintf("2024-%02d-%02d 10:30:00", i%12+1, i%28+1)},
		"status":  []string{[]string{"Open", "Won", "Lost"}[i%3]},
		"colors":  [][]string{{"Red"}, {"Green", "Blue"}, {"Red", "Green", "Blue"}}[i%3],
		"owner":   []int64{int64(i%50 + 1)},
		"email":   []map[string]string{{"type": "work", "value": fmt.Sprintf("user%d@example.com", i)}},
		"phone":   []map[string]string{{"type": "mobile", "value": fmt.Sprintf("+45 %08d", i)}},
		"address": map[string]any{"value": fmt.Sprintf("Street %d, Copenhagen", i), "lat": 55.5, "lng": 12.25},
		"effort":  int64(i%100) * 60,
		"done":    i % 101,
		"answer":  []string{[]string{"Yes", "No"}[i%2]},
		"score":   i * 2,
		"notes":   fmt.Sprintf("note %d", i),
	}
	if i%4 == 1 {
		f["due"] = map[string]any{"start": "2024-03-01", "end": "2024-03-05"}
	}
	if parent > 0 {
		f["parent"] = []int64{parent}
	}
	raw := map[string]json.RawMessage{}
	for k, v := range f {
		raw[k], _ = json.Marshal(v)
	}
	day := time.Date(2023, 1, 1, 9, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Hour)
	tags := []string{}
	if i%5 == 0 {
		tags = append(tags, "vip")
	}
	return podioemu.Item{AppID: srcApp, CreatedOn: day.Format("2006-01-02 15:04:05"), Tags: tags, Fields: raw}
}

// newEmu starts an emulator with the two apps and n source items. Every
// third item (after the first) references the item before it.
func newEmu(t testing.TB, cfg podioemu.Config, n int) (*podioemu.Server, []int64) {
	t.Helper()
	s := podioemu.New(cfg)
	s.AddClient(clientID, clientSecret)
	s.AddUser(username, password)
	for _, a := range []podioemu.App{allTypes(srcApp, false), allTypes(dstApp, true)} {
		if _, err := s.AddApp(a); err != nil {
			t.Fatal(err)
		}
	}
	ids := make([]int64, n)
	for i := range n {
		var parent int64
		if i > 0 && i%3 == 0 {
			parent = ids[i-1]
		}
		id, err := s.Seed(sourceItem(i, parent))
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	if _, err := s.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, ids
}

func appCreds(app int64, token string) podio.Credentials {
	return podio.Credentials{Flow: job.PodioFlowApp, ClientID: clientID, ClientSecret: clientSecret, AppID: app, AppToken: token}
}

func newClient(t testing.TB, s *podioemu.Server, creds podio.Credentials, mod func(*podio.Options)) *podio.Client {
	t.Helper()
	o := podio.Options{BaseURL: s.URL(), Credentials: creds, Timeout: 10 * time.Second, MaxAttempts: 8,
		BackoffInitial: 2 * time.Millisecond, BackoffMax: 50 * time.Millisecond, Logger: zerolog.Nop()}
	if mod != nil {
		mod(&o)
	}
	c := podio.NewClient(o)
	t.Cleanup(c.Close)
	return c
}

// dumped is an item of an emulator dump, reduced to what checks compare.
type dumped struct {
	ItemID     int64              `json:"item_id"`
	ExternalID *string            `json:"external_id"`
	Fields     []podio.APIField   `json:"fields"`
	Flat       map[string]any     `json:"-"`
	Raw        map[string]dumpRaw `json:"-"`
}

type dumpRaw = json.RawMessage

func dumpApp(t testing.TB, s *podioemu.Server, app int64) []dumped {
	t.Helper()
	var out []dumped
	for _, raw := range s.Items(app) {
		var d dumped
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		d.Flat = map[string]any{}
		for k, v := range podio.Flatten(d.Fields) {
			var x any
			_ = json.Unmarshal(v, &x)
			d.Flat[k] = x
		}
		out = append(out, d)
	}
	return out
}

// checkMigrated checks that the target holds each source item exactly
// once, by external_id, with the same values: options by text, the
// reference translated to the target id of the referenced item, the
// label-matched field under its target name, and the calculation left
// out.
func checkMigrated(t testing.TB, s *podioemu.Server, wantRefs bool) {
	t.Helper()
	src := dumpApp(t, s, srcApp)
	dst := dumpApp(t, s, dstApp)
	byExt := map[string]dumped{}
	var dups []string
	for _, d := range dst {
		if d.ExternalID == nil {
			t.Errorf("target item %d has no external_id", d.ItemID)
			continue
		}
		if _, ok := byExt[*d.ExternalID]; ok {
			dups = append(dups, *d.ExternalID)
		}
		byExt[*d.ExternalID] = d
	}
	if len(dups) > 0 {
		sort.Strings(dups)
		t.Fatalf("%d source items were created twice, e.g. %v", len(dups), dups[:min(5, len(dups))])
	}
	if len(dst) != len(src) {
		t.Errorf("target has %d items, want %d (one per source item)", len(dst), len(src))
	}
	srcToDst := map[int64]int64{}
	for _, d := range src {
		if m, ok := byExt[fmt.Sprint(d.ItemID)]; ok {
			srcToDst[d.ItemID] = m.ItemID
		}
	}
	bad := 0
	for _, sd := range src {
		td, ok := byExt[fmt.Sprint(sd.ItemID)]
		if !ok {
			t.Errorf("source item %d is missing from the target", sd.ItemID)
			bad++
			continue
		}
		want := map[string]any{}
		for k, v := range sd.Flat {
			switch k {
			case "score":
				continue // a calculation is not written
			case "notes":
				want["remarks"] = v
			case "parent":
				if !wantRefs {
					continue
				}
				refs := []any{}
				for _, r := range v.([]any) {
					sid := int64(r.(map[string]any)["item_id"].(float64))
					refs = append(refs, map[string]any{"item_id": float64(srcToDst[sid])})
				}
				want[k] = refs
			default:
				want[k] = v
			}
		}
		got := td.Flat
		if !wantRefs {
			delete(got, "parent")
		}
		wj, _ := json.Marshal(want)
		gj, _ := json.Marshal(got)
		if string(wj) != string(gj) {
			bad++
			if bad <= 3 {
				t.Errorf("source item %d: target values differ:\n got %s\nwant %s", sd.ItemID, gj, wj)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d items have wrong values", bad, len(src))
	}
	// Every type must really have been compared.
	seen := map[string]bool{}
	for _, d := range dst {
		for k := range d.Flat {
			seen[k] = true
		}
	}
	for _, k := range []string{"title", "amount", "price", "due", "status", "colors", "owner", "email", "phone", "address", "effort", "done", "answer", "remarks"} {
		if !seen[k] {
			t.Errorf("no target item has a value for %s", k)
		}
	}
	if wantRefs && !seen["parent"] {
		t.Errorf("no target item has a reference")
	}
}
