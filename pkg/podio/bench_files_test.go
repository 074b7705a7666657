package podio_test

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/internal/testbin"
	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

// BenchmarkPodioFileTransfer copies four 64 MB files, item by item,
// from the emulator's source app to its target app (download, streamed
// upload, attach with the create), with no quota, and reports MB/s.
// The emulator runs in the same process, generating the source files
// and hashing and storing the uploads.
func BenchmarkPodioFileTransfer(b *testing.B) {
	const size = 64 << 20
	s := podioemu.New(podioemu.Config{FileDir: b.TempDir()})
	items := make([]fileItem, 4)
	for i := range items {
		items[i] = fileItem{sizes: []int64{size}, image: 1}
	}
	seedFiles(b, s, items)
	if _, err := s.Start(""); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	src, dst, _ := openFilePairTB(b, s)
	ctx := b.Context()
	b.ResetTimer()
	start := time.Now()
	recs, _, err := src.Read(ctx, connector.Cursor{}, 10)
	if err != nil && err != io.EOF {
		b.Fatal(err)
	}
	for _, r := range recs {
		if _, err := dst.Create(ctx, connector.ExternalID(r.Item.ID), r.Item.Fields); err != nil {
			b.Fatal(err)
		}
	}
	el := time.Since(start)
	mb := float64(len(items)*size) / 1e6
	benchfmt.Report(b, "podio_file_transfer_mb_per_s", mb/el.Seconds(), "MB/s")
}

// runnerPeakRSS runs the runner on a one-item job whose item has a file
// of the given size and returns the runner's peak RSS (VmHWM), sampled
// until it exits.
func runnerPeakRSS(b *testing.B, size int64) int64 {
	bin := testbin.Path(b, "runner")
	s := podioemu.New(podioemu.Config{FileDir: b.TempDir()})
	seedFiles(b, s, []fileItem{{sizes: []int64{size}, image: 1}})
	s.AddUser(username, password)
	if _, err := s.Start(""); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	dir := b.TempDir()
	jobPath := writeJob(b, dir, "rss", podioEndpoint(s.URL(), fileSrcApp, false), podioEndpoint(s.URL(), fileDstApp, true))
	cmd := exec.Command(bin, "run", jobPath)
	cmd.Env = runnerEnv()
	logf, err := os.Create(filepath.Join(dir, "run.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var peak int64
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			if err != nil {
				b.Fatalf("runner: %v\n%s", err, tail(logf.Name(), 20))
			}
			if st := s.Stats(); st.Uploads < 2 {
				b.Fatalf("the runner uploaded %d files, want 2", st.Uploads)
			}
			return peak
		case <-tick.C:
			peak = max(peak, vmHWM(cmd.Process.Pid))
		}
	}
}

// BenchmarkPodioFileRSSOverhead reports how much one 100 MB file adds to
// the runner's peak RSS: a job moving it against the same job moving a
// 1 KB file.
func BenchmarkPodioFileRSSOverhead(b *testing.B) {
	small := runnerPeakRSS(b, 1<<10)
	big := runnerPeakRSS(b, 100<<20)
	b.Logf("runner peak RSS: %.1f MiB with a 1 KB file, %.1f MiB with a 100 MB file", float64(small)/(1<<20), float64(big)/(1<<20))
	benchfmt.Report(b, "podio_file_rss_overhead_mb", float64(big-small)/(1<<20), "MiB")
}
