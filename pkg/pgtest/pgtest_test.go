package pgtest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/memvisor/memvisor/pkg/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestStartServesAndStopRemoves(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.DSN("postgres")
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	var fsync, listen string
	if err := conn.QueryRow(t.Context(), "SELECT current_setting('fsync'), current_setting('listen_addresses')").Scan(&fsync, &listen); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	if fsync != "off" || listen != "" {
		t.Errorf("got fsync=%q listen_addresses=%q, want off and empty", fsync, listen)
	}
	host := strings.TrimPrefix(strings.Fields(dsn)[0], "host=")
	if _, err := os.Stat(filepath.Join(host, ".s.PGSQL.5432")); err != nil {
		t.Errorf("socket: %v", err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(host); !os.IsNotExist(err) {
		t.Errorf("after Stop, %s: got %v, want it removed", host, err)
	}
	if _, err := pgx.Connect(t.Context(), dsn); err == nil {
		t.Error("connect after Stop succeeded")
	}
}

func TestNewDatabaseIsolates(t *testing.T) {
	a, b := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases share the DSN %s", a)
	}
	ca, err := pgx.Connect(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(t.Context())
	if _, err := ca.Exec(t.Context(), "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	cb, err := pgx.Connect(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(t.Context())
	var n int
	if err := cb.QueryRow(t.Context(), "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("a table made in one database is visible in the other")
	}
}

func TestBinDirFromEnv(t *testing.T) {
	t.Setenv(pgtest.EnvBinDir, t.TempDir())
	if _, err := pgtest.BinDir(); err == nil {
		t.Error("an empty PGTEST_BINDIR was accepted")
	}
}

// TestMissingServer runs this test binary again, with no server binaries to
// find: outside CI the test that needs one is skipped, in CI it fails.
func TestMissingServer(t *testing.T) {
	if os.Getenv("PGTEST_HELPER") == "1" {
		pgtest.Start(t)
		return
	}
	for _, tc := range []struct {
		ci       string
		wantFail bool
		want     string
	}{
		{ci: "", wantFail: false, want: "SKIP"},
		{ci: "true", wantFail: true, want: "PostgreSQL is not installed"},
	} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestMissingServer$", "-test.v")
			cmd.Env = append(os.Environ(), "PGTEST_HELPER=1", "CI="+tc.ci, pgtest.EnvBinDir+"="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if failed := err != nil; failed != tc.wantFail {
				t.Errorf("failed=%v (%v), want %v\n%s", failed, err, tc.wantFail, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}
