package jsonl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/memvisor/memvisor/pkg/connector"
)

var _ connector.KeyScanner = (*Target)(nil)

// ScanKeys streams each line's id, external_id and the value of one field,
// without decoding the other fields. Lines in the form this package writes
// take a fast path that only finds where values end; any other line is
// decoded in full.
func (t *Target) ScanKeys(ctx context.Context, since connector.Mark, field string, fn func(id int64, externalID string, value json.RawMessage) error) (connector.Mark, error) {
	t.mu.Lock()
	if err := t.flushLocked(); err != nil {
		t.mu.Unlock()
		return since, err
	}
	end := t.size
	t.mu.Unlock()
	if int64(since) > end {
		return since, fmt.Errorf("scan target %s from byte %d: the file has only %d bytes; it was truncated or replaced since the checkpoint", t.path, since, end)
	}
	off, err := t.scan(ctx, int64(since), end, func(id, off int64, line []byte) error {
		ext, val, ok := lineKeys(line, field)
		if !ok {
			var l targetLine
			if err := json.Unmarshal(line, &l); err != nil {
				return fmt.Errorf("decode target %s line at byte %d: %w", t.path, off, err)
			}
			ext, val = l.ExternalID, l.Fields[field]
		}
		return fn(id, ext, val)
	})
	return connector.Mark(off), err
}

// lineKeys reads external_id and fields[field] from a line of the form
// {"item_id":N,"external_id":"X","fields":{...}} (external_id optional).
// It returns ok=false for anything else, and the caller decodes the line
// in full.
func lineKeys(line []byte, field string) (ext string, val json.RawMessage, ok bool) {
	const prefix = `{"item_id":`
	if !bytes.HasPrefix(line, []byte(prefix)) {
		return "", nil, false
	}
	i := len(prefix)
	for i < len(line) && line[i] >= '0' && line[i] <= '9' {
		i++
	}
	rest := line[i:]
	if bytes.HasPrefix(rest, []byte(`,"external_id":`)) {
		i += len(`,"external_id":`)
		j, ok := skipString(line, i)
		if !ok {
			return "", nil, false
		}
		s, ok := unquote(line[i:j])
		if !ok {
			return "", nil, false
		}
		ext, i = s, j
	}
	if !bytes.HasPrefix(line[i:], []byte(`,"fields":{`)) {
		return "", nil, false
	}
	i += len(`,"fields":{`)
	for {
		if i < len(line) && line[i] == '}' {
			// End of fields: the line must end with "}}".
			return ext, val, bytes.Equal(bytes.TrimRight(line[i:], " \t\r\n"), []byte("}}"))
		}
		if i >= len(line) || line[i] != '"' {
			return "", nil, false
		}
		j, ok := skipString(line, i)
		if !ok || j >= len(line) || line[j] != ':' {
			return "", nil, false
		}
		key := line[i:j]
		k := j + 1
		e, ok := skipValue(line, k)
		if !ok {
			return "", nil, false
		}
		if keyEquals(key, field) {
			val = json.RawMessage(line[k:e])
		}
		i = e
		if i < len(line) && line[i] == ',' {
			i++
		}
	}
}

func keyEquals(quoted []byte, s string) bool {
	if bytes.IndexByte(quoted, '\\') < 0 {
		return len(quoted) == len(s)+2 && string(quoted[1:len(quoted)-1]) == s
	}
	u, ok := unquote(quoted)
	return ok && u == s
}

func unquote(quoted []byte) (string, bool) {
	if bytes.IndexByte(quoted, '\\') < 0 {
		return string(quoted[1 : len(quoted)-1]), true
	}
	var s string
	if json.Unmarshal(quoted, &s) != nil {
		return "", false
	}
	return s, true
}

// skipString returns the index after the string that starts at b[i].
func skipString(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, true
		}
	}
	return 0, false
}

// skipValue returns the index after the JSON value that starts at b[i]. It
// finds the end without validating what it skips; a value that is kept is
// validated later by whoever decodes it.
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				j, ok := skipString(b, i)
				if !ok {
					return 0, false
				}
				i = j
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			}
			i++
		}
		return 0, false
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' {
		j++
	}
	if j == i {
		return 0, false
	}
	if _, err := strconv.ParseFloat(string(b[i:j]), 64); err != nil {
		switch string(b[i:j]) {
		case "true", "false", "null":
		default:
			return 0, false
		}
	}
	return j, true
}
