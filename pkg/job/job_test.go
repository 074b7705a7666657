package job_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/job"
)

const valid = `
id: demo
state_dir: ./state
source: {type: jsonl, path: source.jsonl}
target: {type: jsonl, path: target.jsonl}
match: {source_field: email, target_field: email}
mode: create
on_duplicate: skip
batch_size: 500
concurrency: 5
max_items: 0
dry_run: false
field_mapping: {}
memory: {limit: 256MiB, warning_percent: 75, critical_percent: 85}
`

func TestParseValid(t *testing.T) {
	s, err := job.Parse(strings.NewReader(valid))
	if err != nil {
		t.Fatal(err)
	}
	if s.Memory.Limit != 256<<20 || s.BatchSize != 500 || s.Memory.SampleInterval.D() != 250*time.Millisecond || s.Memory.KillPercent != 95 {
		t.Errorf("parsed %+v", s)
	}
	if s.Dir() != "state/demo" {
		t.Errorf("Dir() = %q", s.Dir())
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", valid + "colour: blue\n", []string{`unknown field "colour"`}},
		{"unknown nested key", strings.Replace(valid, "path: source.jsonl", "path: source.jsonl, pth: x", 1), []string{`unknown field "pth"`}},
		{"bad size", strings.Replace(valid, "256MiB", "256XB", 1), []string{"memory.limit", "256XB"}},
		{"bad duration", valid + "inject: {slow_batch: fast}\n", []string{"inject.slow_batch"}},
		{"wrong type", strings.Replace(valid, "batch_size: 500", "batch_size: many", 1), []string{"batch_size"}},
		{"missing path", strings.Replace(valid, "{type: jsonl, path: source.jsonl}", "{type: jsonl}", 1), []string{"source.path"}},
		{"bad mode", strings.Replace(valid, "mode: create", "mode: merge", 1), []string{"mode", "merge"}},
		{"bad id", strings.Replace(valid, "id: demo", "id: ../etc", 1), []string{"id"}},
		{"every problem at once", strings.NewReplacer("batch_size: 500", "batch_size: 0", "concurrency: 5", "concurrency: 0", "on_duplicate: skip", "on_duplicate: ignore").Replace(valid),
			[]string{"batch_size", "concurrency", "on_duplicate"}},
		{"percent order", strings.Replace(valid, "critical_percent: 85", "critical_percent: 70", 1), []string{"warning_percent < critical_percent"}},
		{"budget below the idle footprint", strings.Replace(valid, "limit: 256MiB", "limit: 20MiB", 1), []string{"memory.limit", "at least 32MiB", "idle footprint"}},
		{"guard GC line above the kill line", strings.Replace(valid, "critical_percent: 85", "critical_percent: 85, guard_gc_percent: 96", 1), []string{"memory.guard_gc_percent", "below kill_percent"}},
		{"guard drain line at the kill line", strings.Replace(valid, "critical_percent: 85", "critical_percent: 85, guard_drain_percent: 95", 1), []string{"memory.guard_drain_percent", "below kill_percent"}},
		{"guard lines out of order", strings.Replace(valid, "critical_percent: 85", "critical_percent: 85, guard_gc_percent: 80, guard_drain_percent: 78", 1), []string{"memory.guard_gc_percent", "below the drain line"}},
		{"negative leak rate", valid + "inject: {leak_bytes_per_second: -1}\n", []string{"inject.leak_bytes_per_second"}},
		{"negative slow write", valid + "inject: {slow_write: -1s}\n", []string{"inject.slow_write"}},
		{"synthetic target", strings.Replace(valid, "target: {type: jsonl, path: target.jsonl}", "target: {type: synthetic, count: 3}", 1), []string{"target.type"}},
		{"keys of another type", strings.Replace(valid, "{type: jsonl, path: source.jsonl}", "{type: jsonl, path: s, count: 3}", 1), []string{"apply only to a synthetic source"}},
		{"repeated key", valid + "batch_size: 10\n", []string{"batch_size"}},
		{"snapshot interval too short", valid + "snapshot_interval: 500ms\n", []string{"snapshot_interval", "at least 1s"}},
		{"negative snapshot interval", valid + "snapshot_interval: -1m\n", []string{"snapshot_interval"}},
		{"update without match", strings.NewReplacer("mode: create", "mode: update", "match: {source_field: email, target_field: email}", "match: {}").Replace(valid), []string{"match.source_field"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := job.Parse(strings.NewReader(c.yaml))
			if err == nil {
				t.Fatal("parsed without error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestValidationErrorsAreListed(t *testing.T) {
	_, err := job.Parse(strings.NewReader("id: x\nsource: {type: jsonl}\ntarget: {type: jsonl}\n"))
	var v job.Errors
	if !errors.As(err, &v) {
		t.Fatalf("got %T %v, want job.Errors", err, err)
	}
	fields := map[string]bool{}
	for _, e := range v {
		fields[e.Field] = true
	}
	if !fields["source.path"] || !fields["target.path"] {
		t.Errorf("fields %v, want source.path and target.path", fields)
	}
}

func TestParseJSONMatchesYAML(t *testing.T) {
	s, err := job.ParseJSON([]byte(`{"id":"a","source":{"type":"synthetic","count":10},"target":{"type":"jsonl","path":"/t"},"memory":{"limit":"64MiB","sample_interval":"100ms"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Memory.Limit != 64<<20 || s.Memory.SampleInterval.D() != 100*time.Millisecond || s.BatchSize != 500 {
		t.Errorf("parsed %+v", s)
	}
	if _, err := job.ParseJSON([]byte(`{"id":"a","memory":{"limit":"lots"}}`)); err == nil || !strings.Contains(err.Error(), "memory.limit") {
		t.Errorf("bad size error %v does not name memory.limit", err)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]job.ByteSize{"256MiB": 256 << 20, "1.5GiB": 3 << 29, "512KB": 512000, "100B": 100, "7": 7, "2G": 2 << 30} {
		got, err := job.ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1MiB", "12XB", "1e30GiB"} {
		if _, err := job.ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded", bad)
		}
	}
}

func TestExpandEnvOnlyInPaths(t *testing.T) {
	s := job.Default()
	s.ID = "$HOME"
	s.StateDir = "${BASE}/state"
	s.Source.Path = "$BASE/in.jsonl"
	s.ExpandEnv(func(k string) string { return map[string]string{"BASE": "/data", "HOME": "/root"}[k] })
	if s.StateDir != "/data/state" || s.Source.Path != "/data/in.jsonl" || s.ID != "$HOME" {
		t.Errorf("got state_dir %q source %q id %q", s.StateDir, s.Source.Path, s.ID)
	}
}
