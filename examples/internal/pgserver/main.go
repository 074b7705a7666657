// Command pgserver runs a throwaway PostgreSQL for the fleet scenario in
// examples/: Debian's server on a unix socket in a temporary directory,
// started as the tests start it (pkg/pgtest). It writes the connection
// string to the file -dsn-file and stops the server, removing its files,
// on SIGTERM or SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/memvisor/memvisor/pkg/pgtest"
)

func main() {
	dsnFile := flag.String("dsn-file", "", "write the connection string here once the server is up")
	flag.Parse()
	if *dsnFile == "" {
		fmt.Fprintln(os.Stderr, "usage: pgserver -dsn-file FILE")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	s, err := pgtest.Launch()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgserver:", err)
		os.Exit(1)
	}
	defer s.Stop()
	if err := os.WriteFile(*dsnFile, []byte(s.DSN("postgres")+"\n"), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "pgserver:", err)
		return
	}
	<-ctx.Done()
}
