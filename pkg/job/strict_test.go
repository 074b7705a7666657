package job_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/memvisor/memvisor/pkg/job"
)

func fieldsOf(t *testing.T, err error) []string {
	t.Helper()
	var v job.Errors
	if !errors.As(err, &v) {
		t.Fatalf("got %v, want job.Errors", err)
	}
	var out []string
	for _, f := range v {
		out = append(out, f.Field)
	}
	return out
}

func TestParseAPIIsStrict(t *testing.T) {
	const ok = `"source":{"type":"synthetic","count":3},"target":{"type":"jsonl","path":"/data/t.jsonl"}`
	for _, c := range []struct{ name, body, field string }{
		{"capitalised key", `{"id":"a","Source":{"type":"synthetic","count":3},"target":{"type":"jsonl","path":"/t"}}`, "Source"},
		{"long s folds to s in encoding/json", `{"id":"a",` + ok + `,"\u017ftate_dir":"/x"}`, "ſtate_dir"},
		{"nested capital", `{"id":"a","source":{"type":"synthetic","Count":3},"target":{"type":"jsonl","path":"/t"}}`, "source.Count"},
		{"promoted podio key in the wrong case", `{"id":"a",` + ok[:len(ok)-1] + `,"App_ID":3}}`, "target.App_ID"},
		{"twice", `{"id":"a",` + ok + `,"mode":"create","mode":"upsert"}`, "mode"},
		{"wrong type", `{"id":"a","source":{"type":"synthetic","count":"3"},"target":{"type":"jsonl","path":"/t"}}`, "source.count"},
		{"bad size", `{"id":"a",` + ok + `,"memory":{"limit":"lots"}}`, "memory.limit"},
		{"bad duration", `{"id":"a",` + ok + `,"inject":{"slow_batch":"soon"}}`, "inject.slow_batch"},
		{"unknown", `{"id":"a",` + ok + `,"bogus":1}`, "bogus"},
		{"env", `{"id":"a","source":{"type":"synthetic","count":3},"target":{"type":"jsonl","path":"$HOME/t"}}`, "target.path"},
		{"not an object", `[1]`, ""},
		{"trailing", `{"id":"a",` + ok + `} {}`, ""},
		{"validation", `{"id":"a",` + ok + `,"batch_size":0}`, "batch_size"},
		{"podio quota share as text", `{"id":"a","source":{"type":"synthetic","count":3},"target":{"type":"podio","app_id":7,` +
			`"auth":{"flow":"app","client_id":"c","client_secret_env":"S","app_token_env":"T"},"quota_share":"half"}}`, "target.quota_share"},
		{"podio quota share of zero parts", `{"id":"a","source":{"type":"synthetic","count":3},"target":{"type":"podio","app_id":7,` +
			`"auth":{"flow":"app","client_id":"c","client_secret_env":"S","app_token_env":"T"},"quota_share":-1}}`, "target.quota_share"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := job.ParseAPI([]byte(c.body), job.Default(), "/state")
			if got := fieldsOf(t, err); !slices.Contains(got, c.field) {
				t.Errorf("fields %q, want %q among them (%v)", got, c.field, err)
			}
		})
	}
}

func TestParseAPIKeepsBaseAndOwnsStateDir(t *testing.T) {
	t.Setenv("MEMVISOR_TEST_X", "expanded")
	base := job.Default()
	base.ID = "made-up"
	base.Memory.WarningPercent = 60
	s, err := job.ParseAPI([]byte(`{"state_dir":"/elsewhere","source":{"type":"synthetic","count":3},
		"target":{"type":"podio","app_id":7,"auth":{"flow":"app","client_id":"c","client_secret_env":"S","app_token_env":"T"}},
		"memory":{"critical_percent":80}}`), base, "/state")
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != "made-up" || s.StateDir != "/state" || s.Memory.WarningPercent != 60 || s.Memory.CriticalPercent != 80 {
		t.Errorf("got id %q, state dir %q, memory %+v", s.ID, s.StateDir, s.Memory)
	}
	if s.Target.Podio == nil || s.Target.AppID != 7 {
		t.Errorf("promoted podio keys were lost: %+v", s.Target)
	}
}

// FuzzParseAPI: whatever the body, ParseAPI does not panic; what it
// accepts, encoding/json accepts too, with the service's state dir and
// no '$' left in a path.
func FuzzParseAPI(f *testing.F) {
	for _, seed := range []string{
		`{"id":"a","source":{"type":"synthetic","count":3},"target":{"type":"jsonl","path":"/d/t.jsonl"}}`,
		`{"id":"a","Source":{"type":"synthetic","count":3},"target":{"type":"jsonl","path":"/d/t.jsonl"}}`,
		`{"\u017ftate_dir":"/x","source":{"type":"synthetic","count":1},"target":{"type":"jsonl","path":"/t"}}`,
		`{"source":{"type":"jsonl","path":"$HOME/x"},"target":{"type":"podio","app_id":1,"auth":{"flow":"app"}}}`,
		`{"memory":{"limit":"1GiB","restart_budget":{"max":2,"window":"1m"}},"mode":"upsert","mode":"create"}`,
		`{"field_mapping":{"a":"b"},"inject":{"spike_bytes":"1MiB","spike_at_item":1}}`,
		`[]`, `null`, `{"id":1}`, `{} {}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := job.ParseAPI(data, job.Default(), "/state")
		if err != nil {
			return
		}
		if s.StateDir != "/state" {
			t.Errorf("state dir %q", s.StateDir)
		}
		if strings.Contains(s.Source.Path+s.Target.Path, "$") {
			t.Errorf("a '$' was accepted in a path")
		}
		var loose job.Spec
		if err := json.Unmarshal(data, &loose); err != nil {
			t.Errorf("strict accepted what encoding/json refuses: %v", err)
		}
	})
}
