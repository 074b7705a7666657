package service_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

// The fleet's store is a Registry that Serve can use.
var _ service.Registry = (*postgres.Store)(nil)

// The fleet keys sit at the top level of the config; without postgres_url
// nothing changes, and a bad fleet key is named in the error.
func TestConfigFleetKeys(t *testing.T) {
	c, err := service.ParseEnv(strings.NewReader(""), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Fleet.Enabled() || c.NodeID != "" || c.LeaseTTL.D() != 15*time.Second || c.PodioQuotaShares != 1 {
		t.Errorf("single-host defaults: %+v", c.Fleet)
	}

	c, err = service.ParseEnv(strings.NewReader("node_id: serve-2\nlease_ttl: 5s\n"),
		env(map[string]string{"MEMVISOR_POSTGRES_URL": "postgres://memvisor:hunter2@db.internal/memvisor"}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Fleet.Enabled() || c.NodeID != "serve-2" || c.LeaseTTL.D() != 5*time.Second {
		t.Errorf("fleet config: %+v", c.Fleet)
	}
	if strings.Contains(c.PostgresURL.String(), "hunter2") {
		t.Errorf("the URL prints its password: %s", c.PostgresURL)
	}

	// Without node_id, a fleet node is named after its host.
	c, err = service.ParseEnv(strings.NewReader("postgres_url: postgres://db.internal/memvisor\n"), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if host, _ := os.Hostname(); c.NodeID != host {
		t.Errorf("node_id %q, want the host name %q", c.NodeID, host)
	}

	for _, tc := range []struct{ yaml, field string }{
		{"postgres_url: 'postgres://db.internal:notaport/x'\n", "postgres_url"},
		{"postgres_url: postgres://db.internal/x\nnode_id: 'a b'\n", "node_id"},
		{"postgres_url: postgres://db.internal/x\nlease_ttl: 1s\n", "lease_ttl"},
		{"podio_quota_shares: 0\n", "podio_quota_shares"},
	} {
		_, err := service.ParseEnv(strings.NewReader(tc.yaml), env(nil))
		var ce *service.ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%q: got %v, want an error naming %s", tc.yaml, err, tc.field)
		}
	}
}

// Jobs share a quota key when their Podio calls count against the same
// user of the same API key, and only then; no secret goes into the key.
func TestPodioPrincipal(t *testing.T) {
	t.Setenv("FLEET_TEST_USER_A", "alice@example.com")
	t.Setenv("FLEET_TEST_USER_B", "bob@example.com")
	t.Setenv("FLEET_TEST_PASSWORD", "hunter2")
	pw := func(userEnv string) job.Podio {
		return job.Podio{AppID: 1, Auth: &job.PodioAuth{Flow: job.PodioFlowPassword, ClientID: "cli",
			ClientSecretEnv: "FLEET_TEST_PASSWORD", UsernameEnv: userEnv, PasswordEnv: "FLEET_TEST_PASSWORD"}}
	}
	key := func(p job.Podio) string {
		c, pr, err := service.PodioPrincipal(p)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(c+pr, "hunter2") {
			t.Fatalf("principal %q %q holds a secret", c, pr)
		}
		return postgres.QuotaKey(job.DefaultPodioAPIURL, c, pr)
	}
	a1, a2 := pw("FLEET_TEST_USER_A"), pw("FLEET_TEST_USER_A")
	a2.AppID = 2 // another app, same user: the same quota
	if key(a1) != key(a2) {
		t.Error("two jobs of one user and client id have different quota keys")
	}
	if key(a1) == key(pw("FLEET_TEST_USER_B")) {
		t.Error("two users share a quota key")
	}
	app := func(id int64) job.Podio {
		return job.Podio{AppID: id, Auth: &job.PodioAuth{Flow: job.PodioFlowApp, ClientID: "cli", AppTokenEnv: "FLEET_TEST_PASSWORD"}}
	}
	if key(app(1)) == key(app(2)) {
		t.Error("app-flow jobs: two apps share a quota key, want one per app")
	}
	if first, again := key(app(1)), key(app(1)); first != again {
		t.Errorf("app-flow jobs: the same app gives the keys %q and %q, want one", first, again)
	}
}
