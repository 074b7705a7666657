package service_test

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

// A fleet node takes a job whose files only it might reach, and another
// node, left to resume it, would find no file. So in a fleet a jsonl
// source or target must lie under shared_roots, resolved as confinement
// resolves it (a symlink out of a shared root does not count); a refused
// job gets 400 naming the field and leaves nothing behind. Podio
// endpoints and synthetic sources reach every node.
func TestFleetRefusesFilesOutsideSharedRoots(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	shared, local := t.TempDir(), t.TempDir()
	outside := filepath.Join(local, "elsewhere")
	if err := os.MkdirAll(filepath.Join(outside, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A directory link from the shared root to node-local storage.
	if err := os.Symlink(outside, filepath.Join(shared, "link")); err != nil {
		t.Fatal(err)
	}
	source := filepath.Join(local, "in.jsonl")
	sharedSource := filepath.Join(shared, "in.jsonl")
	for _, p := range []string{source, sharedSource} {
		if err := os.WriteFile(p, []byte(`{"item_id":1,"fields":{"email":"a@example.com"}}`+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	stateDir := t.TempDir()
	s := start(t, stateDir, serverOpts{cfg: func(c *service.Config) {
		c.PostgresURL = postgres.URL(dsn)
		c.NodeID = "node-a"
		c.SharedRoots = []string{shared}
		c.AllowedCredentials = []string{"FLEET_REACH_SECRET"}
	}})

	jsonl := func(path string) map[string]any { return map[string]any{"type": "jsonl", "path": path} }
	synthetic := map[string]any{"type": "synthetic", "count": 10, "seed": 1}
	podio := map[string]any{"type": "podio", "app_id": 1, "auth": map[string]any{
		"flow": "app", "client_id": "cli", "client_secret_env": "FLEET_REACH_SECRET", "app_token_env": "FLEET_REACH_SECRET"}}
	for _, tc := range []struct {
		name           string
		source, target map[string]any
		field          string // "" when the job is accepted
		created        string // a target file the job must not leave behind
	}{
		{"jsonl target on local storage", synthetic, jsonl(filepath.Join(local, "t1.jsonl")), "target.path", filepath.Join(local, "t1.jsonl")},
		{"jsonl source on local storage", jsonl(source), jsonl(filepath.Join(shared, "t2.jsonl")), "source.path", filepath.Join(shared, "t2.jsonl")},
		{"jsonl target through a symlink out of the shared root", synthetic, jsonl(filepath.Join(shared, "link", "sub", "t3.jsonl")), "target.path", filepath.Join(outside, "sub", "t3.jsonl")},
		{"relative target, taken under the first allowed root", synthetic, jsonl("t4.jsonl"), "target.path", filepath.Join(filepath.Dir(stateDir), "t4.jsonl")},
		{"jsonl source on local storage, Podio target", jsonl(source), podio, "source.path", ""},
		{"both on shared storage", jsonl(sharedSource), jsonl(filepath.Join(shared, "ok.jsonl")), "", ""},
		{"synthetic source, Podio target", synthetic, podio, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := map[string]any{
				"source": tc.source, "target": tc.target,
				"match":      map[string]any{"source_field": "email", "target_field": "email"},
				"batch_size": 50,
			}
			r := s.do("POST", "/v1/jobs", spec)
			if tc.field == "" {
				if r.code != http.StatusCreated {
					t.Fatalf("got %d %s, want 201", r.code, r.body)
				}
				return
			}
			if r.code != http.StatusBadRequest || !slices.Contains(r.errorFields(t), tc.field) {
				t.Fatalf("got %d %s, want 400 naming %s", r.code, r.body, tc.field)
			}
			if !strings.Contains(string(r.body), "shared_roots") || !strings.Contains(string(r.body), "resume") {
				t.Errorf("message %s: want it to say that other nodes could not resume the job and to name shared_roots", r.body)
			}
			if tc.created != "" {
				if _, err := os.Stat(tc.created); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a refused job left %s behind (stat: %v)", tc.created, err)
				}
			}
		})
	}
	var list struct {
		Jobs []struct{ ID string } `json:"jobs"`
	}
	s.do("GET", "/v1/jobs", nil).json(t, &list)
	if len(list.Jobs) != 2 {
		t.Errorf("the registry holds %d jobs, want the 2 accepted ones", len(list.Jobs))
	}
}

// Without a fleet, shared_roots means nothing: a file anywhere under
// allowed_roots is fine.
func TestSharedRootsIgnoredOnOneHost(t *testing.T) {
	shared := t.TempDir()
	s := start(t, t.TempDir(), serverOpts{cfg: func(c *service.Config) { c.SharedRoots = []string{shared} }})
	s.create(spec(t, "", 10, nil))
}

// shared_roots must be absolute, and in a fleet inside allowed_roots; a
// fleet without shared_roots, or with a shared root on a local file
// system, is a warning.
func TestConfigSharedRoots(t *testing.T) {
	fleet := "postgres_url: postgres://db.internal/memvisor\nnode_id: n1\n"
	for _, tc := range []struct {
		name, yaml, field string
	}{
		{"relative", "shared_roots: [data]\n", "shared_roots[0]"},
		{"relative in a fleet", fleet + "allowed_roots: [/srv]\nshared_roots: [/srv/a, data]\n", "shared_roots[1]"},
		{"outside allowed_roots in a fleet", fleet + "allowed_roots: [/srv/data]\nshared_roots: [/srv/database]\n", "shared_roots[0]"},
		{"outside the default root in a fleet", fleet + "state_dir: /var/lib/memvisor\nshared_roots: [/mnt/shared]\n", "shared_roots[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := service.ParseEnv(strings.NewReader(tc.yaml), env(nil))
			var ce *service.ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("got %v, want an error naming %s", err, tc.field)
			}
		})
	}
	for _, tc := range []struct {
		name, yaml string
		warn       string // "" for no warning about shared_roots
	}{
		{"one host, outside allowed_roots", "allowed_roots: [/srv/data]\nshared_roots: [/mnt/x]\n", ""},
		{"fleet, inside allowed_roots", fleet + "allowed_roots: [/srv]\nshared_roots: [/srv/shared/]\n", ""},
		{"fleet without shared_roots", fleet, "shared_roots"},
		{"fleet with a tmpfs shared root", fleet + "allowed_roots: [/dev]\nshared_roots: [/dev/shm]\n", "/dev/shm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st unix.Statfs_t
			if strings.Contains(tc.yaml, "/dev/shm") && (unix.Statfs("/dev/shm", &st) != nil || st.Type != unix.TMPFS_MAGIC) {
				t.Skip("/dev/shm is not a tmpfs here")
			}
			c, err := service.ParseEnv(strings.NewReader(tc.yaml), env(nil))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range c.Warnings() {
				if strings.Contains(w, "shared_roots") {
					got = append(got, w)
				}
			}
			switch {
			case tc.warn == "" && len(got) > 0:
				t.Errorf("warnings %q, want none about shared_roots", got)
			case tc.warn != "" && (len(got) == 0 || !strings.Contains(strings.Join(got, "\n"), tc.warn)):
				t.Errorf("warnings %q, want one naming %s", got, tc.warn)
			}
		})
	}
}
