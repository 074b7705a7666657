package e2e_test

import (
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestNodeClient runs examples/nextjs's `node --test` suite against a live
// bin/supervisor serve on loopback, with a token and the real runner. The
// service keeps its default data root, and allows fault injection, which
// the suite uses to slow its jobs down.
func TestNodeClient(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	const token = "node-test-token-5e1f"
	state := t.TempDir()
	p := startSupervisor(t, state, serviceDefaults+"allow_inject: true\n", "MEMVISOR_TOKEN="+token)
	dir, err := filepath.Abs("../../../examples/nextjs")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, "--test", "--test-reporter=spec", "test/")
	cmd.Dir = dir
	cmd.Env = append(cmd.Environ(), "MEMVISOR_URL="+p.base, "MEMVISOR_TOKEN="+token, "MEMVISOR_DATA_ROOT="+filepath.Join(state, "data"))
	out, err := cmd.CombinedOutput()
	t.Logf("node --test:\n%s", out)
	if err != nil {
		t.Fatalf("node --test: %v", err)
	}
	if err := p.stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
}
