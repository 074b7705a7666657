// Package pgtest starts a real PostgreSQL server for tests, from the
// distribution's own packages (Debian's postgresql: initdb, pg_ctl and
// postgres under `pg_config --bindir`, usually /usr/lib/postgresql/N/bin).
// Nothing about the database is mocked: the fleet's leases and queue rely
// on row locks, SKIP LOCKED and the server's clock, which only a real server
// has.
//
// A server lives in its own temporary directory: a data directory made by
// initdb, and a unix socket beside it. It listens on no TCP address
// (listen_addresses is empty), so parallel test binaries never fight over a port,
// and it runs with fsync off, because a test database that is lost in a
// power cut is simply made again. PostgreSQL refuses to run as root, so when
// the tests run as root the server runs as the `postgres` user, and the
// temporary directory is made over to that user.
//
// Two ways to use it:
//
//   - Start(t) starts a server for one test and stops it in t.Cleanup.
//   - Main(m) in a TestMain starts one server for the whole test binary on
//     first use, and NewDatabase(t) gives each test a fresh, empty database
//     on it (CREATE DATABASE is far cheaper than initdb).
//
// Where PostgreSQL is not installed, the tests that need it are skipped with
// a message saying how to install it, except when the environment variable
// CI is "true": there a missing server fails the test, so that CI never
// passes by skipping. .ci/run installs the postgresql package.
package pgtest
