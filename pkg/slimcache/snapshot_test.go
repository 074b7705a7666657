package slimcache_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/memvisor/memvisor/pkg/slimcache"
)

func snapshotBytes(t testing.TB, c *slimcache.Cache) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := c.WriteSnapshot(&buf); err != nil {
		t.Fatalf("WriteSnapshot: %v", err)
	}
	return buf.Bytes()
}

func TestSnapshotRoundTrip(t *testing.T) {
	clk := newFakeClock()
	c := slimcache.New(slimcache.Options{TTL: time.Hour, Now: clk.Now})
	const n = 30_000
	for i := range uint64(n) {
		c.Put(keyOf(i), int64(i)-n/2)
		if i%1000 == 0 {
			clk.Advance(time.Minute)
		}
	}
	c.Put(strings.Repeat("k", slimcache.MaxKeyLen), 7)
	c.Put("", 8)
	for i := uint64(0); i < n; i += 3 {
		c.Delete(keyOf(i))
	}
	data := snapshotBytes(t, c)

	// A one-byte-at-a-time reader exercises every refill boundary.
	r, err := slimcache.ReadSnapshot(iotest.OneByteReader(bytes.NewReader(data)),
		slimcache.Options{TTL: time.Hour, Now: clk.Now})
	if err != nil {
		t.Fatalf("ReadSnapshot: %v", err)
	}
	if r.Len() != c.Len() {
		t.Fatalf("restored Len = %d, want %d", r.Len(), c.Len())
	}
	for i := range uint64(n) {
		if i%3 == 0 {
			mustMiss(t, r, keyOf(i), true)
		} else {
			mustGet(t, r, keyOf(i), int64(i)-n/2)
		}
	}
	mustGet(t, r, strings.Repeat("k", slimcache.MaxKeyLen), 7)
	mustGet(t, r, "", 8)
	checkInvariants(t, r)
	if again := snapshotBytes(t, r); !bytes.Equal(again, data) {
		t.Fatal("a restored cache writes a different snapshot")
	}

	// Put times survive: the first thousand keys were put 30 minutes
	// before the last ones, and expire 30 minutes earlier.
	clk.Advance(31 * time.Minute) // an hour after the first minute's keys
	mustMiss(t, r, keyOf(1), false)
	mustGet(t, r, keyOf(n-1), n-1-n/2)
}

func TestSnapshotKeepsUncertainty(t *testing.T) {
	c := slimcache.New(slimcache.Options{MaxEntries: 10})
	for i := range uint64(20) {
		c.Put(keyOf(i), int64(i))
	}
	data := snapshotBytes(t, c)
	r, err := slimcache.ReadSnapshot(bytes.NewReader(data), slimcache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustMiss(t, r, "never put", false) // entries were evicted before the save

	// Restoring into a smaller bound evicts down to it.
	u := slimcache.New(slimcache.Options{})
	for i := range uint64(100) {
		u.Put(keyOf(i), int64(i))
	}
	small, err := slimcache.ReadSnapshot(bytes.NewReader(snapshotBytes(t, u)), slimcache.Options{MaxEntries: 40})
	if err != nil {
		t.Fatal(err)
	}
	if small.Len() != 40 || small.Stats().Evictions != 60 {
		t.Fatalf("restored into MaxEntries 40: Stats %+v", small.Stats())
	}
	mustMiss(t, small, "never put", false)
	for i := uint64(60); i < 100; i++ { // the newest survive
		mustGet(t, small, keyOf(i), int64(i))
	}
	checkInvariants(t, small)
}

func TestSnapshotRejectsDamage(t *testing.T) {
	clk := newFakeClock()
	c := slimcache.New(slimcache.Options{Now: clk.Now})
	for i := range uint64(40) {
		c.Put(keyOf(i), int64(i)*1_000_003)
		clk.Advance(time.Second)
	}
	data := snapshotBytes(t, c)
	check := func(name string, b []byte) {
		t.Helper()
		_, err := slimcache.ReadSnapshot(bytes.NewReader(b), slimcache.Options{})
		if !errors.Is(err, slimcache.ErrCorruptSnapshot) {
			t.Fatalf("%s: err = %v, want ErrCorruptSnapshot", name, err)
		}
	}
	for n := range len(data) {
		check("truncated", data[:n])
	}
	for i := range data {
		for _, bit := range []byte{0x01, 0x80} {
			b := bytes.Clone(data)
			b[i] ^= bit
			check("bit flip", b)
		}
	}
	check("trailing byte", append(bytes.Clone(data), 0))
	check("two snapshots", append(bytes.Clone(data), data...))
	check("empty", nil)
	check("text", []byte("this is not a snapshot, but it is long enough to have a header"))
}

func TestSnapshotPassesReadErrorsThrough(t *testing.T) {
	c := slimcache.New(slimcache.Options{})
	c.Put("a", 1)
	data := snapshotBytes(t, c)
	boom := errors.New("disk on fire")
	_, err := slimcache.ReadSnapshot(io.MultiReader(bytes.NewReader(data[:20]), iotest.ErrReader(boom)), slimcache.Options{})
	if !errors.Is(err, boom) || errors.Is(err, slimcache.ErrCorruptSnapshot) {
		t.Fatalf("err = %v, want the read error and not corruption", err)
	}
	if err := c.WriteSnapshot(errWriter{boom}); !errors.Is(err, boom) {
		t.Fatalf("WriteSnapshot err = %v, want %v", err, boom)
	}
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

func TestSaveFileLoadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cache.snap")

	_, err := slimcache.LoadFile(path, slimcache.Options{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadFile of a missing file: err = %v, want fs.ErrNotExist", err)
	}

	c := slimcache.New(slimcache.Options{})
	for i := range uint64(5000) {
		c.Put(keyOf(i), int64(i))
	}
	if err := c.SaveFile(path); err != nil {
		t.Fatal(err)
	}
	c.Put("second", 2)
	if err := c.SaveFile(path); err != nil { // replaces the first
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot mode %v, want 0600", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("directory holds %d files after two saves, want 1 (no temporary files left)", len(entries))
	}
	r, err := slimcache.LoadFile(path, slimcache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Len() != 5001 {
		t.Fatalf("loaded Len = %d, want 5001", r.Len())
	}
	mustGet(t, r, "second", 2)
	mustGet(t, r, keyOf(4999), 4999)

	// A torn file is reported, not read as an empty cache.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = slimcache.LoadFile(path, slimcache.Options{})
	if !errors.Is(err, slimcache.ErrCorruptSnapshot) || !strings.Contains(err.Error(), path) {
		t.Fatalf("LoadFile of a torn file: err = %v, want ErrCorruptSnapshot naming the file", err)
	}

	// A save into a missing directory fails and says so.
	if err := c.SaveFile(filepath.Join(dir, "missing", "cache.snap")); err == nil {
		t.Fatal("SaveFile into a missing directory succeeded")
	}
}

func TestRestoreOneMillionIsFast(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 1M entries")
	}
	c := slimcache.New(slimcache.Options{ExpectedEntries: 1_000_000})
	for i := range uint64(1_000_000) {
		c.Put(keyOf(i), int64(i))
	}
	data := snapshotBytes(t, c)
	start := time.Now()
	r, err := slimcache.ReadSnapshot(bytes.NewReader(data), slimcache.Options{})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restored 1M entries (%d bytes) in %v", len(data), elapsed)
	// The race detector slows this several times; well under a second
	// without it (see the benchmark), and under 5 s with it.
	if elapsed > 5*time.Second {
		t.Fatalf("restore took %v", elapsed)
	}
	mustGet(t, r, keyOf(123_456), 123_456)
}
