package postgres_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

// quotaOf reads a test job's quota key from its spec.
func quotaOf(rec registry.Record) (string, error) {
	var spec struct {
		Quota string `json:"quota"`
	}
	if err := json.Unmarshal(rec.Spec, &spec); err != nil {
		return "", err
	}
	if spec.Quota == "" {
		return "", nil
	}
	return postgres.QuotaKey("https://api.podio.com", "client-"+spec.Quota, "user@example.com"), nil
}

func createQuota(t *testing.T, s *postgres.Store, id, quota string) {
	t.Helper()
	rec := registry.Record{ID: id, Status: registry.StatusQueued, Spec: []byte(`{"quota":"` + quota + `"}`)}
	if err := s.Create(t.Context(), &rec, 0); err != nil {
		t.Fatal(err)
	}
}

func TestSharedQuotaRunsOneJobAtATime(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	opt := postgres.Options{LeaseTTL: time.Hour, QuotaKey: quotaOf}
	a, b := node(t, dsn, "a", opt), node(t, dsn, "b", opt)
	createQuota(t, a, "k1", "K")
	createQuota(t, a, "k2", "K")
	createQuota(t, a, "l1", "L")
	createQuota(t, a, "free", "")

	ca := claimWithin(t, a, 10*time.Second)
	if ca.Record.ID != "k1" || ca.Quota == nil || ca.QuotaShares != 1 {
		t.Fatalf("a claimed %s with quota %v, want k1 with a quota lease", ca.Record.ID, ca.Quota)
	}
	// b skips k2, whose credentials a's job is using.
	var got []string
	for {
		c, err := b.Claim(t.Context())
		if errors.Is(err, postgres.ErrNoJob) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c.Record.ID)
	}
	if strings.Join(got, " ") != "l1 free" {
		t.Errorf("b claimed %v while k1 runs, want [l1 free]", got)
	}
	// k1 finishes; its quota passes to k2.
	if _, err := a.Update(t.Context(), "k1", func(r *registry.Record) error { r.Status = registry.StatusCompleted; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := ca.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	cb := claimWithin(t, b, 10*time.Second)
	if cb.Record.ID != "k2" || cb.Quota == nil || cb.Quota.Epoch() != 2 {
		t.Errorf("b claimed %s, want k2 under the quota lease's epoch 2", cb.Record.ID)
	}
	if err := ca.Fence(); !errors.Is(err, postgres.ErrLeaseLost) {
		t.Errorf("the released claim's fence: %v", err)
	}
}

// TestQuotaBlockedJobsDoNotStarveOthers: many jobs waiting on one quota do
// not hide a job with other credentials queued behind them.
func TestQuotaBlockedJobsDoNotStarveOthers(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	opt := postgres.Options{LeaseTTL: time.Hour, QuotaKey: quotaOf}
	a, b := node(t, dsn, "a", opt), node(t, dsn, "b", opt)
	for i := range 40 {
		createQuota(t, a, fmt.Sprint("k", i), "K")
	}
	createQuota(t, a, "l", "L")
	if c := claimWithin(t, a, 10*time.Second); c.Record.ID != "k0" {
		t.Fatalf("a claimed %s, want k0", c.Record.ID)
	}
	c, err := b.Claim(t.Context())
	if err != nil || c.Record.ID != "l" {
		t.Errorf("b behind 39 jobs on a spent quota: got %v (%v), want job l", c, err)
	}
}

func TestQuotaSharesSplitTheQuota(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	opt := postgres.Options{LeaseTTL: time.Hour, QuotaKey: quotaOf, QuotaShares: 2}
	a, b := node(t, dsn, "a", opt), node(t, dsn, "b", opt)
	for _, id := range []string{"k1", "k2", "k3"} {
		createQuota(t, a, id, "K")
	}
	ca, cb := claimWithin(t, a, 10*time.Second), claimWithin(t, b, 10*time.Second)
	if ca.Record.ID != "k1" || cb.Record.ID != "k2" || ca.Quota.Name() == cb.Quota.Name() || cb.QuotaShares != 2 {
		t.Errorf("claimed %s (%s) and %s (%s), want k1 and k2 on two shares of 2", ca.Record.ID, ca.Quota.Name(), cb.Record.ID, cb.Quota.Name())
	}
	if _, err := b.Claim(t.Context()); !errors.Is(err, postgres.ErrNoJob) {
		t.Errorf("a third job on a quota split in two: got %v, want ErrNoJob", err)
	}
	for _, name := range []string{ca.Quota.Name(), cb.Quota.Name()} {
		if strings.Contains(name, "client-K") || strings.Contains(name, "user@example.com") {
			t.Errorf("quota lease name %q holds the credentials", name)
		}
	}
}

func TestQuotaKey(t *testing.T) {
	base := postgres.QuotaKey("https://api.podio.com", "client", "user")
	if len(base) != 64 || strings.Trim(base, "0123456789abcdef") != "" {
		t.Fatalf("got %q, want 64 hex digits", base)
	}
	if got := postgres.QuotaKey("https://api.podio.com/", "client", "user"); got != base {
		t.Error("a trailing slash on the API URL changes the key")
	}
	for _, other := range [][3]string{
		{"https://podio.example", "client", "user"},
		{"https://api.podio.com", "client2", "user"},
		{"https://api.podio.com", "client", "user2"},
		{"https://api.podio.com", "clientu", "ser"},
	} {
		if postgres.QuotaKey(other[0], other[1], other[2]) == base {
			t.Errorf("%v has the same key as the base credentials", other)
		}
	}
}
