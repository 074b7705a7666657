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

// BenchmarkPodioQuota runs five goroutines through one client for 60s
// against a quota of 600 calls per 10s window, and reports the calls made
// over the calls allowed and the 420s received after the first. It
// measures once, whatever b.N is.
func BenchmarkPodioQuota(b *testing.B) {
	const (
		limit    = 600
		window   = 10 * time.Second
		duration = 60 * time.Second
	)
	s, _ := newEmu(b, podioemu.Config{RateLimit: limit, RateWindow: window}, 1)
	c := newClient(b, s, appCreds(srcApp, srcToken), func(o *podio.Options) { o.RateWindow = window })
	b.ResetTimer()
	ctx := b.Context()
	stop := time.Now().Add(duration)
	var wg sync.WaitGroup
	for range 5 {
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
	wg.Wait()
	st := s.Stats()
	allowed := float64(limit) * float64(duration/window)
	benchfmt.Report(b, "podio_quota_utilization", float64(st.Allowed)/allowed, "ratio")
	benchfmt.Report(b, "podio_rate_limit_hits", float64(max(0, st.Quota420-1)), "420s")
	b.Logf("%d calls allowed in %d windows, %d quota 420s; gate saw %d", st.Allowed, st.Windows, st.Quota420, c.Gate().Hits())
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
