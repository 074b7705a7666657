// Package testbin builds the project's commands for tests that run them as
// real subprocesses. Each command is built once per test process, from the
// working tree, so a test never runs a stale binary.
package testbin
