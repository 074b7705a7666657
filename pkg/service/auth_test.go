package service_test

import (
	"bytes"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

func TestBearerToken(t *testing.T) {
	const token = "tok-SECRET-4f1b2c9d"
	s := start(t, t.TempDir(), serverOpts{token: token})
	for _, c := range []struct {
		name, token string
		code        int
	}{
		{"none", "", http.StatusUnauthorized},
		{"wrong", "tok-SECRET-4f1b2c9e", http.StatusUnauthorized},
		{"prefix", "tok-SECRET", http.StatusUnauthorized},
		{"right", token, http.StatusOK},
	} {
		for _, path := range []string{"/v1/jobs", "/metrics"} {
			r := s.doAuth("GET", path, nil, c.token)
			if r.code != c.code {
				t.Errorf("%s token, GET %s: %d, want %d", c.name, path, r.code, c.code)
			}
			if c.code == http.StatusUnauthorized && !bytes.Contains(r.body, []byte(`"unauthorized"`)) {
				t.Errorf("401 body: %s", r.body)
			}
		}
	}
	// Basic auth or a bare token are not a bearer token.
	req, _ := http.NewRequest("GET", s.base+"/v1/jobs", nil)
	req.Header.Set("Authorization", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("bare token: %d", resp.StatusCode)
	}
	for _, open := range []string{"/healthz", "/readyz", "/", "/v1/openapi.json"} {
		if r := s.doAuth("GET", open, nil, ""); r.code != http.StatusOK {
			t.Errorf("GET %s without a token: %d, want 200", open, r.code)
		}
	}
}

// TestNoSecretInLogsOrResponses drives the API with a token, wrong tokens
// and a job whose target names its credentials, then searches every log
// line and response body for the secrets.
func TestNoSecretInLogsOrResponses(t *testing.T) {
	const token = "tok-SECRET-a9e77c01"
	const wrong = "wrong-SECRET-03f2aa"
	const podioSecret = "podio-SECRET-77aa01"
	t.Setenv("PODIO_CLIENT_SECRET", podioSecret)
	t.Setenv("PODIO_APP_TOKEN", podioSecret+"-app")
	s := start(t, t.TempDir(), serverOpts{token: token, sim: servicetest.Options{Tick: time.Millisecond, FailEvery: 3},
		cfg: func(c *service.Config) { c.AllowedCredentials = []string{"PODIO_CLIENT_SECRET", "PODIO_APP_TOKEN"} }})
	s.doAuth("GET", "/v1/jobs", nil, wrong)
	s.doAuth("POST", "/v1/jobs", spec(t, "x", 10, nil), wrong)
	podio := spec(t, "p", 30, map[string]any{
		"target": map[string]any{"type": "podio", "app_id": 30001,
			"auth": map[string]any{"flow": "app", "client_id": "memvisor", "client_secret_env": "PODIO_CLIENT_SECRET", "app_token_env": "PODIO_APP_TOKEN"}},
	})
	if r := s.do("POST", "/v1/jobs", podio); r.code != http.StatusCreated {
		t.Fatalf("create podio job: %d %s", r.code, r.body)
	}
	s.waitStatus("p", 10*time.Second, "completed")
	steal := spec(t, "steal", 10, map[string]any{
		"target": map[string]any{"type": "podio", "app_id": 1,
			"auth": map[string]any{"flow": "app", "client_secret_env": "MEMVISOR_TOKEN", "app_token_env": "X"}},
	})
	if r := s.do("POST", "/v1/jobs", steal); r.code != http.StatusBadRequest {
		t.Errorf("a job naming the service's token variable: %d %s, want 400", r.code, r.body)
	}
	for _, p := range []string{"/v1/jobs/p", "/v1/jobs", "/v1/jobs/p/failed", "/v1/jobs/p/events", "/metrics", "/v1/jobs/nope"} {
		s.do("GET", p, nil)
	}
	s.do("POST", "/v1/jobs", `{"id":"bad","source":{"type":"jsonl","path":"/x"},"target":{"type":"podio","app_id":1,"auth":{"flow":"app","client_secret":"`+podioSecret+`"}}}`)
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	logs, bodies := s.logs.String(), s.responses()
	if !strings.Contains(logs, `"job":"p"`) {
		t.Fatalf("the logs were not captured: %q", logs)
	}
	for _, secret := range []string{token, wrong, podioSecret} {
		if strings.Contains(logs, secret) {
			t.Errorf("log lines contain %q", secret)
		}
	}
	for _, secret := range []string{token, wrong} {
		if strings.Contains(bodies, secret) {
			t.Errorf("responses contain %q", secret)
		}
	}
	// The podio secret was sent in a rejected body; the error names the
	// field, never echoes its value.
	if strings.Contains(bodies, podioSecret) {
		t.Errorf("responses echo a secret sent in a body")
	}
}

func TestPromtoolAcceptsMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (apt-get install prometheus); .ci/run installs it")
	}
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: 20 * time.Millisecond}})
	s.create(spec(t, "m", 100000, nil))
	eventually(t, 10*time.Second, "a memory sample", func() error {
		if v := s.get("m"); v.Memory.RSS == 0 {
			return notYet("no rss yet")
		}
		return nil
	})
	s.do("GET", "/v1/jobs/m", nil)
	r := s.do("GET", "/metrics", nil)
	if r.code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", r.code)
	}
	body := string(r.body)
	for _, want := range []string{
		`memvisor_runner_rss_bytes{job_id="m"}`, `memvisor_runner_heap_bytes{job_id="m"}`,
		`memvisor_budget_bytes{job_id="m"} 2.68435456e+08`, `memvisor_memory_usage_ratio{job_id="m"}`,
		`memvisor_memory_level{job_id="m"}`, `memvisor_gc_requests_total{job_id="m"}`,
		`memvisor_restarts_total{job_id="m",kind="crash"}`, `memvisor_items_total{job_id="m",result="created"}`,
		`memvisor_checkpoint_offset{job_id="m"}`, `memvisor_cache_entries{job_id="m"}`, `memvisor_cache_bytes{job_id="m"}`,
		`memvisor_job_transitions_total{event="submitted"} 1`,
		`memvisor_api_request_duration_seconds_bucket{code="200",method="GET",route="/v1/jobs/{id}"`,
		"go_goroutines", "process_resident_memory_bytes", "memvisor_jobs_running 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(r.body)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	// And after a job finished, with a duration observed.
	if r := s.do("POST", "/v1/jobs/m/cancel", nil); r.code != http.StatusOK {
		t.Fatalf("cancel: %d", r.code)
	}
	r = s.do("GET", "/metrics", nil)
	if !strings.Contains(string(r.body), `memvisor_job_duration_seconds_count{status="cancelled"} 1`) {
		t.Errorf("no job duration after the job ended")
	}
	cmd = exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(r.body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics after the job: %v\n%s", err, out)
	}
}
