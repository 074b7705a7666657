package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/memvisor/memvisor/pkg/checkpoint"
	"github.com/memvisor/memvisor/pkg/faillog"
)

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// cmdCheckpoint validates a checkpoint with the project's own reader (the
// checksum included) and prints where it stands. It always exits 0: the
// script checks the fields.
func cmdCheckpoint(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: faultkit checkpoint STATE_DIR/JOB_ID")
		return exitCode(2)
	}
	type out struct {
		Exists      bool   `json:"exists"`
		OK          bool   `json:"ok"`
		Error       string `json:"error,omitempty"`
		Seq         int64  `json:"seq"`
		Index       int64  `json:"index"`
		Line        int64  `json:"line"`
		Offset      int64  `json:"offset"`
		Target      int64  `json:"target"`
		FailedBytes int64  `json:"failed_bytes"`
		Processed   int64  `json:"processed"`
		Done        bool   `json:"done"`
	}
	cp, err := checkpoint.Load(args[0])
	o := out{Exists: !errors.Is(err, checkpoint.ErrNotExist), OK: err == nil}
	if err != nil {
		o.Error = err.Error()
	} else {
		o.Seq, o.Index, o.Line, o.Offset = cp.Seq, cp.Source.Index, cp.Source.Line, cp.Source.Offset
		o.Target, o.FailedBytes, o.Processed, o.Done = int64(cp.Target), cp.FailedBytes, cp.Counters.Processed, cp.Done
	}
	return printJSON(stdout, o)
}

var seqField = regexp.MustCompile(`"seq":\s*(\d)`)

// cmdCorrupt damages a checkpoint file in place. flip changes one digit
// of the body (the JSON stays valid, only the checksum can tell); truncate
// cuts the file in half, as a torn write would.
func cmdCorrupt(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("corrupt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "flip", "flip or truncate")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: faultkit corrupt -mode flip|truncate FILE")
		return exitCode(2)
	}
	path := fs.Arg(0)
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	switch *mode {
	case "flip":
		m := seqField.FindSubmatchIndex(data)
		if m == nil {
			return fmt.Errorf("%s has no \"seq\" field to flip", path)
		}
		i := m[2]
		old := data[i]
		data[i] = '0' + (old-'0'+1)%10
		fmt.Fprintf(stdout, "flipped byte %d of %s: %q -> %q\n", i, path, old, data[i])
	case "truncate":
		data = data[:len(data)/2]
		fmt.Fprintf(stdout, "truncated %s to %d bytes\n", path, len(data))
	default:
		return fmt.Errorf("corrupt: unknown mode %q", *mode)
	}
	return os.WriteFile(path, data, 0o644)
}

// cmdFilestat prints a file's size, line count and digest.
func cmdFilestat(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: faultkit filestat FILE")
		return exitCode(2)
	}
	type out struct {
		Exists bool   `json:"exists"`
		Size   int64  `json:"size"`
		Lines  int64  `json:"lines"`
		SHA256 string `json:"sha256"`
	}
	f, err := os.Open(args[0])
	if errors.Is(err, os.ErrNotExist) {
		return printJSON(stdout, out{})
	}
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	var o out
	buf := make([]byte, 1<<20)
	for {
		n, err := f.Read(buf)
		h.Write(buf[:n])
		o.Size += int64(n)
		o.Lines += int64(bytes.Count(buf[:n], []byte{'\n'}))
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	o.Exists, o.SHA256 = true, hex.EncodeToString(h.Sum(nil))
	return printJSON(stdout, o)
}

// cmdFailed summarizes a failed.jsonl: how many entries, by category,
// how many say why, and which source lines they name.
func cmdFailed(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("failed", flag.ContinueOnError)
	fs.SetOutput(stderr)
	list := fs.Bool("list", false, "print one line per entry instead of the summary")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: faultkit failed [-list] FILE")
		return exitCode(2)
	}
	args = fs.Args()
	type out struct {
		Entries    int            `json:"entries"`
		Categories map[string]int `json:"categories"`
		// WithReason counts entries with a category and an error message.
		WithReason int `json:"with_reason"`
		Retryable  int `json:"retryable"`
		// Lines is the sorted source line numbers, comma separated.
		Lines string `json:"lines"`
		// SourceIDs is the sorted source item ids, comma separated.
		SourceIDs string `json:"source_ids"`
	}
	o := out{Categories: map[string]int{}}
	var lines, ids []int64
	err := faillog.Each(args[0], func(e faillog.Entry) error {
		if *list {
			where := fmt.Sprintf("item %d", e.SourceID)
			if e.Line > 0 {
				where = fmt.Sprintf("line %d", e.Line)
			}
			fmt.Fprintf(stdout, "%s: %s (retryable %t): %s\n", where, e.Category, e.Retryable, e.Error)
		}
		o.Entries++
		o.Categories[string(e.Category)]++
		if e.Category != "" && strings.TrimSpace(e.Error) != "" {
			o.WithReason++
		}
		if e.Retryable {
			o.Retryable++
		}
		if e.Line > 0 {
			lines = append(lines, e.Line)
		}
		if e.SourceID > 0 {
			ids = append(ids, e.SourceID)
		}
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if *list {
		return nil
	}
	o.Lines, o.SourceIDs = joinSorted(lines), joinSorted(ids)
	return printJSON(stdout, o)
}

func joinSorted(v []int64) string {
	slices.Sort(v)
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.FormatInt(n, 10)
	}
	return strings.Join(s, ",")
}

// cmdGenBad writes a jsonl source with bad records at known lines, and
// its fixed twin: the same file with those lines repaired in place (the
// line numbers do not move, which is how --retry-failed finds them). It
// prints a manifest of what it wrote.
func cmdGenBad(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gen-bad", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "the source `FILE`, with bad records")
	fixed := fs.String("fixed", "", "the fixed source `FILE`")
	count := fs.Int("count", 3000, "lines to write")
	from := fs.Int("from", 1, "the first line that may be bad")
	if err := fs.Parse(args); err != nil || *out == "" || *fixed == "" || *count < 100 || *from < 1 || *from > *count-100 {
		fmt.Fprintln(stderr, "usage: faultkit gen-bad -out FILE -fixed FILE [-count N>=100] [-from LINE<=N-100]")
		return exitCode(2)
	}
	n := *count
	// Each kind of bad record, at a line spread over the file: the first
	// line, batch boundaries, the last line.
	at := func(num, den int) int { return *from - 1 + max(1, (n-*from+1)*num/den) }
	type bad struct {
		line int
		kind string
		text func(id int) string
	}
	bads := []bad{
		{at(0, 1), "not JSON", func(id int) string { return fmt.Sprintf("user%d@example.com;Name %d", id, id) }},
		{at(1, 6), "truncated JSON", func(id int) string { return fmt.Sprintf(`{"item_id": %d, "fields": {"email": "user%d@exa`, id, id) }},
		{at(1, 4), "missing item_id", func(id int) string {
			return fmt.Sprintf(`{"fields": {"email": "user%d@example.com", "name": "Name %d"}}`, id, id)
		}},
		{at(1, 3) + 1, "item_id not an integer", func(id int) string {
			return fmt.Sprintf(`{"item_id": "id-%d", "fields": {"email": "user%d@example.com"}}`, id, id)
		}},
		{at(1, 2), "item_id negative", func(id int) string {
			return fmt.Sprintf(`{"item_id": -%d, "fields": {"email": "user%d@example.com"}}`, id, id)
		}},
		{at(2, 3), "missing fields", func(id int) string { return fmt.Sprintf(`{"item_id": %d, "name": "Name %d"}`, id, id) }},
		{at(3, 4), "fields not an object", func(id int) string {
			return fmt.Sprintf(`{"item_id": %d, "fields": "email=user%d@example.com"}`, id, id)
		}},
		{at(5, 6), "item_id zero", func(id int) string {
			return fmt.Sprintf(`{"item_id": 0, "fields": {"email": "user%d@example.com"}}`, id)
		}},
		{at(1, 1), "torn last line", func(id int) string { return fmt.Sprintf(`{"item_id": %d, "fields": {"em`, id) }},
	}
	byLine := map[int]bad{}
	for _, b := range bads {
		byLine[b.line] = b
	}
	good := func(id int) string {
		email := fmt.Sprintf("user%d@example.com", id)
		switch {
		case id%97 == 0:
			email = "" // an empty match value: migrated once, keyed by item_id
		case id%61 == 0:
			email = fmt.Sprintf("  USER%d@Example.com ", id-1) // the previous item again, as normalization sees it
		}
		fields := map[string]any{"name": fmt.Sprintf("Name %d", id), "n": id}
		if id%89 != 0 { // some items have no match field at all
			fields["email"] = email
		}
		b, _ := json.Marshal(map[string]any{"item_id": id, "fields": fields})
		return string(b)
	}
	fo, err := os.Create(*out)
	if err != nil {
		return err
	}
	ff, err := os.Create(*fixed)
	if err != nil {
		fo.Close()
		return err
	}
	wo, wf := bufio.NewWriter(fo), bufio.NewWriter(ff)
	type manifest struct {
		Lines    int               `json:"lines"`
		BadLines string            `json:"bad_lines"`
		Kinds    map[string]string `json:"kinds"`
		// NoMatchValue counts the good items with an empty or missing
		// match field, and SameMatchValue those that repeat the previous
		// item's match value (in the fixed source).
		NoMatchValue   int `json:"no_match_value"`
		SameMatchValue int `json:"same_match_value"`
	}
	m := manifest{Lines: n, Kinds: map[string]string{}}
	var badLines []int64
	for line := 1; line <= n; line++ {
		id := line
		g := good(id)
		if b, ok := byLine[line]; ok {
			fmt.Fprintln(wo, b.text(id))
			badLines = append(badLines, int64(line))
			m.Kinds[strconv.Itoa(line)] = b.kind
		} else {
			fmt.Fprintln(wo, g)
		}
		fmt.Fprintln(wf, g)
		switch {
		case id%89 == 0 || id%97 == 0:
			m.NoMatchValue++
		case id%61 == 0:
			m.SameMatchValue++
		}
	}
	m.BadLines = joinSorted(badLines)
	if err := errors.Join(wo.Flush(), wf.Flush(), fo.Close(), ff.Close()); err != nil {
		return err
	}
	return printJSON(stdout, m)
}
