package benchfmt

import (
	"fmt"
	"io"
	"os"
	"testing"
)

// Out is where lines go; tests of this package replace it.
var Out io.Writer = os.Stdout

// Report records value for the benchmark b and prints its BENCH line.
// A benchmark that runs more than once prints a line each time; `make
// bench` keeps the last line for every name.
func Report(b *testing.B, name string, value float64, unit string) {
	b.Helper()
	b.ReportMetric(value, unit)
	Line(name, value, unit)
}

// Line prints a BENCH line for a figure measured outside testing.B.
func Line(name string, value float64, unit string) {
	fmt.Fprintf(Out, "BENCH %s %s %s\n", name, format(value), unit)
}

func format(v float64) string {
	switch {
	case v == float64(int64(v)) && v < 1e15 && v > -1e15:
		return fmt.Sprintf("%d", int64(v))
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.4g", v)
	}
}
