package cliflag_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"

	"github.com/memvisor/memvisor/internal/cliflag"
)

func parse(args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	fs := flag.NewFlagSet("tool run", flag.ContinueOnError)
	fs.Bool("dry", false, "a flag")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), "USAGE of tool run") }
	err = cliflag.Parse(fs, func() error { return fs.Parse(args) }, &out, &errOut)
	return out.String(), errOut.String(), err
}

func TestParse(t *testing.T) {
	t.Run("help goes to stdout, once", func(t *testing.T) {
		out, errOut, err := parse("--help")
		if !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("got %v, want flag.ErrHelp", err)
		}
		if got := strings.Count(out, "USAGE"); got != 1 || errOut != "" {
			t.Errorf("stdout %q (usage %d times), stderr %q; want the usage once on stdout only", out, got, errOut)
		}
	})
	t.Run("a bad flag goes to stderr with the error", func(t *testing.T) {
		out, errOut, err := parse("--bogus")
		if !errors.Is(err, cliflag.ErrUsage) {
			t.Fatalf("got %v, want ErrUsage", err)
		}
		if out != "" || !strings.HasPrefix(errOut, "tool run: flag provided but not defined: -bogus") || strings.Count(errOut, "USAGE") != 1 {
			t.Errorf("stdout %q, stderr %q; want the error then the usage once on stderr", out, errOut)
		}
	})
	t.Run("good flags print nothing", func(t *testing.T) {
		out, errOut, err := parse("--dry")
		if err != nil || out != "" || errOut != "" {
			t.Errorf("got %v, stdout %q, stderr %q; want nothing", err, out, errOut)
		}
	})
}
