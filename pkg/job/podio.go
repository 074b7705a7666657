package job

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
	Silent *bool `json:"silent,omitempty"`
	Hook   *bool `json:"hook,omitempty"`
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
	CredentialsFile string `json:"credentials_file,omitempty"`
}

// DefaultPodioAPIURL is Podio's public API.
const DefaultPodioAPIURL = "https://api.podio.com"

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

func (p *Podio) validate(v *Errors, name string, isSource bool) {
	if p.AppID <= 0 {
		v.Add(name+".app_id", "must be a positive Podio app id (got %d)", p.AppID)
	}
	if p.Auth == nil {
		v.Add(name+".auth", "is required for a podio %s", name)
		return
	}
	switch p.Auth.Flow {
	case "app", "password", "refresh_token":
	default:
		v.Add(name+".auth.flow", "must be one of app, password, refresh_token (got %q)", p.Auth.Flow)
	}
}
