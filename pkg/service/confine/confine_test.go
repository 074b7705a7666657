package confine_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/memvisor/memvisor/pkg/connector/jsonl"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/confine"
)

type fixture struct {
	root, state, outside string
	src, marked, plain   string
	policy               *confine.Policy
}

func setup(t *testing.T, rules confine.Rules) fixture {
	t.Helper()
	var f fixture
	f.root, f.state, f.outside = t.TempDir(), t.TempDir(), t.TempDir()
	write := func(p, s string) string {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	f.src = write(filepath.Join(f.root, "source.jsonl"), `{"id":1}`+"\n")
	f.marked = write(filepath.Join(f.root, "marked.jsonl"), jsonl.TargetMarker)
	f.plain = write(filepath.Join(f.root, "plain.txt"), "keep me")
	write(filepath.Join(f.outside, "secret"), "s3cret\n")
	write(filepath.Join(f.state, "registry.db"), "db")
	for _, l := range [][2]string{
		{filepath.Join(f.outside, "secret"), "abs-out"},
		{"../" + filepath.Base(f.outside) + "/secret", "rel-out"},
		{f.src, "abs-in"},
	} {
		if err := os.Symlink(l[0], filepath.Join(f.root, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(f.outside, filepath.Join(f.root, "outdir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(f.state, filepath.Join(f.root, "statedir")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(f.root, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if rules.AllowedRoots == nil {
		rules.AllowedRoots = []string{f.root}
	}
	rules.StateDir = f.state
	if rules.PodioAPIURLs == nil {
		rules.PodioAPIURLs = []string{job.DefaultPodioAPIURL}
	}
	p, err := confine.New(rules)
	if err != nil {
		t.Fatal(err)
	}
	f.policy = p
	return f
}

func jsonlSpec(src, tgt string) job.Spec {
	s := job.Default()
	s.ID = "j"
	s.Source = job.Endpoint{Type: job.TypeJSONL, Path: src}
	s.Target = job.Endpoint{Type: job.TypeJSONL, Path: tgt}
	return s
}

func refused(t *testing.T, err error) []string {
	t.Helper()
	var v job.Errors
	if !errors.As(err, &v) {
		t.Fatalf("got %v, want field errors", err)
	}
	var out []string
	for _, fe := range v {
		out = append(out, fe.Field)
	}
	return out
}

func TestCheckFiles(t *testing.T) {
	for _, mode := range []string{"openat2", "fallback"} {
		t.Run(mode, func(t *testing.T) {
			defer confine.SetFallback(mode == "fallback")()
			f := setup(t, confine.Rules{})
			newTarget := filepath.Join(f.root, "new.jsonl")
			for _, c := range []struct {
				name, src, tgt, field string
			}{
				{"source outside", filepath.Join(f.outside, "secret"), newTarget, "source.path"},
				{"source /proc", "/proc/self/environ", newTarget, "source.path"},
				{"source /proc/self/root", "/proc/self/root" + f.src, newTarget, "source.path"},
				{"source absolute symlink out", filepath.Join(f.root, "abs-out"), newTarget, "source.path"},
				{"source relative symlink out", filepath.Join(f.root, "rel-out"), newTarget, "source.path"},
				{"source last component a symlink in", filepath.Join(f.root, "abs-in"), newTarget, "source.path"},
				{"source through a directory symlink out", filepath.Join(f.root, "outdir", "secret"), newTarget, "source.path"},
				{"source dot-dot", f.root + "/../" + filepath.Base(f.outside) + "/secret", newTarget, "source.path"},
				{"source fifo", filepath.Join(f.root, "fifo"), newTarget, "source.path"},
				{"source directory", f.root, newTarget, "source.path"},
				{"source missing", filepath.Join(f.root, "nope"), newTarget, "source.path"},
				{"target not marked", f.src, f.plain, "target.path"},
				{"target the source", f.src, f.src, "target.path"},
				{"target in the state dir through a symlink", f.src, filepath.Join(f.root, "statedir", "registry.db"), "target.path"},
				{"target new in the state dir", f.src, filepath.Join(f.root, "statedir", "x.jsonl"), "target.path"},
				{"target in a missing directory", f.src, filepath.Join(f.root, "no", "t.jsonl"), "target.path"},
				{"target outside", f.src, filepath.Join(f.outside, "t.jsonl"), "target.path"},
				{"target /dev/null", f.src, "/dev/null", "target.path"},
			} {
				t.Run(c.name, func(t *testing.T) {
					_, err := f.policy.Check(jsonlSpec(c.src, c.tgt))
					if got := refused(t, err); !slices.Contains(got, c.field) {
						t.Errorf("fields %q, want %q (%v)", got, c.field, err)
					}
				})
			}
			if got, _ := os.ReadFile(f.plain); string(got) != "keep me" {
				t.Errorf("a refused check changed a file: %q", got)
			}
			if _, err := os.Stat(newTarget); err == nil {
				t.Errorf("a refused check created the target")
			}
			// Accepted: a marked target, and a new one that Commit makes.
			pl, err := f.policy.Check(jsonlSpec("source.jsonl", f.marked))
			if err != nil {
				t.Fatal(err)
			}
			if pl.Spec.Source.Path != f.src || pl.SourceID == "" || pl.TargetID == "" || pl.SourceID == pl.TargetID {
				t.Errorf("plan %+v: want the source resolved against the first root, and two identities", pl)
			}
			pl, err = f.policy.Check(jsonlSpec(f.src, newTarget))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(newTarget); err == nil {
				t.Fatal("Check created the target; only Commit may")
			}
			if err := pl.Commit(); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(newTarget); string(got) != jsonl.TargetMarker || pl.TargetID == "" {
				t.Errorf("new target holds %q, id %q: want the marker and an identity", got, pl.TargetID)
			}
			again, err := f.policy.Check(jsonlSpec(f.src, newTarget))
			if err != nil || again.TargetID != pl.TargetID {
				t.Errorf("second check of the created target: %v, id %q want %q", err, again.TargetID, pl.TargetID)
			}
		})
	}
}

func TestCheckPodioAndInject(t *testing.T) {
	creds := "/etc/memvisor/podio.yaml"
	f := setup(t, confine.Rules{Credentials: []string{"PODIO_SECRET", creds}})
	podio := func(api string, auth *job.PodioAuth) job.Spec {
		s := job.Default()
		s.ID = "p"
		s.Source = job.Endpoint{Type: job.TypeSynthetic, Count: 1}
		s.Target = job.Endpoint{Type: job.TypePodio, Podio: &job.Podio{AppID: 1, APIURL: api, Auth: auth}}
		return s
	}
	ok := &job.PodioAuth{Flow: "app", ClientSecretEnv: "PODIO_SECRET", CredentialsFile: creds}
	for _, c := range []struct {
		name  string
		spec  job.Spec
		field string
	}{
		{"local api", podio("http://127.0.0.1:9", ok), "target.api_url"},
		{"lookalike api", podio("https://api.podio.com.evil.example", ok), "target.api_url"},
		{"env not allowed", podio("", &job.PodioAuth{Flow: "app", AppTokenEnv: "HOME"}), "target.auth.app_token_env"},
		{"service env", podio("", &job.PodioAuth{Flow: "app", ClientSecretEnv: "MEMVISOR_TOKEN"}), "target.auth.client_secret_env"},
		{"file not allowed", podio("", &job.PodioAuth{Flow: "app", CredentialsFile: "/etc/shadow"}), "target.auth.credentials_file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.policy.Check(c.spec)
			if got := refused(t, err); !slices.Contains(got, c.field) {
				t.Errorf("fields %q, want %q", got, c.field)
			}
		})
	}
	for _, api := range []string{"", "https://api.podio.com", "https://API.podio.com/"} {
		if _, err := f.policy.Check(podio(api, ok)); err != nil {
			t.Errorf("api_url %q with allowed credentials: %v", api, err)
		}
	}
	s := podio("", ok)
	s.Inject.CrashOnStart = true
	if _, err := f.policy.Check(s); err == nil || !strings.Contains(err.Error(), "allow_inject") {
		t.Errorf("inject with allow_inject off: %v", err)
	}
	on := setup(t, confine.Rules{Credentials: []string{"PODIO_SECRET", creds}, AllowInject: true})
	s.Inject = job.Inject{SpikeBytes: 100 << 30, SpikeAtItem: 1, SlowBatch: job.Duration(1 << 62)}
	got := refused(t, func() error { _, err := on.policy.Check(s); return err }())
	for _, want := range []string{"inject.spike_bytes", "inject.slow_batch"} {
		if !slices.Contains(got, want) {
			t.Errorf("fields %q, want %q", got, want)
		}
	}
	s.Inject = job.Inject{CrashOnStart: true, SlowBatch: job.Duration(20e6)}
	if _, err := on.policy.Check(s); err != nil {
		t.Errorf("bounded injection with allow_inject: %v", err)
	}
}

// TestDefaultRootInsideTheStateDir: the default root, <state_dir>/data, is
// open to jobs, and the rest of the state directory is not, even when a
// root holds it.
func TestDefaultRootInsideTheStateDir(t *testing.T) {
	state := t.TempDir()
	data := filepath.Join(state, "data")
	if err := os.MkdirAll(filepath.Join(state, "jobs"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(data, 0o750); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(data, "s.jsonl")
	if err := os.WriteFile(src, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, roots := range [][]string{{data}, {state}} {
		p, err := confine.New(confine.Rules{AllowedRoots: roots, StateDir: state, DataDir: data, PodioAPIURLs: []string{job.DefaultPodioAPIURL}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Check(jsonlSpec(src, filepath.Join(data, "t.jsonl"))); err != nil {
			t.Errorf("roots %v: a job in the data dir: %v", roots, err)
		}
		_, err = p.Check(jsonlSpec(src, filepath.Join(state, "jobs", "t.jsonl")))
		if got := refused(t, err); !slices.Contains(got, "target.path") {
			t.Errorf("roots %v: a target in jobs/: fields %q", roots, got)
		}
	}
}

// On a fleet node, a file must also resolve beneath a shared root, in
// both open paths; off a fleet, shared roots are not looked at.
func TestCheckSharedRoots(t *testing.T) {
	for _, mode := range []string{"openat2", "fallback"} {
		t.Run(mode, func(t *testing.T) {
			defer confine.SetFallback(mode == "fallback")()
			shared := t.TempDir()
			f := setup(t, confine.Rules{AllowedRoots: []string{filepath.Dir(shared)}, Fleet: true, SharedRoots: []string{shared}})
			if err := os.WriteFile(filepath.Join(shared, "in.jsonl"), []byte(`{"id":1}`+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(f.root, filepath.Join(shared, "local")); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				name, src, tgt string
				fields         []string
			}{
				{"both shared", filepath.Join(shared, "in.jsonl"), filepath.Join(shared, "out.jsonl"), nil},
				{"local source", f.src, filepath.Join(shared, "out.jsonl"), []string{"source.path"}},
				{"local target", filepath.Join(shared, "in.jsonl"), filepath.Join(f.root, "out.jsonl"), []string{"target.path"}},
				{"source through a link out of the shared root", filepath.Join(shared, "local", "source.jsonl"), filepath.Join(shared, "out.jsonl"), []string{"source.path"}},
			} {
				_, err := f.policy.Check(jsonlSpec(c.src, c.tgt))
				if c.fields == nil {
					if err != nil {
						t.Errorf("%s: %v", c.name, err)
					}
					continue
				}
				if got := refused(t, err); !slices.Equal(got, c.fields) || !strings.Contains(err.Error(), "shared_roots") {
					t.Errorf("%s: got %v (%v), want %v refused for shared_roots", c.name, got, err, c.fields)
				}
			}
		})
	}
	f := setup(t, confine.Rules{SharedRoots: []string{t.TempDir()}})
	if _, err := f.policy.Check(jsonlSpec(f.src, filepath.Join(f.root, "out.jsonl"))); err != nil {
		t.Errorf("off a fleet: %v, want shared_roots ignored", err)
	}
	if _, err := confine.New(confine.Rules{Fleet: true, SharedRoots: []string{filepath.Join(t.TempDir(), "missing")}}); err == nil || !strings.Contains(err.Error(), "shared_roots") {
		t.Errorf("a shared root that does not exist: %v, want an error naming shared_roots", err)
	}
}
