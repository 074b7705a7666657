package service_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestConfigDefaults(t *testing.T) {
	c, err := service.ParseEnv(strings.NewReader(""), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:7411" || c.MaxConcurrentJobs != 1 || !c.Metrics || c.Retention.D() != 30*24*time.Hour || c.HasToken() {
		t.Errorf("defaults: %+v", c)
	}
}

func TestConfigDeployExampleParses(t *testing.T) {
	f, err := os.Open("../../deploy/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := service.ParseEnv(f, env(map[string]string{"MEMVISOR_TOKEN": "from-env-0123456789"}))
	if err != nil {
		t.Fatalf("deploy/config.yaml: %v", err)
	}
	if !c.HasToken() || c.StateDir != "/var/lib/memvisor" {
		t.Errorf("deploy config: %+v", c)
	}
}

func TestConfigParse(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("  s3cret-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := `
listen: 0.0.0.0:9000
state_dir: ${DIR}/state
auth:
  token_file: ${DIR}/token
max_concurrent_jobs: 2
memory:
  budget: 1GiB
  defaults: {warning_percent: 70, critical_percent: 80, kill_percent: 90}
retention: 48h
log: {mask_values: true, level: debug, format: json}
`
	c, err := service.ParseEnv(strings.NewReader(yaml), env(map[string]string{"DIR": dir}))
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != dir+"/state" || c.MaxConcurrentJobs != 2 || c.Memory.Budget != 1<<30 || !c.Log.MaskValues || !c.HasToken() {
		t.Errorf("parsed: %+v", c)
	}
	if c.Memory.Defaults.SampleInterval.D() != 250*time.Millisecond {
		t.Errorf("memory defaults lost the keys not given: %+v", c.Memory.Defaults)
	}
	// The token never marshals.
	data, _ := json.Marshal(c)
	if strings.Contains(string(data), "s3cret") {
		t.Errorf("config JSON has the token: %s", data)
	}
	// Env overrides the file.
	c, err = service.ParseEnv(strings.NewReader(yaml), env(map[string]string{"DIR": dir, "MEMVISOR_LISTEN": "127.0.0.1:1234", "MEMVISOR_STATE_DIR": "/srv/m"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:1234" || c.StateDir != "/srv/m" {
		t.Errorf("env overrides: listen %s state_dir %s", c.Listen, c.StateDir)
	}
}

func TestConfigErrorsNameFields(t *testing.T) {
	cases := []struct {
		name, yaml string
		env        map[string]string
		fields     []string
	}{
		{"unknown key", "listne: x\n", nil, []string{`unknown field "listne"`}},
		{"every bad field", `
listen: nowhere
state_dir: ""
max_concurrent_jobs: 0
retention: 1s
runner_path: relative/runner
log: {level: loud, format: xml}
memory: {budget: 1MiB, defaults: {warning_percent: 90, critical_percent: 80}}
`, nil, []string{"listen:", "state_dir:", "max_concurrent_jobs:", "retention:", "runner_path:", "log.level:", "log.format:", "memory.budget:", "memory.defaults:"}},
		{"negative size", "memory: {budget: -1}\n", nil, []string{"bad size -1"}},
		{"public without token", "listen: 0.0.0.0:7411\n", nil, []string{"auth.token_file:", "non-loopback"}},
		{"missing token file", "auth: {token_file: /nonexistent/token}\n", nil, []string{"auth.token_file"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := service.ParseEnv(strings.NewReader(c.yaml), env(c.env))
			if err == nil {
				t.Fatal("no error")
			}
			for _, f := range c.fields {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("error %q does not mention %q", err, f)
				}
			}
		})
	}
	// With a token, any address will do; a unix socket needs none.
	if _, err := service.ParseEnv(strings.NewReader("listen: 0.0.0.0:7411\n"), env(map[string]string{"MEMVISOR_TOKEN": "t-0123456789abcdef"})); err != nil {
		t.Errorf("public with a token: %v", err)
	}
	if _, err := service.ParseEnv(strings.NewReader("listen: unix:/run/memvisor/api.sock\n"), env(nil)); err != nil {
		t.Errorf("unix socket: %v", err)
	}
}

func TestServeRefusesPublicAddressWithoutToken(t *testing.T) {
	cfg := service.Default()
	cfg.StateDir = t.TempDir()
	cfg.Listen = "0.0.0.0:0"
	err := service.Serve(t.Context(), cfg, service.WithFactory(servicetest.Factory(servicetest.Options{})))
	if err == nil || !strings.Contains(err.Error(), "non-loopback") {
		t.Fatalf("serve on 0.0.0.0 without a token: %v", err)
	}
}
