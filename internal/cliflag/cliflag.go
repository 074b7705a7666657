// Package cliflag parses a command's flags the way every memvisor command
// does: the usage is printed once, to stdout when --help asked for it and
// to stderr, after the error, when the flags are wrong.
package cliflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// ErrUsage reports flags that could not be parsed; the error and the
// usage have been printed to stderr.
var ErrUsage = errors.New("bad usage")

// Parse runs parse (fs.Parse, or a variant that takes flags between
// arguments) with the flag package's own printing turned off. It returns
// flag.ErrHelp after printing the usage to stdout for --help, and ErrUsage
// after printing the error and the usage to stderr. fs's output is stderr
// afterwards.
func Parse(fs *flag.FlagSet, parse func() error, stdout, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	err := parse()
	fs.SetOutput(stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		fs.SetOutput(stderr)
		return flag.ErrHelp
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n\n", fs.Name(), err)
		fs.Usage()
		return ErrUsage
	}
	return nil
}
