package supervise_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/memvisor/memvisor/pkg/supervise"
)

func TestBudgetSource(t *testing.T) {
	const host = 8 << 30
	hostTotal := func() (uint64, error) { return host, nil }
	for _, tc := range []struct {
		fixture string
		want    uint64
		source  string // a part of Budget.Source
	}{
		{"v2", 536870912 * 9 / 10, "system.slice/memvisor.service/memory.max"},
		{"v2-parent", 268435456 * 9 / 10, "system.slice/memory.max"},
		{"v2-max", host / 2, "host RAM"},
		{"v1", 1073741824 * 9 / 10, "memory/memory.limit_in_bytes"},
		{"v1-nested", 2147483648 * 9 / 10, "memory/jobs/memory.limit_in_bytes"},
		{"v1-unlimited", host / 2, "host RAM"},
		{"missing", host / 2, "host RAM"},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			dir := filepath.Join("testdata", "cgroup", tc.fixture)
			b, err := supervise.BudgetSource{
				CgroupRoot: filepath.Join(dir, "sys"),
				ProcCgroup: filepath.Join(dir, "proc_cgroup"),
				HostTotal:  hostTotal,
			}.Default()
			if err != nil {
				t.Fatal(err)
			}
			if b.Bytes != tc.want {
				t.Errorf("budget: got %d, want %d (source %q)", b.Bytes, tc.want, b.Source)
			}
			if !strings.Contains(b.Source, tc.source) {
				t.Errorf("source: got %q, want it to name %q", b.Source, tc.source)
			}
		})
	}
}

func TestBudgetSourceShares(t *testing.T) {
	dir := filepath.Join("testdata", "cgroup", "v1")
	b, err := supervise.BudgetSource{
		CgroupRoot: filepath.Join(dir, "sys"), ProcCgroup: filepath.Join(dir, "proc_cgroup"), CgroupShare: 0.5,
	}.Default()
	if err != nil || b.Bytes != 1<<29 {
		t.Errorf("cgroup share 0.5 of 1GiB: got %d, %v", b.Bytes, err)
	}
	b, err = supervise.BudgetSource{
		ProcCgroup: filepath.Join(t.TempDir(), "none"), HostShare: 0.25,
		HostTotal: func() (uint64, error) { return 4 << 30, nil },
	}.Default()
	if err != nil || b.Bytes != 1<<30 {
		t.Errorf("host share 0.25 of 4GiB: got %d, %v", b.Bytes, err)
	}
}

func TestBudgetSourceErrors(t *testing.T) {
	dir := filepath.Join("testdata", "cgroup", "v1-bad")
	_, err := supervise.BudgetSource{CgroupRoot: filepath.Join(dir, "sys"), ProcCgroup: filepath.Join(dir, "proc_cgroup")}.Default()
	if err == nil || !strings.Contains(err.Error(), `not a number of bytes: "lots"`) {
		t.Errorf("bad limit file: got %v", err)
	}
	boom := errors.New("boom")
	_, err = supervise.BudgetSource{
		ProcCgroup: filepath.Join(t.TempDir(), "none"),
		HostTotal:  func() (uint64, error) { return 0, boom },
	}.Default()
	if !errors.Is(err, boom) {
		t.Errorf("host RAM failure: got %v", err)
	}
}

func TestBudgetSourceOnThisMachine(t *testing.T) {
	b, err := supervise.BudgetSource{}.Default()
	if err != nil {
		t.Fatal(err)
	}
	if b.Bytes < 16<<20 {
		t.Errorf("budget on this machine: got %d bytes from %s", b.Bytes, b.Source)
	}
}
