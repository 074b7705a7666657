package postgres_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

// serviceConfig stands for pkg/service's Config, with Fleet embedded as
// the wiring guide says: its keys sit at the top level of the file.
type serviceConfig struct {
	Listen string `json:"listen"`
	postgres.Fleet
}

func parse(t *testing.T, doc string, env map[string]string) (postgres.Fleet, error) {
	t.Helper()
	c := serviceConfig{Fleet: postgres.DefaultFleet()}
	if err := yaml.UnmarshalStrict([]byte(doc), &c, func(d *json.Decoder) *json.Decoder {
		d.DisallowUnknownFields()
		return d
	}); err != nil {
		return c.Fleet, err
	}
	c.Fleet.ApplyEnv(func(k string) string { return env[k] }, func() (string, error) { return "host-1", nil })
	return c.Fleet, c.Fleet.Validate().Err()
}

func TestFleetConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		doc     string
		env     map[string]string
		check   func(postgres.Fleet) string
		wantErr []string // field names
	}{
		{name: "defaults keep bbolt", doc: "listen: 127.0.0.1:1\n", check: func(f postgres.Fleet) string {
			if f.Enabled() || f.LeaseTTL.D() != 15*time.Second || f.NodeID != "host-1" || f.PodioQuotaShares != 1 {
				return fmt.Sprintf("%+v", f)
			}
			return ""
		}},
		{name: "file keys", doc: "postgres_url: postgres://m@db/m\nnode_id: serve-2\nlease_ttl: 20s\npodio_quota_shares: 3\n",
			check: func(f postgres.Fleet) string {
				if !f.Enabled() || f.NodeID != "serve-2" || f.LeaseTTL.D() != 20*time.Second || f.Options().QuotaShares != 3 || f.Options().Node != "serve-2" {
					return fmt.Sprintf("%+v", f)
				}
				return ""
			}},
		{name: "env wins", doc: "postgres_url: postgres://m@db/m\n", env: map[string]string{postgres.EnvPostgresURL: "host=/run/pg dbname=m"},
			check: func(f postgres.Fleet) string {
				if f.PostgresURL != "host=/run/pg dbname=m" {
					return string(f.PostgresURL)
				}
				return ""
			}},
		{name: "bad values", doc: "postgres_url: 'postgres://u:pw@[x'\nnode_id: 'a b'\nlease_ttl: 1s\npodio_quota_shares: 0\n",
			wantErr: []string{"postgres_url", "node_id", "lease_ttl", "podio_quota_shares"}},
		{name: "ttl too long", doc: "lease_ttl: 1h\n", wantErr: []string{"lease_ttl"}},
		{name: "unknown key", doc: "postgres_uri: x\n", wantErr: []string{"postgres_uri"}},
		// job.Duration names the value, not the key (as for every duration key).
		{name: "bare number ttl", doc: "lease_ttl: 15\n", wantErr: []string{"bad duration 15"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parse(t, tc.doc, tc.env)
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if msg := tc.check(f); msg != "" {
					t.Errorf("got %s", msg)
				}
				return
			}
			if err == nil {
				t.Fatalf("got no error, want errors naming %v", tc.wantErr)
			}
			for _, field := range tc.wantErr {
				if !strings.Contains(err.Error(), field) {
					t.Errorf("error %q does not name %s", err, field)
				}
			}
			if strings.Contains(err.Error(), ":pw@") {
				t.Errorf("error %q shows the password", err)
			}
			var je job.Errors
			if len(tc.wantErr) > 1 && (!errors.As(err, &je) || len(je) != len(tc.wantErr)) {
				t.Errorf("got %d field errors, want %d: %v", len(je), len(tc.wantErr), err)
			}
		})
	}
}

func TestURLNeverShowsThePassword(t *testing.T) {
	for _, u := range []postgres.URL{
		"postgres://memvisor:s3cret@db:5432/m?sslmode=require",
		"postgres://memvisor@db/m?password=s3cret",
		"host=db user=memvisor password=s3cret dbname=m",
		"host=db password='s3 cret' dbname=m",
		"postgres://memvisor:s3cret@[bad",
	} {
		b, _ := json.Marshal(u)
		for _, shown := range []string{u.String(), fmt.Sprint(u), string(b)} {
			if strings.Contains(shown, "s3") {
				t.Errorf("%q shows the password", shown)
			}
		}
	}
	if got := postgres.URL("postgres://memvisor@db/m").String(); got != "postgres://memvisor@db/m" {
		t.Errorf("a URL without password: got %q", got)
	}
}
