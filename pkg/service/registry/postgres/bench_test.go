package postgres_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/memvisor/memvisor/internal/benchfmt"
	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

// BenchmarkLeaseFailover measures, at the library level, the time from the
// SIGKILL of a node process that owns a job to the claim of that job by
// another node, with the default lease_ttl. It covers the lease and the
// queue only: the start of a runner and its resume come on top in serve.
func BenchmarkLeaseFailover(b *testing.B) {
	ttl := postgres.DefaultLeaseTTL
	dsn := pgtest.NewDatabase(b)
	me := node(b, dsn, "parent", postgres.Options{LeaseTTL: ttl})
	create(b, me, "job1", "", registry.StatusQueued)
	h := startHelper(b, dsn, ttl)
	h.expect(b, "CLAIMED 1", 60*time.Second)
	h.waitLines(b, 7)
	b.ResetTimer()
	h.signal(b, syscall.SIGKILL)
	killed := time.Now()
	<-h.done
	c := claimWithin(b, me, ttl+60*time.Second)
	took := time.Since(killed)
	b.StopTimer()
	if c.Job.Epoch() != 2 {
		b.Fatalf("takeover at epoch %d, want 2", c.Job.Epoch())
	}
	benchfmt.Report(b, "fleet_lease_failover_s", took.Seconds(), "s")
	b.Logf("lease_ttl %s; taken over %s after the kill", ttl, took.Round(time.Millisecond))
}
