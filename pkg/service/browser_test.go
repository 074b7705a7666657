package service_test

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

// raw sends a request with exactly the headers given.
func (s *server) raw(method, path, body string, hdr map[string]string) (int, http.Header, string) {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.base+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(data)
}

// TestDefaultDeploymentNeedsAToken is finding 4's root: with no token
// configured the service makes one, 0600, in the state dir, says where,
// and requires it.
func TestDefaultDeploymentNeedsAToken(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir, serverOpts{})
	path := filepath.Join(dir, "api-token")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("no generated token: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", st.Mode().Perm())
	}
	if len(s.token) < 64 {
		t.Errorf("generated token of %d characters, want at least 64 hex digits (32 bytes)", len(s.token))
	}
	if code, _, _ := s.raw("GET", "/v1/jobs", "", nil); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/jobs without the token: %d, want 401", code)
	}
	if !strings.Contains(s.logs.String(), path) {
		t.Errorf("the log does not say where the token is")
	}
	// A restart keeps the token.
	first := s.token
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	s = start(t, dir, serverOpts{})
	if s.token != first {
		t.Errorf("the token changed across a restart")
	}
}

// TestBrowserDefences is finding 4: a cross-site form post, a text/plain
// post, and a rebound Host are refused, and every answer carries the
// anti-framing and no-sniff headers.
func TestBrowserDefences(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: time.Millisecond},
		cfg: func(c *service.Config) { c.AllowedHosts = []string{"memvisor.internal.example"} }})
	body := `{"source":{"type":"synthetic","count":1},"target":{"type":"jsonl","path":"` + t.TempDir() + `/t.jsonl"}}`
	auth := "Bearer " + s.token
	for _, c := range []struct {
		name string
		hdr  map[string]string
		code int
	}{
		{"text/plain", map[string]string{"Authorization": auth, "Content-Type": "text/plain"}, http.StatusUnsupportedMediaType},
		{"form", map[string]string{"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"}, http.StatusUnsupportedMediaType},
		{"no content type", map[string]string{"Authorization": auth}, http.StatusUnsupportedMediaType},
		{"cross-site", map[string]string{"Authorization": auth, "Content-Type": "application/json", "Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, http.StatusForbidden},
		{"foreign origin", map[string]string{"Authorization": auth, "Content-Type": "application/json", "Origin": "https://evil.example"}, http.StatusForbidden},
		{"rebound host", map[string]string{"Authorization": auth, "Content-Type": "application/json", "Host": "attacker.example"}, http.StatusForbidden},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, hdr, b := s.raw("POST", "/v1/jobs", body, c.hdr)
			if code != c.code {
				t.Errorf("got %d %s, want %d", code, b, c.code)
			}
			if hdr.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("no nosniff on a refusal")
			}
		})
	}
	for _, host := range []string{"attacker.example", "attacker.example:7411", "127.0.0.1.nip.io"} {
		if code, _, _ := s.raw("GET", "/healthz", "", map[string]string{"Host": host}); code != http.StatusForbidden {
			t.Errorf("GET /healthz with Host %s: %d, want 403", host, code)
		}
	}
	for _, host := range []string{"localhost:7411", "127.0.0.1", "[::1]:7411", "memvisor.internal.example", "memvisor.internal.example:443"} {
		if code, _, _ := s.raw("GET", "/healthz", "", map[string]string{"Host": host}); code != http.StatusOK {
			t.Errorf("GET /healthz with Host %s: %d, want 200", host, code)
		}
	}
	code, _, b := s.raw("POST", "/v1/jobs", body, map[string]string{"Authorization": auth, "Content-Type": "application/json; charset=utf-8", "Sec-Fetch-Site": "same-origin"})
	if code != http.StatusCreated {
		t.Errorf("a same-origin JSON post: %d %s", code, b)
	}
	if code, _, _ := s.raw("GET", "/v1/jobs", "", map[string]string{"Authorization": "bearer " + s.token}); code != http.StatusOK {
		t.Errorf("lower-case bearer: %d, want 200", code)
	}
	for _, path := range []string{"/", "/healthz", "/v1/jobs", "/v1/openapi.json", "/nope", "/metrics"} {
		_, hdr, _ := s.raw("GET", path, "", nil)
		if hdr.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options: nosniff", path)
		}
		if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: CSP %q has no frame-ancestors 'none'", path, csp)
		}
	}
	_, hdr, page := s.raw("GET", "/", "", nil)
	if csp := hdr.Get("Content-Security-Policy"); strings.Contains(csp, "unsafe-inline") {
		t.Errorf("status page CSP %q allows inline code", csp)
	}
	if strings.Contains(page, "<script>") || strings.Contains(page, "<style>") || strings.Contains(page, " onclick=") {
		t.Errorf("the status page still has inline script or style")
	}
}

// TestTokenRules is the review's token finding.
func TestTokenRules(t *testing.T) {
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := service.ParseEnv(strings.NewReader("auth: {token_file: "+short+"}\n"), func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "auth.token_file") {
		t.Errorf("a one-byte token: got %v, want an error naming auth.token_file", err)
	}
	if _, err := service.ParseEnv(strings.NewReader(""), func(k string) string {
		if k == service.EnvToken {
			return "short"
		}
		return ""
	}); err == nil {
		t.Errorf("a five-byte %s was accepted", service.EnvToken)
	}
	open := filepath.Join(t.TempDir(), "open")
	if err := os.WriteFile(open, []byte("0123456789abcdef0123456789abcdef\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := service.ParseEnv(strings.NewReader("auth: {token_file: "+open+"}\n"), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	warned := false
	for _, w := range cfg.Warnings() {
		if strings.Contains(w, open) && strings.Contains(w, "readable") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("a world-readable token file gave no warning: %q", cfg.Warnings())
	}
}

// TestTokenFromSystemdCredential reads the token that LoadCredential= gives.
func TestTokenFromSystemdCredential(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "api-token"), []byte("cred-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := service.ParseEnv(strings.NewReader(""), func(k string) string {
		if k == "CREDENTIALS_DIRECTORY" {
			return dir
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.HasToken() {
		t.Errorf("the systemd credential api-token was not used")
	}
}
