package podioemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config configures a Server. The zero value serves without quota or
// faults, with tokens that last 8 hours.
type Config struct {
	// Seed makes fault injection repeatable.
	Seed uint64
	// TokenTTL is the lifetime of an access token; 0 means 8h.
	TokenTTL time.Duration
	// RateLimit is the number of calls allowed per RateWindow per caller;
	// 0 means no quota.
	RateLimit  int
	RateWindow time.Duration
	Faults     Faults
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Faults are injected misbehaviours. Rates are probabilities per call.
type Faults struct {
	// ServerErrorRate answers a call 500, 502 or 503.
	ServerErrorRate float64 `json:"server_error_rate,omitempty"`
	// ServerErrorAfterCommit is the share of the 5xx answers to writes
	// that come after the write was committed.
	ServerErrorAfterCommit float64 `json:"server_error_after_commit,omitempty"`
	// LostResponseRate commits a write (create or update) and then closes
	// the connection without answering.
	LostResponseRate float64 `json:"lost_response_rate,omitempty"`
	// RateLimitBurstEvery starts, every that many calls, a burst of
	// RateLimitBurstLength 420 answers that ask to wait
	// RateLimitBurstWait seconds (default 1).
	RateLimitBurstEvery  int `json:"rate_limit_burst_every,omitempty"`
	RateLimitBurstLength int `json:"rate_limit_burst_length,omitempty"`
	RateLimitBurstWait   int `json:"rate_limit_burst_wait,omitempty"`
	// Latency delays every call by Latency plus up to LatencyJitter.
	Latency       time.Duration `json:"latency,omitempty"`
	LatencyJitter time.Duration `json:"latency_jitter,omitempty"`
	// ExpireTokensEvery expires, every that many calls, every access
	// token issued so far.
	ExpireTokensEvery int `json:"expire_tokens_every,omitempty"`
}

// Stats counts what the server did.
type Stats struct {
	Calls         int64 `json:"calls"`          // authenticated API calls answered
	Allowed       int64 `json:"allowed"`        // calls within the quota
	Quota420      int64 `json:"quota_420"`      // 420s for a spent quota
	Burst420      int64 `json:"burst_420"`      // injected 420s
	ServerErrors  int64 `json:"server_errors"`  // injected 5xx
	Lost          int64 `json:"lost"`           // writes committed, answer dropped
	Expired401    int64 `json:"expired_401"`    // calls with an expired token
	TokensIssued  int64 `json:"tokens_issued"`  // successful token grants
	Creates       int64 `json:"creates"`        // items created over the API
	Updates       int64 `json:"updates"`        // items changed over the API
	HooksFired    int64 `json:"hooks_fired"`    // writes made with hook=true
	NotSilent     int64 `json:"not_silent"`     // writes made with silent=false
	Validation400 int64 `json:"validation_400"` // writes refused as invalid
	Abandoned     int64 `json:"abandoned"`      // writes not made: the client left
	TokenExpiries int64 `json:"token_expiries"` // injected expiries of all tokens
	Windows       int64 `json:"quota_windows"`  // quota windows started
}

type client struct{ secret string }

type user struct {
	password string
	id       int64
}

type token struct {
	identity string // rate-limit key: client and user or app
	appID    int64  // app flow: the one app it reaches
	expires  time.Time
	refresh  string
	revoked  bool
}

type refreshGrant struct {
	clientID string
	identity string
	appID    int64
}

type quotaWindow struct {
	start time.Time
	count int
}

// Server is the emulator. Create it with New, then Start it or use
// Handler.
type Server struct {
	cfg Config
	now func() time.Time

	mu       sync.Mutex
	rng      *mrand.Rand
	clients  map[string]client
	users    map[string]user
	apps     map[int64]*app
	items    map[int64]*item
	byExt    map[string][]*item // app_id/external_id
	tokens   map[string]*token
	refresh  map[string]refreshGrant
	windows  map[string]*quotaWindow
	nextItem int64
	nextFld  int64
	nextOpt  int64
	calls    int64
	burst    int
	stats    Stats

	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// New returns a server with no apps, clients or users.
func New(cfg Config) *Server {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 8 * time.Hour
	}
	if cfg.RateWindow == 0 {
		cfg.RateWindow = time.Hour
	}
	if cfg.Faults.RateLimitBurstWait == 0 {
		cfg.Faults.RateLimitBurstWait = 1
	}
	return &Server{
		cfg: cfg, now: now,
		rng:      mrand.New(mrand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		clients:  map[string]client{},
		users:    map[string]user{},
		apps:     map[int64]*app{},
		items:    map[int64]*item{},
		byExt:    map[string][]*item{},
		tokens:   map[string]*token{},
		refresh:  map[string]refreshGrant{},
		windows:  map[string]*quotaWindow{},
		nextItem: 1_000_000_000,
		nextFld:  100_000,
		nextOpt:  1,
	}
}

// SetFaults replaces the fault configuration, for a test that turns
// faults on after seeding.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.RateLimitBurstWait == 0 {
		f.RateLimitBurstWait = 1
	}
	s.cfg.Faults = f
}

// SetQuota replaces the rate limit.
func (s *Server) SetQuota(limit int, every time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.RateLimit, s.cfg.RateWindow = limit, every
	s.windows = map[string]*quotaWindow{}
}

// AddClient registers an API key.
func (s *Server) AddClient(id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[id] = client{secret: secret}
}

// AddUser registers a user for the password flow.
func (s *Server) AddUser(username, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[username] = user{password: password, id: int64(len(s.users) + 1)}
}

// AddApp registers an app and returns it with its field and option ids
// filled in.
func (s *Server) AddApp(a App) (App, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.AppID <= 0 {
		return App{}, errors.New("add app: app_id must be positive")
	}
	if _, ok := s.apps[a.AppID]; ok {
		return App{}, fmt.Errorf("add app %d: already exists", a.AppID)
	}
	na := &app{App: a, byKey: map[string]*Field{}, nextAppID: 1}
	na.Fields = append([]Field(nil), a.Fields...)
	for i := range na.Fields {
		f := &na.Fields[i]
		if f.FieldID == 0 {
			s.nextFld++
			f.FieldID = s.nextFld
		}
		if f.Label == "" {
			f.Label = f.ExternalID
		}
		f.Options = append([]Option(nil), f.Options...)
		for j := range f.Options {
			if f.Options[j].ID == 0 {
				f.Options[j].ID = s.nextOpt
				s.nextOpt++
			}
		}
		if na.byKey[f.ExternalID] != nil {
			return App{}, fmt.Errorf("add app %d: external_id %q used twice", a.AppID, f.ExternalID)
		}
		na.byKey[f.ExternalID] = f
		na.byKey[strconv.FormatInt(f.FieldID, 10)] = f
	}
	s.apps[a.AppID] = na
	return na.App, nil
}

// Seed adds an item directly, without a call, quota or faults. It
// returns the item id.
func (s *Server) Seed(it Item) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.apps[it.AppID]
	if a == nil {
		return 0, fmt.Errorf("seed item: app %d does not exist", it.AppID)
	}
	now := s.now().UTC().Truncate(time.Second)
	ni := &item{appID: a.AppID, externalID: it.ExternalID, tags: it.Tags, values: map[int64][]map[string]any{},
		createdOn: now, lastEventOn: now, lastEditOn: now}
	if it.CreatedOn != "" {
		t, err := time.Parse(podioTime, it.CreatedOn)
		if err != nil {
			return 0, fmt.Errorf("seed item: created_on %q: want YYYY-MM-DD HH:MM:SS", it.CreatedOn)
		}
		ni.createdOn, ni.lastEventOn, ni.lastEditOn = t, t, t
	}
	if it.LastEventOn != "" {
		t, err := time.Parse(podioTime, it.LastEventOn)
		if err != nil {
			return 0, fmt.Errorf("seed item: last_event_on %q: want YYYY-MM-DD HH:MM:SS", it.LastEventOn)
		}
		ni.lastEventOn = t
	}
	if _, err := s.setValues(a, ni, it.Fields, true); err != nil {
		return 0, fmt.Errorf("seed item in app %d: %w", a.AppID, err)
	}
	if it.ItemID != 0 {
		if s.items[it.ItemID] != nil {
			return 0, fmt.Errorf("seed item: item %d exists", it.ItemID)
		}
		ni.id = it.ItemID
		s.nextItem = max(s.nextItem, it.ItemID)
	} else {
		s.nextItem++
		ni.id = s.nextItem
	}
	s.insert(a, ni)
	return ni.id, nil
}

func (s *Server) insert(a *app, it *item) {
	it.appItemID = a.nextAppID
	a.nextAppID++
	s.items[it.id] = it
	i := sort.Search(len(a.items), func(i int) bool { return a.items[i].id > it.id })
	a.items = append(a.items, nil)
	copy(a.items[i+1:], a.items[i:])
	a.items[i] = it
	if it.externalID != "" {
		k := extKey(a.AppID, it.externalID)
		s.byExt[k] = append(s.byExt[k], it)
	}
}

func extKey(appID int64, ext string) string { return strconv.FormatInt(appID, 10) + "/" + ext }

// AppDef returns an app's definition with its ids.
func (s *Server) AppDef(appID int64) (App, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.apps[appID]
	if a == nil {
		return App{}, false
	}
	return a.App, true
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// ExpireTokens expires every access token issued so far, as a token
// expiry in the middle of a run.
func (s *Server) ExpireTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireAllLocked()
}

func (s *Server) expireAllLocked() {
	now := s.now()
	for _, t := range s.tokens {
		if t.expires.After(now) {
			t.expires = now.Add(-time.Second)
		}
	}
	s.stats.TokenExpiries++
}

// Start serves on a new 127.0.0.1 port (or addr, if given) and returns
// the base URL.
func (s *Server) Start(addr string) (string, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("listen on %s: %w", addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return "http://" + ln.Addr().String(), nil
}

// URL is the base URL of a started server.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// Close stops a started server and waits for it.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	return err
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /oauth/token/v2", s.handleToken)
	mux.HandleFunc("POST /oauth/token", s.handleToken)
	mux.HandleFunc("GET /app/{app_id}", s.api(s.handleApp))
	mux.HandleFunc("POST /item/app/{app_id}/filter/", s.api(s.handleFilter))
	mux.HandleFunc("GET /item/app/{app_id}/count", s.api(s.handleCount))
	mux.HandleFunc("GET /item/app/{app_id}/external_id/{external_id}", s.api(s.handleByExternal))
	mux.HandleFunc("POST /item/app/{app_id}/", s.api(s.handleCreate))
	mux.HandleFunc("GET /item/{item_id}", s.api(s.handleGet))
	mux.HandleFunc("PUT /item/{item_id}", s.api(s.handleUpdate))
	mux.HandleFunc("GET /_emulator/dump", s.handleDump)
	mux.HandleFunc("GET /_emulator/stats", s.handleStats)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, http.StatusNotFound, "not_found", "No such API endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// writeError answers with Podio's error body.
func writeError(w http.ResponseWriter, r *http.Request, status int, code, desc string) {
	writeJSON(w, status, map[string]any{
		"error": code, "error_description": desc, "error_detail": nil,
		"error_parameters": map[string]any{}, "error_propagate": false,
		"request": map[string]any{"url": r.URL.Path, "query_string": r.URL.RawQuery, "method": r.Method},
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// call is one authenticated call, passed to the handlers with the lock
// held.
type call struct {
	tok    *token
	w      http.ResponseWriter
	r      *http.Request
	body   []byte
	write  bool // a create or an update: subject to lost responses
	fail5x int  // after commit: answer this 5xx instead
	lose   bool // after commit: drop the connection
}

type handler func(c *call) (status int, body any)

// api wraps an endpoint with auth, quota, faults and latency.
func (s *Server) api(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			return
		}
		c := &call{w: w, r: r, body: body, write: r.Method == http.MethodPut || strings.HasSuffix(r.URL.Path, "/") && r.Method == http.MethodPost && !strings.HasSuffix(r.URL.Path, "/filter/")}
		s.mu.Lock()
		f := s.cfg.Faults
		delay := f.Latency
		if f.LatencyJitter > 0 {
			delay += time.Duration(s.rng.Int64N(int64(f.LatencyJitter)))
		}
		s.mu.Unlock()
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				s.mu.Lock()
				s.stats.Abandoned++
				s.mu.Unlock()
				return
			}
		}
		if r.Context().Err() != nil {
			s.mu.Lock()
			s.stats.Abandoned++
			s.mu.Unlock()
			return
		}
		s.mu.Lock()
		status, resp, ok := s.gate(c)
		if !ok {
			s.mu.Unlock()
			writeError(w, r, status, resp.(errBody).code, resp.(errBody).desc)
			return
		}
		status, resp = h(c)
		s.mu.Unlock()
		switch {
		case c.lose && status < 300:
			s.dropConnection(w)
			return
		case c.fail5x != 0 && status < 300:
			writeError(w, r, c.fail5x, "server_error", "An unexpected error occurred")
			return
		}
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		if eb, ok := resp.(errBody); ok {
			writeError(w, r, status, eb.code, eb.desc)
			return
		}
		writeJSON(w, status, resp)
	}
}

type errBody struct{ code, desc string }

func fail(status int, code, desc string) (int, any) { return status, errBody{code, desc} }

// gate authenticates the call and applies the quota and the faults that
// come before the work. It sets the rate-limit headers.
func (s *Server) gate(c *call) (int, any, bool) {
	auth := c.r.Header.Get("Authorization")
	tokStr, ok := strings.CutPrefix(auth, "OAuth2 ")
	if !ok || tokStr == "" {
		return http.StatusUnauthorized, errBody{"unauthorized", "No OAuth2 access token given"}, false
	}
	tok := s.tokens[tokStr]
	if tok == nil || tok.revoked {
		return http.StatusUnauthorized, errBody{"invalid_token", "invalid_token"}, false
	}
	now := s.now()
	if !now.Before(tok.expires) {
		s.stats.Expired401++
		return http.StatusUnauthorized, errBody{"invalid_token", "expired_token"}, false
	}
	c.tok = tok
	s.calls++
	s.stats.Calls++
	f := s.cfg.Faults
	if f.ExpireTokensEvery > 0 && s.calls%int64(f.ExpireTokensEvery) == 0 {
		// This call still passes; the next ones see the expiry.
		s.expireAllLocked()
	}
	if s.cfg.RateLimit > 0 {
		win := s.windows[tok.identity]
		if win == nil || !now.Before(win.start.Add(s.cfg.RateWindow)) {
			win = &quotaWindow{start: now}
			s.windows[tok.identity] = win
			s.stats.Windows++
		}
		win.count++
		rem := max(0, s.cfg.RateLimit-win.count)
		h := c.w.Header()
		h.Set("X-Rate-Limit-Limit", strconv.Itoa(s.cfg.RateLimit))
		h.Set("X-Rate-Limit-Remaining", strconv.Itoa(rem))
		if win.count > s.cfg.RateLimit {
			s.stats.Quota420++
			wait := int(math.Ceil(win.start.Add(s.cfg.RateWindow).Sub(now).Seconds()))
			return 420, errBody{"rate_limit", fmt.Sprintf("You have hit the rate limit. Please wait %d seconds before trying again", max(wait, 1))}, false
		}
	}
	if s.burst > 0 {
		s.burst--
		s.stats.Burst420++
		return 420, errBody{"rate_limit", fmt.Sprintf("You have hit the rate limit. Please wait %d seconds before trying again", f.RateLimitBurstWait)}, false
	}
	if f.RateLimitBurstEvery > 0 && s.calls%int64(f.RateLimitBurstEvery) == 0 && f.RateLimitBurstLength > 0 {
		s.burst = f.RateLimitBurstLength - 1
		s.stats.Burst420++
		return 420, errBody{"rate_limit", fmt.Sprintf("You have hit the rate limit. Please wait %d seconds before trying again", f.RateLimitBurstWait)}, false
	}
	if f.ServerErrorRate > 0 && s.rng.Float64() < f.ServerErrorRate {
		codes := []int{500, 502, 503}
		code := codes[s.rng.IntN(len(codes))]
		s.stats.ServerErrors++
		if c.write && s.rng.Float64() < f.ServerErrorAfterCommit {
			c.fail5x = code
		} else {
			return code, errBody{"server_error", "An unexpected error occurred"}, false
		}
	}
	if c.write && f.LostResponseRate > 0 && c.fail5x == 0 && s.rng.Float64() < f.LostResponseRate {
		c.lose = true
	}
	s.stats.Allowed++
	return 0, nil, true
}

func (s *Server) dropConnection(w http.ResponseWriter) {
	s.mu.Lock()
	s.stats.Lost++
	s.mu.Unlock()
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a reset, as a dropped proxy connection
	}
	conn.Close()
}

func (s *Server) canReach(c *call, appID int64) bool {
	return c.tok.appID == 0 || c.tok.appID == appID
}

func (s *Server) appOf(c *call) (*app, int, any) {
	id, err := strconv.ParseInt(c.r.PathValue("app_id"), 10, 64)
	if err != nil {
		st, b := fail(http.StatusNotFound, "not_found", "Object not found")
		return nil, st, b
	}
	a := s.apps[id]
	if a == nil {
		st, b := fail(http.StatusNotFound, "not_found", "Object not found")
		return nil, st, b
	}
	if !s.canReach(c, id) {
		st, b := fail(http.StatusForbidden, "forbidden", fmt.Sprintf("The app token does not give access to app %d", id))
		return nil, st, b
	}
	return a, 0, nil
}

func (s *Server) handleApp(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	return http.StatusOK, renderApp(a)
}

func (s *Server) handleCount(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	return http.StatusOK, map[string]any{"count": len(a.items)}
}

func (s *Server) itemOf(c *call) (*item, *app, int, any) {
	id, err := strconv.ParseInt(c.r.PathValue("item_id"), 10, 64)
	it := s.items[id]
	if err != nil || it == nil {
		st, b := fail(http.StatusNotFound, "not_found", "Object not found")
		return nil, nil, st, b
	}
	if !s.canReach(c, it.appID) {
		st, b := fail(http.StatusForbidden, "forbidden", fmt.Sprintf("The app token does not give access to item %d", id))
		return nil, nil, st, b
	}
	return it, s.apps[it.appID], 0, nil
}

func (s *Server) handleGet(c *call) (int, any) {
	it, a, st, b := s.itemOf(c)
	if it == nil {
		return st, b
	}
	return http.StatusOK, s.render(a, it)
}

func (s *Server) handleByExternal(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	list := s.byExt[extKey(a.AppID, c.r.PathValue("external_id"))]
	if len(list) == 0 {
		return fail(http.StatusNotFound, "not_found", "Object not found")
	}
	return http.StatusOK, s.render(a, list[0])
}

type writeBody struct {
	ExternalID *string                    `json:"external_id"`
	Fields     map[string]json.RawMessage `json:"fields"`
	Tags       []string                   `json:"tags"`
	Revision   *int                       `json:"revision"`
}

func (s *Server) decodeWrite(c *call) (writeBody, bool) {
	var wb writeBody
	if len(c.body) == 0 || json.Unmarshal(c.body, &wb) != nil {
		return wb, false
	}
	return wb, true
}

func (s *Server) noteWrite(c *call) {
	q := c.r.URL.Query()
	if q.Get("hook") != "false" && q.Get("hook") != "0" {
		s.stats.HooksFired++
	}
	if q.Get("silent") != "true" && q.Get("silent") != "1" {
		s.stats.NotSilent++
	}
}

func (s *Server) handleCreate(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	wb, ok := s.decodeWrite(c)
	if !ok {
		return fail(http.StatusBadRequest, "bad_request", "The request body is not a JSON object")
	}
	now := s.now().UTC().Truncate(time.Second)
	ni := &item{appID: a.AppID, values: map[int64][]map[string]any{}, tags: wb.Tags,
		createdOn: now, lastEventOn: now, lastEditOn: now}
	if wb.ExternalID != nil {
		ni.externalID = *wb.ExternalID
	}
	for _, f := range a.Fields {
		if f.Required {
			if _, ok := wb.Fields[f.ExternalID]; !ok {
				if _, ok := wb.Fields[strconv.FormatInt(f.FieldID, 10)]; !ok {
					s.stats.Validation400++
					return fail(http.StatusBadRequest, "invalid_value", fmt.Sprintf("field %s is required", f.ExternalID))
				}
			}
		}
	}
	if _, err := s.setValues(a, ni, wb.Fields, false); err != nil {
		s.stats.Validation400++
		return fail(http.StatusBadRequest, "invalid_value", err.Error())
	}
	s.nextItem++
	ni.id = s.nextItem
	s.insert(a, ni)
	s.stats.Creates++
	s.noteWrite(c)
	return http.StatusOK, map[string]any{"item_id": ni.id, "app_item_id": ni.appItemID, "title": ni.title, "revision": 0}
}

func (s *Server) handleUpdate(c *call) (int, any) {
	it, a, st, b := s.itemOf(c)
	if it == nil {
		return st, b
	}
	wb, ok := s.decodeWrite(c)
	if !ok {
		return fail(http.StatusBadRequest, "bad_request", "The request body is not a JSON object")
	}
	if wb.Revision != nil && *wb.Revision != it.revision {
		return fail(http.StatusConflict, "conflict", fmt.Sprintf("The item has changed since revision %d", *wb.Revision))
	}
	changed, err := s.setValues(a, it, wb.Fields, false)
	if err != nil {
		s.stats.Validation400++
		return fail(http.StatusBadRequest, "invalid_value", err.Error())
	}
	if wb.ExternalID != nil && *wb.ExternalID != it.externalID {
		old := extKey(a.AppID, it.externalID)
		list := s.byExt[old]
		for i, x := range list {
			if x == it {
				s.byExt[old] = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		it.externalID = *wb.ExternalID
		k := extKey(a.AppID, it.externalID)
		s.byExt[k] = append(s.byExt[k], it)
		changed = true
	}
	if wb.Tags != nil {
		it.tags, changed = wb.Tags, true
	}
	s.noteWrite(c)
	if !changed {
		return http.StatusNoContent, nil
	}
	now := s.now().UTC().Truncate(time.Second)
	it.revision++
	it.lastEditOn, it.lastEventOn = now, now
	s.stats.Updates++
	return http.StatusOK, map[string]any{"revision": it.revision, "title": it.title}
}

type filterBody struct {
	SortBy   string                     `json:"sort_by"`
	SortDesc *bool                      `json:"sort_desc"`
	Limit    *int                       `json:"limit"`
	Offset   int                        `json:"offset"`
	Filters  map[string]json.RawMessage `json:"filters"`
}

type rangeFilter struct {
	From any `json:"from"`
	To   any `json:"to"`
}

func (s *Server) handleFilter(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	var fb filterBody
	if len(c.body) > 0 {
		if err := json.Unmarshal(c.body, &fb); err != nil {
			return fail(http.StatusBadRequest, "bad_request", "The request body is not valid: "+err.Error())
		}
	}
	limit := 30
	if fb.Limit != nil {
		limit = *fb.Limit
	}
	if limit < 1 || limit > 500 {
		return fail(http.StatusBadRequest, "invalid_value", "limit must be between 1 and 500")
	}
	if fb.Offset < 0 {
		return fail(http.StatusBadRequest, "invalid_value", "offset must not be negative")
	}
	desc := true // Podio's default
	if fb.SortDesc != nil {
		desc = *fb.SortDesc
	}
	switch fb.SortBy {
	case "", "created_on", "item_id", "last_edit_on":
	default:
		return fail(http.StatusBadRequest, "invalid_value", fmt.Sprintf("sort_by %q is not supported", fb.SortBy))
	}
	if fb.SortBy == "" {
		fb.SortBy = "created_on"
	}
	preds, err := s.filterPreds(a, fb.Filters)
	if err != nil {
		return fail(http.StatusBadRequest, "invalid_value", err.Error())
	}
	var matched []*item
	for _, it := range a.items {
		ok := true
		for _, p := range preds {
			if !p(it) {
				ok = false
				break
			}
		}
		if ok {
			matched = append(matched, it)
		}
	}
	if !(fb.SortBy == "item_id" && !desc) {
		matched = sortItems(matched, fb.SortBy, desc)
	}
	page := []map[string]any{}
	for i := fb.Offset; i < len(matched) && len(page) < limit; i++ {
		page = append(page, s.render(a, matched[i]))
	}
	return http.StatusOK, map[string]any{"total": len(a.items), "filtered": len(matched), "items": page}
}

func (s *Server) filterPreds(a *app, filters map[string]json.RawMessage) ([]func(*item) bool, error) {
	var preds []func(*item) bool
	for k, raw := range filters {
		switch k {
		case "created_on", "last_event_on", "last_edit_on":
			var r rangeFilter
			if err := json.Unmarshal(raw, &r); err != nil {
				return nil, fmt.Errorf("filter %s: want {\"from\",\"to\"}", k)
			}
			from, to, err := dateRange(r)
			if err != nil {
				return nil, fmt.Errorf("filter %s: %w", k, err)
			}
			key := k
			preds = append(preds, func(it *item) bool {
				t := it.createdOn
				switch key {
				case "last_event_on":
					t = it.lastEventOn
				case "last_edit_on":
					t = it.lastEditOn
				}
				return (from.IsZero() || !t.Before(from)) && (to.IsZero() || !t.After(to))
			})
		case "tags":
			var tags []string
			if err := json.Unmarshal(raw, &tags); err != nil {
				return nil, errors.New("filter tags: want a list of tags")
			}
			preds = append(preds, func(it *item) bool {
				for _, t := range it.tags {
					for _, w := range tags {
						if t == w {
							return true
						}
					}
				}
				return false
			})
		default:
			f := a.byKey[k]
			if f == nil {
				return nil, fmt.Errorf("filter %s: no such field or key", k)
			}
			p, err := fieldPred(f, raw)
			if err != nil {
				return nil, err
			}
			preds = append(preds, p)
		}
	}
	return preds, nil
}

func dateRange(r rangeFilter) (from, to time.Time, err error) {
	parse := func(v any, end bool) (time.Time, error) {
		str, _ := v.(string)
		if v == nil || str == "" {
			return time.Time{}, nil
		}
		if t, err := time.Parse("2006-01-02", str); err == nil {
			if end {
				t = t.Add(24*time.Hour - time.Second)
			}
			return t, nil
		}
		if t, err := time.Parse(podioTime, str); err == nil {
			return t, nil
		}
		return time.Time{}, fmt.Errorf("%q is not YYYY-MM-DD or YYYY-MM-DD HH:MM:SS", str)
	}
	if from, err = parse(r.From, false); err != nil {
		return
	}
	to, err = parse(r.To, true)
	return
}

func fieldPred(f *Field, raw json.RawMessage) (func(*item) bool, error) {
	id := f.FieldID
	switch f.Type {
	case TypeCategory, TypeQuestion, TypeApp, TypeContact:
		var want []int64
		if err := json.Unmarshal(raw, &want); err != nil {
			return nil, fmt.Errorf("filter %s: want a list of ids", f.ExternalID)
		}
		sub := map[string]string{TypeCategory: "id", TypeQuestion: "id", TypeApp: "item_id", TypeContact: "profile_id"}[f.Type]
		return func(it *item) bool {
			for _, v := range it.values[id] {
				m, _ := v["value"].(map[string]any)
				if n, ok := m[sub].(int64); ok && contains(want, n) {
					return true
				}
			}
			return false
		}, nil
	case TypeNumber, TypeMoney, TypeProgress, TypeDuration, TypeCalculation:
		var r rangeFilter
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("filter %s: want {\"from\",\"to\"}", f.ExternalID)
		}
		from, okF := toFloat(r.From)
		to, okT := toFloat(r.To)
		return func(it *item) bool {
			for _, v := range it.values[id] {
				x, ok := toFloat(fmt.Sprint(v["value"]))
				if ok && (!okF || x >= from) && (!okT || x <= to) {
					return true
				}
			}
			return false
		}, nil
	}
	return nil, fmt.Errorf("filter %s: fields of type %s cannot be filtered", f.ExternalID, f.Type)
}

// handleToken serves the OAuth token endpoint.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	params := map[string]string{}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			writeError(w, r, http.StatusBadRequest, "invalid_request", "The body is not JSON")
			return
		}
		for k, v := range m {
			params[k] = fmt.Sprint(v)
			if n, ok := v.(float64); ok {
				params[k] = strconv.FormatInt(int64(n), 10)
			}
		}
	} else {
		q, _ := url.ParseQuery(string(body))
		for k := range q {
			params[k] = q.Get(k)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cl, ok := s.clients[params["client_id"]]
	if !ok || cl.secret != params["client_secret"] || params["client_secret"] == "" {
		writeError(w, r, http.StatusUnauthorized, "invalid_client", "Invalid client_id or client_secret")
		return
	}
	var identity string
	var appID int64
	switch params["grant_type"] {
	case "app":
		id, _ := strconv.ParseInt(params["app_id"], 10, 64)
		a := s.apps[id]
		if a == nil || a.AppToken == "" || a.AppToken != params["app_token"] {
			writeError(w, r, http.StatusBadRequest, "invalid_grant", "Invalid app_id or app_token")
			return
		}
		identity, appID = "app:"+params["app_id"], id
	case "password":
		u, ok := s.users[params["username"]]
		if !ok || u.password != params["password"] {
			writeError(w, r, http.StatusBadRequest, "invalid_grant", "Invalid username or password")
			return
		}
		identity = fmt.Sprintf("user:%d", u.id)
	case "refresh_token":
		g, ok := s.refresh[params["refresh_token"]]
		if !ok || g.clientID != params["client_id"] {
			writeError(w, r, http.StatusBadRequest, "invalid_grant", "Invalid refresh_token")
			return
		}
		identity, appID = g.identity, g.appID
	default:
		writeError(w, r, http.StatusBadRequest, "unsupported_grant_type", fmt.Sprintf("grant_type %q is not supported", params["grant_type"]))
		return
	}
	access, refresh := randToken(), randToken()
	s.tokens[access] = &token{identity: params["client_id"] + "|" + identity, appID: appID,
		expires: s.now().Add(s.cfg.TokenTTL), refresh: refresh}
	s.refresh[refresh] = refreshGrant{clientID: params["client_id"], identity: identity, appID: appID}
	s.stats.TokensIssued++
	typ, idStr, _ := strings.Cut(identity, ":")
	refID, _ := strconv.ParseInt(idStr, 10, 64)
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": access, "token_type": "bearer", "expires_in": int(s.cfg.TokenTTL.Seconds()),
		"refresh_token": refresh, "scope": "global:all", "ref": map[string]any{"type": typ, "id": refID},
	})
}

// IssueRefreshToken returns a refresh token for a user, as the
// server-side flow would have given one, for the refresh_token flow.
func (s *Server) IssueRefreshToken(clientID, username string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[username]
	if !ok {
		return "", fmt.Errorf("no user %q", username)
	}
	rt := randToken()
	s.refresh[rt] = refreshGrant{clientID: clientID, identity: fmt.Sprintf("user:%d", u.id)}
	return rt, nil
}

func randToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

func (s *Server) handleDump(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.URL.Query().Get("app_id"), 10, 64)
	if err != nil {
		writeError(w, r, http.StatusBadRequest, "invalid_value", "app_id is required")
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if err := s.DumpJSONL(w, id); err != nil {
		writeError(w, r, http.StatusNotFound, "not_found", err.Error())
	}
}
