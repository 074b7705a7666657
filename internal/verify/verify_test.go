package verify_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/memvisor/memvisor/internal/verify"
	"github.com/memvisor/memvisor/pkg/connector/jsonl"
	"github.com/memvisor/memvisor/pkg/job"
)

const source = `{"item_id": 1, "fields": {"email": "a@x.io"}}
{"item_id": 2, "fields": {"email": " A@X.IO"}}
{"item_id": 3, "fields": {"email": ""}}
{broken
{"item_id": 5, "fields": {"email": "b@x.io"}}
`

func spec(t *testing.T, target, failed string) job.Spec {
	t.Helper()
	dir := t.TempDir()
	s := job.Default()
	s.ID = "v"
	s.StateDir = dir
	s.Source = job.Endpoint{Type: job.TypeJSONL, Path: filepath.Join(dir, "s.jsonl")}
	s.Target = job.Endpoint{Type: job.TypeJSONL, Path: filepath.Join(dir, "t.jsonl")}
	s.Match = job.Match{SourceField: "email", TargetField: "email"}
	os.WriteFile(s.Source.Path, []byte(source), 0o644)
	os.WriteFile(s.Target.Path, []byte(target), 0o644)
	os.MkdirAll(s.Dir(), 0o755)
	os.WriteFile(filepath.Join(s.Dir(), "failed.jsonl"), []byte(failed), 0o644)
	return s
}

const (
	good = `{"item_id":1,"external_id":"1","fields":{"email":"a@x.io"}}
{"item_id":2,"external_id":"3","fields":{"email":""}}
{"item_id":3,"external_id":"5","fields":{"email":"b@x.io"}}
`
	failedOK = `{"time":"2026-01-01T00:00:00Z","source_id":0,"line":4,"pos":{"index":3},"category":"validation","retryable":false,"error":"x"}` + "\n"
)

func TestVerdicts(t *testing.T) {
	cases := []struct {
		name           string
		target, failed string
		ok             bool
		dup, lost, unx int64
		failMissing    int64
	}{
		{"correct", good, failedOK, true, 0, 0, 0, 0},
		{"duplicate key", good + `{"item_id":4,"external_id":"2","fields":{"email":"A@x.io"}}` + "\n", failedOK, false, 1, 0, 0, 0},
		{"empty item twice", good + `{"item_id":4,"external_id":"3","fields":{"email":""}}` + "\n", failedOK, false, 1, 0, 0, 0},
		{"lost", good[:strings.LastIndex(good[:len(good)-1], "\n")+1], failedOK, false, 0, 1, 0, 0},
		{"unexpected", good + `{"item_id":9,"external_id":"9","fields":{"email":"z@x.io"}}` + "\n", failedOK, false, 0, 0, 1, 0},
		{"malformed line not reported", good, "", false, 0, 0, 0, 1},
		{"update line keeps the item", good + `{"item_id":1,"fields":{"email":"a@x.io","n":2}}` + "\n", failedOK, true, 0, 0, 0, 0},
		{"a service target's marker line", jsonl.TargetMarker + good, failedOK, true, 0, 0, 0, 0},
		{"a marker line not first", good + jsonl.TargetMarker, failedOK, false, 0, 0, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep, err := verify.Check(t.Context(), spec(t, c.target, c.failed))
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK != c.ok || rep.Duplicates != c.dup || rep.Lost != c.lost || rep.Unexpected != c.unx || rep.FailedMissing != c.failMissing {
				t.Errorf("got ok %v dup %d lost %d unexpected %d failed-missing %d (%v); want ok %v dup %d lost %d unexpected %d failed-missing %d",
					rep.OK, rep.Duplicates, rep.Lost, rep.Unexpected, rep.FailedMissing, rep.Problems, c.ok, c.dup, c.lost, c.unx, c.failMissing)
			}
			if rep.Expected != 3 || rep.Malformed != 1 || rep.SourceItems != 4 {
				t.Errorf("expected %d malformed %d items %d; want 3, 1, 4", rep.Expected, rep.Malformed, rep.SourceItems)
			}
		})
	}
}
