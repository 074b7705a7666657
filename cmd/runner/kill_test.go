package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// source is a generated jsonl source and what a correct migration of it
// leaves in the target.
type source struct {
	path      string
	keys      map[string]bool // distinct normalized match values
	emptyIDs  map[string]bool // external ids of items without a match value
	malformed map[int64]bool  // line numbers
	items     int
}

func writeSource(t *testing.T, dir string, n int, seed uint64) source {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed))
	s := source{path: filepath.Join(dir, "source.jsonl"), keys: map[string]bool{}, emptyIDs: map[string]bool{}, malformed: map[int64]bool{}}
	var b bytes.Buffer
	line := int64(0)
	for id := 1; id <= n; id++ {
		line++
		switch x := r.IntN(1000); {
		case x < 5: // a malformed line
			fmt.Fprintf(&b, `{"item_id": %d, "fields": {"email": "broken`+"\n", id)
			s.malformed[line] = true
			continue
		case x < 25: // no match value
			fmt.Fprintf(&b, `{"item_id": %d, "fields": {"email": "", "n": %d}}`+"\n", id, id)
			s.emptyIDs[fmt.Sprint(id)] = true
		default:
			k := id
			if x < 125 && id > 1 { // a duplicate of an earlier key, spelled differently
				k = 1 + r.IntN(id-1)
			}
			email := fmt.Sprintf("user%d@example.com", k)
			if x%3 == 0 {
				email = "  " + strings.ToUpper(email) + " "
			}
			fmt.Fprintf(&b, `{"item_id": %d, "fields": {"email": %q, "n": %d}}`+"\n", id, email, id)
			s.keys[strings.ToLower(strings.TrimSpace(email))] = true
		}
		s.items++
	}
	if err := os.WriteFile(s.path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

func writeJob(t *testing.T, dir, extra string) string {
	t.Helper()
	p := filepath.Join(dir, "job.yaml")
	spec := `id: killtest
state_dir: ./state
source: {type: jsonl, path: source.jsonl}
target: {type: jsonl, path: target.jsonl}
match: {source_field: email, target_field: email}
batch_size: 500
concurrency: 5
` + extra
	if err := os.WriteFile(p, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// verify checks the target and failed.jsonl against the source, reading
// the files directly.
func verify(t *testing.T, dir string, s source) {
	t.Helper()
	type tl struct {
		ItemID     int64                      `json:"item_id"`
		ExternalID string                     `json:"external_id"`
		Fields     map[string]json.RawMessage `json:"fields"`
	}
	f, err := os.Open(filepath.Join(dir, "target.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	last := map[int64]tl{}
	ext := map[int64]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l tl
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("target line %q: %v", sc.Text(), err)
		}
		if l.ExternalID != "" {
			if old, ok := ext[l.ItemID]; ok && old != l.ExternalID {
				t.Fatalf("item %d created twice, for sources %s and %s", l.ItemID, old, l.ExternalID)
			}
			ext[l.ItemID] = l.ExternalID
		}
		last[l.ItemID] = l
	}
	keys := map[string]int{}
	empties := map[string]int{}
	for id, l := range last {
		var e string
		json.Unmarshal(l.Fields["email"], &e)
		k := strings.ToLower(strings.TrimSpace(e))
		if k == "" {
			empties[ext[id]]++
		} else {
			keys[k]++
		}
	}
	for k, n := range keys {
		if n != 1 {
			t.Errorf("match value %q is in the target %d times", k, n)
		}
		if !s.keys[k] {
			t.Errorf("match value %q is in the target but not in the source", k)
		}
	}
	for k := range s.keys {
		if keys[k] == 0 {
			t.Errorf("match value %q was lost", k)
		}
	}
	for id, n := range empties {
		if n != 1 || !s.emptyIDs[id] {
			t.Errorf("item without a match value, source %s, is in the target %d times", id, n)
		}
	}
	if len(empties) != len(s.emptyIDs) {
		t.Errorf("%d items without a match value in the target, want %d", len(empties), len(s.emptyIDs))
	}
	fl, err := os.ReadFile(filepath.Join(dir, "state", "killtest", "failed.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int64]int{}
	for _, ln := range bytes.Split(bytes.TrimSpace(fl), []byte("\n")) {
		var e struct {
			Line     int64  `json:"line"`
			Category string `json:"category"`
		}
		if err := json.Unmarshal(ln, &e); err != nil {
			t.Fatalf("failed.jsonl line %q: %v", ln, err)
		}
		seen[e.Line]++
	}
	for l := range s.malformed {
		if seen[l] != 1 {
			t.Errorf("malformed line %d is in failed.jsonl %d times, want once", l, seen[l])
		}
	}
	if len(seen) != len(s.malformed) {
		t.Errorf("failed.jsonl names %d lines, want the %d malformed ones", len(seen), len(s.malformed))
	}
}

// TestSIGKILLAtRandomInstants kills the runner at 20 or more random
// instants and runs it again until the job completes; the target must then
// hold each source item exactly once.
func TestSIGKILLAtRandomInstants(t *testing.T) {
	bin := testbin.Path(t, "runner")
	dir := t.TempDir()
	src := writeSource(t, dir, 50000, 42)
	// slow_batch stretches the run so that kills land in every phase:
	// prefetch, reading, writing, syncing and committing.
	jobPath := writeJob(t, dir, "inject: {slow_batch: 30ms}\n")
	r := rand.New(rand.NewPCG(7, 7))
	kills := 0
	for attempt := 0; attempt < 200; attempt++ {
		cmd := exec.Command(bin, "run", jobPath, "--log-level", "warn")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		delay := time.Duration(5+r.IntN(300)) * time.Millisecond
		if kills >= 25 {
			delay = 2 * time.Minute // enough kills: let it finish
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("runner failed: %v\n%s", err, errb.String())
			}
			if kills < 20 {
				t.Fatalf("the job completed after only %d kills; the test wants 20", kills)
			}
			t.Logf("completed after %d kills: %s", kills, strings.TrimSpace(out.String()))
			verify(t, dir, src)
			return
		case <-time.After(delay):
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
			kills++
		}
	}
	t.Fatal("the job did not complete in 200 attempts")
}

// TestRerunOfFinishedJobChangesNothing runs a small job twice.
func TestRerunOfFinishedJobChangesNothing(t *testing.T) {
	bin := testbin.Path(t, "runner")
	dir := t.TempDir()
	src := writeSource(t, dir, 2000, 3)
	jobPath := writeJob(t, dir, "")
	for i := range 2 {
		out, err := exec.Command(bin, "run", jobPath).CombinedOutput()
		if err != nil {
			t.Fatalf("run %d: %v\n%s", i, err, out)
		}
		if i == 1 && !bytes.Contains(out, []byte("had already completed")) {
			t.Errorf("second run did not say the job was already complete:\n%s", out)
		}
	}
	verify(t, dir, src)
}
