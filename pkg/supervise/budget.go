package supervise

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/shirou/gopsutil/v4/mem"
)

// BudgetSource finds the default memory budget of a runner when neither
// the job file nor the caller sets one: the cgroup's memory limit (v2
// memory.max, else v1 memory.limit_in_bytes), else a share of host RAM.
// The zero value reads this machine.
type BudgetSource struct {
	// CgroupRoot is where the cgroup file systems are mounted; default
	// /sys/fs/cgroup.
	CgroupRoot string
	// ProcCgroup is the process's cgroup membership file; default
	// /proc/self/cgroup.
	ProcCgroup string
	// CgroupShare is the share of a cgroup limit given to the runner; the
	// rest is left for the supervisor, which shares the cgroup, and the
	// page cache. Default 0.9.
	CgroupShare float64
	// HostShare is the share of host RAM used when no cgroup limit
	// applies. Default 0.5.
	HostShare float64
	// HostTotal returns the host's RAM; default gopsutil's mem.VirtualMemory.
	HostTotal func() (uint64, error)
}

// Budget is a memory budget and where it came from.
type Budget struct {
	Bytes uint64
	// Source says where Bytes came from, for the logs: "job file",
	// "cgroup v2 /sys/fs/cgroup/memory.max", "host RAM".
	Source string
}

// unlimitedV1 is the smallest cgroup v1 limit taken to mean "no limit":
// v1 writes PAGE_COUNTER_MAX pages (9223372036854771712 bytes on 4 KiB
// pages) when unlimited.
const unlimitedV1 = 1 << 60

// Default returns the budget the cgroup or the host allows.
func (b BudgetSource) Default() (Budget, error) {
	root := b.CgroupRoot
	if root == "" {
		root = "/sys/fs/cgroup"
	}
	procCg := b.ProcCgroup
	if procCg == "" {
		procCg = "/proc/self/cgroup"
	}
	cgShare := b.CgroupShare
	if cgShare <= 0 || cgShare > 1 {
		cgShare = 0.9
	}
	hostShare := b.HostShare
	if hostShare <= 0 || hostShare > 1 {
		hostShare = 0.5
	}
	limit, file, err := cgroupLimit(root, procCg)
	if err != nil {
		return Budget{}, err
	}
	if limit > 0 {
		return Budget{Bytes: uint64(float64(limit) * cgShare), Source: fmt.Sprintf("%.0f%% of %s", cgShare*100, file)}, nil
	}
	total := b.HostTotal
	if total == nil {
		total = hostRAM
	}
	ram, err := total()
	if err != nil {
		return Budget{}, fmt.Errorf("read host RAM: %w", err)
	}
	if ram == 0 {
		return Budget{}, errors.New("read host RAM: got 0 bytes")
	}
	return Budget{Bytes: uint64(float64(ram) * hostShare), Source: fmt.Sprintf("%.0f%% of host RAM", hostShare*100)}, nil
}

func hostRAM() (uint64, error) {
	v, err := mem.VirtualMemory()
	if err != nil {
		return 0, err
	}
	return v.Total, nil
}

// cgroupLimit returns the tightest memory limit of the process's cgroup
// and its ancestors, and the file that set it; 0 means no limit. A cgroup
// path that does not exist under root (a container sees its own cgroup as
// the root of the mount) is walked up until one does.
func cgroupLimit(root, procCgroup string) (int64, string, error) {
	data, err := os.ReadFile(procCgroup)
	if errors.Is(err, os.ErrNotExist) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("read %s: %w", procCgroup, err)
	}
	var v2Path, v1Path string
	haveV1 := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2Path = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				v1Path, haveV1 = parts[2], true
			}
		}
	}
	// cgroup v2 with the memory controller enabled at the root of the
	// unified hierarchy.
	if ctrl, err := os.ReadFile(filepath.Join(root, "cgroup.controllers")); err == nil && v2Path != "" &&
		containsWord(string(ctrl), "memory") {
		return tightest(root, v2Path, "memory.max")
	}
	if haveV1 {
		return tightest(filepath.Join(root, "memory"), v1Path, "memory.limit_in_bytes")
	}
	return 0, "", nil
}

func containsWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

// tightest reads name in the cgroup at cg and in each ancestor up to the
// mount's root, and returns the smallest limit.
func tightest(mount, cg, name string) (int64, string, error) {
	var best int64
	var bestFile string
	for p := path.Clean("/" + cg); ; p = path.Dir(p) {
		file := filepath.Join(mount, filepath.FromSlash(p), name)
		n, ok, err := readLimit(file)
		if err != nil {
			return 0, "", err
		}
		if ok && n > 0 && (best == 0 || n < best) {
			best, bestFile = n, file
		}
		if p == "/" {
			break
		}
	}
	return best, bestFile, nil
}

// readLimit reads one limit file; ok is false when the file is missing.
// "max" and the v1 "unlimited" value read as 0.
func readLimit(file string) (int64, bool, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read %s: %w", file, err)
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return 0, true, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("read %s: not a number of bytes: %q", file, s)
	}
	if n >= unlimitedV1 {
		return 0, true, nil
	}
	return n, true, nil
}
