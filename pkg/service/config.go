package service

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
)

// Config is the service's configuration file (deploy/config.yaml is an
// annotated example).
type Config struct {
	// Listen is host:port, or unix:/path for a Unix socket.
	Listen   string `json:"listen"`
	StateDir string `json:"state_dir"`
	Auth     Auth   `json:"auth"`
	// MaxConcurrentJobs is how many jobs run at once; more are queued.
	MaxConcurrentJobs int `json:"max_concurrent_jobs"`
	// MaxQueuedJobs bounds the jobs waiting for a slot; a create beyond
	// it gets 429.
	MaxQueuedJobs int          `json:"max_queued_jobs"`
	Memory        MemoryConfig `json:"memory"`
	// Retention is how long a finished job is kept before it is pruned,
	// with its state directory.
	Retention job.Duration `json:"retention"`
	// RunnerPath is the runner binary; empty means "runner" beside the
	// supervisor's own executable.
	RunnerPath string `json:"runner_path"`
	// Metrics serves /metrics.
	Metrics bool      `json:"metrics"`
	Log     LogConfig `json:"log"`
	// ShutdownTimeout bounds the drain of running jobs at shutdown.
	ShutdownTimeout job.Duration `json:"shutdown_timeout"`

	// AllowedRoots are the directories under which a job that comes
	// through the API may read its source and write its target. Empty
	// means <state_dir>/data.
	AllowedRoots []string `json:"allowed_roots"`
	// PodioAPIURLs are the only Podio API bases an API job may name.
	PodioAPIURLs []string `json:"podio_api_urls"`
	// AllowedCredentials are the environment variable names and the
	// credential files an API job may name for its Podio auth.
	AllowedCredentials []string `json:"allowed_credentials"`
	// AllowInject lets API jobs use the fault injections, within bounds.
	AllowInject bool `json:"allow_inject"`
	// AllowedHosts are Host header values accepted beside the loopback
	// names, for a deployment behind a proxy.
	AllowedHosts []string `json:"allowed_hosts"`

	// Fleet holds postgres_url, node_id, lease_ttl and podio_quota_shares,
	// at the top level of the file. Without postgres_url the service keeps
	// its jobs in bbolt in state_dir, as a single host (docs/design.md,
	// "Growing past one host").
	postgres.Fleet
	// SharedRoots are, in a fleet, the directories on storage that every
	// node mounts at the same path: a job's jsonl files must lie beneath
	// one of them (fleet_reach.go).
	SharedRoots []string `json:"shared_roots"`

	// token is the bearer token, from auth.token_file or MEMVISOR_TOKEN.
	// It is never marshalled.
	token Secret
	// warnings are problems that do not stop the service; Serve logs them.
	warnings []string
}

// Warnings lists the problems of the configuration that do not stop the
// service, such as a token file that others can read, or in a fleet a
// shared root on a local file system (it looks at them with statfs).
func (c Config) Warnings() []string { return slices.Concat(c.warnings, c.sharedRootWarnings()) }

// Auth says where the API's bearer token comes from.
type Auth struct {
	TokenFile string `json:"token_file"`
}

// MemoryConfig holds the memory settings shared by the jobs.
type MemoryConfig struct {
	// Budget is the memory of the host given to runners, shared equally by
	// max_concurrent_jobs. Zero leaves each job's budget to its own
	// memory.limit, or to pkg/supervise (cgroup limit, else host RAM).
	Budget job.ByteSize `json:"budget"`
	// Defaults fill the memory policy of a job that leaves a key out.
	Defaults job.Memory `json:"defaults"`
}

// LogConfig holds the logging options.
type LogConfig struct {
	// Level is one of debug, info, warn, error.
	Level string `json:"level"`
	// Format is json, console, or auto (console on a terminal).
	Format string `json:"format"`
	// MaskValues masks match values in every job's log lines and failure
	// records, whatever the job says.
	MaskValues bool `json:"mask_values"`
}

// Secret is a string that never prints or marshals its value.
type Secret string

func (Secret) String() string { return "[redacted]" }

// MarshalJSON writes a placeholder, never the value.
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }

// The environment variables that override the file.
const (
	EnvToken     = "MEMVISOR_TOKEN"
	EnvListen    = "MEMVISOR_LISTEN"
	EnvStateDir  = "MEMVISOR_STATE_DIR"
	EnvRunner    = "MEMVISOR_RUNNER_PATH"
	EnvLogLevel  = "MEMVISOR_LOG_LEVEL"
	EnvLogFormat = "MEMVISOR_LOG_FORMAT"
)

// DefaultListen is the default address: loopback only.
const DefaultListen = "127.0.0.1:7411"

// Default returns the configuration with every default filled in.
func Default() Config {
	return Config{
		Listen:            DefaultListen,
		StateDir:          "/var/lib/memvisor",
		MaxConcurrentJobs: 1,
		MaxQueuedJobs:     1000,
		Memory:            MemoryConfig{Defaults: job.DefaultMemory()},
		Retention:         job.Duration(30 * 24 * time.Hour),
		Metrics:           true,
		Log:               LogConfig{Level: "info", Format: "auto"},
		ShutdownTimeout:   job.Duration(60 * time.Second),
		PodioAPIURLs:      []string{job.DefaultPodioAPIURL},
		Fleet:             postgres.DefaultFleet(),
	}
}

// ErrNoToken is returned when the service would listen beyond loopback
// without a bearer token.
var ErrNoToken = errors.New("a bearer token is required to listen on a non-loopback address")

// Parse reads a configuration file strictly, applies the environment
// overrides from the process environment, loads the token and validates.
func Parse(r io.Reader) (Config, error) { return ParseEnv(r, os.Getenv) }

// ParseEnv is Parse with an explicit environment.
func ParseEnv(r io.Reader, getenv func(string) string) (Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, 1<<20+1))
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	if len(data) > 1<<20 {
		return Config{}, errors.New("read config: larger than 1 MiB")
	}
	c := Default()
	if len(bytes.TrimSpace(data)) > 0 {
		if err := yaml.UnmarshalStrict(data, &c, func(d *json.Decoder) *json.Decoder {
			d.DisallowUnknownFields()
			return d
		}); err != nil {
			return Config{}, fmt.Errorf("decode config: %w", cleanYAMLError(err))
		}
	}
	c.applyEnv(getenv)
	if err := c.loadToken(getenv); err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Load parses the configuration file at path.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("open config: %w", err)
	}
	defer f.Close()
	c, err := Parse(f)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func cleanYAMLError(err error) error {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "error unmarshaling JSON: while decoding JSON: ")
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	msg = strings.Replace(msg, "json: unknown field", "unknown field", 1)
	msg = strings.Replace(msg, "json: cannot unmarshal", "cannot decode", 1)
	return errors.New(msg)
}

func (c *Config) applyEnv(getenv func(string) string) {
	set := func(dst *string, name string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	set(&c.Listen, EnvListen)
	set(&c.StateDir, EnvStateDir)
	set(&c.RunnerPath, EnvRunner)
	set(&c.Log.Level, EnvLogLevel)
	set(&c.Log.Format, EnvLogFormat)
	x := func(v string) string { return os.Expand(v, getenv) }
	c.StateDir = x(c.StateDir)
	c.RunnerPath = x(c.RunnerPath)
	c.Auth.TokenFile = x(c.Auth.TokenFile)
	if strings.HasPrefix(c.Listen, "unix:") {
		c.Listen = "unix:" + x(strings.TrimPrefix(c.Listen, "unix:"))
	}
	// node_id defaults to the host name only in a fleet: a single host
	// never needs it, and a long host name must not fail its config.
	c.Fleet.ApplyEnv(getenv, nil)
	if c.Fleet.Enabled() {
		c.Fleet.ApplyEnv(getenv, postgres.Hostname)
	}
}

// MinTokenBytes is the shortest bearer token the service accepts.
const MinTokenBytes = 16

// credentialName is the name of the token under systemd's
// LoadCredential= ($CREDENTIALS_DIRECTORY/api-token).
const credentialName = "api-token"

// loadToken takes the token from MEMVISOR_TOKEN, else from systemd's
// credential api-token, else from auth.token_file. With none of them,
// Serve makes one in the state directory.
func (c *Config) loadToken(getenv func(string) string) error {
	if v := strings.TrimSpace(getenv(EnvToken)); v != "" {
		c.token = Secret(v)
		if len(v) < MinTokenBytes {
			return fmt.Errorf("%s: the token must be at least %d bytes (got %d)", EnvToken, MinTokenBytes, len(v))
		}
		return nil
	}
	path, field := c.Auth.TokenFile, "auth.token_file"
	if dir := getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		if p := filepath.Join(dir, credentialName); fileExists(p) {
			path, field = p, "LoadCredential="+credentialName
		}
	}
	if path == "" {
		return nil
	}
	t, warn, err := readToken(path)
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if warn != "" {
		c.warnings = append(c.warnings, warn)
	}
	c.token = Secret(t)
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// readToken reads a token file. A file that others can read is a warning:
// the token is the only thing between a local user and the API.
func readToken(path string) (token, warning string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("read token: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", "", fmt.Errorf("read token: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", "", fmt.Errorf("read token: %w", err)
	}
	t := strings.TrimSpace(string(data))
	if t == "" {
		return "", "", fmt.Errorf("%s is empty", path)
	}
	if len(t) < MinTokenBytes {
		return "", "", fmt.Errorf("the token in %s must be at least %d bytes (got %d)", path, MinTokenBytes, len(t))
	}
	if st.Mode().Perm()&0o077 != 0 {
		warning = fmt.Sprintf("token file %s is readable by its group or others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	return t, warning, nil
}

// ensureToken makes sure the API has a token: when none is configured it
// reads, or else creates, <state_dir>/api-token (32 random bytes in hex,
// mode 0600). created says that it made a new one.
func (c *Config) ensureToken() (path string, created bool, err error) {
	if c.token != "" {
		return "", false, nil
	}
	path = c.tokenPath()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", false, fmt.Errorf("make API token: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		_, werr := f.WriteString(hex.EncodeToString(b[:]) + "\n")
		serr := f.Sync()
		cerr := f.Close()
		if err := errors.Join(werr, serr, cerr); err != nil {
			os.Remove(path)
			return "", false, fmt.Errorf("write API token %s: %w", path, err)
		}
		created = true
	case !errors.Is(err, os.ErrExist):
		return "", false, fmt.Errorf("create API token %s: %w", path, err)
	}
	t, warn, err := readToken(path)
	if err != nil {
		return "", false, fmt.Errorf("%s: %w", path, err)
	}
	if warn != "" {
		c.warnings = append(c.warnings, warn)
	}
	c.token = Secret(t)
	return path, created, nil
}

// WithToken returns c with the bearer token set, for tests and callers that
// build a Config in code.
func (c Config) WithToken(token string) Config {
	c.token = Secret(token)
	return c
}

// HasToken reports whether the API requires a bearer token.
func (c Config) HasToken() bool { return c.token != "" }

// Validate reports every bad field by its name in the file.
func (c Config) Validate() error {
	var v job.Errors
	network, addr, err := ListenAddr(c.Listen)
	if err != nil {
		v.Add("listen", "%v", err)
	} else if network == "tcp" && !isLoopback(addr) && c.token == "" {
		v.Add("auth.token_file", "%v (listen is %s): set auth.token_file or %s", ErrNoToken, c.Listen, EnvToken)
	}
	if c.StateDir == "" {
		v.Add("state_dir", "must not be empty")
	}
	if c.token != "" && len(c.token) < MinTokenBytes {
		v.Add("auth.token_file", "the token must be at least %d bytes (got %d)", MinTokenBytes, len(c.token))
	}
	for i, r := range c.AllowedRoots {
		if !filepath.IsAbs(r) {
			v.Add(fmt.Sprintf("allowed_roots[%d]", i), "must be an absolute path (got %q)", r)
		}
	}
	for i, u := range c.PodioAPIURLs {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			v.Add(fmt.Sprintf("podio_api_urls[%d]", i), "must be an http or https URL (got %q)", u)
		}
	}
	for i, cr := range c.AllowedCredentials {
		if cr == "" || strings.HasPrefix(cr, "MEMVISOR_") || (!filepath.IsAbs(cr) && strings.ContainsAny(cr, "/$")) {
			v.Add(fmt.Sprintf("allowed_credentials[%d]", i), "must be an environment variable name (not MEMVISOR_*) or an absolute file path (got %q)", cr)
		}
	}
	for i, h := range c.AllowedHosts {
		if h == "" || strings.ContainsAny(h, "/ ") {
			v.Add(fmt.Sprintf("allowed_hosts[%d]", i), "must be a host name, optionally with :port (got %q)", h)
		}
	}
	if c.MaxConcurrentJobs < 1 || c.MaxConcurrentJobs > 64 {
		v.Add("max_concurrent_jobs", "must be between 1 and 64 (got %d)", c.MaxConcurrentJobs)
	}
	if c.MaxQueuedJobs < 1 || c.MaxQueuedJobs > 1_000_000 {
		v.Add("max_queued_jobs", "must be between 1 and 1000000 (got %d)", c.MaxQueuedJobs)
	}
	if c.Memory.Budget < 0 {
		v.Add("memory.budget", "must not be negative")
	}
	if c.Memory.Budget > 0 && int64(c.Memory.Budget)/int64(max(c.MaxConcurrentJobs, 1)) < 16<<20 {
		v.Add("memory.budget", "must leave each of the max_concurrent_jobs at least 16MiB (got %s for %d jobs)",
			c.Memory.Budget, c.MaxConcurrentJobs)
	}
	// The job schema validates the policy; only its field names change.
	probe := job.Spec{Memory: c.Memory.Defaults}
	if err := probe.Validate(); err != nil {
		var je job.Errors
		if errors.As(err, &je) {
			for _, fe := range je {
				if fe.Field == "memory" || strings.HasPrefix(fe.Field, "memory.") {
					v = append(v, job.FieldError{Field: "memory.defaults" + strings.TrimPrefix(fe.Field, "memory"), Message: fe.Message})
				}
			}
		}
	}
	if c.Retention < job.Duration(time.Minute) {
		v.Add("retention", "must be at least 1m (got %s)", c.Retention)
	}
	if c.ShutdownTimeout < job.Duration(time.Second) {
		v.Add("shutdown_timeout", "must be at least 1s (got %s)", c.ShutdownTimeout)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.Add("log.level", "must be one of debug, info, warn, error (got %q)", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console", "auto":
	default:
		v.Add("log.format", "must be one of json, console, auto (got %q)", c.Log.Format)
	}
	if c.RunnerPath != "" && !filepath.IsAbs(c.RunnerPath) {
		v.Add("runner_path", "must be an absolute path (got %q)", c.RunnerPath)
	}
	v = append(v, c.Fleet.Validate()...)
	v = append(v, c.validateSharedRoots()...)
	if len(v) > 0 {
		return &ConfigError{Fields: v}
	}
	return nil
}

// ConfigError lists every bad field of a configuration.
type ConfigError struct{ Fields job.Errors }

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString("invalid config: ")
	for i, f := range e.Fields {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.Error())
	}
	return b.String()
}

// ListenAddr splits a listen value into a network and an address.
func ListenAddr(listen string) (network, addr string, err error) {
	if p, ok := strings.CutPrefix(listen, "unix:"); ok {
		if !filepath.IsAbs(p) {
			return "", "", fmt.Errorf("unix socket path must be absolute (got %q)", p)
		}
		return "unix", p, nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", "", fmt.Errorf("want host:port or unix:/path (got %q)", listen)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", "", fmt.Errorf("bad port %q", port)
	}
	_ = host
	return "tcp", listen, nil
}

// isLoopback reports whether a host:port binds the loopback interface only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// The names inside the state directory, in one place.
const (
	stateJobs     = "jobs"
	stateRegistry = "registry.db"
	stateToken    = "api-token"
	stateData     = "data"
)

// jobsDir is where the jobs' own state directories live.
func (c Config) jobsDir() string { return filepath.Join(c.StateDir, stateJobs) }

// registryPath is the registry's bbolt file.
func (c Config) registryPath() string { return filepath.Join(c.StateDir, stateRegistry) }

// tokenPath is where Serve keeps the token it made.
func (c Config) tokenPath() string { return filepath.Join(c.StateDir, stateToken) }

// dataDir is the default allowed root.
func (c Config) dataDir() string { return filepath.Join(c.StateDir, stateData) }

// allowedRoots is allowed_roots, or the data directory by default.
func (c Config) allowedRoots() []string {
	if len(c.AllowedRoots) > 0 {
		return c.AllowedRoots
	}
	return []string{c.dataDir()}
}
