// Package confine decides whether a job that came through the service's
// API may run, before the service accepts it (docs/design.md, "Security
// model"). The `run` command is a trusted local tool and does not use it.
//
// A Policy is built from the service's configuration: allowed_roots,
// podio_api_urls, allowed_credentials and allow_inject. Check looks at a
// decoded job.Spec and returns either every refused field, by its name, or
// a Plan. Check reads only what it must to decide (the first bytes of an
// existing target, to find the marker) and writes nothing, so a refused job
// leaves every file as it was.
//
// Paths are resolved beneath their root with openat2(2) and
// RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS, so neither "..", nor a symlink that
// leaves the root, nor /proc/self/root gets out; where openat2 is missing
// (Linux before 5.6), the parent is resolved with filepath.EvalSymlinks and
// checked against the resolved root, and the file is opened O_NOFOLLOW. The
// last component is never a symlink. The resolved path must be a regular
// file, outside /proc, /dev, /sys and the service's state directory (except
// Rules.DataDir, the default root). On a node of a fleet, it must also
// resolve to a place beneath one of shared_roots, the directories every
// node mounts: any node may resume the job.
//
// A jsonl target that exists must start with the marker line
// jsonl.TargetMarker, which only Plan.Commit writes, when it creates the
// target. So a job never truncates or appends to a file that memvisor did
// not create as a target. Source and target are identified by device and
// inode, so two spellings of one file are one target.
package confine
