// Package version holds the build's version, stamped by the Makefile with
// -ldflags "-X github.com/memvisor/memvisor/internal/version.Version=...".
package version
