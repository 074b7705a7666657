package slimcache_test

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/pkg/slimcache"
)

func TestNormalize(t *testing.T) {
	n := func(s string) json.Number { return json.Number(s) }
	tests := []struct {
		name string
		in   any
		want string // "" means ("", false)
	}{
		{"text is trimmed and lowercased", "  Foo@Example.COM\t", "foo@example.com"},
		{"a numeric string stays text", "01234", "01234"},
		{"a hex string stays text", "0x1A", "0x1a"},
		{"a float string stays text", "1.0", "1.0"},
		{"empty string", "", ""},
		{"white space only", " \t\n ", ""},
		{"Unicode white space only", "\u00a0\u2003\u3000", ""},
		{"byte order mark is trimmed", "\ufeffAbc", "abc"},
		{"non-ASCII lowercased", " ÀÉÎ Straße ", "àéî straße"},
		{"inner space kept", "Ann  Lee", "ann  lee"},

		{"integer", n("42"), "42"},
		{"1.0 is 1", n("1.0"), "1"},
		{"1e0 is 1", n("1e0"), "1"},
		{"10e-1 is 1", n("10e-1"), "1"},
		{"1E+0 is 1", n("1E+0"), "1"},
		{"100e-2 is 1", n("100e-2"), "1"},
		{"minus zero", n("-0"), "0"},
		{"zero with fraction", n("0.000"), "0"},
		{"zero with exponent", n("-0e5"), "0"},
		{"half", n("5e-1"), "0.5"},
		{"negative", n("-12.50"), "-12.5"},
		{"1e21 goes exponential", n("1e21"), "1e+21"},
		{"21 digits stay positional", n("123456789012345678901"), "123456789012345678901"},
		{"22 digits go exponential", n("1234567890123456789012"), "1.234567890123456789012e+21"},
		{"1e-7 goes exponential", n("0.0000001"), "1e-7"},
		{"1e-6 stays positional", n("1e-6"), "0.000001"},
		{"small with digits", n("-1.50e-7"), "-1.5e-7"},
		{"beyond float precision is exact", n("12345678901234567890123.5"), "1.23456789012345678901235e+22"},
		{"huge exponent", n("2.50e99999999999999999999"), "2.5e+99999999999999999999"},
		{"huge negative exponent", n("1e-99999999999999999999"), "1e-99999999999999999999"},
		{"leading zeros in exponent", n("1e0000000000000000000002"), "100"},
		{"invalid number is text", n("0x1A"), "0x1a"},
		{"leading zero number is text", n("01234"), "01234"},

		{"float64 integer", float64(1), "1"},
		{"float64 fraction", 1.5, "1.5"},
		{"float64 minus zero", math.Copysign(0, -1), "0"},
		{"float64 tenth", 0.1, "0.1"},
		{"float64 1e21", 1e21, "1e+21"},
		{"float64 tiny", 1e-7, "1e-7"},
		{"float64 big integer", 123456789.0, "123456789"},
		{"float64 NaN", math.NaN(), ""},
		{"float64 Inf", math.Inf(-1), ""},
		{"float32", float32(0.1), "0.1"},
		{"int zero", 0, "0"},
		{"int64", int64(-5), "-5"},
		{"uint64 max", uint64(math.MaxUint64), "18446744073709551615"},
		{"int8", int8(-8), "-8"},

		{"true", true, "true"},
		{"false is a key", false, "false"},
		{"null", nil, ""},

		{"array sorted and joined", []any{"B", " a ", n("2"), nil, "", []any{}}, "2,a,b"},
		{"array duplicates kept", []any{"x", "X"}, "x,x"},
		{"empty array", []any{}, ""},
		{"array of empties", []any{nil, "", " "}, ""},
		{"nested array", []any{[]any{"b", "a"}, "c"}, "a,b,c"},

		{"item_id first", map[string]any{"value": "x", "item_id": n("5")}, "5"},
		{"profile_id", map[string]any{"profile_id": n("7"), "user_id": n("8"), "value": "v"}, "7"},
		{"user_id", map[string]any{"user_id": n("8"), "value": "v"}, "8"},
		{"value", map[string]any{"value": " V ", "title": "t"}, "v"},
		{"empty item_id falls through", map[string]any{"item_id": nil, "profile_id": n("7")}, "7"},
		{"nested value", map[string]any{"value": map[string]any{"item_id": n("3")}}, "3"},
		{"value array", map[string]any{"value": []any{"b", "a"}}, "a,b"},
		{"object without match fields", map[string]any{"title": "x"}, ""},
		{"empty object", map[string]any{}, ""},

		{"raw message", json.RawMessage(`" X "`), "x"},
		{"unsupported type", struct{}{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := slimcache.Normalize(tt.in)
			if got != tt.want || ok != (tt.want != "") {
				t.Fatalf("Normalize(%#v) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.want != "")
			}
		})
	}
}

func TestNormalizeJSON(t *testing.T) {
	tests := []struct {
		raw  string
		want string
	}{
		{`"  Foo@Example.COM "`, "foo@example.com"},
		{`"foo"`, "foo"},
		{`"01234"`, "01234"},
		{`"0x1A"`, "0x1a"},
		{`"\u0041b\tC"`, "ab\tc"},
		{`"a\"b"`, `a"b`},
		{`"\u00C0"`, "à"},
		{`"Ünïcode"`, "ünïcode"},
		{`" \u00a0 "`, ""},
		{`""`, ""},
		{` 42 `, "42"},
		{`1.0`, "1"},
		{`-0`, "0"},
		{`1e21`, "1e+21"},
		{`0`, "0"},
		{`false`, "false"},
		{`true`, "true"},
		{`null`, ""},
		{`[1, "1", 1.0, null, ""]`, "1,1,1"},
		{`[]`, ""},
		{`{}`, ""},
		{`{"item_id": 12, "title": "x"}`, "12"},
		{`{"value": {"id": 3, "text": "x"}}`, ""},
		{`{"item_id": 1, "item_id": 2}`, "2"}, // the last duplicate wins, as in encoding/json

		// Invalid JSON never matches.
		{`"abc`, ""},
		{`abc`, ""},
		{`1 2`, ""},
		{`01`, ""},
		{`-`, ""},
		{`1.`, ""},
		{`tru`, ""},
		{`nulls`, ""},
		{"\"a\x01\"", ""},
		{`[1,]`, ""},
		{`{"a":1`, ""},
		{``, ""},
		{`   `, ""},
	}
	for _, tt := range tests {
		got, ok := slimcache.NormalizeJSON([]byte(tt.raw))
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("NormalizeJSON(%s) = %q, %v; want %q, %v", tt.raw, got, ok, tt.want, tt.want != "")
		}
		checkSameAsDecoded(t, []byte(tt.raw))
	}
}

// checkSameAsDecoded checks that NormalizeJSON on raw agrees with
// Normalize on raw decoded with UseNumber, for valid JSON.
func checkSameAsDecoded(t testing.TB, raw []byte) {
	t.Helper()
	if !json.Valid(raw) {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", raw, err)
	}
	want, wantOK := slimcache.Normalize(v)
	got, ok := slimcache.NormalizeJSON(raw)
	if got != want || ok != wantOK {
		t.Fatalf("NormalizeJSON(%q) = %q, %v; Normalize(decoded) = %q, %v", raw, got, ok, want, wantOK)
	}
}

// BenchmarkNormalizeJSON measures the batcher's per-item cost: a plain
// string, a number, and an object (which takes the decoding path).
func BenchmarkNormalizeJSON(b *testing.B) {
	const rounds = 1_000_000
	for _, tt := range []struct{ name, raw string }{
		{"string", `"Ann.Lee@Example.com"`},
		{"number", `123456789`},
		{"object", `{"item_id": 42}`},
	} {
		raw := []byte(tt.raw)
		start := time.Now()
		for range rounds {
			if _, ok := slimcache.NormalizeJSON(raw); !ok {
				b.Fatalf("NormalizeJSON(%s): no key", raw)
			}
		}
		benchfmt.Report(b, "slimcache_normalize_json_"+tt.name+"_ns",
			float64(time.Since(start).Nanoseconds())/rounds, "ns/op")
	}
}
