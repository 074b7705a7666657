package faillog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/memvisor/memvisor/pkg/connector"
)

// Entry is one failed item.
type Entry struct {
	Time      time.Time          `json:"time"`
	SourceID  int64              `json:"source_id"`
	Line      int64              `json:"line,omitempty"`
	Pos       connector.Cursor   `json:"pos"`
	Category  connector.Category `json:"category"`
	Retryable bool               `json:"retryable"`
	Error     string             `json:"error"`
	Detail    json.RawMessage    `json:"detail,omitempty"`
	Raw       string             `json:"raw,omitempty"`
}

// Writer appends entries. It is not safe for concurrent use.
type Writer struct {
	dirty bool
	path  string
	f     *os.File
	w     *bufio.Writer
	size  int64
	added int64
	enc   *json.Encoder
	buf   bytes.Buffer
}

// Open opens path for appending, first cutting it to size bytes: entries
// after the last checkpoint belong to a batch that will be redone. A size
// of -1 keeps the file whole.
func Open(path string, size int64) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open failures log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat failures log %s: %w", path, err)
	}
	if size < 0 {
		size = fi.Size()
	}
	if size > fi.Size() {
		f.Close()
		return nil, fmt.Errorf("open failures log %s: the checkpoint expects %d bytes but the file has %d; it was truncated since", path, size, fi.Size())
	}
	if size < fi.Size() {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("cut failures log %s to its checkpoint: %w", path, err)
		}
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("seek failures log %s: %w", path, err)
	}
	w := &Writer{path: path, f: f, w: bufio.NewWriterSize(f, 64<<10), size: size}
	w.enc = json.NewEncoder(&w.buf)
	w.enc.SetEscapeHTML(false)
	return w, nil
}

// Append writes e.
func (w *Writer) Append(e Entry) error {
	w.buf.Reset()
	if err := w.enc.Encode(e); err != nil {
		return fmt.Errorf("encode failure entry: %w", err)
	}
	n, err := w.w.Write(w.buf.Bytes())
	w.size += int64(n)
	w.added++
	w.dirty = true
	if err != nil {
		return fmt.Errorf("write failures log %s: %w", w.path, err)
	}
	return nil
}

// Sync makes every entry durable and returns the file's size. Without new
// entries since the last Sync it costs nothing.
func (w *Writer) Sync() (int64, error) {
	if !w.dirty {
		return w.size, nil
	}
	if err := w.w.Flush(); err != nil {
		return 0, fmt.Errorf("write failures log %s: %w", w.path, err)
	}
	if err := w.f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync failures log %s: %w", w.path, err)
	}
	w.dirty = false
	return w.size, nil
}

// Size returns the bytes written so far.
func (w *Writer) Size() int64 { return w.size }

// Added returns how many entries were appended since Open.
func (w *Writer) Added() int64 { return w.added }

// Close syncs and closes the file.
func (w *Writer) Close() error {
	_, err := w.Sync()
	return errors.Join(err, w.f.Close())
}

// ReadPage reads up to limit entries starting at byte offset from, and
// returns the offset of the next page (0 and io.EOF at the end). A torn
// last line, from a runner killed mid-write, ends the page.
func ReadPage(path string, from int64, limit int) ([]Entry, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("open failures log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, 0, fmt.Errorf("seek failures log %s: %w", path, err)
	}
	r := bufio.NewReaderSize(f, 64<<10)
	var out []Entry
	off := from
	for len(out) < limit {
		line, err := r.ReadBytes('\n')
		if len(line) == 0 || line[len(line)-1] != '\n' {
			return out, 0, io.EOF
		}
		var e Entry
		if jerr := json.Unmarshal(line, &e); jerr != nil {
			return out, off, fmt.Errorf("read failures log %s at byte %d: %w", path, off, jerr)
		}
		off += int64(len(line))
		out = append(out, e)
		if err != nil {
			return out, 0, io.EOF
		}
	}
	if _, err := r.Peek(1); err != nil {
		return out, 0, io.EOF
	}
	return out, off, nil
}

// Each calls fn for every complete entry in the file.
func Each(path string, fn func(Entry) error) error {
	var from int64
	for {
		page, next, err := ReadPage(path, from, 1000)
		for _, e := range page {
			if ferr := fn(e); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		from = next
	}
}
