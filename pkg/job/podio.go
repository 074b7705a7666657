package job

import (
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Podio holds the keys of a podio source or target. They are promoted
// into Endpoint, so a job file writes them beside type:
//
//	target:
//	  type: podio
//	  app_id: 30001
//	  auth: {flow: app, client_id: memvisor, client_secret_env: PODIO_CLIENT_SECRET,
//	         app_token_env: PODIO_TARGET_APP_TOKEN}
//
// Secrets are never stored here: only the names of the environment
// variables or the file that hold them.
type Podio struct {
	APIURL string     `json:"api_url,omitempty"`
	AppID  int64      `json:"app_id,omitempty"`
	Auth   *PodioAuth `json:"auth,omitempty"`
	// Silent and Hook are sent on every write; nil means true and false.
	// They apply to a target only.
	Silent *bool `json:"silent,omitempty"`
	Hook   *bool `json:"hook,omitempty"`
	// Filters narrow a source to some of its items. Source only.
	Filters *PodioFilters `json:"filters,omitempty"`
	// PageSize is the number of items per filter call, at most 500 (the
	// API's own limit); 0 means 500.
	PageSize int `json:"page_size,omitempty"`
	// Timeout bounds one HTTP request; 0 means 60s.
	Timeout Duration `json:"timeout,omitempty"`
	// MaxAttempts bounds the attempts at one request that fails in a way
	// that can be retried (network, 5xx); 0 means 6. Waits for a rate
	// limit are not attempts.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// Backoff is the first wait before a retried attempt; later waits
	// double, with jitter, up to 15s. 0 means 250ms.
	Backoff Duration `json:"backoff,omitempty"`
	// RateWindow is the length of the API's rate-limit window, used to
	// know when a spent quota comes back; 0 means 1h, Podio's window.
	RateWindow Duration `json:"rate_window,omitempty"`
	// QuotaShare N lets this endpoint use 1/N of each quota window, per
	// tier, so that N jobs on the same Podio credentials can run at once
	// without one starving the others; 0 means 1, the whole quota. It
	// does not stop other jobs from spending the shared quota: see
	// docs/design.md, "Growing past one host".
	QuotaShare int `json:"quota_share,omitempty"`
	// Files and Comments copy each item's files (attachments and image
	// fields) and comments. Target only; nil means true when the source
	// is a Podio app too, and setting either otherwise is an error.
	Files    *bool `json:"files,omitempty"`
	Comments *bool `json:"comments,omitempty"`
	// FilesConcurrency bounds the file transfers in flight, apart from
	// the job's concurrency; 0 means 2.
	FilesConcurrency int `json:"files_concurrency,omitempty"`
	// ExternalIDFormat is the external_id written on every create, with
	// {id} standing for the source item id; "" means "{id}". Items
	// carrying "{id}" or "migrated-{id}" (the original tool's form) are
	// recognized as well, whatever the format. Target only.
	ExternalIDFormat string `json:"external_id_format,omitempty"`
}

// MaxQuotaShare bounds quota_share: a hundredth of Podio's 250 "Rate
// limited" calls an hour is about the least a job can work with.
const MaxQuotaShare = 100

// DefaultFilesConcurrency is the bound on file transfers in flight.
const DefaultFilesConcurrency = 2

// PodioCopiesFiles reports whether a job copies files: both ends are
// Podio, and the target does not turn it off.
func (s Spec) PodioCopiesFiles() bool {
	return s.bothPodio() && (s.Target.Podio.Files == nil || *s.Target.Podio.Files)
}

// PodioCopiesComments reports whether a job copies comments.
func (s Spec) PodioCopiesComments() bool {
	return s.bothPodio() && (s.Target.Podio.Comments == nil || *s.Target.Podio.Comments)
}

func (s Spec) bothPodio() bool {
	return s.Source.Type == TypePodio && s.Target.Type == TypePodio && s.Source.Podio != nil && s.Target.Podio != nil
}

// validatePodioTransfer checks the keys that need a Podio app at both
// ends, naming each one that is set without.
func (s Spec) validatePodioTransfer(v *Errors) {
	for _, e := range []struct {
		name string
		ep   Endpoint
	}{{"source", s.Source}, {"target", s.Target}} {
		p := e.ep.Podio
		if p == nil {
			continue
		}
		for _, k := range []struct {
			key string
			set bool
		}{{"files", p.Files != nil}, {"comments", p.Comments != nil}, {"files_concurrency", p.FilesConcurrency != 0}} {
			if !k.set {
				continue
			}
			switch {
			case e.name == "source":
				v.Add("source."+k.key, "applies to a podio target only")
			case !s.bothPodio():
				v.Add("target."+k.key, "applies only when source and target are both podio (source is %q, target is %q)", s.Source.Type, s.Target.Type)
			}
		}
		if p.ExternalIDFormat != "" && e.name == "source" {
			v.Add("source.external_id_format", "applies to a podio target only")
		}
	}
	if p := s.Target.Podio; p != nil {
		if p.FilesConcurrency < 0 || p.FilesConcurrency > 32 {
			v.Add("target.files_concurrency", "must be between 1 and 32, or 0 for %d (got %d)", DefaultFilesConcurrency, p.FilesConcurrency)
		}
		if f := p.ExternalIDFormat; f != "" {
			switch {
			case strings.Count(f, "{id}") != 1:
				v.Add("target.external_id_format", "must contain {id} exactly once (got %q)", f)
			case len(f) > 64:
				v.Add("target.external_id_format", "must be at most 64 characters (got %d)", len(f))
			case strings.ContainsAny(f, "/?#%\\ \t\n"):
				v.Add("target.external_id_format", "must not contain '/', '?', '#', '%%', '\\' or spaces (got %q)", f)
			}
		}
	}
}

// PodioFilters are the source filters of the original tool: ranges of
// creation and last-activity dates, and tags. An item passes when it
// matches every filter given; with several tags, any one of them.
type PodioFilters struct {
	CreatedOn   *PodioDateRange `json:"created_on,omitempty"`
	LastEventOn *PodioDateRange `json:"last_event_on,omitempty"`
	Tags        []string        `json:"tags,omitempty"`
}

// PodioDateRange is an inclusive range of dates, "YYYY-MM-DD" or
// "YYYY-MM-DD HH:MM:SS" in UTC, as the Podio API writes them. Either end
// may be left out.
type PodioDateRange struct {
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
}

// PodioAuth names an OAuth flow and where its secrets live.
type PodioAuth struct {
	Flow            string `json:"flow"` // app | password | refresh_token
	ClientID        string `json:"client_id,omitempty"`
	ClientSecretEnv string `json:"client_secret_env,omitempty"`
	AppTokenEnv     string `json:"app_token_env,omitempty"`
	UsernameEnv     string `json:"username_env,omitempty"`
	PasswordEnv     string `json:"password_env,omitempty"`
	RefreshTokenEnv string `json:"refresh_token_env,omitempty"`
	// CredentialsFile is a YAML or JSON file with any of client_id,
	// client_secret, app_token, username, password and refresh_token.
	// A secret named by an *_env key wins over the file.
	CredentialsFile string `json:"credentials_file,omitempty"`
}

// The OAuth flows.
const (
	PodioFlowApp          = "app"
	PodioFlowPassword     = "password"
	PodioFlowRefreshToken = "refresh_token"
)

// DefaultPodioAPIURL is Podio's public API.
const DefaultPodioAPIURL = "https://api.podio.com"

// PodioMaxPageSize is the most items one filter call returns.
const PodioMaxPageSize = 500

func (p *Podio) expandEnv(x func(string) string) {
	p.APIURL = x(p.APIURL)
	if p.Auth != nil {
		p.Auth.CredentialsFile = x(p.Auth.CredentialsFile)
	}
}

func (p *Podio) resolvePaths(abs func(string) string) {
	if p.Auth != nil {
		p.Auth.CredentialsFile = abs(p.Auth.CredentialsFile)
	}
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (p *Podio) validate(v *Errors, name string, isSource bool) {
	if p.AppID <= 0 {
		v.Add(name+".app_id", "must be a positive Podio app id (got %d)", p.AppID)
	}
	if p.APIURL != "" {
		u, err := url.Parse(p.APIURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.Add(name+".api_url", "must be an http or https URL such as %s (got %q)", DefaultPodioAPIURL, p.APIURL)
		}
	}
	if p.PageSize < 0 || p.PageSize > PodioMaxPageSize {
		v.Add(name+".page_size", "must be between 1 and %d, or 0 for %d (got %d)", PodioMaxPageSize, PodioMaxPageSize, p.PageSize)
	}
	if p.Timeout < 0 {
		v.Add(name+".timeout", "must not be negative")
	}
	if p.MaxAttempts < 0 || p.MaxAttempts > 100 {
		v.Add(name+".max_attempts", "must be between 1 and 100, or 0 for the default (got %d)", p.MaxAttempts)
	}
	if p.Backoff < 0 {
		v.Add(name+".backoff", "must not be negative")
	}
	if p.RateWindow < 0 {
		v.Add(name+".rate_window", "must not be negative")
	}
	if p.QuotaShare < 0 || p.QuotaShare > MaxQuotaShare {
		v.Add(name+".quota_share", "must be between 1 and %d (this job uses 1/N of each quota window), or 0 for 1 (got %d)", MaxQuotaShare, p.QuotaShare)
	}
	if isSource {
		if p.Silent != nil || p.Hook != nil {
			v.Add(name, "silent and hook apply to a podio target only")
		}
		if p.Filters != nil {
			p.Filters.validate(v, name+".filters")
		}
	} else if p.Filters != nil {
		v.Add(name+".filters", "apply to a podio source only")
	}
	if p.Auth == nil {
		v.Add(name+".auth", "is required for a podio %s", name)
		return
	}
	p.Auth.validate(v, name+".auth")
}

func (a *PodioAuth) validate(v *Errors, p string) {
	for _, e := range []struct{ key, val string }{
		{"client_secret_env", a.ClientSecretEnv}, {"app_token_env", a.AppTokenEnv},
		{"username_env", a.UsernameEnv}, {"password_env", a.PasswordEnv},
		{"refresh_token_env", a.RefreshTokenEnv},
	} {
		if e.val != "" && !envName.MatchString(e.val) {
			v.Add(p+"."+e.key, "must name an environment variable (letters, digits and '_'), not hold a secret (got %d characters)", len(e.val))
		}
	}
	file := a.CredentialsFile != ""
	need := func(key, val, what string) {
		if val == "" && !file {
			v.Add(p+"."+key, "is required for the %s flow, unless credentials_file holds the %s", a.Flow, what)
		}
	}
	need("client_id", a.ClientID, "client_id")
	need("client_secret_env", a.ClientSecretEnv, "client_secret")
	switch a.Flow {
	case PodioFlowApp:
		need("app_token_env", a.AppTokenEnv, "app_token")
		if a.UsernameEnv != "" || a.PasswordEnv != "" || a.RefreshTokenEnv != "" {
			v.Add(p, "username_env, password_env and refresh_token_env do not apply to the app flow")
		}
	case PodioFlowPassword:
		need("username_env", a.UsernameEnv, "username")
		need("password_env", a.PasswordEnv, "password")
		if a.AppTokenEnv != "" || a.RefreshTokenEnv != "" {
			v.Add(p, "app_token_env and refresh_token_env do not apply to the password flow")
		}
	case PodioFlowRefreshToken:
		need("refresh_token_env", a.RefreshTokenEnv, "refresh_token")
		if a.AppTokenEnv != "" || a.UsernameEnv != "" || a.PasswordEnv != "" {
			v.Add(p, "app_token_env, username_env and password_env do not apply to the refresh_token flow")
		}
	default:
		v.Add(p+".flow", "must be one of app, password, refresh_token (got %q)", a.Flow)
	}
}

func (f *PodioFilters) validate(v *Errors, p string) {
	if f.CreatedOn != nil {
		f.CreatedOn.validate(v, p+".created_on")
	}
	if f.LastEventOn != nil {
		f.LastEventOn.validate(v, p+".last_event_on")
	}
	for i, t := range f.Tags {
		if strings.TrimSpace(t) == "" {
			v.Add(p+".tags", "tag %d is empty", i+1)
		}
	}
}

// Podio's date formats: dates and datetimes, always UTC.
const (
	podioDate     = "2006-01-02"
	podioDateTime = "2006-01-02 15:04:05"
)

// ParsePodioDate reads a filter date. A bare date is the start of that
// day; isDate reports that there was no time, so that the end of a range
// can be taken as the end of its day.
func ParsePodioDate(s string) (t time.Time, isDate bool, ok bool) {
	if t, err := time.Parse(podioDate, s); err == nil {
		return t, true, true
	}
	if t, err := time.Parse(podioDateTime, s); err == nil {
		return t, false, true
	}
	return time.Time{}, false, false
}

// validate follows the original tool: each end is a real calendar date
// in Podio's format, at least one end is given, and the range is not
// reversed.
func (r *PodioDateRange) validate(v *Errors, p string) {
	if r.From == "" && r.To == "" {
		v.Add(p, "needs from, to or both")
		return
	}
	var from, to time.Time
	okFrom, okTo := true, true
	if r.From != "" {
		from, _, okFrom = ParsePodioDate(r.From)
		if !okFrom {
			v.Add(p+".from", "must be a date YYYY-MM-DD or a UTC datetime YYYY-MM-DD HH:MM:SS (got %q)", r.From)
		}
	}
	if r.To != "" {
		var isDate bool
		to, isDate, okTo = ParsePodioDate(r.To)
		if !okTo {
			v.Add(p+".to", "must be a date YYYY-MM-DD or a UTC datetime YYYY-MM-DD HH:MM:SS (got %q)", r.To)
		}
		if isDate {
			to = to.Add(24*time.Hour - time.Second)
		}
	}
	if r.From != "" && r.To != "" && okFrom && okTo && from.After(to) {
		v.Add(p, "from (%s) is after to (%s)", r.From, r.To)
	}
}
