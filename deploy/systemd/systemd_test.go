package systemd_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestFleetDropInVerifies loads the unit with its fleet drop-in through
// systemd-analyze verify, and checks what the drop-in must set.
func TestFleetDropInVerifies(t *testing.T) {
	dropIn, err := os.ReadFile("memvisor.service.d/fleet.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"EnvironmentFile=/etc/memvisor/fleet.env", "Restart=always", "After=network-online.target",
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want)).MatchString(string(dropIn)) {
			t.Errorf("drop-in lacks %q", want)
		}
	}
	if regexp.MustCompile(`(?m)^Environment=.*POSTGRES`).Match(dropIn) {
		t.Error("the drop-in puts the PostgreSQL URL in the unit; it belongs in the environment file")
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is not installed")
		}
		t.Skip("systemd-analyze is not installed (apt-get install systemd); .ci/run installs it")
	}
	unit, err := os.ReadFile("memvisor.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	exe, _ := os.Executable()
	u := strings.Replace(string(unit), "ExecStart=/usr/local/bin/supervisor", "ExecStart="+exe, 1)
	if err := os.WriteFile(filepath.Join(dir, "memvisor.service"), []byte(u), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "memvisor.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A typo in the drop-in must fail verify: check that it is read.
	for _, tc := range []struct {
		name     string
		dropIn   string
		wantFail bool
	}{
		{"as shipped", string(dropIn), false},
		{"with a typo", string(dropIn) + "\nRestartSecc=5s\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, "memvisor.service.d", "fleet.conf"), []byte(tc.dropIn), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(sa, "verify", "memvisor.service")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
			out, err := cmd.CombinedOutput()
			failed := err != nil || strings.Contains(string(out), "fleet.conf") || strings.Contains(string(out), "memvisor.service")
			if failed != tc.wantFail {
				t.Errorf("systemd-analyze verify: failed=%v, want %v (%v)\n%s", failed, tc.wantFail, err, out)
			}
		})
	}
}
