package jsonl

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/memvisor/memvisor/pkg/connector"
)

// AppendLine appends one target line, with its newline, to dst. Fields are
// written in key order, so the same item always gives the same bytes.
// externalID "" writes no external_id key (an update line).
func AppendLine(dst []byte, id int64, externalID string, f connector.Fields) []byte {
	return appendLineEncoded(dst, id, externalID, AppendFields(nil, f))
}

// appendLineEncoded appends a line around fields already encoded by
// AppendFields.
func appendLineEncoded(dst []byte, id int64, externalID string, fields []byte) []byte {
	dst = append(dst, `{"item_id":`...)
	dst = strconv.AppendInt(dst, id, 10)
	if externalID != "" {
		dst = append(dst, `,"external_id":`...)
		dst = AppendString(dst, externalID)
	}
	dst = append(dst, `,"fields":`...)
	dst = append(dst, fields...)
	return append(dst, "}\n"...)
}

// AppendFields appends f as a JSON object with sorted keys. Values are
// copied as they are, compacted if they span lines.
func AppendFields(dst []byte, f connector.Fields) []byte {
	var small [16]string
	keys := small[:0]
	for k := range f {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendString(dst, k)
		dst = append(dst, ':')
		v := f[k]
		switch {
		case len(v) == 0:
			dst = append(dst, "null"...)
		case bytes.IndexByte(v, '\n') >= 0 || bytes.IndexByte(v, '\r') >= 0:
			var b bytes.Buffer
			if err := json.Compact(&b, v); err != nil {
				dst = append(dst, "null"...)
			} else {
				dst = append(dst, b.Bytes()...)
			}
		default:
			dst = append(dst, v...)
		}
	}
	return append(dst, '}')
}

const hex = "0123456789abcdef"

// AppendString appends s as a JSON string, as encoding/json would, without
// HTML escaping.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
