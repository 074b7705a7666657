package postgres_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/pgtest"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

// quotaOf reads a test job's quota keys from its spec: "quota" is a
// space-separated list of credential names.
func quotaOf(rec registry.Record) ([]string, error) {
	var spec struct {
		Quota string `json:"quota"`
	}
	if err := json.Unmarshal(rec.Spec, &spec); err != nil {
		return nil, err
	}
	var keys []string
	for _, q := range strings.Fields(spec.Quota) {
		keys = append(keys, postgres.QuotaKey("https://api.podio.com", "client-"+q, "user@example.com"))
	}
	return keys, nil
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
	opt := postgres.Options{LeaseTTL: time.Hour, QuotaKeys: quotaOf}
	a, b := node(t, dsn, "a", opt), node(t, dsn, "b", opt)
	createQuota(t, a, "k1", "K")
	createQuota(t, a, "k2", "K")
	createQuota(t, a, "l1", "L")
	createQuota(t, a, "free", "")

	ca := claimWithin(t, a, 10*time.Second)
	if ca.Record.ID != "k1" || len(ca.Quotas) != 1 || ca.QuotaShares != 1 {
		t.Fatalf("a claimed %s with quotas %v, want k1 with a quota lease", ca.Record.ID, ca.Quotas)
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
	if cb.Record.ID != "k2" || len(cb.Quotas) != 1 || cb.Quotas[0].Epoch() != 2 {
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
	opt := postgres.Options{LeaseTTL: time.Hour, QuotaKeys: quotaOf}
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
	opt := postgres.Options{LeaseTTL: time.Hour, QuotaKeys: quotaOf, QuotaShares: 2}
	a, b := node(t, dsn, "a", opt), node(t, dsn, "b", opt)
	for _, id := range []string{"k1", "k2", "k3"} {
		createQuota(t, a, id, "K")
	}
	ca, cb := claimWithin(t, a, 10*time.Second), claimWithin(t, b, 10*time.Second)
	if ca.Record.ID != "k1" || cb.Record.ID != "k2" || ca.Quotas[0].Name() == cb.Quotas[0].Name() || cb.QuotaShares != 2 {
		t.Errorf("claimed %s (%s) and %s (%s), want k1 and k2 on two shares of 2", ca.Record.ID, ca.Quotas[0].Name(), cb.Record.ID, cb.Quotas[0].Name())
	}
	if _, err := b.Claim(t.Context()); !errors.Is(err, postgres.ErrNoJob) {
		t.Errorf("a third job on a quota split in two: got %v, want ErrNoJob", err)
	}
	for _, name := range []string{ca.Quotas[0].Name(), cb.Quotas[0].Name()} {
		if strings.Contains(name, "client-K") || strings.Contains(name, "user@example.com") {
			t.Errorf("quota lease name %q holds the credentials", name)
		}
	}
}

// TestJobWithTwoCredentialsHoldsBoth: a job reading with credentials X
// and writing with Y keeps out every other job on X or on Y.
func TestJobWithTwoCredentialsHoldsBoth(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	opt := postgres.Options{LeaseTTL: time.Hour, QuotaKeys: quotaOf}
	a, b := node(t, dsn, "a", opt), node(t, dsn, "b", opt)
	createQuota(t, a, "xy", "X Y X")
	createQuota(t, a, "y", "Y")
	createQuota(t, a, "x", "X")
	createQuota(t, a, "z", "Z")
	ca := claimWithin(t, a, 10*time.Second)
	if ca.Record.ID != "xy" || len(ca.Quotas) != 2 || len(ca.Leases()) != 3 {
		t.Fatalf("a claimed %s with %d quota leases, want xy with 2", ca.Record.ID, len(ca.Quotas))
	}
	cb, err := b.Claim(t.Context())
	if err != nil || cb.Record.ID != "z" {
		t.Fatalf("b claimed %v (%v), want z: x and y share xy's credentials", cb, err)
	}
	if _, err := b.Claim(t.Context()); !errors.Is(err, postgres.ErrNoJob) {
		t.Errorf("a third claim: got %v, want ErrNoJob", err)
	}
	if err := ca.Quotas[1].Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := ca.Fence(); !errors.Is(err, postgres.ErrLeaseLost) {
		t.Errorf("claim fence with one quota share lost: got %v", err)
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

func TestPodioQuotaKeys(t *testing.T) {
	resolve := func(p job.Podio) (string, string, error) {
		if p.Auth == nil {
			return "", "", errors.New("no auth")
		}
		return p.Auth.ClientID, p.Auth.UsernameEnv, nil
	}
	keys := postgres.PodioQuotaKeys(resolve)
	spec := func(src, dst string) registry.Record {
		return registry.Record{ID: "j", Spec: json.RawMessage(`{"source":` + src + `,"target":` + dst + `}`)}
	}
	podio := func(api, client, user string) string {
		return `{"type":"podio","app_id":1,"api_url":"` + api + `","auth":{"flow":"password","client_id":"` + client + `","username_env":"` + user + `"}}`
	}
	jsonl := `{"type":"jsonl","path":"/x"}`
	for _, tc := range []struct {
		name string
		rec  registry.Record
		want []string
	}{
		{"no podio", spec(jsonl, jsonl), nil},
		{"target only", spec(jsonl, podio("", "c", "u")), []string{postgres.QuotaKey("https://api.podio.com", "c", "u")}},
		{"both", spec(podio("https://emu", "c", "u"), podio("", "d", "v")),
			[]string{postgres.QuotaKey("https://emu", "c", "u"), postgres.QuotaKey("https://api.podio.com", "d", "v")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := keys(tc.rec)
			if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got %v (%v), want %v", got, err, tc.want)
			}
		})
	}
	if _, err := keys(spec(jsonl, `{"type":"podio","app_id":1}`)); err == nil || !strings.Contains(err.Error(), "target") {
		t.Errorf("unresolvable target: got %v, want an error naming the target", err)
	}
}
