package e2e_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func unitPath(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../../../deploy/systemd/memvisor.service")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUnitVerifies runs systemd-analyze verify on the unit, with ExecStart
// pointed at a binary that exists here (verify checks that it does).
func TestUnitVerifies(t *testing.T) {
	data, err := os.ReadFile(unitPath(t))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	for _, want := range []string{
		"Type=notify", "NotifyAccess=main", "WatchdogSec=", "KillMode=mixed", "OOMPolicy=continue",
		"TimeoutStopSec=", "MemoryHigh=", "MemoryMax=", "StateDirectory=memvisor", "DynamicUser=yes",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "RestrictAddressFamilies=",
		"ProtectProc=invisible", "ProcSubset=pid", "SystemCallFilter=@system-service", "IPAddressDeny=169.254.0.0/16",
		"LoadCredential=api-token:/etc/memvisor/api-token",
		"ExecStart=/usr/local/bin/supervisor serve --config /etc/memvisor/config.yaml",
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want)).MatchString(unit) {
			t.Errorf("unit lacks %q", want)
		}
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (apt-get install systemd); .ci/run installs it")
	}
	dir := t.TempDir()
	unit = strings.Replace(unit, "ExecStart=/usr/local/bin/supervisor", "ExecStart="+os.Args[0], 1)
	path := filepath.Join(dir, "memvisor.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "memvisor.service") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestNotifySequence runs bin/supervisor serve, with the real runner, with
// a fake NOTIFY_SOCKET and checks
// what it tells systemd: READY=1 once it listens, WATCHDOG=1 from its main
// loop, and on SIGTERM STOPPING=1 then EXTEND_TIMEOUT_USEC while it drains
// a running job.
func TestNotifySequence(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	state := t.TempDir()
	p := startSupervisor(t, state, "", "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=300000")
	// A job that is running when the stop comes.
	job := syntheticJob(t, "n1", 1_000_000)
	job["inject"] = map[string]any{"slow_batch": "20ms"}
	if code, body := p.do("POST", "/v1/jobs", job); code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	p.wait("n1", 10*time.Second, func(v jobView) bool { return v.Status == "running" && v.Progress.Processed > 0 })
	time.Sleep(400 * time.Millisecond) // at least one watchdog interval
	if err := p.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.stderr.String())
	}
	conn.Close()
	var seq []string
	for m := range msgs {
		for _, line := range strings.Split(m, "\n") {
			if k, _, ok := strings.Cut(line, "="); ok && k != "STATUS" {
				seq = append(seq, line)
			}
		}
	}
	idx := func(prefix string) int {
		for i, s := range seq {
			if strings.HasPrefix(s, prefix) {
				return i
			}
		}
		return -1
	}
	t.Logf("notify sequence: %q", seq)
	ready, stopping, extend := idx("READY=1"), idx("STOPPING=1"), idx("EXTEND_TIMEOUT_USEC=")
	watchdogs := 0
	for _, s := range seq[max(ready, 0):max(stopping, 0)] {
		if s == "WATCHDOG=1" {
			watchdogs++
		}
	}
	if ready != 0 {
		t.Errorf("READY=1 is not the first message: %q", seq)
	}
	if watchdogs < 2 {
		t.Errorf("%d WATCHDOG=1 between READY and STOPPING, want at least 2: %q", watchdogs, seq)
	}
	if stopping < 0 || extend < stopping {
		t.Errorf("want STOPPING=1 then EXTEND_TIMEOUT_USEC: %q", seq)
	}
	if extend >= 0 {
		usec, err := strconv.ParseInt(strings.TrimPrefix(seq[extend], "EXTEND_TIMEOUT_USEC="), 10, 64)
		if err != nil || usec < int64(20*time.Second/time.Microsecond) {
			t.Errorf("EXTEND_TIMEOUT_USEC %q: want at least the 20s drain budget", seq[extend])
		}
	}
	// The drained job is queued for the next start, with its checkpoint.
	p2 := startSupervisor(t, state, "")
	v := p2.get("n1")
	if v.Status != "running" && v.Status != "queued" {
		t.Errorf("after restart: %s, want the job resumed", v.Status)
	}
	if v.Runs != 2 && v.Status == "running" {
		t.Errorf("runs after restart: %d, want 2", v.Runs)
	}
	if err := p2.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Errorf("second stop: %v", err)
	}
}

// TestInstallModes checks what make install does with the config and the
// token: the config is 0644, so that the unit's DynamicUser can read it,
// and the token it makes is root-only, for LoadCredential=.
func TestInstallModes(t *testing.T) {
	mk, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make is not installed")
	}
	cmd := exec.Command(mk, "-n", "install", "DESTDIR=/dest")
	cmd.Dir = "../../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n install: %v\n%s", err, out)
	}
	for _, want := range []string{
		"install -m 0644 deploy/config.yaml /dest/etc/memvisor/config.yaml",
		"test -e /dest/etc/memvisor/api-token || (umask 077 && ",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("make install lacks %q:\n%s", want, out)
		}
	}
}
