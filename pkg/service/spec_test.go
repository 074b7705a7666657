package service_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

// TestServiceShapesTheSpec checks what the service does to a posted spec:
// its state dir, the budget share, the memory defaults, and masking.
func TestServiceShapesTheSpec(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	specs := map[string]job.Spec{}
	s := start(t, dir, serverOpts{
		sim: servicetest.Options{Tick: time.Millisecond, OnSpec: func(sp job.Spec) {
			mu.Lock()
			specs[sp.ID] = sp
			mu.Unlock()
		}},
		cfg: func(c *service.Config) {
			c.MaxConcurrentJobs = 2
			c.Memory.Budget = 512 << 20
			c.Memory.Defaults.WarningPercent = 60
			c.Log.MaskValues = true
		},
	})
	s.create(spec(t, "shaped", 10, map[string]any{
		"state_dir": "/somewhere/else",
		"memory":    map[string]any{"critical_percent": 80, "restart_budget": map[string]any{"max": 9}},
	}))
	s.waitStatus("shaped", 10*time.Second, "completed")
	mu.Lock()
	sp := specs["shaped"]
	mu.Unlock()
	if sp.StateDir != filepath.Join(dir, "jobs") {
		t.Errorf("state_dir %q, want the service's", sp.StateDir)
	}
	m := sp.Memory
	if m.Limit != 256<<20 || m.WarningPercent != 60 || m.CriticalPercent != 80 || m.RestartBudget.Max != 9 ||
		m.RestartBudget.Window != job.DefaultMemory().RestartBudget.Window || !sp.Log.MaskValues {
		t.Errorf("memory %+v, mask %v: want the 256MiB share, warning 60 from the config, critical 80 and max 9 from the body, the default window, masking on", m, sp.Log.MaskValues)
	}
	r := s.do("POST", "/v1/jobs", spec(t, "greedy", 10, map[string]any{"memory": map[string]any{"limit": "1GiB"}}))
	if r.code != http.StatusBadRequest || !strings.Contains(string(r.body), "memory.limit") {
		t.Errorf("limit above the share: %d %s", r.code, r.body)
	}
}

// TestMemoryEventLogLines checks one log line per level change and GC
// request, with the original tool's memory fields.
func TestMemoryEventLogLines(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{sim: servicetest.Options{Tick: time.Millisecond}})
	s.create(spec(t, "logs", 1000, nil))
	s.waitStatus("logs", 10*time.Second, "completed")
	counts := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(s.logs.String()))
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil || line["job"] != "logs" {
			continue
		}
		msg, _ := line["message"].(string)
		if msg != "memory level changed" && msg != "asked the runner for GC" {
			continue
		}
		counts[msg]++
		for _, k := range []string{"context", "heapObjectsMB", "budgetMB", "heapObjectsPercent", "rssMB", "rssPercent", "reason"} {
			if _, ok := line[k]; !ok {
				t.Errorf("%q line lacks %s: %s", msg, k, sc.Text())
			}
		}
	}
	// The simulation crosses warning and critical and asks for GC on
	// every sample above critical.
	if counts["memory level changed"] < 2 || counts["asked the runner for GC"] < 1 {
		t.Errorf("memory log lines: %v", counts)
	}
}
