package postgres

import (
	"encoding/json"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/memvisor/memvisor/pkg/job"
)

// EnvPostgresURL overrides postgres_url.
const EnvPostgresURL = "MEMVISOR_POSTGRES_URL"

// URL is a PostgreSQL connection string. It prints and marshals with its
// password masked, so that a config dump or a log line never leaks it.
type URL string

// String returns the URL with any password replaced by "xxxxx".
func (u URL) String() string { return redact(string(u)) }

// MarshalJSON writes the masked URL.
func (u URL) MarshalJSON() ([]byte, error) { return json.Marshal(u.String()) }

// kvPassword is compiled on first use, not at start-up: this package is
// linked into every supervisor, and `supervisor run` never masks a URL.
var kvPassword = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)
})

func redact(s string) string {
	if s == "" {
		return ""
	}
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	if strings.Contains(s, "://") {
		return "[unparseable URL]"
	}
	return kvPassword().ReplaceAllString(s, "${1}xxxxx")
}

// Fleet is the fleet part of the service's configuration. Its keys sit at
// the top level of the config file:
//
//	postgres_url: postgres://memvisor@db.internal/memvisor   # or MEMVISOR_POSTGRES_URL
//	node_id: serve-1       # default: the host name
//	lease_ttl: 15s
//	podio_quota_shares: 1
//
// Without postgres_url, nothing changes: the bbolt registry stays.
type Fleet struct {
	PostgresURL URL `json:"postgres_url,omitempty"`
	// NodeID names this node in leases and in jobs' views; it must be
	// unique in the fleet.
	NodeID string `json:"node_id,omitempty"`
	// LeaseTTL is how long a job stays with a node that stopped renewing
	// its lease; a failover takes about this long.
	LeaseTTL job.Duration `json:"lease_ttl"`
	// PodioQuotaShares is how many jobs with the same Podio credentials
	// may run at once across the fleet, each at 1/N of the quota.
	PodioQuotaShares int `json:"podio_quota_shares"`
}

// DefaultFleet returns the defaults: no PostgreSQL, lease_ttl 15s, one
// quota share.
func DefaultFleet() Fleet {
	return Fleet{LeaseTTL: job.Duration(DefaultLeaseTTL), PodioQuotaShares: 1}
}

// Enabled reports whether the node runs in a fleet.
func (f Fleet) Enabled() bool { return f.PostgresURL != "" }

// ApplyEnv takes postgres_url from MEMVISOR_POSTGRES_URL when it is set,
// and defaults node_id to the host name.
func (f *Fleet) ApplyEnv(getenv func(string) string, hostname func() (string, error)) {
	if v := strings.TrimSpace(getenv(EnvPostgresURL)); v != "" {
		f.PostgresURL = URL(v)
	}
	if f.NodeID == "" && hostname != nil {
		if h, err := hostname(); err == nil {
			f.NodeID = h
		}
	}
}

// Hostname is os.Hostname, for ApplyEnv.
func Hostname() (string, error) { return os.Hostname() }

// Validate reports every bad field by its name in the config file.
func (f Fleet) Validate() job.Errors {
	var v job.Errors
	if f.Enabled() {
		if _, err := pgx.ParseConfig(string(f.PostgresURL)); err != nil {
			// pgx's message may quote the URL, password and all.
			v.Add("postgres_url", "cannot be parsed as a PostgreSQL URL (postgres://user@host/db) or key=value string: %s", f.PostgresURL)
		}
		if f.NodeID == "" {
			v.Add("node_id", "must be set when postgres_url is (the host name could not be read)")
		}
	}
	if f.NodeID != "" && !job.ValidName(f.NodeID, 63) {
		v.Add("node_id", "must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit (got %q)", f.NodeID)
	}
	if d := f.LeaseTTL.D(); d < 3*time.Second || d > 10*time.Minute {
		v.Add("lease_ttl", "must be between 3s and 10m (got %s)", f.LeaseTTL)
	}
	if f.PodioQuotaShares < 1 || f.PodioQuotaShares > 100 {
		v.Add("podio_quota_shares", "must be between 1 and 100 (got %d)", f.PodioQuotaShares)
	}
	return v
}

// Options returns the Store options of this config; the caller adds
// QuotaKeys and Logger.
func (f Fleet) Options() Options {
	return Options{Node: f.NodeID, LeaseTTL: f.LeaseTTL.D(), QuotaShares: f.PodioQuotaShares}
}
