package service

import (
	"mime"
	"net"
	"net/http"
	"strings"
)

// The browser defences (docs/design.md, "Security model"). A browser can
// reach a loopback service from any web page, so:
//   - every answer says nosniff, and that no page may frame it;
//   - the Host header must be a loopback name, the listen address, or one
//     of allowed_hosts, which defeats DNS rebinding (a page of
//     attacker.example whose name now points at 127.0.0.1);
//   - http.CrossOriginProtection refuses a state-changing request that a
//     browser marks as cross-site (Sec-Fetch-Site) or that carries a
//     foreign Origin;
//   - a POST with a body must say application/json, which a form or a
//     "simple" cross-site fetch cannot send without a CORS preflight,
//     and the API answers no preflight;
//   - and the API needs a bearer token, which Serve makes when none is
//     configured.

// defaultCSP is the policy of every answer but the status page's own.
const defaultCSP = "default-src 'none'; frame-ancestors 'none'"

// pageCSP lets the status page load its script and style from the
// service, and nothing inline.
const pageCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// allowedHosts lists the Host values beside the loopback names: the
// listen address's own host when it is a specific one, and allowed_hosts.
func allowedHosts(cfg Config) []string {
	var out []string
	if network, addr, err := ListenAddr(cfg.Listen); err == nil && network == "tcp" {
		if h, _, err := net.SplitHostPort(addr); err == nil && h != "" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				out = append(out, strings.ToLower(h))
			}
		}
	}
	for _, h := range cfg.AllowedHosts {
		out = append(out, strings.ToLower(h))
	}
	return out
}

// hostAllowed reports whether a request's Host names this service.
func hostAllowed(host string, allowed []string) bool {
	host = strings.ToLower(host)
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")
	if name == "localhost" {
		return true
	}
	if ip := net.ParseIP(name); ip != nil && ip.IsLoopback() {
		return true
	}
	for _, a := range allowed {
		if a == host || a == name {
			return true
		}
	}
	return false
}

// defend wraps the whole API in the browser defences.
func (a *api) defend(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, "cross_origin", "cross-origin requests are refused", nil)
	}))
	inner := cop.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && !jsonBody(r) {
			writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type",
				"a request body must be JSON, sent with Content-Type: application/json", nil)
			return
		}
		next.ServeHTTP(w, r)
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", defaultCSP)
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// A browser cannot reach a Unix socket, so its clients may name
		// any host.
		if !a.unixSocket && !hostAllowed(r.Host, a.hosts) {
			writeError(w, http.StatusForbidden, "bad_host",
				"the Host header does not name this service; add it to allowed_hosts if a proxy forwards it", nil)
			return
		}
		inner.ServeHTTP(w, r)
	})
}

// jsonBody reports whether a POST's body is JSON, or absent: a POST may
// carry no body at all (pause, resume), but a body must be JSON.
func jsonBody(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return r.ContentLength == 0
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}
