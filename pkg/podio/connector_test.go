package podio_test

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/podio"
	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			fmt.Println("goleak:", err)
			code = 1
		}
	}
	if code != 0 {
		panic(fmt.Sprintf("exit %d", code))
	}
}

// migrate copies every source item through the connectors, as the
// batcher would, concurrency at a time.
func migrate(t *testing.T, src *podio.Source, dst *podio.Target, batch, conc int) (created map[string]int64, failed []error) {
	t.Helper()
	ctx := t.Context()
	created = map[string]int64{}
	var mu sync.Mutex
	cur := connector.Cursor{}
	for {
		recs, next, err := src.Read(ctx, cur, batch)
		if errors.Is(err, io.EOF) {
			return created, failed
		}
		if err != nil {
			t.Fatalf("read source: %v", err)
		}
		sem := make(chan struct{}, conc)
		var wg sync.WaitGroup
		for _, r := range recs {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				ext := connector.ExternalID(r.Item.ID)
				id, err := dst.Create(ctx, ext, r.Item.Fields)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed = append(failed, err)
					return
				}
				created[ext] = id
			}()
		}
		wg.Wait()
		cur = next
	}
}

func openPair(t *testing.T, s *podioemu.Server, mod func(*podio.Options)) (*podio.Source, *podio.Target) {
	t.Helper()
	sc := newClient(t, s, appCreds(srcApp, srcToken), mod)
	src := podio.NewSource(podio.SourceOptions{Client: sc, AppID: srcApp, PageSize: 50})
	labels, err := src.Labels(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	tc := newClient(t, s, appCreds(dstApp, dstToken), mod)
	dst, err := podio.OpenTarget(t.Context(), podio.TargetOptions{Client: tc, AppID: dstApp, PageSize: 50,
		Write: podio.WriteOptions{Silent: true}, SourceLabels: labels, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return src, dst
}

// Lost answers, 5xx before and after the write, 420 bursts and token
// expiries: every item is created exactly once, with the right values.
func TestCreateUnderFaultsMakesNoDuplicates(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{Seed: 7}, 300)
	s.SetFaults(podioemu.Faults{
		LostResponseRate: 0.25, ServerErrorRate: 0.15, ServerErrorAfterCommit: 0.5,
		RateLimitBurstEvery: 150, RateLimitBurstLength: 2, RateLimitBurstWait: 1,
		ExpireTokensEvery: 200, LatencyJitter: time.Millisecond,
	})
	src, dst := openPair(t, s, func(o *podio.Options) { o.MaxAttempts = 12 })
	created, failed := migrate(t, src, dst, 100, 5)
	if len(failed) > 0 {
		t.Fatalf("%d creates failed, e.g. %v", len(failed), failed[0])
	}
	st := s.Stats()
	if st.Lost == 0 || st.ServerErrors == 0 || st.Burst420 == 0 || st.TokenExpiries == 0 || st.Expired401 == 0 {
		t.Fatalf("faults were not exercised: %+v", st)
	}
	if len(created) != 300 {
		t.Fatalf("created %d items, want 300", len(created))
	}
	checkMigrated(t, dumpApp(t, s, srcApp), dumpApp(t, s, dstApp), true)
	if st.HooksFired != 0 || st.NotSilent != 0 {
		t.Errorf("writes fired %d hooks and %d were not silent; want 0 and 0", st.HooksFired, st.NotSilent)
	}
	t.Logf("emulator: %+v", st)
}

// Scan since a mark returns exactly the items created after it, in id
// order, and Sync's mark covers every confirmed create.
func TestScanSinceMark(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{}, 120)
	src, dst := openPair(t, s, nil)
	ctx := t.Context()
	recs, _, err := src.Read(ctx, connector.Cursor{}, 120)
	if err != nil || len(recs) != 120 {
		t.Fatalf("read: %d records, %v", len(recs), err)
	}
	create := func(rs []connector.Record) []int64 {
		var ids []int64
		for _, r := range rs {
			id, err := dst.Create(ctx, connector.ExternalID(r.Item.ID), r.Item.Fields)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		return ids
	}
	create(recs[:70])
	mark, err := dst.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	later := create(recs[70:])
	for _, tc := range []struct {
		name  string
		since connector.Mark
		want  []int64
	}{
		{"after the mark", mark, later},
		{"after the last", connector.Mark(later[len(later)-1]), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []int64
			m, err := dst.Scan(ctx, tc.since, func(it connector.TargetItem) error {
				got = append(got, it.ID)
				if it.ExternalID == "" || it.Fields["title"] == nil {
					t.Errorf("item %d: external_id %q, title %s", it.ID, it.ExternalID, it.Fields["title"])
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("scan since %d: got %d items %v..., want %d", tc.since, len(got), got[:min(3, len(got))], len(tc.want))
			}
			if len(tc.want) > 0 && int64(m) != tc.want[len(tc.want)-1] {
				t.Errorf("mark %d, want %d", m, tc.want[len(tc.want)-1])
			}
		})
	}
	var all int
	if _, err := dst.Scan(ctx, 0, func(connector.TargetItem) error { all++; return nil }); err != nil || all != 120 {
		t.Fatalf("full scan: %d items, %v; want 120", all, err)
	}
}

func TestSourceFiltersAndTotal(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{}, 200)
	c := newClient(t, s, appCreds(srcApp, srcToken), nil)
	ctx := t.Context()
	for _, tc := range []struct {
		name    string
		filters map[string]any
		want    int64
	}{
		{"none", nil, 200},
		// Items are created an hour apart from 2023-01-01 09:00.
		{"created_on day", map[string]any{"created_on": map[string]string{"from": "2023-01-02", "to": "2023-01-02"}}, 24},
		{"tags", map[string]any{"tags": []string{"vip"}}, 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := podio.NewSource(podio.SourceOptions{Client: c, AppID: srcApp, PageSize: 30})
			if tc.filters != nil {
				src = podio.NewSource(podio.SourceOptions{Client: c, AppID: srcApp, PageSize: 30, Filters: filtersOf(tc.filters)})
			}
			n, ok, err := src.Total(ctx)
			if err != nil || !ok || n != tc.want {
				t.Fatalf("total %d %v %v, want %d", n, ok, err, tc.want)
			}
			var read int64
			var last int64
			cur := connector.Cursor{}
			for {
				recs, next, err := src.Read(ctx, cur, 45)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				for i, r := range recs {
					if r.Pos.Index != cur.Index+int64(i) || r.Item.ID <= last {
						t.Fatalf("record %d at %d: id %d after %d", i, r.Pos.Index, r.Item.ID, last)
					}
					last = r.Item.ID
				}
				read += int64(len(recs))
				cur = next
			}
			if read != tc.want {
				t.Fatalf("read %d items, want %d", read, tc.want)
			}
		})
	}
}

func TestGetItemAndLookup(t *testing.T) {
	s, ids := newEmu(t, podioemu.Config{}, 5)
	src, dst := openPair(t, s, nil)
	ctx := t.Context()
	it, err := src.GetItem(ctx, ids[2])
	if err != nil || it.ID != ids[2] || string(it.Fields["title"]) != `"Item 00002"` {
		t.Fatalf("get item: %+v %v", it, err)
	}
	if _, err := src.GetItem(ctx, 42); !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("get a missing item: %v, want ErrNotFound", err)
	}
	if _, found, err := dst.LookupExternal(ctx, "nope"); found || err != nil {
		t.Fatalf("lookup of a missing external id: %v %v", found, err)
	}
	id, err := dst.Create(ctx, "abc", it.Fields)
	if err != nil {
		t.Fatal(err)
	}
	got, found, err := dst.LookupExternal(ctx, "abc")
	if err != nil || !found || got != id {
		t.Fatalf("lookup: %d %v %v, want %d", got, found, err, id)
	}
	f, err := dst.Get(ctx, id)
	if err != nil || string(f["remarks"]) != `"note 2"` {
		t.Fatalf("get: %s %v", f["remarks"], err)
	}
	// An update to the same values answers 204, to new ones 200.
	if err := dst.Update(ctx, id, it.Fields); err != nil {
		t.Fatalf("update with no change (204): %v", err)
	}
	if err := dst.Update(ctx, id, connector.Fields{"title": []byte(`"Renamed"`)}); err != nil {
		t.Fatalf("update: %v", err)
	}
	if f, _ := dst.Get(ctx, id); string(f["title"]) != `"Renamed"` {
		t.Fatalf("title after update: %s", f["title"])
	}
}

// An app token reaches its own app only.
func TestAppTokenReachesOnlyItsApp(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{}, 1)
	c := newClient(t, s, appCreds(srcApp, srcToken), nil)
	_, err := c.GetApp(t.Context(), dstApp)
	if cat, _ := connector.Classify(err); cat != connector.CategoryPermission {
		t.Fatalf("reading another app: %v (category %s), want permission", err, cat)
	}
}

func TestFindByMatch(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{}, 30)
	src, dst := openPair(t, s, nil)
	ctx := t.Context()
	recs, _, _ := src.Read(ctx, connector.Cursor{}, 30)
	for _, r := range recs[:10] {
		if _, err := dst.Create(ctx, connector.ExternalID(r.Item.ID), r.Item.Fields); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		field, key string
		found      bool
		err        error
	}{
		{"amount", "3.25", true, nil},
		{"amount", "29.25", false, nil},
		{"status", "won", true, nil},
		{"done", "7", true, nil},
		{"title", "item 00003", false, podio.ErrNotFilterable},
	} {
		t.Run(tc.field+"="+tc.key, func(t *testing.T) {
			_, found, err := dst.FindByMatch(ctx, tc.field, tc.key)
			if found != tc.found || !errors.Is(err, tc.err) {
				t.Fatalf("found %v, err %v; want %v, %v", found, err, tc.found, tc.err)
			}
		})
	}
}

func filtersOf(m map[string]any) *job.PodioFilters {
	f := &job.PodioFilters{}
	if r, ok := m["created_on"].(map[string]string); ok {
		f.CreatedOn = &job.PodioDateRange{From: r["from"], To: r["to"]}
	}
	if tags, ok := m["tags"].([]string); ok {
		f.Tags = tags
	}
	return f
}
