package service

import (
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/memvisor/memvisor/pkg/job"
)

// What every node of a fleet must reach (docs/design.md, "Growing past one
// host"). A Podio endpoint is reached over the network from any node. A
// jsonl file is reached only if it lies on storage every node mounts at
// the same path: shared_roots. confine.Policy refuses, at job creation, a
// fleet job whose files resolve outside them, since the node that resumes
// the job after a failover would not find them. On one host shared_roots
// means nothing.

// validateSharedRoots checks shared_roots: absolute paths and, in a fleet,
// each inside allowed_roots, since a job may use no file outside those.
func (c Config) validateSharedRoots() job.Errors {
	var v job.Errors
	allowed := c.allowedRoots()
	for i, r := range c.SharedRoots {
		field := fmt.Sprintf("shared_roots[%d]", i)
		if !filepath.IsAbs(r) {
			v.Add(field, "must be an absolute path (got %q)", r)
			continue
		}
		if !c.Fleet.Enabled() {
			continue
		}
		inside := false
		for _, a := range allowed {
			if rel, err := filepath.Rel(filepath.Clean(a), filepath.Clean(r)); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
				inside = true
				break
			}
		}
		if !inside {
			v.Add(field, "%s is outside allowed_roots (%s): jobs could use no file in it; name a directory inside allowed_roots", r, strings.Join(allowed, ", "))
		}
	}
	return v
}

// localFS are the file systems that statfs(2) names and that no other
// host mounts: a shared root on one of them is almost surely a mistake.
// Network and cluster file systems (NFS, CephFS, ...) are not listed, nor
// is overlayfs, which a container's volume may sit under.
var localFS = map[int64]string{
	unix.EXT4_SUPER_MAGIC:  "ext4",
	unix.XFS_SUPER_MAGIC:   "xfs",
	unix.BTRFS_SUPER_MAGIC: "btrfs",
	unix.TMPFS_MAGIC:       "tmpfs",
}

// sharedRootWarnings are, in a fleet, the problems of shared_roots that
// serve cannot prove: none configured (every file job is refused), or a
// shared root on a file system that only this host mounts. serve cannot
// tell a shared mount from a local one for sure, so these are warnings.
func (c Config) sharedRootWarnings() []string {
	if !c.Fleet.Enabled() {
		return nil
	}
	if len(c.SharedRoots) == 0 {
		return []string{"fleet mode without shared_roots: every job with a jsonl source or target is refused, since the other nodes could not resume it; set shared_roots to directories every node mounts at the same path"}
	}
	var w []string
	for _, r := range c.SharedRoots {
		var st unix.Statfs_t
		if err := unix.Statfs(r, &st); err != nil {
			continue // confine.New reports a shared root it cannot resolve
		}
		if fs, ok := localFS[int64(st.Type)]; ok {
			w = append(w, fmt.Sprintf("shared_roots: %s is on %s, a local file system: the other nodes of the fleet cannot reach its files unless they mount the same storage there", r, fs))
		}
	}
	return w
}
