package podioemu

import (
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"time"
)

// Podio's two rate-limit tiers: every call counts against the general
// limit, and a call the API reference marks "Rate limited" also counts
// against the lower one. Once either is spent, every call of that caller
// is answered 420 until the spent window ends.
const (
	tierGeneral = "general"
	tierLimited = "limited"
)

// limitedRoutes are the calls this emulator treats as "Rate limited":
// the resource-intensive ones among those it serves, item filtering and
// file upload. Podio's reference marks such calls one by one; the
// client (pkg/podio) makes the same assumption, so that its gate and
// the emulator agree.
var limitedRoutes = []struct {
	method string
	path   *regexp.Regexp
}{
	{http.MethodPost, regexp.MustCompile(`^/item/app/\d+/filter/?$`)},
	{http.MethodPost, regexp.MustCompile(`^/file(/v2)?/?$`)},
}

// IsRateLimitedCall reports whether the emulator counts a call against
// the lower, "Rate limited" tier.
func IsRateLimitedCall(method, path string) bool {
	for _, r := range limitedRoutes {
		if r.method == method && r.path.MatchString(path) {
			return true
		}
	}
	return false
}

type quotaWindow struct {
	identity, tier string
	start          time.Time
	count          int
	byToken        map[int]int
}

// QuotaWindow is one quota window of one caller and tier, as the emulator
// counted it: the calls it allowed, in all and per access token.
type QuotaWindow struct {
	Identity string
	Tier     string // "general" or "limited"
	Start    time.Time
	Calls    int
	// ByToken counts the allowed calls per access token, keyed by the
	// order in which the tokens were issued (1, 2, ...); 0 is the token
	// endpoint itself. Clients that share credentials hold tokens of
	// their own, so this tells their calls apart.
	ByToken map[int]int
}

// maxWindowLog bounds the windows QuotaWindows keeps.
const maxWindowLog = 4096

// QuotaWindows returns the quota windows started so far, oldest first (at
// most the last 4,096), the current ones included.
func (s *Server) QuotaWindows() []QuotaWindow {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]QuotaWindow, 0, len(s.windowLog))
	for _, w := range s.windowLog {
		by := make(map[int]int, len(w.byToken))
		for k, v := range w.byToken {
			by[k] = v
		}
		out = append(out, QuotaWindow{Identity: w.identity, Tier: w.tier, Start: w.start, Calls: w.count, ByToken: by})
	}
	return out
}

// SetQuota replaces the general rate limit; the limited tier becomes a
// quarter of it, as Podio's 1,000 and 250.
func (s *Server) SetQuota(limit int, every time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.RateLimit, s.cfg.LimitedRateLimit, s.cfg.RateWindow = limit, limit/4, every
	s.windows = map[string]*quotaWindow{}
	s.windowLog = nil
}

// window returns the caller's current window of a tier, starting a new
// one when the last has ended.
func (s *Server) window(identity, tier string, now time.Time, start bool) *quotaWindow {
	k := identity + "|" + tier
	w := s.windows[k]
	if w == nil || !now.Before(w.start.Add(s.cfg.RateWindow)) {
		if !start {
			return nil
		}
		w = &quotaWindow{identity: identity, tier: tier, start: now, byToken: map[int]int{}}
		s.windows[k] = w
		s.stats.Windows++
		if len(s.windowLog) == maxWindowLog {
			s.windowLog = append(s.windowLog[:0], s.windowLog[1:]...)
		}
		s.windowLog = append(s.windowLog, w)
	}
	return w
}

// limitOf is the ceiling of a tier; 0 means none.
func (s *Server) limitOf(tier string) int {
	if tier == tierLimited {
		return s.cfg.LimitedRateLimit
	}
	return s.cfg.RateLimit
}

// charge counts one call of identity, made with the serial-th access
// token (0: the token endpoint), against its quota and sets the
// rate-limit headers: X-Rate-Limit-Limit is the ceiling of this call's
// tier and X-Rate-Limit-Remaining what is left of it. It returns a 420
// when either tier is spent; a refused call is not counted.
func (s *Server) charge(identity string, serial int, limited bool, h http.Header) (int, any, bool) {
	if s.cfg.RateLimit <= 0 {
		return 0, nil, true
	}
	now := s.now()
	tiers := []string{tierGeneral}
	if limited && s.cfg.LimitedRateLimit > 0 {
		tiers = append(tiers, tierLimited)
	}
	own := tiers[len(tiers)-1]
	// A spent tier refuses every call, of either tier.
	for _, t := range []string{tierGeneral, tierLimited} {
		lim := s.limitOf(t)
		if lim <= 0 {
			continue
		}
		if w := s.window(identity, t, now, false); w != nil && w.count >= lim {
			ownW := s.window(identity, own, now, false)
			rem := s.limitOf(own)
			if ownW != nil {
				rem = max(0, rem-ownW.count)
			}
			h.Set("X-Rate-Limit-Limit", strconv.Itoa(s.limitOf(own)))
			h.Set("X-Rate-Limit-Remaining", strconv.Itoa(rem))
			s.stats.Quota420++
			wait := int(math.Ceil(w.start.Add(s.cfg.RateWindow).Sub(now).Seconds()))
			return 420, errBody{"rate_limit", fmt.Sprintf("You have hit the rate limit. Please wait %d seconds before trying again", max(wait, 1))}, false
		}
	}
	for _, t := range tiers {
		w := s.window(identity, t, now, true)
		w.count++
		w.byToken[serial]++
		if t == tierLimited {
			s.stats.LimitedAllowed++
		}
	}
	w := s.window(identity, own, now, true)
	h.Set("X-Rate-Limit-Limit", strconv.Itoa(s.limitOf(own)))
	h.Set("X-Rate-Limit-Remaining", strconv.Itoa(max(0, s.limitOf(own)-w.count)))
	return 0, nil, true
}
