package podio_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/testbin"
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

// firstID is the item id of the first seeded source item.
const firstID = 1_000_000_001

// seedJSONL is the emulator's seed: the client, the user, the two apps
// and n source items. Every third item (after the first) references the
// item before it.
func seedJSONL(t testing.TB, n int) []byte {
	t.Helper()
	var b bytes.Buffer
	line := func(kind string, v any) {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(`{"kind":"` + kind + `",`)
		b.Write(data[1:])
		b.WriteByte('\n')
	}
	line("client", map[string]string{"client_id": clientID, "client_secret": clientSecret})
	line("user", map[string]string{"username": username, "password": password})
	line("app", allTypes(srcApp, false))
	line("app", allTypes(dstApp, true))
	for i := range n {
		var parent int64
		if i > 0 && i%3 == 0 {
			parent = firstID + int64(i) - 1
		}
		it := sourceItem(i, parent)
		it.ItemID = firstID + int64(i)
		line("item", it)
	}
	return b.Bytes()
}

// newEmu starts an emulator in the test process with the two apps and n
// source items.
func newEmu(t testing.TB, cfg podioemu.Config, n int) (*podioemu.Server, []int64) {
	t.Helper()
	s := podioemu.New(cfg)
	if err := s.LoadJSONL(bytes.NewReader(seedJSONL(t, n))); err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = firstID + int64(i)
	}
	if _, err := s.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, ids
}

// emuProc is the cmd/podio-emulator binary running the same seed, so
// that the emulator's work is not slowed by the race detector.
type emuProc struct {
	url string
}

func startEmuProc(t testing.TB, n int, flags ...string) *emuProc {
	t.Helper()
	bin := testbin.Path(t, "podio-emulator")
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed.jsonl")
	if err := os.WriteFile(seed, seedJSONL(t, n), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := filepath.Join(dir, "addr")
	cmd := exec.Command(bin, append([]string{"--seed", seed, "--addr-file", addr}, flags...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if data, err := os.ReadFile(addr); err == nil && len(data) > 0 {
			return &emuProc{url: strings.TrimSpace(string(data))}
		}
		select {
		case <-exited:
			t.Fatal("podio-emulator exited before listening")
		default:
		}
	}
	t.Fatal("podio-emulator did not start listening within 60s")
	return nil
}

func (e *emuProc) stats(t testing.TB) podioemu.Stats {
	t.Helper()
	resp, err := http.Get(e.url + "/_emulator/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st podioemu.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func (e *emuProc) dump(t testing.TB, app int64) []dumped {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("%s/_emulator/dump?app_id=%d", e.url, app))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var lines [][]byte
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		lines = append(lines, append([]byte(nil), sc.Bytes()...))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	out := make([]dumped, len(lines))
	var wg sync.WaitGroup
	const workers = 4
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(lines); i += workers {
				out[i] = parseDumped(t, lines[i])
			}
		}()
	}
	wg.Wait()
	return out
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
	ItemID     int64                      `json:"item_id"`
	ExternalID *string                    `json:"external_id"`
	Fields     []podio.APIField           `json:"fields"`
	Flat       map[string]any             `json:"-"`
	FlatRaw    map[string]json.RawMessage `json:"-"`
	Raw        map[string]dumpRaw         `json:"-"`
}

type dumpRaw = json.RawMessage

func dumpApp(t testing.TB, s *podioemu.Server, app int64) []dumped {
	t.Helper()
	var out []dumped
	for _, raw := range s.Items(app) {
		out = append(out, parseDumped(t, raw))
	}
	return out
}

func parseDumped(t testing.TB, raw []byte) dumped {
	t.Helper()
	var d dumped
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	d.FlatRaw = podio.Flatten(d.Fields)
	d.Flat = map[string]any{}
	for k, v := range d.FlatRaw {
		if k == "parent" {
			var x any
			_ = json.Unmarshal(v, &x)
			d.Flat[k] = x
		} else {
			d.Flat[k] = v
		}
	}
	d.Fields = nil // keep only the flat values: 20,000 items are checked
	return d
}

// checkMigrated checks that the target holds each source item exactly
// once, by external_id, with the same values: options by text, the
// reference translated to the target id of the referenced item, the
// label-matched field under its target name, and the calculation left
// out.
func checkMigrated(t testing.TB, src, dst []dumped, wantRefs bool) {
	t.Helper()
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
