package slimcache

import (
	"bytes"
	"encoding/json"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// objectKeys are the fields an object's match value comes from, in order.
var objectKeys = [...]string{"item_id", "profile_id", "user_id", "value"}

// Normalize returns the match key of a field value, and false when the
// value is empty and so never matches. v is what encoding/json produces
// with UseNumber (string, json.Number, float64, bool, nil, []any,
// map[string]any); integer types, float32 and json.RawMessage are
// accepted too. The rules are in the package documentation.
func Normalize(v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "", false
	case string:
		return normalizeText(v)
	case json.Number:
		if s, ok := canonNumber(string(v)); ok {
			return s, true
		}
		return normalizeText(string(v))
	case float64:
		return normalizeFloat(v, 64)
	case float32:
		return normalizeFloat(float64(v), 32)
	case bool:
		return strconv.FormatBool(v), true
	case int:
		return strconv.FormatInt(int64(v), 10), true
	case int8:
		return strconv.FormatInt(int64(v), 10), true
	case int16:
		return strconv.FormatInt(int64(v), 10), true
	case int32:
		return strconv.FormatInt(int64(v), 10), true
	case int64:
		return strconv.FormatInt(v, 10), true
	case uint:
		return strconv.FormatUint(uint64(v), 10), true
	case uint8:
		return strconv.FormatUint(uint64(v), 10), true
	case uint16:
		return strconv.FormatUint(uint64(v), 10), true
	case uint32:
		return strconv.FormatUint(uint64(v), 10), true
	case uint64:
		return strconv.FormatUint(v, 10), true
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			if s, ok := Normalize(e); ok {
				parts = append(parts, s)
			}
		}
		if len(parts) == 0 {
			return "", false
		}
		slices.Sort(parts)
		return strings.Join(parts, ","), true
	case map[string]any:
		for _, k := range objectKeys {
			if e, ok := v[k]; ok {
				if s, ok := Normalize(e); ok {
					return s, true
				}
			}
		}
		return "", false
	case json.RawMessage:
		return NormalizeJSON(v)
	}
	return "", false
}

// NormalizeJSON is Normalize applied to one raw JSON value, as decoded
// with UseNumber. Strings without escapes or non-ASCII bytes, numbers
// and literals are handled without decoding; arrays and objects are
// decoded. Invalid JSON gives ("", false).
func NormalizeJSON(raw []byte) (string, bool) {
	raw = trimBytes(raw, isJSONSpace)
	if len(raw) == 0 {
		return "", false
	}
	switch b := raw[0]; {
	case b == '"':
		if s, ok, done := asciiString(raw); done {
			return s, ok
		}
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return normalizeText(s)
	case b == '-' || b >= '0' && b <= '9':
		return canonNumber(raw)
	case b == 't' || b == 'f' || b == 'n':
		switch string(raw) {
		case "true", "false":
			return string(raw), true
		}
		return "", false
	case b == '[' || b == '{':
		if !json.Valid(raw) {
			return "", false
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		if dec.Decode(&v) != nil {
			return "", false
		}
		return Normalize(v)
	}
	return "", false
}

func isJSONSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

// trimBytes trims the single-byte characters for which space is true.
func trimBytes(b []byte, space func(byte) bool) []byte {
	for len(b) > 0 && space(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && space(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// asciiString normalizes a JSON string of printable ASCII without
// escapes. done is false when raw needs the full decoder.
func asciiString(raw []byte) (s string, ok, done bool) {
	if len(raw) < 2 || raw[len(raw)-1] != '"' {
		return "", false, false
	}
	body := raw[1 : len(raw)-1]
	upper := false
	for _, b := range body {
		if b < 0x20 || b >= 0x80 || b == '"' || b == '\\' {
			return "", false, false
		}
		upper = upper || b >= 'A' && b <= 'Z'
	}
	body = trimBytes(body, isASCIISpace)
	if len(body) == 0 {
		return "", false, true
	}
	if !upper {
		return string(body), true, true
	}
	out := make([]byte, len(body))
	for i, b := range body {
		if b >= 'A' && b <= 'Z' {
			b += 'a' - 'A'
		}
		out[i] = b
	}
	return string(out), true, true
}

func isASCIISpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r'
}

// isSpace is JavaScript's String.prototype.trim set, which adds the
// byte order mark to Unicode's white space.
func isSpace(r rune) bool { return unicode.IsSpace(r) || r == '\uFEFF' }

// normalizeText trims white space and lowercases.
func normalizeText(s string) (string, bool) {
	ascii, upper := true, false
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b >= utf8.RuneSelf {
			ascii = false
			break
		}
		upper = upper || b >= 'A' && b <= 'Z'
	}
	if ascii {
		for len(s) > 0 && isASCIISpace(s[0]) {
			s = s[1:]
		}
		for len(s) > 0 && isASCIISpace(s[len(s)-1]) {
			s = s[:len(s)-1]
		}
		if upper {
			s = strings.ToLower(s)
		}
		return s, s != ""
	}
	s = strings.ToLower(strings.TrimFunc(s, isSpace))
	return s, s != ""
}

func normalizeFloat(f float64, bitSize int) (string, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", false
	}
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return strconv.FormatInt(int64(f), 10), true
	}
	return canonNumber(strconv.FormatFloat(f, 'e', -1, bitSize))
}

// canonNumber writes a JSON number in the form of ECMAScript's
// Number::toString, but from its exact decimal digits, so that two
// numbers get the same key exactly when they are equal: 1, 1.0, 10e-1
// and 1e0 are all "1". ok is false when s is not a JSON number.
func canonNumber[T string | []byte](s T) (string, bool) {
	i, neg := 0, false
	if i < len(s) && s[i] == '-' {
		neg = true
		i++
	}
	intStart := i
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	default:
		return "", false
	}
	intEnd := i
	if i == len(s) {
		// A plain integer is already canonical unless it is -0 or too
		// long for the positional form.
		switch {
		case intEnd-intStart > 21:
		case neg && s[intStart] == '0':
			return "0", true
		default:
			return string(s), true
		}
	}
	fracStart, fracEnd := i, i
	if i < len(s) && s[i] == '.' {
		i++
		fracStart = i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if i == fracStart {
			return "", false
		}
		fracEnd = i
	}
	expNeg, expStart := false, i
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			expNeg = s[i] == '-'
			i++
		}
		expStart = i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if i == expStart {
			return "", false
		}
	}
	expEnd := i
	if i != len(s) {
		return "", false
	}

	// The digits without leading and trailing zeros, and the exponent of
	// their last digit.
	digits := make([]byte, 0, intEnd-intStart+fracEnd-fracStart)
	for j := intStart; j < intEnd; j++ {
		digits = append(digits, s[j])
	}
	for j := fracStart; j < fracEnd; j++ {
		digits = append(digits, s[j])
	}
	lead := 0
	for lead < len(digits) && digits[lead] == '0' {
		lead++
	}
	digits = digits[lead:]
	if len(digits) == 0 {
		return "0", true
	}
	trail := 0
	for digits[len(digits)-1-trail] == '0' {
		trail++
	}
	digits = digits[:len(digits)-trail]
	shift := int64(trail) - int64(fracEnd-fracStart) + int64(len(digits))

	// n is the decimal point's position: value = 0.digits × 10^n.
	for expStart < expEnd && s[expStart] == '0' {
		expStart++
	}
	if expEnd-expStart > 15 {
		return hugeExponent(neg, digits, s[expStart:expEnd], expNeg, shift), true
	}
	var exp int64
	for j := expStart; j < expEnd; j++ {
		exp = exp*10 + int64(s[j]-'0')
	}
	if expNeg {
		exp = -exp
	}
	return formatNumber(neg, digits, exp+shift), true
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// formatNumber applies ECMAScript's Number::toString steps to the digits
// d (no leading or trailing zeros) with the decimal point at n.
func formatNumber(neg bool, d []byte, n int64) string {
	k := int64(len(d))
	var b strings.Builder
	b.Grow(len(d) + 24)
	if neg {
		b.WriteByte('-')
	}
	switch {
	case k <= n && n <= 21:
		b.Write(d)
		for range n - k {
			b.WriteByte('0')
		}
	case 0 < n && n <= 21:
		b.Write(d[:n])
		b.WriteByte('.')
		b.Write(d[n:])
	case -6 < n && n <= 0:
		b.WriteString("0.")
		for range -n {
			b.WriteByte('0')
		}
		b.Write(d)
	default:
		b.WriteByte(d[0])
		if k > 1 {
			b.WriteByte('.')
			b.Write(d[1:])
		}
		b.WriteByte('e')
		if n-1 >= 0 {
			b.WriteByte('+')
		}
		b.WriteString(strconv.FormatInt(n-1, 10))
	}
	return b.String()
}

// hugeExponent formats a number whose exponent has more than 15 digits.
// It is far outside the positional range, so only the exponential form
// applies; the exponent is computed exactly.
func hugeExponent[T string | []byte](neg bool, d []byte, expDigits T, expNeg bool, shift int64) string {
	e, _ := new(big.Int).SetString(string(expDigits), 10)
	if expNeg {
		e.Neg(e)
	}
	e.Add(e, big.NewInt(shift-1))
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	b.WriteByte(d[0])
	if len(d) > 1 {
		b.WriteByte('.')
		b.Write(d[1:])
	}
	b.WriteByte('e')
	if e.Sign() >= 0 {
		b.WriteByte('+')
	}
	b.WriteString(e.String())
	return b.String()
}
