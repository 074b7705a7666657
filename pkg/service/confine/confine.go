package confine

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/memvisor/memvisor/pkg/connector/jsonl"
	"github.com/memvisor/memvisor/pkg/job"
)

// The bounds on fault injection when allow_inject is on.
const (
	MaxSpikeBytes       = job.ByteSize(1 << 30)
	MaxLeakBytesPerItem = job.ByteSize(1 << 20)
	MaxSlowBatch        = job.Duration(60_000_000_000)  // 1m
	MaxSlowDrain        = job.Duration(300_000_000_000) // 5m
)

// Rules are the service's confinement settings, named as the config file
// names them.
type Rules struct {
	// AllowedRoots are absolute directories (allowed_roots).
	AllowedRoots []string
	// StateDir is the service's state directory; nothing in it but
	// DataDir is open to a job.
	StateDir string
	// DataDir is the directory inside StateDir that jobs may use (the
	// default allowed root), or empty.
	DataDir string
	// PodioAPIURLs are the API bases a job may name (podio_api_urls).
	PodioAPIURLs []string
	// Credentials are the environment variable names and credential
	// files a job may name (allowed_credentials).
	Credentials []string
	// AllowInject lets a job use bounded fault injection (allow_inject).
	AllowInject bool
	// Fleet says the service is a node of a fleet (docs/design.md,
	// "Growing past one host"): any node may resume a job, so a job's
	// files must then lie beneath SharedRoots.
	Fleet bool
	// SharedRoots are absolute directories on storage that every node of
	// the fleet mounts at the same path (shared_roots); used only with
	// Fleet.
	SharedRoots []string
}

// Policy checks jobs against Rules.
type Policy struct {
	rules    Rules
	roots    []root
	stateDir string
	dataDir  string
	urls     []string
	// shared are the resolved SharedRoots, in a fleet.
	shared []root
}

// root is an allowed root as configured and as resolved.
type root struct{ given, real string }

// New resolves the roots. A root that does not exist or is not a
// directory is an error naming allowed_roots.
func New(r Rules) (*Policy, error) {
	p := &Policy{rules: r}
	for _, d := range r.AllowedRoots {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("allowed_roots: %q is not an absolute path", d)
		}
		real, err := filepath.EvalSymlinks(d)
		if err != nil {
			return nil, fmt.Errorf("allowed_roots: %w", err)
		}
		st, err := os.Stat(real)
		if err != nil || !st.IsDir() {
			return nil, fmt.Errorf("allowed_roots: %s is not a directory", d)
		}
		p.roots = append(p.roots, root{given: filepath.Clean(d), real: real})
	}
	resolve := func(d string) string {
		if d == "" {
			return ""
		}
		if real, err := filepath.EvalSymlinks(d); err == nil {
			return real
		}
		return filepath.Clean(d)
	}
	p.stateDir, p.dataDir = resolve(r.StateDir), resolve(r.DataDir)
	if r.Fleet {
		for _, d := range r.SharedRoots {
			real, err := filepath.EvalSymlinks(d)
			if err != nil {
				return nil, fmt.Errorf("shared_roots: %w", err)
			}
			p.shared = append(p.shared, root{given: filepath.Clean(d), real: real})
		}
	}
	for _, u := range r.PodioAPIURLs {
		n, err := normURL(u)
		if err != nil {
			return nil, fmt.Errorf("podio_api_urls: %q: %w", u, err)
		}
		p.urls = append(p.urls, n)
	}
	return p, nil
}

// Plan is an accepted job: its spec with paths replaced by the resolved
// ones, and the identities of its files.
type Plan struct {
	Spec job.Spec
	// SourceID and TargetID identify a file endpoint by device and inode
	// ("jsonl:<dev>:<ino>"); they are empty for other endpoints, and
	// TargetID is empty until Commit for a target that does not exist yet.
	SourceID, TargetID string

	p          *Policy
	createRoot root   // root of a target to create
	createRel  string // its path beneath the root
	createdRel string // the target Commit created, for Rollback
}

// Check confines spec. It returns job.Errors naming every refused field,
// or a Plan. It writes nothing.
func (p *Policy) Check(spec job.Spec) (*Plan, error) {
	var v job.Errors
	pl := &Plan{Spec: spec, p: p}
	if e := spec.Source; e.Type == job.TypeJSONL {
		path, id, err := p.checkSource(e.Path)
		if err == nil {
			err = p.checkShared(path)
		}
		if err != nil {
			v.Add("source.path", "%v", err)
		} else {
			pl.Spec.Source.Path, pl.SourceID = path, id
		}
	}
	if e := spec.Target; e.Type == job.TypeJSONL {
		err := p.checkTarget(pl, e.Path)
		if err == nil {
			err = p.checkShared(pl.Spec.Target.Path)
		}
		if err != nil {
			v.Add("target.path", "%v", err)
		} else if pl.TargetID != "" && pl.TargetID == pl.SourceID {
			v.Add("target.path", "is the job's own source")
		}
	}
	p.checkPodio(&v, "source", spec.Source)
	p.checkPodio(&v, "target", spec.Target)
	p.checkInject(&v, spec)
	if len(v) > 0 {
		return nil, v
	}
	return pl, nil
}

// Commit creates a target that does not exist yet, with its marker line,
// and sets TargetID. A target created meanwhile by someone else must carry
// the marker.
func (pl *Plan) Commit() error {
	if pl.createRel == "" {
		return nil
	}
	dir, name := filepath.Split(pl.createRel)
	d, err := openBeneath(pl.createRoot, filepath.Clean("./"+dir), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fieldErr("target.path", err)
	}
	defer d.Close()
	fd, err := unix.Openat(int(d.Fd()), name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
	if errors.Is(err, unix.EEXIST) {
		path, id, err := pl.p.checkExistingTarget(pl.createRoot, pl.createRel)
		if err != nil {
			return fieldErr("target.path", err)
		}
		pl.Spec.Target.Path, pl.TargetID, pl.createRel = path, id, ""
		return nil
	}
	if err != nil {
		return fieldErr("target.path", fmt.Errorf("cannot create it: %w", err))
	}
	f := os.NewFile(uintptr(fd), filepath.Join(pl.createRoot.real, pl.createRel))
	defer f.Close()
	if _, err := f.WriteString(jsonl.TargetMarker); err != nil {
		return fmt.Errorf("write target marker: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync target: %w", err)
	}
	id, err := identity(f)
	if err != nil {
		return err
	}
	pl.TargetID, pl.createdRel, pl.createRel = id, pl.createRel, ""
	return nil
}

// Rollback removes the target that Commit created, for a job that was
// refused after all (a full queue, a conflict): a refused job leaves
// nothing behind. It removes the file only while it is the same file and
// still holds nothing but its marker.
func (pl *Plan) Rollback() error {
	if pl.createdRel == "" {
		return nil
	}
	rel := pl.createdRel
	pl.createdRel = ""
	dir, name := filepath.Split(rel)
	d, err := openBeneath(pl.createRoot, filepath.Clean("./"+dir), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("remove the new target %s: %w", rel, err)
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("remove the new target %s: %w", rel, err)
	}
	if statID(&st) != pl.TargetID || st.Size != int64(len(jsonl.TargetMarker)) {
		return nil // someone else's now, or written to: not ours to remove
	}
	if err := unix.Unlinkat(int(d.Fd()), name, 0); err != nil {
		return fmt.Errorf("remove the new target %s: %w", rel, err)
	}
	return nil
}

func fieldErr(field string, err error) error {
	return job.Errors{{Field: field, Message: err.Error()}}
}

// locate finds the root that path is beneath, lexically, and the path
// relative to it. A relative path is taken beneath the first root.
func (p *Policy) locate(path string) (root, string, error) {
	if len(p.roots) == 0 {
		return root{}, "", errors.New("no allowed_roots are configured: the service takes no file paths")
	}
	if path == "" {
		return root{}, "", errors.New("is empty")
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(p.roots[0].given, path)
	}
	path = filepath.Clean(path)
	for _, r := range p.roots {
		for _, base := range []string{r.given, r.real} {
			rel, err := filepath.Rel(base, path)
			if err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") {
				return r, rel, nil
			}
		}
	}
	given := make([]string, len(p.roots))
	for i, r := range p.roots {
		given[i] = r.given
	}
	return root{}, "", fmt.Errorf("is outside allowed_roots (%s)", strings.Join(given, ", "))
}

func (p *Policy) checkSource(path string) (string, string, error) {
	r, rel, err := p.locate(path)
	if err != nil {
		return "", "", err
	}
	f, err := openBeneath(r, rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	return p.vet(f)
}

// vet checks an open file: a regular file outside the forbidden places. It
// returns its resolved path and identity.
func (p *Policy) vet(f *os.File) (string, string, error) {
	st, err := f.Stat()
	if err != nil {
		return "", "", err
	}
	if !st.Mode().IsRegular() {
		return "", "", fmt.Errorf("is not a regular file (%s)", st.Mode().Type())
	}
	real := resolvedPath(f)
	if err := p.forbidden(real); err != nil {
		return "", "", err
	}
	id, err := identity(f)
	return real, id, err
}

func (p *Policy) forbidden(real string) error {
	for _, d := range []string{"/proc", "/dev", "/sys"} {
		if within(d, real) {
			return fmt.Errorf("is under %s, which no job may use", d)
		}
	}
	if p.stateDir != "" && within(p.stateDir, real) && (p.dataDir == "" || !within(p.dataDir, real)) {
		return errors.New("is in the service's state directory, which no job may use")
	}
	return nil
}

// checkShared checks, in a fleet, that a file's resolved path lies beneath
// a shared root, so that whichever node resumes the job reaches it.
func (p *Policy) checkShared(real string) error {
	if !p.rules.Fleet {
		return nil
	}
	for _, r := range p.shared {
		if within(r.real, real) {
			return nil
		}
	}
	if len(p.shared) == 0 {
		return errors.New("is a file, and this node is in a fleet with no shared_roots configured: the other nodes could not resume the job; set shared_roots to directories every node mounts at the same path, and put the file there")
	}
	given := make([]string, len(p.shared))
	for i, r := range p.shared {
		given[i] = r.given
	}
	return fmt.Errorf("resolves to %s, outside shared_roots (%s): in a fleet the other nodes could not resume the job; put the file under one of shared_roots", real, strings.Join(given, ", "))
}

// within reports whether path is dir or lies beneath it, lexically.
func within(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func (p *Policy) checkTarget(pl *Plan, path string) error {
	r, rel, err := p.locate(path)
	if err != nil {
		return err
	}
	real, id, err := p.checkExistingTarget(r, rel)
	if err == nil {
		pl.Spec.Target.Path, pl.TargetID = real, id
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// A new target: its directory must exist beneath the root, and the
	// name must not be taken by anything.
	dir, name := filepath.Split(rel)
	if name == "" || name == "." || name == ".." {
		return errors.New("does not name a file")
	}
	d, err := openBeneath(r, filepath.Clean("./"+dir), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("directory: %w", err)
	}
	defer d.Close()
	realDir := resolvedPath(d)
	if err := p.forbidden(filepath.Join(realDir, name)); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		return errors.New("exists and is not a regular file")
	}
	pl.Spec.Target.Path = filepath.Join(realDir, name)
	pl.createRoot, pl.createRel = r, rel
	return nil
}

// checkExistingTarget opens an existing target and checks its marker.
func (p *Policy) checkExistingTarget(r root, rel string) (string, string, error) {
	f, err := openBeneath(r, rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	real, id, err := p.vet(f)
	if err != nil {
		return "", "", err
	}
	head := make([]byte, len(jsonl.TargetMarker))
	if _, err := io.ReadFull(f, head); err != nil || string(head) != jsonl.TargetMarker {
		return "", "", errors.New("exists and is not a memvisor target (it does not start with the marker line that the service writes when it creates a target); name a new file")
	}
	return real, id, nil
}

// forceFallback makes openBeneath take the path for kernels without
// openat2; the tests set it.
var forceFallback = false

// openBeneath opens rel beneath the root r, never leaving it and never
// following a symlink in the last component.
func openBeneath(r root, rel string, flags int) (*os.File, error) {
	if forceFallback {
		return openFallback(r, rel, flags)
	}
	rootFd, err := unix.Open(r.real, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open allowed root %s: %w", r.given, err)
	}
	defer unix.Close(rootFd)
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(rootFd, rel, &how)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) && !canOpenat2() {
		return openFallback(r, rel, flags)
	}
	if errors.Is(err, unix.EXDEV) {
		// RESOLVE_BENEATH refuses every absolute symlink, even one that
		// points inside the root (/data/current -> /data/2026): resolve
		// those the slower way, which checks where the path ends up.
		return openFallback(r, rel, flags)
	}
	if err != nil {
		return nil, explain(err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(r.real, rel)), nil
}

// canOpenat2 tells an EPERM from a seccomp filter that refuses openat2
// apart from a real permission error.
func canOpenat2() bool {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH}
	fd, err := unix.Openat2(unix.AT_FDCWD, ".", &how)
	if err == nil {
		unix.Close(fd)
		return true
	}
	return !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM)
}

// openFallback resolves the parent with EvalSymlinks and checks it is
// still beneath the resolved root, then opens the last component
// O_NOFOLLOW.
func openFallback(r root, rel string, flags int) (*os.File, error) {
	full := filepath.Join(r.real, rel)
	if full == r.real {
		fd, err := unix.Open(full, flags|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, explain(err)
		}
		return os.NewFile(uintptr(fd), full), nil
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(full))
	if err != nil {
		return nil, explain(err)
	}
	if d, err := filepath.Rel(r.real, dir); err != nil || d == ".." || strings.HasPrefix(d, "../") {
		return nil, errors.New("leaves its allowed root through a symlink or '..'")
	}
	fd, err := unix.Open(filepath.Join(dir, filepath.Base(full)), flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, explain(err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir, filepath.Base(full))), nil
}

func explain(err error) error {
	switch {
	case errors.Is(err, unix.EXDEV):
		return errors.New("leaves its allowed root through a symlink or '..'")
	case errors.Is(err, unix.ELOOP):
		return errors.New("is a symlink, or passes through a /proc link; name the file itself")
	case errors.Is(err, unix.ENOENT), errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("does not exist: %w", os.ErrNotExist)
	case errors.Is(err, unix.ENOTDIR):
		return errors.New("has a part that is not a directory")
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return errors.New("the service may not open it")
	}
	return err
}

// resolvedPath is the path the kernel has for an open file.
func resolvedPath(f *os.File) string {
	if p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd()))); err == nil && filepath.IsAbs(p) {
		return p
	}
	return f.Name()
}

func identity(f *os.File) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return statID(&st), nil
}

// statID names a file endpoint by device and inode.
func statID(st *unix.Stat_t) string { return fmt.Sprintf("jsonl:%d:%d", st.Dev, st.Ino) }

func normURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("must be an http or https URL with a host and no user, query or fragment")
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host) + strings.TrimRight(u.EscapedPath(), "/"), nil
}

func (p *Policy) checkPodio(v *job.Errors, side string, e job.Endpoint) {
	if e.Type != job.TypePodio || e.Podio == nil {
		return
	}
	api := e.APIURL
	if api == "" {
		api = job.DefaultPodioAPIURL
	}
	if n, err := normURL(api); err != nil || !slices.Contains(p.urls, n) {
		v.Add(side+".api_url", "must be one of the API bases in podio_api_urls (%s)", strings.Join(p.rules.PodioAPIURLs, ", "))
	}
	a := e.Auth
	if a == nil {
		return
	}
	for _, c := range []struct{ key, name string }{
		{"client_secret_env", a.ClientSecretEnv}, {"app_token_env", a.AppTokenEnv}, {"username_env", a.UsernameEnv},
		{"password_env", a.PasswordEnv}, {"refresh_token_env", a.RefreshTokenEnv},
	} {
		if c.name == "" {
			continue
		}
		if strings.HasPrefix(c.name, "MEMVISOR_") {
			v.Add(side+".auth."+c.key, "environment variable %s is the service's own and cannot hold a job's credentials", c.name)
		} else if !slices.Contains(p.rules.Credentials, c.name) {
			v.Add(side+".auth."+c.key, "environment variable %s is not in the service's allowed_credentials", c.name)
		}
	}
	if f := a.CredentialsFile; f != "" && (!filepath.IsAbs(f) || !slices.Contains(p.rules.Credentials, filepath.Clean(f))) {
		v.Add(side+".auth.credentials_file", "is not in the service's allowed_credentials")
	}
}

func (p *Policy) checkInject(v *job.Errors, s job.Spec) {
	in := s.Inject
	if !in.Any() {
		return
	}
	if !p.rules.AllowInject {
		v.Add("inject", "fault injection is off on this service (allow_inject: false)")
		return
	}
	limit := MaxSpikeBytes
	if s.Memory.Limit > 0 {
		limit = min(limit, s.Memory.Limit)
	}
	if in.SpikeBytes > limit {
		v.Add("inject.spike_bytes", "must be at most %s here (the job's memory.limit, and never more than %s)", limit, MaxSpikeBytes)
	}
	if in.LeakBytesPerItem > MaxLeakBytesPerItem {
		v.Add("inject.leak_bytes_per_item", "must be at most %s", MaxLeakBytesPerItem)
	}
	if in.SlowBatch > MaxSlowBatch {
		v.Add("inject.slow_batch", "must be at most %s", MaxSlowBatch)
	}
	if in.SlowDrain > MaxSlowDrain {
		v.Add("inject.slow_drain", "must be at most %s", MaxSlowDrain)
	}
}
