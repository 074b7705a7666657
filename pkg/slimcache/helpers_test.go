package slimcache_test

import (
	"encoding/hex"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/slimcache"
)

// mix is splitmix64's finalizer, a bijection on uint64.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// appendKey appends key i: 24 random-looking lowercase hex characters,
// derived from i alone and distinct for distinct i (the first 16 encode a
// bijection of i), so that a test or benchmark holds no key list.
func appendKey(dst []byte, i uint64) []byte {
	var raw [12]byte
	a, b := mix(i), mix(i^0x5bd1e9955bd1e995)
	for j := range 8 {
		raw[j] = byte(a >> (8 * j))
	}
	for j := range 4 {
		raw[8+j] = byte(b >> (8 * j))
	}
	return hex.AppendEncode(dst, raw[:])
}

func keyOf(i uint64) string { return string(appendKey(nil, i)) }

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (f *fakeClock) Now() time.Time          { return f.t }
func (f *fakeClock) Advance(d time.Duration) { f.t = f.t.Add(d) }

func checkInvariants(t testing.TB, c *slimcache.Cache) {
	t.Helper()
	if err := slimcache.CheckInvariants(c); err != nil {
		t.Fatalf("invariants: %v", err)
	}
}

// mustGet fails unless key is found with want.
func mustGet(t testing.TB, c *slimcache.Cache, key string, want int64) {
	t.Helper()
	got, ok := c.Get(key)
	if !ok || got != want {
		t.Fatalf("Get(%.40q) = %d, %v; want %d, true", key, got, ok, want)
	}
}

// mustMiss fails unless key is absent with the given certainty.
func mustMiss(t testing.TB, c *slimcache.Cache, key string, certain bool) {
	t.Helper()
	id, found, cert := c.Lookup(key)
	if found || cert != certain {
		t.Fatalf("Lookup(%.40q) = %d, %v, %v; want a miss with certain=%v", key, id, found, cert, certain)
	}
}
