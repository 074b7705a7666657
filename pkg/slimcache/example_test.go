package slimcache_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/memvisor/memvisor/pkg/slimcache"
)

func Example() {
	// Prefetch the target's match values, then check source items.
	c := slimcache.New(slimcache.Options{ExpectedEntries: 2})
	for _, target := range []struct {
		email json.RawMessage
		id    int64
	}{
		{json.RawMessage(`"Ann@Example.com"`), 101},
		{json.RawMessage(`" bob@example.com "`), 102},
	} {
		if key, ok := slimcache.NormalizeJSON(target.email); ok {
			c.Put(key, target.id)
		}
	}
	for _, source := range []string{`"ANN@example.com"`, `"carol@example.com"`} {
		key, _ := slimcache.NormalizeJSON([]byte(source))
		if id, ok := c.Get(key); ok {
			fmt.Printf("%s exists as item %d\n", source, id)
		} else {
			fmt.Printf("%s is new\n", source)
		}
	}
	// Output:
	// "ANN@example.com" exists as item 101
	// "carol@example.com" is new
}

func ExampleNormalize() {
	for _, v := range []any{
		"  Foo@Example.COM ", // text: trimmed and lowercased
		"01234",              // text that looks like a number stays text
		"0x1A",
		json.Number("1.0"), // numbers are canonicalised
		json.Number("1e0"),
		json.Number("1e21"),
		float64(0.5),
		int64(0), // 0 and false are keys
		false,
		[]any{"B", json.Number("2"), "", "a"}, // arrays: normalized, empties dropped, sorted, joined
		map[string]any{"item_id": json.Number("42")}, // objects: item_id, profile_id, user_id, value
		map[string]any{"value": "Option A"},
		nil, // empty values never match
		"   ",
		[]any{},
		map[string]any{},
	} {
		key, ok := slimcache.Normalize(v)
		fmt.Printf("%-40s %q %v\n", fmt.Sprintf("%#v", v), key, ok)
	}
	// Output:
	// "  Foo@Example.COM "                     "foo@example.com" true
	// "01234"                                  "01234" true
	// "0x1A"                                   "0x1a" true
	// "1.0"                                    "1" true
	// "1e0"                                    "1" true
	// "1e21"                                   "1e+21" true
	// 0.5                                      "0.5" true
	// 0                                        "0" true
	// false                                    "false" true
	// []interface {}{"B", "2", "", "a"}        "2,a,b" true
	// map[string]interface {}{"item_id":"42"}  "42" true
	// map[string]interface {}{"value":"Option A"} "option a" true
	// <nil>                                    "" false
	// "   "                                    "" false
	// []interface {}{}                         "" false
	// map[string]interface {}{}                "" false
}

func ExampleNormalizeJSON() {
	for _, raw := range []string{`" Ann@Example.com"`, `1.50`, `[3, "x", null]`, `{"profile_id": 9}`, `null`, `not json`} {
		key, ok := slimcache.NormalizeJSON([]byte(raw))
		fmt.Printf("%-20s %q %v\n", raw, key, ok)
	}
	// Output:
	// " Ann@Example.com"   "ann@example.com" true
	// 1.50                 "1.5" true
	// [3, "x", null]       "3,x" true
	// {"profile_id": 9}    "9" true
	// null                 "" false
	// not json             "" false
}

func ExampleCache_Lookup() {
	// In bounded mode, a miss after an eviction proves nothing: the
	// batcher then asks the target by key.
	c := slimcache.New(slimcache.Options{MaxEntries: 2})
	c.Put("a", 1)
	c.Put("b", 2)
	_, found, certain := c.Lookup("z")
	fmt.Println("before eviction:", found, certain)
	c.Put("c", 3) // evicts one entry
	_, found, certain = c.Lookup("z")
	fmt.Println("after eviction:", found, certain)
	fmt.Println("entries:", c.Len(), "evictions:", c.Stats().Evictions)
	// Output:
	// before eviction: false true
	// after eviction: false false
	// entries: 2 evictions: 1
}

func ExampleCache_ttl() {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	c := slimcache.New(slimcache.Options{TTL: time.Hour, Now: clock})
	c.Put("a", 1)
	now = now.Add(59 * time.Minute)
	fmt.Println(c.Lookup("a"))
	now = now.Add(time.Minute)
	fmt.Println(c.Lookup("a"))
	fmt.Println("expirations:", c.Stats().Expirations)
	// Output:
	// 1 true true
	// 0 false false
	// expirations: 1
}

func ExampleReadSnapshot() {
	c := slimcache.New(slimcache.Options{})
	c.Put("ann@example.com", 101)
	var buf bytes.Buffer
	if err := c.WriteSnapshot(&buf); err != nil {
		fmt.Println(err)
		return
	}
	restored, err := slimcache.ReadSnapshot(bytes.NewReader(buf.Bytes()), slimcache.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(restored.Get("ann@example.com"))

	torn := buf.Bytes()[:buf.Len()-1]
	_, err = slimcache.ReadSnapshot(bytes.NewReader(torn), slimcache.Options{})
	fmt.Println(err)
	// Output:
	// 101 true
	// read cache snapshot: corrupt cache snapshot: truncated
}
