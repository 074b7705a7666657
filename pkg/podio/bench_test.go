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
