package slimcache_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/slimcache"
)

// fuzzKey maps a byte to one of 64 keys of varied length: short ones,
// ones past 31 bytes (two-byte headers), prefixes of each other, and a
// few of several KiB.
func fuzzKey(b byte) string {
	k := int(b % 64)
	switch {
	case k < 24:
		return fmt.Sprintf("k%d", k)
	case k < 40:
		return strings.Repeat("p", k-24) // "", "p", "pp", ...
	case k < 60:
		return fmt.Sprintf("%s-%d", strings.Repeat("long", 8), k)
	default:
		return strings.Repeat(string(rune('a'+k-60)), 3000+k)
	}
}

type refEntry struct {
	id int64
	at time.Time
}

// FuzzCache runs a sequence of operations against the cache and a
// reference map. The first byte picks the mode: bounded (and its bound),
// TTL, eager compaction, a tiny arena, colliding hashes. After every operation: a found
// entry has the right id; a certain miss is a key that is not in the
// reference at all, and once the cache has evicted, expired or rejected
// an entry no miss is certain; in unbounded mode without a full arena,
// every reference key that has not expired is found, and none that has. The bookkeeping invariants are checked
// throughout.
func FuzzCache(f *testing.F) {
	f.Add([]byte{0, 0, 1, 1, 0, 2, 2, 1, 1, 1, 2, 1, 2})
	f.Add([]byte{0x31, 0, 1, 0, 0, 2, 0, 0, 3, 0, 0, 4, 0, 0, 5, 1, 1, 1, 1, 3, 1})
	f.Add([]byte{0x06, 0, 1, 5, 3, 60, 0, 1, 1, 0, 3, 200, 0, 1, 1, 1, 4, 0, 1, 1})
	f.Add([]byte{0x0c, 0, 60, 1, 0, 61, 2, 0, 62, 3, 0, 63, 4, 0, 60, 5, 2, 60, 0, 1, 1})
	f.Add([]byte{0x77, 0, 9, 9, 0, 8, 8, 4, 0, 0, 1, 9, 0, 2, 8, 0, 3, 100, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		cfg := data[0]
		data = data[1:]
		clk := newFakeClock()
		opts := slimcache.Options{TTL: -1, Now: clk.Now}
		if cfg&1 != 0 {
			opts.MaxEntries = int(cfg>>4) + 1
		}
		const ttl = 10 * time.Second
		if cfg&2 != 0 {
			opts.TTL = ttl
		}
		setup := func(c *slimcache.Cache) {
			if cfg&4 != 0 {
				slimcache.SetMinGarbage(c, 0)
			}
			if cfg&8 != 0 {
				slimcache.SetMaxChunks(c, 2)
			}
			if cfg&0x80 != 0 {
				// Keys collide in group and tag: only the key bytes
				// tell them apart.
				slimcache.SetHashMask(c, 0x8000_0000_0000_0003)
			}
		}
		c := slimcache.New(opts)
		setup(c)
		ref := map[string]refEntry{}
		exact := opts.MaxEntries == 0 // every live reference key must be found
		lossy := false                // a miss may be uncertain

		next := func() byte {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return b
		}
		for step := 0; len(data) > 0; step++ {
			op, kb := next(), next()
			key := fuzzKey(kb)
			switch op % 6 {
			case 0, 5: // Put
				id := int64(next()) - 128
				if op%6 == 5 {
					id = int64(step) << 40
				}
				rejected := c.Stats().Rejected
				c.Put(key, id)
				if c.Stats().Rejected != rejected {
					delete(ref, key)
					exact, lossy = false, true
				} else {
					ref[key] = refEntry{id, clk.Now()}
				}
			case 1: // Lookup
				id, found, certain := c.Lookup(key)
				e, inRef := ref[key]
				alive := inRef && clk.Now().Sub(e.at) < ttl || inRef && opts.TTL < 0
				switch {
				case found && !alive:
					t.Fatalf("step %d: %q found (id %d), reference has %+v (in %v, alive %v)", step, key, id, e, inRef, alive)
				case found && id != e.id:
					t.Fatalf("step %d: %q id %d, want %d", step, key, id, e.id)
				case !found && certain && inRef:
					t.Fatalf("step %d: %q certainly absent, reference has %+v", step, key, e)
				case !found && alive && exact:
					t.Fatalf("step %d: %q missing, want id %d", step, key, e.id)
				case !found && certain && lossy:
					t.Fatalf("step %d: %q certain miss after a lost entry", step, key)
				}
				if inRef && !alive && !found {
					delete(ref, key)
					lossy = true
				}
			case 2: // Delete
				e, inRef := ref[key]
				alive := inRef && (opts.TTL < 0 || clk.Now().Sub(e.at) < ttl)
				got := c.Delete(key)
				if got && !alive || !got && alive && exact {
					t.Fatalf("step %d: Delete(%q) = %v, reference alive %v", step, key, got, alive)
				}
				if inRef && !alive {
					lossy = true
				}
				delete(ref, key)
			case 3: // the clock moves, in whole seconds (above the granularity)
				clk.Advance(time.Duration(kb%8) * time.Second)
			case 4: // snapshot and restore
				var buf bytes.Buffer
				if err := c.WriteSnapshot(&buf); err != nil {
					t.Fatal(err)
				}
				r, err := slimcache.ReadSnapshot(&buf, opts)
				if err != nil {
					t.Fatalf("step %d: restore: %v", step, err)
				}
				if r.Len() != c.Len() {
					t.Fatalf("step %d: restored Len %d, want %d", step, r.Len(), c.Len())
				}
				c = r
				setup(c)
			}
			if st := c.Stats(); st.Evictions > 0 || st.Expirations > 0 {
				lossy = true // the cache knows it lost an entry
			}
			if opts.MaxEntries > 0 && c.Len() > opts.MaxEntries {
				t.Fatalf("step %d: Len %d over MaxEntries %d", step, c.Len(), opts.MaxEntries)
			}
			if exact && opts.TTL < 0 && c.Len() != len(ref) {
				t.Fatalf("step %d: Len %d, reference has %d", step, c.Len(), len(ref))
			}
			if err := slimcache.CheckInvariants(c); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		}
	})
}

// FuzzNormalize checks that NormalizeJSON never panics, agrees with
// Normalize on the decoded value, and never returns an empty key as a
// match.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{
		`"  Foo@Example.COM "`, `"01234"`, `"0x1A"`, `1.0`, `-0`, `1e21`, `1e-7`,
		`[1, "b", "A", null, []]`, `{"item_id": 5}`, `{"value": {"profile_id": 3}}`,
		`"\u00c0\ufeff"`, `true`, `null`, `"\ud800"`, `12345678901234567890123e-30`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		key, ok := slimcache.NormalizeJSON(raw)
		if ok != (key != "") {
			t.Fatalf("NormalizeJSON(%q) = %q, %v", raw, key, ok)
		}
		checkSameAsDecoded(t, raw)
		if k, ok := slimcache.Normalize(string(raw)); ok != (k != "") {
			t.Fatalf("Normalize(%q) = %q, %v", raw, k, ok)
		}
		if k, ok := slimcache.Normalize(json.Number(raw)); ok != (k != "") {
			t.Fatalf("Normalize(json.Number(%q)) = %q, %v", raw, k, ok)
		}
	})
}

// FuzzNormalizeNumbers checks that two JSON numbers get the same key
// exactly when they are equal.
func FuzzNormalizeNumbers(f *testing.F) {
	for _, p := range [][2]string{
		{"1", "1.0"}, {"1e0", "10e-1"}, {"-0", "0"}, {"0.5", "5e-1"}, {"1e21", "1000000000000000000000"},
		{"123.456", "123456e-3"}, {"1", "2"}, {"1e-7", "0.0000001"}, {"12345678901234567890", "12345678901234567891"},
	} {
		f.Add(p[0], p[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ra, okA := ratOf(a)
		rb, okB := ratOf(b)
		if !okA || !okB {
			return
		}
		ka, _ := slimcache.Normalize(json.Number(a))
		kb, _ := slimcache.Normalize(json.Number(b))
		if (ka == kb) != (ra.Cmp(rb) == 0) {
			t.Fatalf("%s -> %q, %s -> %q, equal values %v", a, ka, b, kb, ra.Cmp(rb) == 0)
		}
		kj, _ := slimcache.NormalizeJSON([]byte(a))
		if kj != ka {
			t.Fatalf("NormalizeJSON(%s) = %q, Normalize = %q", a, kj, ka)
		}
	})
}

// ratOf parses a valid JSON number with a modest exponent.
func ratOf(s string) (*big.Rat, bool) {
	if len(s) > 200 || !json.Valid([]byte(s)) {
		return nil, false
	}
	var n json.Number
	if json.Unmarshal([]byte(s), &n) != nil || string(n) != s {
		return nil, false // not a number (a string, an object...)
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 && len(strings.TrimLeft(s[i+1:], "+-0")) > 3 {
		return nil, false
	}
	r, ok := new(big.Rat).SetString(s)
	return r, ok
}

// FuzzReadSnapshot checks that any bytes give a cache or an error wrapping
// ErrCorruptSnapshot, never a panic, and that an accepted snapshot makes
// a consistent cache that writes the same snapshot back.
func FuzzReadSnapshot(f *testing.F) {
	for _, n := range []int{0, 1, 3, 50} {
		clk := newFakeClock()
		c := slimcache.New(slimcache.Options{Now: clk.Now, MaxEntries: 30})
		for i := range uint64(n) {
			c.Put(fuzzKey(byte(i)), int64(i)*7-3)
			clk.Advance(time.Duration(i) * time.Second)
		}
		var buf bytes.Buffer
		if err := c.WriteSnapshot(&buf); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := slimcache.ReadSnapshot(bytes.NewReader(data), slimcache.Options{TTL: -1})
		if err != nil {
			if !errors.Is(err, slimcache.ErrCorruptSnapshot) {
				t.Fatalf("error %v does not wrap ErrCorruptSnapshot", err)
			}
			return
		}
		if err := slimcache.CheckInvariants(c); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := c.WriteSnapshot(&buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), data) {
			t.Fatal("an accepted snapshot does not write back the same bytes")
		}
	})
}
