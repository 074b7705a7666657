// Package benchfmt prints benchmark figures as `BENCH <name> <value> <unit>`
// lines, the form `make bench` collects. A figure is also reported to
// testing.B, so `go test -bench` shows it in its usual table.
package benchfmt
