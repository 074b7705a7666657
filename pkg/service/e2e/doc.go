// Package e2e holds the end-to-end tests of `supervisor serve`: the service
// runs as a real subprocess (the test binary itself, started again in
// helper mode, runs service.Serve), and the tests drive it from outside
// with signals, a fake systemd notify socket, headless Chromium, the
// Node.js client of examples/nextjs, and that Next.js app itself (built
// with `next build`, served with `next start`, driven in Chromium). It has
// no non-test code.
package e2e
