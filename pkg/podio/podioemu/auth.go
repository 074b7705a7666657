package podioemu

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

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
	serial   int // the order of issue, from 1, for QuotaWindow.ByToken
}

type refreshGrant struct {
	clientID string
	identity string
	appID    int64
	expires  time.Time // zero: never
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
		if !g.expires.IsZero() && !s.now().Before(g.expires) {
			delete(s.refresh, params["refresh_token"])
			writeError(w, r, http.StatusBadRequest, "invalid_grant", "The refresh_token has expired")
			return
		}
		identity, appID = g.identity, g.appID
	default:
		writeError(w, r, http.StatusBadRequest, "unsupported_grant_type", fmt.Sprintf("grant_type %q is not supported", params["grant_type"]))
		return
	}
	// The token endpoint counts against the caller's quota as any call.
	if st, b, ok := s.charge(params["client_id"]+"|"+identity, 0, false, w.Header()); !ok {
		eb := b.(errBody)
		writeError(w, r, st, eb.code, eb.desc)
		return
	}
	access, refresh := randToken(), randToken()
	s.tokSerial++
	s.tokens[access] = &token{identity: params["client_id"] + "|" + identity, appID: appID,
		expires: s.now().Add(s.cfg.TokenTTL), refresh: refresh, serial: s.tokSerial}
	s.refresh[refresh] = refreshGrant{clientID: params["client_id"], identity: identity, appID: appID, expires: s.refreshExpiry()}
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
	s.refresh[rt] = refreshGrant{clientID: clientID, identity: fmt.Sprintf("user:%d", u.id), expires: s.refreshExpiry()}
	return rt, nil
}

func randToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Server) refreshExpiry() time.Time {
	if s.cfg.RefreshTTL <= 0 {
		return time.Time{}
	}
	return s.now().Add(s.cfg.RefreshTTL)
}

// RevokeRefreshToken revokes a refresh token, as a user removing the
// app's access would, and every access token issued with it. It reports
// whether the token existed.
func (s *Server) RevokeRefreshToken(rt string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.refresh[rt]
	delete(s.refresh, rt)
	for _, t := range s.tokens {
		if t.refresh == rt {
			t.revoked = true
		}
	}
	return ok
}

// RevokeAll revokes every refresh and access token issued so far.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.refresh)
	for _, t := range s.tokens {
		t.revoked = true
	}
}
