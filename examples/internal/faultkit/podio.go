package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// The apps and credentials of the Podio scenarios' emulator.
const (
	podioClientID     = "memvisor"
	podioClientSecret = "faults-client-secret"
	podioSourceApp    = 30001
	podioTargetApp    = 30002
	podioSourceToken  = "faults-source-app-token"
	podioTargetToken  = "faults-target-app-token"
)

// cmdPodioSeed writes the emulator's seed: a client, a source app with
// -items items and an empty target app with the same fields. Some items
// repeat an earlier item's email (the match field), some have none.
func cmdPodioSeed(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("podio-seed", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "the seed `FILE`")
	items := fs.Int("items", 2000, "items in the source app")
	if err := fs.Parse(args); err != nil || *out == "" || *items < 0 {
		fmt.Fprintln(stderr, "usage: faultkit podio-seed -out FILE [-items N]")
		return exitCode(2)
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	line := func(v any) {
		b, _ := json.Marshal(v)
		w.Write(append(b, '\n'))
	}
	line(map[string]any{"kind": "client", "client_id": podioClientID, "client_secret": podioClientSecret})
	fields := []map[string]any{
		{"external_id": "title", "type": "text", "label": "Title"},
		{"external_id": "email", "type": "text", "label": "Email"},
		{"external_id": "status", "type": "category", "label": "Status",
			"options": []map[string]string{{"text": "Open"}, {"text": "Won"}, {"text": "Lost"}}},
		{"external_id": "amount", "type": "number", "label": "Amount"},
		{"external_id": "progress", "type": "progress", "label": "Progress"},
	}
	line(map[string]any{"kind": "app", "app_id": podioSourceApp, "app_token": podioSourceToken, "name": "Leads", "fields": fields})
	line(map[string]any{"kind": "app", "app_id": podioTargetApp, "app_token": podioTargetToken, "name": "Leads (migrated)", "fields": fields})
	statuses := []string{"Open", "Won", "Lost"}
	for i := 1; i <= *items; i++ {
		fv := map[string]any{
			"title":    fmt.Sprintf("Lead %d", i),
			"status":   []string{statuses[i%3]},
			"amount":   float64(i) * 1.5,
			"progress": i % 101,
		}
		switch {
		case i%71 == 0: // no email: migrated once, keyed by its item id
		case i%53 == 0:
			fv["email"] = fmt.Sprintf("lead%d@example.com", i-1) // the previous lead again
		default:
			fv["email"] = fmt.Sprintf("lead%d@example.com", i)
		}
		line(map[string]any{"kind": "item", "app_id": podioSourceApp, "external_id": fmt.Sprintf("crm-%d", i), "fields": fv})
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "seeded app %d with %d items; app %d is empty\n", podioSourceApp, *items, podioTargetApp)
	return nil
}

// cmdPodioJSONL turns an emulator dump (one GET /item body a line) into
// the jsonl connector's format, so bin/verify can read a Podio app: as a
// source ({"item_id","fields"}) or, with -target, as a target (with the
// external_id the migration set). Only fields whose first value is a
// plain string or number are kept: the match field is a text field.
func cmdPodioJSONL(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("podio-jsonl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "the dump `FILE`")
	out := fs.String("out", "", "the jsonl `FILE` to write")
	target := fs.Bool("target", false, "write the target form, with external_id")
	if err := fs.Parse(args); err != nil || *in == "" || *out == "" {
		fmt.Fprintln(stderr, "usage: faultkit podio-jsonl -in DUMP -out FILE [-target]")
		return exitCode(2)
	}
	r, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	n := 0
	for sc.Scan() {
		var it struct {
			ItemID     int64   `json:"item_id"`
			ExternalID *string `json:"external_id"`
			Fields     []struct {
				ExternalID string `json:"external_id"`
				Values     []struct {
					Value json.RawMessage `json:"value"`
				} `json:"values"`
			} `json:"fields"`
		}
		if err := json.Unmarshal(sc.Bytes(), &it); err != nil {
			f.Close()
			return fmt.Errorf("%s line %d: %w", *in, n+1, err)
		}
		fields := map[string]json.RawMessage{}
		for _, fl := range it.Fields {
			if len(fl.Values) == 0 {
				continue
			}
			v := fl.Values[0].Value
			if len(v) > 0 && (v[0] == '"' || v[0] == '-' || (v[0] >= '0' && v[0] <= '9')) {
				fields[fl.ExternalID] = v
			}
		}
		rec := map[string]any{"item_id": it.ItemID, "fields": fields}
		if *target {
			ext := ""
			if it.ExternalID != nil {
				ext = *it.ExternalID
			}
			rec["external_id"] = ext
		}
		b, _ := json.Marshal(rec)
		w.Write(append(b, '\n'))
		n++
	}
	if err := errors.Join(sc.Err(), w.Flush(), f.Close()); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d items\n", *out, n)
	return nil
}

// cmdFetch prints the body of a GET, for the emulator's /_emulator/stats.
func cmdFetch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: faultkit fetch URL")
		return exitCode(2)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", args[0], resp.Status)
	}
	_, err = io.Copy(stdout, resp.Body)
	return err
}

// cmdGenPodioBad writes a jsonl source for the seed's target app in which
// a few items have field values the app cannot take, and its fixed twin.
// It prints a manifest of the bad items.
func cmdGenPodioBad(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gen-podio-bad", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "the source `FILE`, with invalid values")
	fixed := fs.String("fixed", "", "the fixed source `FILE`")
	count := fs.Int("count", 300, "items to write")
	if err := fs.Parse(args); err != nil || *out == "" || *fixed == "" || *count < 100 {
		fmt.Fprintln(stderr, "usage: faultkit gen-podio-bad -out FILE -fixed FILE [-count N>=100]")
		return exitCode(2)
	}
	n := *count
	type bad struct {
		kind  string
		field string
		value any
	}
	bads := map[int]bad{
		n / 10:     {"an option the target's category field does not have", "status", []string{"Maybe"}},
		2 * n / 5:  {"a progress above 100", "progress", 150},
		7 * n / 10: {"a number field given a word", "amount", "lots"},
		9 * n / 10: {"a text field given an object", "title", map[string]any{"first": "Lead"}},
	}
	statuses := []string{"Open", "Won", "Lost"}
	item := func(id int) map[string]any {
		fv := map[string]any{
			"title":    fmt.Sprintf("Imported lead %d", id),
			"status":   []string{statuses[id%3]},
			"amount":   float64(id) * 2.5,
			"progress": id % 101,
		}
		if id%37 != 0 { // some items have no match value
			fv["email"] = fmt.Sprintf("imported%d@example.com", id)
		}
		return fv
	}
	fo, err := os.Create(*out)
	if err != nil {
		return err
	}
	ff, err := os.Create(*fixed)
	if err != nil {
		fo.Close()
		return err
	}
	wo, wf := bufio.NewWriter(fo), bufio.NewWriter(ff)
	type manifest struct {
		Items int               `json:"items"`
		Bad   string            `json:"bad_ids"`
		Kinds map[string]string `json:"kinds"`
	}
	m := manifest{Items: n, Kinds: map[string]string{}}
	var ids []int64
	for id := 1; id <= n; id++ {
		good := item(id)
		b, _ := json.Marshal(map[string]any{"item_id": id, "fields": good})
		wf.Write(append(b, '\n'))
		if bd, ok := bads[id]; ok {
			broken := item(id)
			broken[bd.field] = bd.value
			b, _ = json.Marshal(map[string]any{"item_id": id, "fields": broken})
			ids = append(ids, int64(id))
			m.Kinds[fmt.Sprint(id)] = bd.kind
		}
		wo.Write(append(b, '\n'))
	}
	m.Bad = joinSorted(ids)
	if err := errors.Join(wo.Flush(), wf.Flush(), fo.Close(), ff.Close()); err != nil {
		return err
	}
	return printJSON(stdout, m)
}
