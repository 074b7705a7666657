// Package e2e holds the end-to-end tests of `supervisor serve`: the service
// runs as a real subprocess (the test binary itself, started again in
// helper mode, runs service.Serve), and the tests drive it from outside
// with signals, a fake systemd notify socket, headless Chromium and the
// Node.js client of examples/nextjs. It has no non-test code.
package e2e
