package e2e_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/memvisor/memvisor/internal/testbin"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		testbin.Cleanup()
		os.Exit(code)
	}))
}

// proc is a running service process.
type proc struct {
	t      testing.TB
	cmd    *exec.Cmd
	base   string
	token  string
	stderr *lockedBuffer
	waited chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serviceDefaults, put in extraYAML, keeps the service's own confinement
// (allowed_roots <state_dir>/data, allow_inject false) for what extraYAML
// does not set, instead of the wide settings most tests run with.
const serviceDefaults = "# confinement: the service's defaults\n"

// startSupervisor starts the real `supervisor serve --config FILE` with
// the real runner (both built from the working tree).
func startSupervisor(t testing.TB, stateDir, extraYAML string, env ...string) *proc {
	t.Helper()
	bin := testbin.Path(t, "supervisor")
	runner := testbin.Path(t, "runner")
	return launch(t, bin, stateDir, fmt.Sprintf("runner_path: %s\nlog: {format: json, level: info}\n%s", runner, extraYAML), env...)
}

func launch(t testing.TB, bin, stateDir, extraYAML string, env ...string) *proc {
	t.Helper()
	port := freePort(t)
	cfg := fmt.Sprintf("listen: 127.0.0.1:%d\nstate_dir: %s\nshutdown_timeout: 20s\n%s", port, stateDir, extraYAML)
	// The tests' jobs write under the temporary directory and use fault
	// injection, unless the test keeps the service's own confinement.
	wide := !strings.Contains(extraYAML, serviceDefaults)
	if wide && !strings.Contains(extraYAML, "allowed_roots:") {
		cfg += fmt.Sprintf("allowed_roots: [%s]\n", os.TempDir())
	}
	if wide && !strings.Contains(extraYAML, "allow_inject:") {
		cfg += "allow_inject: true\n"
	}
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{t: t, cmd: cmd, base: fmt.Sprintf("http://127.0.0.1:%d", port), stderr: &lockedBuffer{}, waited: make(chan error, 1)}
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "MEMVISOR_TOKEN="); ok {
			p.token = v
		}
	}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.waited
		}
		if t.Failed() {
			t.Logf("service log:\n%s", p.stderr.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(p.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if p.token == "" {
					// With no token configured, the service made one.
					data, err := os.ReadFile(filepath.Join(stateDir, "api-token"))
					if err != nil {
						t.Fatalf("read the generated token: %v", err)
					}
					p.token = strings.TrimSpace(string(data))
				}
				return p
			}
		}
		select {
		case err := <-p.waited:
			t.Fatalf("service exited: %v\n%s", err, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("service not ready after 20s\n%s", p.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends sig and waits for the process to exit.
func (p *proc) stop(sig os.Signal, timeout time.Duration) error {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	select {
	case err := <-p.waited:
		return err
	case <-time.After(timeout):
		p.t.Fatalf("service did not exit within %s after %v", timeout, sig)
		return nil
	}
}

func (p *proc) do(method, path string, body any) (int, []byte) {
	p.t.Helper()
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, p.base+path, rd)
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

type jobView struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Runs     int    `json:"runs"`
	Progress struct {
		Total, Processed int64
		Percent          float64
	} `json:"progress"`
}

func (p *proc) get(id string) jobView {
	p.t.Helper()
	code, body := p.do("GET", "/v1/jobs/"+id, nil)
	if code != http.StatusOK {
		p.t.Fatalf("GET %s: %d %s", id, code, body)
	}
	var v jobView
	if err := json.Unmarshal(body, &v); err != nil {
		p.t.Fatal(err)
	}
	return v
}

func (p *proc) wait(id string, timeout time.Duration, cond func(jobView) bool) jobView {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := p.get(id)
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("job %s: %+v after %s", id, v, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func syntheticJob(t *testing.T, id string, count int) map[string]any {
	return map[string]any{
		"id":         id,
		"source":     map[string]any{"type": "synthetic", "count": count, "seed": 1},
		"target":     map[string]any{"type": "jsonl", "path": filepath.Join(t.TempDir(), "target.jsonl")},
		"match":      map[string]any{"source_field": "email", "target_field": "email"},
		"batch_size": 100,
	}
}
