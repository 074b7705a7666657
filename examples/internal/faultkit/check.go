package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Check is one line of a scenario's checks file.
type Check struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// record appends c to the checks file and prints it. A check that fails
// does not stop the scenario: the verdict collects every check.
func record(path string, c Check, stdout io.Writer) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open checks file: %w", err)
	}
	line, _ := json.Marshal(c)
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write checks file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write checks file: %w", err)
	}
	mark := "[ok]  "
	if !c.OK {
		mark = "[FAIL]"
	}
	if c.Detail != "" {
		fmt.Fprintf(stdout, "%s %s (%s)\n", mark, c.Check, c.Detail)
	} else {
		fmt.Fprintf(stdout, "%s %s\n", mark, c.Check)
	}
	return nil
}

func readChecks(path string) ([]Check, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Check
	for i, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var c Check
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, i+1, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// cmdCheck records a check the script made itself.
func cmdCheck(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	checks := fs.String("checks", "", "the scenario's checks `FILE`")
	ok := fs.Bool("ok", false, "whether the check passed")
	if err := fs.Parse(args); err != nil {
		return exitCode(2)
	}
	if *checks == "" || fs.NArg() < 1 || fs.NArg() > 2 {
		fmt.Fprintln(stderr, "usage: faultkit check -checks FILE -ok=BOOL TEXT [DETAIL]")
		return exitCode(2)
	}
	c := Check{Check: fs.Arg(0), OK: *ok}
	if fs.NArg() == 2 {
		c.Detail = fs.Arg(1)
	}
	return record(*checks, c, stdout)
}

// cmdExpect checks one field of a JSON file: 'PATH OP VALUE', where PATH
// is dotted (restarts.graceful), OP is one of == != >= <= > < ~ !~ (~ is
// "contains", ignoring case) and VALUE a number, a string, true, false, or
// @PATH: another field of the same file.
func cmdExpect(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("expect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	checks := fs.String("checks", "", "the scenario's checks `FILE`")
	desc := fs.String("desc", "", "what the check means, for the reader")
	if err := fs.Parse(args); err != nil {
		return exitCode(2)
	}
	if *checks == "" || fs.NArg() != 2 {
		fmt.Fprintln(stderr, "usage: faultkit expect -checks FILE [-desc TEXT] JSONFILE 'PATH OP VALUE'")
		return exitCode(2)
	}
	file, expr := fs.Arg(0), fs.Arg(1)
	path, op, want, err := parseExpr(expr)
	if err != nil {
		return err
	}
	name := *desc
	if name == "" {
		name = expr
	}
	ok, detail := evaluate(file, path, op, want)
	return record(*checks, Check{Check: name, OK: ok, Detail: detail}, stdout)
}

var ops = []string{"==", "!=", ">=", "<=", "!~", ">", "<", "~"}

func parseExpr(expr string) (path, op, want string, err error) {
	for _, o := range ops {
		if i := strings.Index(expr, o); i > 0 {
			return strings.TrimSpace(expr[:i]), o, strings.TrimSpace(expr[i+len(o):]), nil
		}
	}
	return "", "", "", fmt.Errorf("expression %q: want PATH OP VALUE with OP one of %s", expr, strings.Join(ops, " "))
}

func evaluate(file, path, op, want string) (bool, string) {
	data, err := os.ReadFile(file)
	if err != nil {
		return false, fmt.Sprintf("cannot read %s: %v", file, err)
	}
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		return false, fmt.Sprintf("%s is not JSON: %v", file, err)
	}
	got, found := lookup(doc, path)
	if !found {
		return false, fmt.Sprintf("%s has no %s", file, path)
	}
	gotText := render(got)
	detail := fmt.Sprintf("%s = %s, want %s %s", path, clipText(gotText), op, want)
	if ref, ok := strings.CutPrefix(want, "@"); ok {
		// The value of another field of the same file.
		v, found := lookup(doc, ref)
		if !found {
			return false, fmt.Sprintf("%s has no %s", file, ref)
		}
		want = render(v)
		detail = fmt.Sprintf("%s = %s, want %s %s = %s", path, clipText(gotText), op, ref, want)
	}
	switch op {
	case "~":
		return strings.Contains(strings.ToLower(gotText), strings.ToLower(want)), detail
	case "!~":
		return !strings.Contains(strings.ToLower(gotText), strings.ToLower(want)), detail
	}
	if g, ok := got.(float64); ok {
		w, err := strconv.ParseFloat(want, 64)
		if err != nil {
			return false, detail + " (not a number)"
		}
		switch op {
		case "==":
			return g == w, detail
		case "!=":
			return g != w, detail
		case ">=":
			return g >= w, detail
		case "<=":
			return g <= w, detail
		case ">":
			return g > w, detail
		case "<":
			return g < w, detail
		}
	}
	w := strings.Trim(want, `"'`)
	switch op {
	case "==":
		return gotText == w, detail
	case "!=":
		return gotText != w, detail
	}
	return false, detail + " (cannot order a non-number)"
}

func lookup(doc any, path string) (any, bool) {
	cur := doc
	for _, key := range strings.Split(path, ".") {
		switch v := cur.(type) {
		case map[string]any:
			next, ok := v[key]
			if !ok {
				return nil, false
			}
			cur = next
		case []any:
			if key == "length" {
				cur = float64(len(v))
				continue
			}
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(v) {
				return nil, false
			}
			cur = v[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

func render(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case nil:
		return "null"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// clipText shortens a long value for a check's detail line.
func clipText(s string) string {
	if r := []rune(s); len(r) > 100 {
		return string(r[:97]) + "..."
	}
	return s
}
