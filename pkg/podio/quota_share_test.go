package podio_test

import (
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/podio"
	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

// splitLimit and splitWindow are the emulator's quota for the split
// tests: 40 calls a second, 10 of them "Rate limited".
const (
	splitLimit   = 40
	splitLimited = 10
	splitWindow  = time.Second
)

// runSplit runs two clients with the same credentials and quota share
// against one emulator, each making calls calls (every fifth a filter,
// of the "Rate limited" tier; the others a count): the first with four
// goroutines, the second with one. It returns the emulator's quota
// windows and stats, and fails t if a call fails.
func runSplit(t *testing.T, share, calls int) ([]podioemu.QuotaWindow, podioemu.Stats) {
	t.Helper()
	s, _ := newEmu(t, podioemu.Config{RateLimit: splitLimit, LimitedRateLimit: splitLimited, RateWindow: splitWindow}, 1)
	var wg sync.WaitGroup
	for _, goroutines := range []int{4, 1} {
		calls := calls / goroutines
		c := newClient(t, s, appCreds(srcApp, srcToken), func(o *podio.Options) {
			o.RateWindow = splitWindow
			o.QuotaShare = share
		})
		if got := c.Gate().Share(); got != max(share, 1) {
			t.Fatalf("gate share %d, want %d", got, max(share, 1))
		}
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range calls {
					var err error
					if i%5 == 4 {
						_, err = c.Filter(t.Context(), srcApp, podio.FilterRequest{SortBy: "item_id", Limit: 1})
					} else {
						_, err = c.Count(t.Context(), srcApp)
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	return s.QuotaWindows(), s.Stats()
}

// maxByToken is the most calls one access token (one client) made in a
// window.
func maxByToken(w podioemu.QuotaWindow) (most int) {
	for serial, n := range w.ByToken {
		if serial > 0 {
			most = max(most, n)
		}
	}
	return most
}

// With a quota share of 2, two clients on the same credentials, one with
// four times the other's concurrency, both finish, and in none of the
// emulator's windows does either make more than half of a tier's calls
// (less the reserve).
// They also never run into the quota: two halves less their reserves fit
// in it.
func TestQuotaShareSplitsEachWindow(t *testing.T) {
	const calls = 60 // about three windows' worth of a half
	windows, st := runSplit(t, 2, calls)
	var tokens = map[int]int{}
	for _, w := range windows {
		limit := splitLimit
		if w.Tier == "limited" {
			limit = splitLimited
		}
		// Half the limit, less the gate's reserve of one call.
		if most := maxByToken(w); most > limit/2-1 {
			t.Errorf("window at %s, tier %s: one client made %d of %d calls (%v), want at most %d",
				w.Start.Format("15:04:05.000"), w.Tier, most, w.Calls, w.ByToken, limit/2-1)
		}
		if w.Tier == "general" {
			for k, n := range w.ByToken {
				tokens[k] += n
			}
		}
	}
	if tokens[1] != calls || tokens[2] != calls {
		t.Errorf("calls per client %v, want %d each", tokens, calls)
	}
	if st.Quota420 != 0 {
		t.Errorf("%d calls hit the quota (420), want 0", st.Quota420)
	}
	for _, w := range windows {
		t.Logf("%s %-7s %2d %v", w.Start.Format("05.000"), w.Tier, w.Calls, w.ByToken)
	}
}

// With a share of 1 (the default), the gate keeps to the whole quota as
// before: the client with four goroutines takes more than half of a
// window, which is what the test above would catch.
func TestQuotaShareOfOneUsesTheWholeQuota(t *testing.T) {
	windows, _ := runSplit(t, 0, 60)
	most := 0
	for _, w := range windows {
		if w.Tier == "general" {
			most = max(most, maxByToken(w))
		}
	}
	if most <= splitLimit/2 {
		t.Errorf("the busier client made at most %d calls in a window, want more than %d", most, splitLimit/2)
	}
}

// A gate's share is counted per window: a gate with share 4 lets a
// quarter of the limit, less the reserve, through in a window and then
// holds the next call until the window ends.
func TestQuotaShareHoldsUntilTheWindowEnds(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{RateLimit: splitLimit, RateWindow: splitWindow}, 1)
	c := newClient(t, s, appCreds(srcApp, srcToken), func(o *podio.Options) {
		o.RateWindow = splitWindow
		o.QuotaShare = 4
	})
	allow := splitLimit/4 - 1
	for range allow {
		if _, err := c.Count(t.Context(), srcApp); err != nil {
			t.Fatal(err)
		}
	}
	if c.Gate().Until().IsZero() {
		t.Errorf("after %d calls the gate holds nothing, want it to hold until the window ends", allow)
	}
	if _, err := c.Count(t.Context(), srcApp); err != nil {
		t.Fatal(err)
	}
	w := s.QuotaWindows()
	var first, second int
	for _, x := range w {
		if x.Tier != "general" {
			continue
		}
		if first == 0 {
			first = x.ByToken[1]
		} else {
			second += x.ByToken[1]
		}
	}
	if first != allow || second != 1 {
		t.Errorf("calls in the first window %d and after it %d, want %d and 1 (windows %+v)", first, second, allow, w)
	}
}

// A job's quota_share reaches the gate of the client made for it; none
// means the whole quota.
func TestJobClientTakesTheQuotaShare(t *testing.T) {
	t.Setenv("MEMVISOR_TEST_SECRET", "s")
	t.Setenv("MEMVISOR_TEST_APP_TOKEN", "a")
	for _, tc := range []struct{ share, want int }{{0, 1}, {1, 1}, {3, 3}} {
		p := &job.Podio{AppID: srcApp, QuotaShare: tc.share, Auth: &job.PodioAuth{Flow: job.PodioFlowApp,
			ClientID: clientID, ClientSecretEnv: "MEMVISOR_TEST_SECRET", AppTokenEnv: "MEMVISOR_TEST_APP_TOKEN"}}
		c, err := podio.NewJobClient(p, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Gate().Share(); got != tc.want {
			t.Errorf("quota_share %d: gate share %d, want %d", tc.share, got, tc.want)
		}
		c.Close()
	}
}
