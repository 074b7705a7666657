package jsonl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/memvisor/memvisor/pkg/connector"
)

// MaxLineBytes is the longest line a source or target line may be. A
// longer source line is a malformed record; it is skipped, not loaded.
const MaxLineBytes = 16 << 20

// rawKeep is how much of a malformed line failed.jsonl keeps.
const rawKeep = 512

// Source reads a JSONL file of {"item_id": N, "fields": {...}} objects.
// It is not safe for concurrent use.
type Source struct {
	f   *os.File
	r   *bufio.Reader
	pos connector.Cursor // where r is
	buf []byte
}

var _ connector.Source = (*Source)(nil)

// OpenSource opens a JSONL source file.
func OpenSource(path string) (*Source, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	return &Source{f: f, r: bufio.NewReaderSize(f, 256<<10)}, nil
}

// Close closes the file.
func (s *Source) Close() error { return s.f.Close() }

// Total counts the file's lines, which is close to its number of records
// (blank lines count too). It reads the file once, at about the disk's
// speed, and is called once per run.
func (s *Source) Total(ctx context.Context) (int64, bool, error) {
	f, err := os.Open(s.f.Name())
	if err != nil {
		return 0, false, fmt.Errorf("count source lines: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	var last byte = '\n'
	for {
		if err := ctx.Err(); err != nil {
			return 0, false, err
		}
		k, err := f.Read(buf)
		if k > 0 {
			n += int64(bytes.Count(buf[:k], []byte{'\n'}))
			last = buf[k-1]
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, false, fmt.Errorf("count source lines: %w", err)
		}
	}
	if last != '\n' {
		n++
	}
	return n, true, nil
}

// Size returns the file's size in bytes, for progress by position.
func (s *Source) Size() (int64, error) {
	fi, err := s.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Read returns up to limit records from cur. Blank lines are skipped and
// are not records. A line that is not a valid item becomes a record with
// Err set.
func (s *Source) Read(ctx context.Context, cur connector.Cursor, limit int) ([]connector.Record, connector.Cursor, error) {
	if err := ctx.Err(); err != nil {
		return nil, cur, err
	}
	if cur != s.pos {
		if _, err := s.f.Seek(cur.Offset, io.SeekStart); err != nil {
			return nil, cur, fmt.Errorf("seek source to byte %d: %w", cur.Offset, err)
		}
		s.r.Reset(s.f)
		s.pos = cur
	}
	recs := make([]connector.Record, 0, limit)
	for len(recs) < limit {
		start := s.pos
		line, n, tooLong, err := s.readLine()
		if n == 0 && errors.Is(err, io.EOF) {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return recs, s.pos, fmt.Errorf("read source line %d: %w", start.Line+1, err)
		}
		s.pos.Offset += int64(n)
		s.pos.Line++
		if tooLong {
			s.pos.Index++
			recs = append(recs, connector.Record{
				Pos: start,
				Err: fmt.Errorf("line %d is longer than %d bytes", start.Line+1, MaxLineBytes),
				Raw: clip(line),
			})
			continue
		}
		trimmed := bytes.TrimSpace(line)
		if len(trimmed) == 0 {
			continue
		}
		s.pos.Index++
		it, derr := DecodeItem(trimmed)
		rec := connector.Record{Pos: start, Item: it}
		if derr != nil {
			rec.Err = fmt.Errorf("line %d: %w", start.Line+1, derr)
			rec.Raw = clip(trimmed)
		}
		recs = append(recs, rec)
	}
	if len(recs) == 0 {
		return nil, s.pos, io.EOF
	}
	return recs, s.pos, nil
}

// readLine returns the next line without its newline, the bytes consumed
// (newline included), and whether the line was cut at MaxLineBytes.
func (s *Source) readLine() (line []byte, n int, tooLong bool, err error) {
	s.buf = s.buf[:0]
	for {
		frag, e := s.r.ReadSlice('\n')
		n += len(frag)
		if len(s.buf)+len(frag) <= MaxLineBytes {
			s.buf = append(s.buf, frag...)
		} else {
			tooLong = true
		}
		if e == nil {
			break
		}
		if errors.Is(e, bufio.ErrBufferFull) {
			continue
		}
		err = e
		break
	}
	line = bytes.TrimSuffix(s.buf, []byte{'\n'})
	return line, n, tooLong, err
}

func clip(b []byte) []byte {
	if len(b) > rawKeep {
		b = b[:rawKeep]
	}
	return bytes.Clone(b)
}

// sourceLine is the shape of a source line. external_id is accepted, so
// that a target file can be read back as a source.
type sourceLine struct {
	ItemID     json.RawMessage  `json:"item_id"`
	ExternalID *json.RawMessage `json:"external_id"`
	Fields     connector.Fields `json:"fields"`
}

// DecodeItem decodes one source line.
func DecodeItem(line []byte) (connector.Item, error) {
	var l sourceLine
	if err := json.Unmarshal(line, &l); err != nil {
		return connector.Item{}, fmt.Errorf("not a JSON object: %w", err)
	}
	if len(l.ItemID) == 0 {
		return connector.Item{}, errors.New(`missing "item_id"`)
	}
	id, err := strconv.ParseInt(string(l.ItemID), 10, 64)
	if err != nil || id <= 0 {
		return connector.Item{ID: 0}, fmt.Errorf(`"item_id" must be a positive integer (got %s)`, l.ItemID)
	}
	if l.Fields == nil {
		return connector.Item{ID: id}, errors.New(`missing "fields" object`)
	}
	return connector.Item{ID: id, Fields: l.Fields}, nil
}
