package podioemu_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

// TestOfficialSDK runs sdktest/ (node --test) against the emulator: the
// official podio-js SDK, pointed at it with its apiURL option,
// authenticates, pages, creates, updates, reads by external_id and
// uploads a file. It is skipped when node or npm is missing, unless CI
// is "true".
func TestOfficialSDK(t *testing.T) {
	node, errNode := exec.LookPath("node")
	npm, errNpm := exec.LookPath("npm")
	if errNode != nil || errNpm != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("node and npm are needed in CI: %v %v", errNode, errNpm)
		}
		t.Skip("node or npm is not installed")
	}
	dir, err := filepath.Abs("sdktest")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "podio-js")); err != nil {
		ci := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
		ci.Dir = dir
		if out, err := ci.CombinedOutput(); err != nil {
			t.Fatalf("npm ci: %v\n%s", err, out)
		}
	}
	s := podioemu.New(podioemu.Config{})
	s.AddClient("sdk-client", "sdk-secret")
	s.AddUser("sdk@example.com", "sdk-pw")
	if _, err := s.AddApp(podioemu.App{AppID: 50001, AppToken: "sdk-token", Fields: []podioemu.Field{
		{ExternalID: "title", Type: "text", Label: "Title"}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		title, _ := json.Marshal(fmt.Sprintf("seeded %d", i))
		if _, err := s.Seed(podioemu.Item{AppID: 50001, Fields: map[string]json.RawMessage{"title": title}}); err != nil {
			t.Fatal(err)
		}
	}
	u, err := s.Start("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cmd := exec.CommandContext(ctx, node, "--test")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PODIO_EMU_URL="+u, "PODIO_EMU_APP_ID=50001", "PODIO_EMU_APP_TOKEN=sdk-token",
		"PODIO_EMU_CLIENT_ID=sdk-client", "PODIO_EMU_CLIENT_SECRET=sdk-secret",
		"PODIO_EMU_USERNAME=sdk@example.com", "PODIO_EMU_PASSWORD=sdk-pw")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
	t.Logf("node --test:\n%s", out)
	if st := s.Stats(); st.Creates != 1 || st.Updates != 1 || st.Uploads != 1 {
		t.Errorf("the SDK made %d creates, %d updates, %d uploads; want 1 of each", st.Creates, st.Updates, st.Uploads)
	}
}
