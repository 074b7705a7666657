package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotInstalled means no PostgreSQL server binaries were found.
var ErrNotInstalled = errors.New("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")

// EnvBinDir names a directory holding initdb, pg_ctl and postgres; it wins
// over `pg_config --bindir` and the Debian paths.
const EnvBinDir = "PGTEST_BINDIR"

// Server is a running PostgreSQL server in a temporary directory.
type Server struct {
	dir    string // socket directory, and parent of data/
	binDir string
	cred   *syscall.Credential // nil: run as the current user

	mu      sync.Mutex
	stopped bool
	n       atomic.Int64
}

// BinDir finds the directory holding initdb and pg_ctl: $PGTEST_BINDIR,
// else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin
// (Debian's layout, where pg_config alone may belong to libpq-dev), else
// the PATH.
func BinDir() (string, error) {
	has := func(dir string) bool {
		for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if d := os.Getenv(EnvBinDir); d != "" {
		if has(d) {
			return d, nil
		}
		return "", fmt.Errorf("%s=%s has no initdb, pg_ctl and postgres: %w", EnvBinDir, d, ErrNotInstalled)
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); has(d) {
			return d, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if d := filepath.Dir(p); has(d) {
			return d, nil
		}
	}
	return "", ErrNotInstalled
}

func pgVersion(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Launch starts a server without a testing.TB, for TestMain. The caller
// must Stop it.
func Launch() (*Server, error) {
	binDir, err := BinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{binDir: binDir}
	if os.Geteuid() == 0 {
		// postgres refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("start postgres as root: look up the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// A unix socket path must fit in 107 bytes; a long TMPDIR would not
	// leave room for "/.s.PGSQL.5432".
	base := os.TempDir()
	if len(base) > 60 {
		base = "/tmp"
	}
	s.dir, err = os.MkdirTemp(base, "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("make the server's directory: %w", err)
	}
	if s.cred != nil {
		if err := os.Chown(s.dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			os.RemoveAll(s.dir)
			return nil, fmt.Errorf("give %s to the postgres user: %w", s.dir, err)
		}
	}
	if err := s.start(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

func (s *Server) run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, name), args...)
	cmd.Dir = s.dir
	// pg_ctl's server outlives the command; without a new session it
	// would get the terminal's signals meant for the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setsid: true}
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return nil
}

func (s *Server) start() error {
	if err := s.run("initdb", "-D", s.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8",
		"--locale=C", "--no-sync"); err != nil {
		return err
	}
	// Settings for a throwaway server: no TCP, no durability, little memory.
	conf := fmt.Sprintf(`
listen_addresses = ''
unix_socket_directories = '%s'
port = 5432
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 200
timezone = 'UTC'
`, s.dir)
	f, err := os.OpenFile(filepath.Join(s.data(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("configure postgres: %w", err)
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("configure postgres: %w", err)
	}
	if err := s.run("pg_ctl", "-D", s.data(), "-l", filepath.Join(s.dir, "server.log"), "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		return fmt.Errorf("%w\nserver log:\n%s", err, log)
	}
	return nil
}

// DSN returns the connection string of database name on the server.
func (s *Server) DSN(name string) string {
	return fmt.Sprintf("host=%s port=5432 user=postgres dbname=%s sslmode=disable", s.dir, name)
}

// Stop stops the server at once and removes its directory. It may be
// called more than once.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	var err error
	if _, serr := os.Stat(filepath.Join(s.data(), "postmaster.pid")); serr == nil {
		// Immediate: nothing of a test database needs to be written out.
		err = s.run("pg_ctl", "-D", s.data(), "-m", "immediate", "-w", "stop")
	}
	if rerr := os.RemoveAll(s.dir); err == nil {
		err = rerr
	}
	return err
}

// NewDatabase creates an empty database on the server and returns its DSN.
// The database is dropped in tb's cleanup.
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("test_%d", s.n.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		tb.Fatalf("connect to the test server: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err != nil {
			return // the server is gone, and the database with it
		}
		defer conn.Close(context.Background())
		conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return s.DSN(name)
}

// Start starts a server for tb and stops it in tb's cleanup. It skips tb
// when PostgreSQL is not installed, unless CI=true, where it fails.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := Launch()
	check(tb, err)
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("stop postgres: %v", err)
		}
	})
	return s
}

func check(tb testing.TB, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ErrNotInstalled) && os.Getenv("CI") != "true" {
		tb.Skipf("skipped: %v", err)
	}
	tb.Fatalf("start postgres: %v", err)
}

// The server Main shares among a test binary's tests.
var shared struct {
	inMain bool
	once   sync.Once
	srv    *Server
	err    error
}

// Main runs a test binary's tests with one shared server, started on first
// use by NewDatabase and stopped when the tests end. Use it as
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
func Main(m *testing.M) int {
	shared.inMain = true
	code := m.Run()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stop postgres: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// NewDatabase returns the DSN of a fresh database for tb: on the binary's
// shared server under Main, else on a server of tb's own. It skips or
// fails as Start does when PostgreSQL is missing.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	if !shared.inMain {
		return Start(tb).NewDatabase(tb)
	}
	shared.once.Do(func() { shared.srv, shared.err = Launch() })
	check(tb, shared.err)
	return shared.srv.NewDatabase(tb)
}
