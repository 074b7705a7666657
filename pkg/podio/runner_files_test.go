package podio_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

// vmHWM is the peak resident set of a process, from /proc; 0 if it
// cannot be read.
func vmHWM(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// The proof of the files part of the issue: 20 items with files of up
// to 64 MB and an image each, and comments, migrated by the runner
// under a 96 MiB memory limit while it is SIGKILLed during transfers.
// Every file arrives byte-identical and attached once, every comment
// once, and the runner's peak RSS stays under the limit.
func TestRunnerCopiesFilesThroughKills(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 90 MB of files through the runner binary")
	}
	bin := testbin.Path(t, "runner")
	// Every call takes 10 ms, so that a transfer is still under way when
	// the test sees an upload land and kills the runner.
	s := podioemu.New(podioemu.Config{Seed: 11, FileDir: t.TempDir(), Faults: podioemu.Faults{Latency: 10 * time.Millisecond}})
	var items []fileItem
	for i := range 20 {
		it := fileItem{sizes: []int64{int64(256<<10 + i*90_001)}, image: int64(30_000 + i), comments: i % 4}
		if i == 1 {
			it.sizes = append(it.sizes, 64<<20)
		}
		if i%5 == 3 {
			it.sizes = append(it.sizes, 2<<20+int64(i))
		}
		items = append(items, it)
	}
	srcIDs := seedFiles(t, s, items)
	s.AddUser(username, password)
	if _, err := s.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	dir := t.TempDir()
	target := podioEndpoint(s.URL(), fileDstApp, true) + "\n  files_concurrency: 2"
	jobPath := writeJob(t, dir, "files", podioEndpoint(s.URL(), fileSrcApp, false), target)
	// Small batches, so that kills land in different batches; a memory
	// limit of 96 MiB.
	data, _ := os.ReadFile(jobPath)
	spec := strings.Replace(string(data), "batch_size: 500\nconcurrency: 5", "batch_size: 4\nconcurrency: 3", 1)
	spec += "memory:\n  limit: 96MiB\n"
	if err := os.WriteFile(jobPath, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}

	rng := rand.New(rand.NewPCG(11, 3))
	var peak int64
	kills := 0
	for run := 0; kills < 4 && run < 10; run++ {
		cmd := exec.Command(bin, "run", jobPath)
		cmd.Env = runnerEnv()
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("run-%d.log", run)))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		// The kill comes after 1 to 4 more uploads: on the emulator's
		// count, not on the clock, so it lands mid-job on any machine.
		want := s.Stats().Uploads + 1 + rng.Int64N(4)
		tick := time.NewTicker(5 * time.Millisecond)
		deadline := time.After(2 * time.Minute)
		done := false
	watch:
		for {
			select {
			case err := <-exited:
				done = true
				logf.Close()
				if err != nil {
					t.Fatalf("run %d: %v\n%s", run, err, tail(logf.Name(), 20))
				}
				break watch
			case <-tick.C:
				peak = max(peak, vmHWM(cmd.Process.Pid))
				if s.Stats().Uploads >= want {
					break watch
				}
			case <-deadline:
				break watch
			}
		}
		tick.Stop()
		if done {
			break // finished before the kill
		}
		peak = max(peak, vmHWM(cmd.Process.Pid))
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		logf.Close()
		kills++
		st := s.Stats()
		t.Logf("run %d killed: %d uploads, %d attached, %d comments so far", run, st.Uploads, st.Attached, st.Comments)
	}
	if kills == 0 {
		t.Fatal("the runner was never killed")
	}
	out := runRunner(t, bin, jobPath, filepath.Join(dir, "final.log"))
	t.Logf("final run: %s", out)
	// The last kill can land after the job's final checkpoint; then the
	// final run finds it complete and changes nothing.
	finished := strings.Contains(out, "completed") && strings.Contains(out, "failed 0")
	if !finished && !strings.Contains(out, "already completed") {
		t.Errorf("final run: %q, want completed with no failures", out)
	}
	st := s.Stats()
	t.Logf("emulator: %+v; runner peak RSS (before the final run) %.1f MiB", st, float64(peak)/(1<<20))
	checkFilesCopied(t, s, srcIDs)
	if peak <= 0 {
		t.Error("the runner's peak RSS could not be read")
	}
	if peak > 96<<20 {
		t.Errorf("runner peak RSS %.1f MiB, over the 96 MiB limit", float64(peak)/(1<<20))
	}
}

// The original tool stopped halfway: every other source item is in the
// target as "migrated-<id>". Running memvisor on that target, with or
// without a match field, creates only the missing half.
func TestRunnerAdoptsHalfFinishedMigration(t *testing.T) {
	bin := testbin.Path(t, "runner")
	for _, match := range []string{"", "match: {source_field: title, target_field: title}\n"} {
		name := "no match field"
		if match != "" {
			name = "match field"
		}
		t.Run(name, func(t *testing.T) {
			const n = 40
			s, ids := newEmu(t, podioemu.Config{}, n)
			for i, id := range ids {
				if i%2 == 1 {
					continue
				}
				title, _ := json.Marshal(fmt.Sprintf("Item %05d", i))
				if _, err := s.Seed(podioemu.Item{AppID: dstApp, ExternalID: fmt.Sprintf("migrated-%d", id),
					Fields: map[string]json.RawMessage{"title": title}}); err != nil {
					t.Fatal(err)
				}
			}
			dir := t.TempDir()
			jobPath := writeJob(t, dir, "adopt", podioEndpoint(s.URL(), srcApp, false), podioEndpoint(s.URL(), dstApp, true))
			if match != "" {
				data, _ := os.ReadFile(jobPath)
				if err := os.WriteFile(jobPath, append(data, match...), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out := runRunner(t, bin, jobPath, filepath.Join(dir, "run.log"))
			if !strings.Contains(out, fmt.Sprintf("created %d", n/2)) {
				t.Errorf("run: %q, want %d created", out, n/2)
			}
			seen := map[string]int{}
			for _, d := range dumpApp(t, s, dstApp) {
				ext := ""
				if d.ExternalID != nil {
					ext = strings.TrimPrefix(*d.ExternalID, "migrated-")
				}
				seen[ext]++
			}
			for _, id := range ids {
				if c := seen[fmt.Sprint(id)]; c != 1 {
					t.Errorf("source item %d is in the target %d times", id, c)
				}
			}
			if len(seen) != n {
				t.Errorf("target has %d distinct items, want %d", len(seen), n)
			}
		})
	}
}
