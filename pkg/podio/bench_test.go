package podio_test

import (
	"sync"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/podio"
	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

// BenchmarkPodioQuota runs a client against Podio's two tiers scaled
// down to a 10s window: 400 calls in general and 100 for "Rate limited"
// calls (Podio's 1,000 and 250 an hour). Two goroutines make only
// limited calls (filter), three only general ones (count). It runs two
// phases of 60s: in the first the general callers pace themselves, so
// the limited tier binds; in the second they do not, so the general tier
// (which counts every call) binds. It reports the lower of the two
// binding tiers' utilization (calls allowed over calls the tier allows)
// and the 420s received after the first of each phase. It measures
// once, whatever b.N is.
func BenchmarkPodioQuota(b *testing.B) {
	const (
		limit    = 400
		limited  = 100
		window   = 10 * time.Second
		duration = 60 * time.Second
	)
	phase := func(pace time.Duration) (general, lim float64, hits int64) {
		s, _ := newEmu(b, podioemu.Config{RateLimit: limit, LimitedRateLimit: limited, RateWindow: window}, 1)
		c := newClient(b, s, appCreds(srcApp, srcToken), func(o *podio.Options) { o.RateWindow = window })
		ctx := b.Context()
		stop := time.Now().Add(duration)
		var wg sync.WaitGroup
		for g := range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					var err error
					if g < 2 {
						_, err = c.Filter(ctx, srcApp, podio.FilterRequest{SortBy: "item_id", Limit: 1})
					} else {
						_, err = c.Count(ctx, srcApp)
						time.Sleep(pace)
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		st := s.Stats()
		windows := float64(duration / window)
		general = float64(st.Allowed) / (limit * windows)
		lim = float64(st.LimitedAllowed) / (limited * windows)
		b.Logf("pace %s: general tier %.3f (%d calls), limited tier %.3f (%d calls), %d quota 420s; gate saw %d",
			pace, general, st.Allowed, lim, st.LimitedAllowed, st.Quota420, c.Gate().Hits())
		return general, lim, max(0, st.Quota420-1)
	}
	b.ResetTimer()
	_, limA, hitsA := phase(150 * time.Millisecond)
	genB, _, hitsB := phase(0)
	benchfmt.Report(b, "podio_quota_utilization", min(limA, genB), "ratio")
	benchfmt.Report(b, "podio_rate_limit_hits", float64(hitsA+hitsB), "420s")
}

// BenchmarkPodioQuotaSplit runs two clients with the same credentials and
// a quota share of 2 against a quota of 200 calls per 5s window for 30s,
// one with four goroutines and one with one, all making general calls
// (count). It reports, over the windows that ended within the run, the
// largest fraction of the two clients' calls in a window that one of
// them made (a fair split is 0.5; with a share of 1 the busier one took
// 0.88 in a run here, and two calls met a 420), the mean fraction of the
// quota the two used (at most 0.99: each keeps its reserve of one call)
// and the 420s received. It measures once, whatever b.N is.
func BenchmarkPodioQuotaSplit(b *testing.B) {
	const (
		limit    = 200
		window   = 5 * time.Second
		duration = 30 * time.Second
		share    = 2
	)
	s, _ := newEmu(b, podioemu.Config{RateLimit: limit, RateWindow: window}, 1)
	ctx := b.Context()
	b.ResetTimer()
	start := time.Now()
	stop := start.Add(duration)
	var wg sync.WaitGroup
	for _, goroutines := range []int{4, 1} {
		c := newClient(b, s, appCreds(srcApp, srcToken), func(o *podio.Options) {
			o.RateWindow = window
			o.QuotaShare = share
		})
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					if _, err := c.Count(ctx, srcApp); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	var maxShare, used float64
	full := 0
	for _, w := range s.QuotaWindows() {
		if w.Tier != "general" || w.Start.Add(window).After(stop) {
			continue
		}
		most, calls := 0, 0
		for serial, n := range w.ByToken {
			if serial > 0 {
				most, calls = max(most, n), calls+n
			}
		}
		if calls == 0 {
			continue
		}
		full++
		maxShare = max(maxShare, float64(most)/float64(calls))
		used += float64(calls) / limit
		b.Logf("window at +%s: %d calls, by token %v", w.Start.Sub(start).Round(time.Millisecond), w.Calls, w.ByToken)
	}
	if full == 0 {
		b.Fatal("no window ended within the run")
	}
	benchfmt.Report(b, "podio_quota_split_max_share", maxShare, "ratio")
	benchfmt.Report(b, "podio_quota_split_utilization", used/float64(full), "quota")
	benchfmt.Report(b, "podio_quota_split_420s", float64(s.Stats().Quota420), "420s")
}

// BenchmarkPodioItemsPerSecond creates items through the target with
// five writers and no quota.
func BenchmarkPodioItemsPerSecond(b *testing.B) {
	const n = 3000
	s, _ := newEmu(b, podioemu.Config{}, n)
	src := podio.NewSource(podio.SourceOptions{Client: newClient(b, s, appCreds(srcApp, srcToken), nil), AppID: srcApp})
	tgt, err := podio.OpenTarget(b.Context(), podio.TargetOptions{
		Client: newClient(b, s, appCreds(dstApp, dstToken), nil), AppID: dstApp, Write: podio.WriteOptions{Silent: true}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	b.ResetTimer()
	start := time.Now()
	cur := connector.Cursor{}
	done := 0
	for done < n {
		recs, next, err := src.Read(ctx, cur, 500)
		if err != nil {
			b.Fatal(err)
		}
		sem := make(chan struct{}, 5)
		var wg sync.WaitGroup
		for _, r := range recs {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				if _, err := tgt.Create(ctx, connector.ExternalID(r.Item.ID), r.Item.Fields); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		done += len(recs)
		cur = next
	}
	benchfmt.Report(b, "podio_items_per_s_emulator", float64(n)/time.Since(start).Seconds(), "items/s")
}
