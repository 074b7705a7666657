package podioemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
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
	// RefreshTTL is the lifetime of a refresh token; 0 means it does not
	// expire (it can still be revoked).
	RefreshTTL time.Duration
	// UserZone is the time zone of the users: item dates are answered in
	// it, beside their *_utc forms, and written values are read in it.
	// nil means Europe/Copenhagen, a zone that is not UTC, so that a
	// client that confuses the two is caught.
	UserZone *time.Location
	// RateLimit is the number of calls allowed per RateWindow per caller;
	// 0 means no quota.
	RateLimit int
	// LimitedRateLimit is the lower limit of the calls Podio marks "Rate
	// limited" (see IsRateLimitedCall); 0 means a quarter of RateLimit,
	// as Podio's 250 of 1,000.
	LimitedRateLimit int
	RateWindow       time.Duration
	Faults           Faults
	// FileDir holds uploaded files; "" means a temporary directory of
	// the server's own, removed by Close.
	FileDir string
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
	Calls   int64 `json:"calls"`   // authenticated API calls answered
	Allowed int64 `json:"allowed"` // calls within the quota
	// LimitedAllowed counts the allowed calls of the "Rate limited" tier.
	LimitedAllowed int64 `json:"limited_allowed"`
	Quota420       int64 `json:"quota_420"`      // 420s for a spent quota
	Burst420       int64 `json:"burst_420"`      // injected 420s
	ServerErrors   int64 `json:"server_errors"`  // injected 5xx
	Lost           int64 `json:"lost"`           // writes committed, answer dropped
	Expired401     int64 `json:"expired_401"`    // calls with an expired token
	TokensIssued   int64 `json:"tokens_issued"`  // successful token grants
	Creates        int64 `json:"creates"`        // items created over the API
	Updates        int64 `json:"updates"`        // items changed over the API
	HooksFired     int64 `json:"hooks_fired"`    // writes made with hook=true
	NotSilent      int64 `json:"not_silent"`     // writes made with silent=false
	Validation400  int64 `json:"validation_400"` // writes refused as invalid
	Abandoned      int64 `json:"abandoned"`      // writes not made: the client left
	TokenExpiries  int64 `json:"token_expiries"` // injected expiries of all tokens
	Windows        int64 `json:"quota_windows"`  // quota windows started
	Uploads        int64 `json:"uploads"`        // files uploaded
	Downloads      int64 `json:"downloads"`      // files downloaded whole
	Attached       int64 `json:"attached"`       // files attached to items
	Comments       int64 `json:"comments"`       // comments made over the API
	// MaxUploadsInFlight is the most uploads received at once.
	MaxUploadsInFlight int64 `json:"max_uploads_in_flight"`
}

// Server is the emulator. Create it with New, then Start it or use
// Handler.
type Server struct {
	cfg  Config
	now  func() time.Time
	zone *time.Location

	mu          sync.Mutex
	rng         *mrand.Rand
	clients     map[string]client
	users       map[string]user
	apps        map[int64]*app
	items       map[int64]*item
	byExt       map[string][]*item // app_id/external_id
	tokens      map[string]*token
	refresh     map[string]refreshGrant
	windows     map[string]*quotaWindow
	windowLog   []*quotaWindow // QuotaWindows
	tokSerial   int
	files       map[int64]*file
	nextFile    int64
	nextComment int64
	uploading   int64
	dir         string // uploaded files
	ownDir      bool
	nextItem    int64
	nextFld     int64
	nextOpt     int64
	calls       int64
	burst       int
	stats       Stats

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
	if cfg.LimitedRateLimit == 0 {
		cfg.LimitedRateLimit = cfg.RateLimit / 4
	}
	if cfg.RateWindow == 0 {
		cfg.RateWindow = time.Hour
	}
	if cfg.Faults.RateLimitBurstWait == 0 {
		cfg.Faults.RateLimitBurstWait = 1
	}
	zone := cfg.UserZone
	if zone == nil {
		if z, err := time.LoadLocation("Europe/Copenhagen"); err == nil {
			zone = z
		} else {
			zone = time.FixedZone("CET", 3600)
		}
	}
	return &Server{
		cfg: cfg, now: now, zone: zone,
		rng:         mrand.New(mrand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		clients:     map[string]client{},
		users:       map[string]user{},
		apps:        map[int64]*app{},
		items:       map[int64]*item{},
		files:       map[int64]*file{},
		nextFile:    500_000_000,
		nextComment: 700_000_000,
		byExt:       map[string][]*item{},
		tokens:      map[string]*token{},
		refresh:     map[string]refreshGrant{},
		windows:     map[string]*quotaWindow{},
		nextItem:    1_000_000_000,
		nextFld:     100_000,
		nextOpt:     1,
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
	if err := s.attachLocked(ni, it.FileIDs); err != nil {
		return 0, fmt.Errorf("seed item in app %d: %w", a.AppID, err)
	}
	s.insert(a, ni)
	for _, c := range it.Comments {
		s.addCommentLocked(ni, c, "user:seed")
	}
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
	defer s.removeFiles()
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
	// {$}: only the exact path creates; POST /item/app/{id}/delete and
	// the like are unknown routes, answered 404.
	mux.HandleFunc("POST /item/app/{app_id}/{$}", s.api(s.handleCreate))
	mux.HandleFunc("GET /item/{item_id}", s.api(s.handleGet))
	mux.HandleFunc("PUT /item/{item_id}", s.api(s.handleUpdate))
	mux.HandleFunc("POST /file/v2/{$}", s.handleUpload)
	mux.HandleFunc("POST /file/{$}", s.handleUpload)
	mux.HandleFunc("POST /file", s.handleUpload) // podio-js posts here
	mux.HandleFunc("GET /file/{file_id}", s.api(s.handleFile))
	mux.HandleFunc("GET /file/{file_id}/raw", s.handleRaw)
	mux.HandleFunc("POST /file/{file_id}/attach", s.api(s.handleAttach))
	mux.HandleFunc("GET /comment/item/{item_id}/{$}", s.api(s.handleComments))
	mux.HandleFunc("POST /comment/item/{item_id}/{$}", s.api(s.handleAddComment))
	mux.HandleFunc("GET /_emulator/dump", s.handleDump)
	mux.HandleFunc("GET /_emulator/stats", s.handleStats)
	unknown := s.api(func(c *call) (int, any) {
		return fail(http.StatusNotFound, "not_found", "No such API endpoint: "+c.r.Method+" "+c.r.URL.Path)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// An authenticated call to an unknown route is still a call: it
		// counts and carries the rate-limit headers, then gets its 404.
		if r.Header.Get("Authorization") != "" {
			unknown(w, r)
			return
		}
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
	if st, b, ok := s.charge(tok.identity, tok.serial, IsRateLimitedCall(c.r.Method, c.r.URL.Path), c.w.Header()); !ok {
		return st, b, false
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
