package slimcache_test

import (
	"fmt"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/slimcache"
)

func TestPutGetOverwriteDelete(t *testing.T) {
	c := slimcache.New(slimcache.Options{})
	mustMiss(t, c, "a@example.com", true)
	c.Put("a@example.com", 1)
	c.Put("b@example.com", 2)
	mustGet(t, c, "a@example.com", 1)
	mustGet(t, c, "b@example.com", 2)
	c.Put("a@example.com", 3) // the last Put wins
	mustGet(t, c, "a@example.com", 3)
	if got := c.Len(); got != 2 {
		t.Fatalf("Len = %d, want 2", got)
	}
	if !c.Delete("a@example.com") {
		t.Fatal("Delete of a stored key = false")
	}
	if c.Delete("a@example.com") {
		t.Fatal("second Delete = true")
	}
	mustMiss(t, c, "a@example.com", true) // a deleted key is certainly absent
	mustGet(t, c, "b@example.com", 2)
	c.Put("", 9) // the empty key is a key like any other
	mustGet(t, c, "", 9)
	c.Put("neg", -42)
	mustGet(t, c, "neg", -42)
	if got := c.Len(); got != 3 {
		t.Fatalf("Len = %d, want 3", got)
	}
	st := c.Stats()
	if st.Entries != 3 || st.Hits != 6 || st.Misses != 2 {
		t.Fatalf("Stats = %+v, want 3 entries, 6 hits, 2 misses", st)
	}
	checkInvariants(t, c)
}

func TestPrefixesAreDistinctKeys(t *testing.T) {
	// A hash may collide, the key bytes never: keys that share a prefix,
	// differ in length only, or differ in the last byte are distinct.
	c := slimcache.New(slimcache.Options{})
	keys := []string{"a", "ab", "abc", "abd", "abc ", "ABC", "a\x00", "\x00a"}
	for i, k := range keys {
		c.Put(k, int64(i))
	}
	for i, k := range keys {
		mustGet(t, c, k, int64(i))
	}
	mustMiss(t, c, "abcd", true)
	mustMiss(t, c, "b", true)
}

func TestKeysDifferingInOneByte(t *testing.T) {
	// Every key length from 0 to 40 (one- and two-byte headers, the
	// word-compare paths for short keys), each against keys that differ
	// from it in a single byte at every position.
	// The hash is narrowed to four values, so that nearly every probe
	// compares nearly every key: only the key bytes tell them apart.
	c := slimcache.New(slimcache.Options{})
	slimcache.SetHashMask(c, 0x8000_0000_0000_0001)
	id := int64(0)
	want := map[string]int64{}
	for n := range 41 {
		base := []byte(strings.Repeat("m", n))
		for i := range base {
			base[i] = byte('a' + (i*7+n)%26)
		}
		want[string(base)] = id
		c.Put(string(base), id)
		id++
		for i := range n {
			v := append([]byte(nil), base...)
			v[i] ^= 0x20
			if _, ok := c.Get(string(v)); ok {
				t.Fatalf("length %d: a key differing at byte %d found before it was put", n, i)
			}
			want[string(v)] = id
			c.Put(string(v), id)
			id++
		}
	}
	for k, v := range want {
		mustGet(t, c, k, v)
	}
	checkInvariants(t, c)
}

func TestManyEntriesGrowAndStayExact(t *testing.T) {
	const n = 150_000
	for _, hint := range []int{0, n} {
		t.Run(fmt.Sprintf("hint=%d", hint), func(t *testing.T) {
			c := slimcache.New(slimcache.Options{ExpectedEntries: hint})
			for i := range uint64(n) {
				// Keys of varied length, a few past 31 bytes (two-byte
				// headers) and one long one per thousand.
				k := keyOf(i)
				switch i % 1000 {
				case 7:
					k = strings.Repeat(k, 3)
				case 9:
					k = strings.Repeat(k, 200)
				case 11:
					k = k[:i%24]
				}
				c.Put(k, int64(i))
			}
			for i := range uint64(n) {
				k := keyOf(i)
				switch i % 1000 {
				case 7:
					k = strings.Repeat(k, 3)
				case 9:
					k = strings.Repeat(k, 200)
				case 11:
					continue // short prefixes may repeat
				}
				mustGet(t, c, k, int64(i))
			}
			for i := uint64(n); i < n+1000; i++ {
				mustMiss(t, c, keyOf(i), true)
			}
			checkInvariants(t, c)
		})
	}
}

func TestKeyLengthLimit(t *testing.T) {
	c := slimcache.New(slimcache.Options{})
	longest := strings.Repeat("x", slimcache.MaxKeyLen)
	c.Put(longest, 1)
	mustGet(t, c, longest, 1)
	tooLong := longest + "y"
	c.Put(tooLong, 2)
	mustMiss(t, c, tooLong, false) // not stored, so a miss proves nothing
	if c.Delete(tooLong) {
		t.Fatal("Delete of an over-long key = true")
	}
	if st := c.Stats(); st.Rejected != 1 || st.Entries != 1 {
		t.Fatalf("Stats = %+v, want 1 rejected, 1 entry", st)
	}
	mustMiss(t, c, "other", true) // other misses stay certain
	// Many maximal keys span many chunks, one record per chunk at most.
	for i := range 40 {
		c.Put(fmt.Sprintf("%d-%s", i, longest[:slimcache.MaxKeyLen-4]), int64(i))
	}
	for i := range 40 {
		mustGet(t, c, fmt.Sprintf("%d-%s", i, longest[:slimcache.MaxKeyLen-4]), int64(i))
	}
	checkInvariants(t, c)
}

func TestDeletesCompactTheArena(t *testing.T) {
	const n = 100_000
	c := slimcache.New(slimcache.Options{})
	for i := range uint64(n) {
		c.Put(keyOf(i), int64(i))
	}
	before := c.EstimatedBytes()
	for i := range uint64(n) {
		if i%10 != 0 {
			if !c.Delete(keyOf(i)) {
				t.Fatalf("Delete(key %d) = false", i)
			}
		}
	}
	st := c.Stats()
	if st.Compactions == 0 {
		t.Fatal("no compaction after deleting 90% of the entries")
	}
	used, garbage := slimcache.ArenaBytes(c)
	if garbage*4 > used+64<<10 {
		t.Fatalf("garbage %d of %d arena bytes after compaction", garbage, used)
	}
	if after := c.EstimatedBytes(); after > before/3 {
		t.Fatalf("EstimatedBytes %d after deleting 90%%, was %d", after, before)
	}
	for i := range uint64(n) {
		if i%10 == 0 {
			mustGet(t, c, keyOf(i), int64(i))
		} else {
			mustMiss(t, c, keyOf(i), true)
		}
	}
	checkInvariants(t, c)
}

func TestOverwritesKeepTheArenaBounded(t *testing.T) {
	// Overwrites with the clock moving relocate records; compaction must
	// keep the dead share bounded however long this goes on.
	clk := newFakeClock()
	c := slimcache.New(slimcache.Options{Now: clk.Now})
	slimcache.SetMinGarbage(c, 0)
	const n = 2000
	for round := range 50 {
		for i := range uint64(n) {
			c.Put(keyOf(i), int64(round)*n+int64(i))
		}
		clk.Advance(2 * time.Second)
		used, garbage := slimcache.ArenaBytes(c)
		if garbage*4 > used+1024 {
			t.Fatalf("round %d: garbage %d of %d bytes", round, garbage, used)
		}
	}
	for i := range uint64(n) {
		mustGet(t, c, keyOf(i), 49*n+int64(i))
	}
	if c.Len() != n {
		t.Fatalf("Len = %d, want %d", c.Len(), n)
	}
	checkInvariants(t, c)
}

func TestArenaFullRejectsNewKeys(t *testing.T) {
	c := slimcache.New(slimcache.Options{TTL: -1})
	slimcache.SetMaxChunks(c, 2) // 4 KiB + 16 KiB
	var stored []uint64
	for i := range uint64(5000) {
		c.Put(keyOf(i), int64(i))
		if _, ok := c.Get(keyOf(i)); !ok {
			break
		}
		stored = append(stored, i)
	}
	if len(stored) == 0 || len(stored) >= 5000 {
		t.Fatalf("stored %d keys in a 20 KiB arena", len(stored))
	}
	if st := c.Stats(); st.Rejected != 1 {
		t.Fatalf("Rejected = %d, want 1", st.Rejected)
	}
	mustMiss(t, c, "never put", false) // a key was lost, misses prove nothing
	for _, i := range stored {
		mustGet(t, c, keyOf(i), int64(i))
	}
	c.Put(keyOf(stored[0]), 777) // an overwrite still works in place
	mustGet(t, c, keyOf(stored[0]), 777)
	// Deleting makes room again: compaction reclaims the dead bytes.
	for _, i := range stored[:len(stored)/2] {
		c.Delete(keyOf(i))
	}
	c.Put("fresh", 1)
	mustGet(t, c, "fresh", 1)
	checkInvariants(t, c)
}

func TestTTL(t *testing.T) {
	t.Run("expires exactly at TTL", func(t *testing.T) {
		clk := newFakeClock()
		c := slimcache.New(slimcache.Options{TTL: time.Hour, Now: clk.Now})
		c.Put("a", 1)
		clk.Advance(time.Hour - time.Nanosecond)
		mustGet(t, c, "a", 1)
		clk.Advance(time.Nanosecond)
		mustMiss(t, c, "a", false)
		st := c.Stats()
		if st.Expirations != 1 || st.Entries != 0 {
			t.Fatalf("Stats = %+v, want 1 expiration, 0 entries", st)
		}
		mustMiss(t, c, "never put", false) // an entry expired: misses are uncertain
		checkInvariants(t, c)
	})
	t.Run("default is 12h", func(t *testing.T) {
		clk := newFakeClock()
		c := slimcache.New(slimcache.Options{Now: clk.Now})
		c.Put("a", 1)
		clk.Advance(12*time.Hour - time.Nanosecond)
		mustGet(t, c, "a", 1)
		clk.Advance(time.Nanosecond)
		mustMiss(t, c, "a", false)
	})
	t.Run("negative never expires", func(t *testing.T) {
		clk := newFakeClock()
		c := slimcache.New(slimcache.Options{TTL: -1, Now: clk.Now})
		c.Put("a", 1)
		clk.Advance(10_000 * time.Hour)
		mustGet(t, c, "a", 1)
		mustMiss(t, c, "b", true)
	})
	t.Run("shared checkpoint expires early, never late", func(t *testing.T) {
		clk := newFakeClock()
		c := slimcache.New(slimcache.Options{TTL: time.Hour, Now: clk.Now})
		c.Put("a", 1)
		clk.Advance(300 * time.Millisecond) // under the 1 s granularity
		c.Put("b", 2)
		clk.Advance(time.Hour - 300*time.Millisecond - time.Second)
		mustGet(t, c, "b", 2) // more than TTL-granularity after b's Put: alive
		clk.Advance(time.Second)
		// An hour after a's Put, b (put 300 ms later) has expired too:
		// early by less than the granularity, never late.
		mustMiss(t, c, "b", false)
	})
	t.Run("overwrite restarts the TTL", func(t *testing.T) {
		clk := newFakeClock()
		c := slimcache.New(slimcache.Options{TTL: time.Hour, Now: clk.Now})
		c.Put("a", 1)
		clk.Advance(50 * time.Minute)
		c.Put("a", 2)
		clk.Advance(50 * time.Minute)
		mustGet(t, c, "a", 2)
		clk.Advance(10 * time.Minute)
		mustMiss(t, c, "a", false)
	})
	t.Run("put purges the expired head", func(t *testing.T) {
		clk := newFakeClock()
		c := slimcache.New(slimcache.Options{TTL: time.Hour, Now: clk.Now})
		const n = 20_000
		for i := range uint64(n) {
			c.Put(keyOf(i), int64(i))
		}
		clk.Advance(30 * time.Minute)
		c.Put("later", 1)
		full := c.EstimatedBytes()
		clk.Advance(31 * time.Minute)
		c.Put("latest", 2) // the first n are now expired and purged
		st := c.Stats()
		if st.Entries != 2 || st.Expirations != n {
			t.Fatalf("Stats = %+v, want 2 entries and %d expirations", st, n)
		}
		if got := c.EstimatedBytes(); got > full/2 {
			t.Fatalf("EstimatedBytes %d after purging, was %d", got, full)
		}
		mustGet(t, c, "later", 1)
		mustGet(t, c, "latest", 2)
		mustMiss(t, c, keyOf(5), false)
		checkInvariants(t, c)
	})
	t.Run("clock going backwards", func(t *testing.T) {
		clk := newFakeClock()
		c := slimcache.New(slimcache.Options{TTL: time.Hour, Now: clk.Now})
		c.Put("a", 1)
		clk.Advance(-30 * time.Minute)
		c.Put("b", 2) // held at a's time
		clk.Advance(90 * time.Minute)
		mustMiss(t, c, "b", false)
		checkInvariants(t, c)
	})
	t.Run("real clock, short TTL", func(t *testing.T) {
		c := slimcache.New(slimcache.Options{TTL: 20 * time.Millisecond})
		c.Put("a", 1)
		mustGet(t, c, "a", 1)
		time.Sleep(40 * time.Millisecond)
		mustMiss(t, c, "a", false)
	})
	t.Run("real clock, lookups far apart", func(t *testing.T) {
		// With a TTL of a second or more, lookups skip the real clock
		// until a timer marks the earliest expiry as near. A lookup
		// after a long pause must still see the entry expired.
		c := slimcache.New(slimcache.Options{TTL: 1200 * time.Millisecond})
		c.Put("a", 1)
		for range 1000 {
			mustGet(t, c, "a", 1)
		}
		time.Sleep(1300 * time.Millisecond)
		mustMiss(t, c, "a", false)
		c.Put("b", 2) // a new deadline: the timer is set again
		mustGet(t, c, "b", 2)
		time.Sleep(1300 * time.Millisecond)
		mustMiss(t, c, "b", false)
	})
	t.Run("delete of an expired entry", func(t *testing.T) {
		clk := newFakeClock()
		c := slimcache.New(slimcache.Options{TTL: time.Minute, Now: clk.Now})
		c.Put("a", 1)
		clk.Advance(time.Hour)
		if c.Delete("a") {
			t.Fatal("Delete of an expired entry = true")
		}
		if st := c.Stats(); st.Expirations != 1 || st.Entries != 0 {
			t.Fatalf("Stats = %+v, want 1 expiration, 0 entries", st)
		}
	})
}

func TestBoundedEvicts(t *testing.T) {
	const max = 1000
	c := slimcache.New(slimcache.Options{MaxEntries: max})
	for i := range uint64(max) {
		c.Put(keyOf(i), int64(i))
	}
	mustMiss(t, c, "never put", true) // nothing evicted yet
	for i := uint64(max); i < 5*max; i++ {
		c.Put(keyOf(i), int64(i))
		if c.Len() > max {
			t.Fatalf("Len = %d after %d puts, over MaxEntries %d", c.Len(), i+1, max)
		}
	}
	st := c.Stats()
	if st.Entries != max || st.Evictions != 4*max {
		t.Fatalf("Stats = %+v, want %d entries and %d evictions", st, max, 4*max)
	}
	found := 0
	for i := range uint64(5 * max) {
		id, ok, certain := c.Lookup(keyOf(i))
		switch {
		case ok && id != int64(i):
			t.Fatalf("key %d: id %d", i, id)
		case ok:
			found++
		case certain:
			t.Fatalf("key %d: certain miss after evictions", i)
		}
	}
	if found != max {
		t.Fatalf("found %d keys, want %d", found, max)
	}
	checkInvariants(t, c)
}

func TestBoundedKeepsHotEntries(t *testing.T) {
	// CLOCK keeps entries read since the hand last passed: a hot set read
	// every round survives a stream of new keys many times the bound,
	// which plain FIFO would evict.
	const max, hot = 1000, 100
	c := slimcache.New(slimcache.Options{MaxEntries: max})
	for i := range uint64(max) {
		c.Put(keyOf(i), int64(i))
	}
	next := uint64(max)
	for range 100 {
		for i := range uint64(hot) {
			mustGet(t, c, keyOf(i), int64(i))
		}
		for range 100 {
			c.Put(keyOf(next), int64(next))
			next++
		}
	}
	for i := range uint64(hot) {
		mustGet(t, c, keyOf(i), int64(i))
	}
	if got := c.Stats().Evictions; got != next-max {
		t.Fatalf("Evictions = %d, want %d", got, next-max)
	}
	checkInvariants(t, c)
}

func TestEstimatedBytesMatchesHeap(t *testing.T) {
	const n = 300_000
	var c *slimcache.Cache
	measure := func(build func()) (heap int64) {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		build()
		runtime.GC()
		runtime.ReadMemStats(&m1)
		return int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
	}
	for _, hint := range []int{0, n} {
		heap := measure(func() {
			c = slimcache.New(slimcache.Options{ExpectedEntries: hint})
			for i := range uint64(n) {
				c.Put(keyOf(i), int64(i))
			}
		})
		est := c.EstimatedBytes()
		if d := est - heap; d*10 > heap || -d*10 > heap {
			t.Fatalf("hint %d: EstimatedBytes %d, heap grew %d: off by more than 10%%", hint, est, heap)
		}
		t.Logf("hint %d: %d entries, EstimatedBytes %d, heap %d, %.1f B/entry",
			hint, n, est, heap, float64(heap)/n)
		if per := float64(heap) / n; per > 48 {
			t.Fatalf("hint %d: %.1f bytes/entry", hint, per)
		}
		runtime.KeepAlive(c)
	}
}

func TestEntriesAreNotScanned(t *testing.T) {
	// The entries hold no pointers, so the GC has nothing to scan in
	// them: the scannable heap barely moves while the cache grows by
	// tens of megabytes.
	scannable := func() int64 {
		runtime.GC()
		s := []metrics.Sample{{Name: "/gc/scan/heap:bytes"}}
		metrics.Read(s)
		return int64(s[0].Value.Uint64())
	}
	before := scannable()
	c := slimcache.New(slimcache.Options{})
	for i := range uint64(500_000) {
		c.Put(keyOf(i), int64(i))
	}
	after := scannable()
	if grew := after - before; grew > 256<<10 {
		t.Fatalf("scannable heap grew %d bytes for a cache of %d bytes", grew, c.EstimatedBytes())
	}
	runtime.KeepAlive(c)
}
