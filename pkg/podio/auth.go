package podio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"sigs.k8s.io/yaml"

	"github.com/memvisor/memvisor/pkg/job"
)

// Credentials are the secrets of one OAuth flow. They live in memory
// only; String never shows them.
type Credentials struct {
	Flow         string // job.PodioFlowApp, PodioFlowPassword or PodioFlowRefreshToken
	ClientID     string
	ClientSecret string
	AppID        int64 // app flow
	AppToken     string
	Username     string
	Password     string
	RefreshToken string
}

// String names the flow and the client, never a secret.
func (c Credentials) String() string {
	s := fmt.Sprintf("podio %s flow, client %s", c.Flow, c.ClientID)
	if c.Flow == job.PodioFlowApp {
		s += fmt.Sprintf(", app %d", c.AppID)
	}
	return s
}

// credentialsFile is the file that auth.credentials_file names.
type credentialsFile struct {
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	AppToken     string `json:"app_token"`
	Username     string `json:"username"`
	Password     string `json:"password"`
	RefreshToken string `json:"refresh_token"`
}

// LoadCredentials gathers the secrets an endpoint's auth block names,
// from the environment (through getenv) and from its credentials file.
// A variable named in the job file wins over the file.
func LoadCredentials(p *job.Podio, getenv func(string) string) (Credentials, error) {
	if p == nil || p.Auth == nil {
		return Credentials{}, fmt.Errorf("load credentials: %w: no auth block", ErrCredentials)
	}
	a := p.Auth
	c := Credentials{Flow: a.Flow, ClientID: a.ClientID, AppID: p.AppID}
	if a.CredentialsFile != "" {
		data, err := os.ReadFile(a.CredentialsFile)
		if err != nil {
			return Credentials{}, fmt.Errorf("read credentials file: %w", err)
		}
		var f credentialsFile
		if err := yaml.UnmarshalStrict(data, &f); err != nil {
			return Credentials{}, fmt.Errorf("decode credentials file %s: %w", a.CredentialsFile, err)
		}
		if c.ClientID == "" {
			c.ClientID = f.ClientID
		}
		c.ClientSecret, c.AppToken, c.Username, c.Password, c.RefreshToken =
			f.ClientSecret, f.AppToken, f.Username, f.Password, f.RefreshToken
	}
	var missing []string
	env := func(dst *string, name, key string, needed bool) {
		if name != "" {
			if v := getenv(name); v != "" {
				*dst = v
			} else if *dst == "" {
				missing = append(missing, fmt.Sprintf("%s (environment variable %s is empty or unset)", key, name))
				return
			}
		}
		if needed && *dst == "" && name == "" {
			missing = append(missing, key+" (not in the credentials file)")
		}
	}
	env(&c.ClientSecret, a.ClientSecretEnv, "client_secret", true)
	if c.ClientID == "" {
		missing = append(missing, "client_id")
	}
	switch a.Flow {
	case job.PodioFlowApp:
		env(&c.AppToken, a.AppTokenEnv, "app_token", true)
	case job.PodioFlowPassword:
		env(&c.Username, a.UsernameEnv, "username", true)
		env(&c.Password, a.PasswordEnv, "password", true)
	case job.PodioFlowRefreshToken:
		env(&c.RefreshToken, a.RefreshTokenEnv, "refresh_token", true)
	default:
		return Credentials{}, fmt.Errorf("load credentials: unknown flow %q", a.Flow)
	}
	if len(missing) > 0 {
		return Credentials{}, fmt.Errorf("load credentials for the %s flow: %w: %v", a.Flow, ErrCredentials, missing)
	}
	return c, nil
}

// tokens holds the access token of one set of credentials and renews it
// before it expires, or when the API says it expired. Concurrent callers
// that need a new token share one request for it.
type tokens struct {
	c     *Client
	creds Credentials

	mu      sync.Mutex
	access  string
	refresh string
	expires time.Time
	grants  int64
	sf      singleflight.Group
}

// tokenAnswer is the token endpoint's answer.
type tokenAnswer struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    int64  `json:"expires_in"`
	TokenType    string `json:"token_type"`
}

// get returns a token that is valid for a while yet.
func (t *tokens) get(ctx context.Context) (string, error) {
	t.mu.Lock()
	if t.freshLocked() {
		tok := t.access
		t.mu.Unlock()
		return tok, nil
	}
	t.mu.Unlock()
	ch := t.sf.DoChan("token", func() (any, error) {
		t.mu.Lock()
		if t.freshLocked() {
			tok := t.access
			t.mu.Unlock()
			return tok, nil
		}
		t.mu.Unlock()
		// One caller's cancellation must not fail the others sharing
		// this request.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*t.c.timeout)
		defer cancel()
		return t.fetch(fctx)
	})
	select {
	case <-ctx.Done():
		return "", ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	}
}

// freshLocked reports whether the token has more than a tenth of its
// life, at most a minute, left.
func (t *tokens) freshLocked() bool {
	if t.access == "" {
		return false
	}
	return t.c.now().Before(t.expires)
}

// invalidate drops tok if it is still the current token, so the next get
// renews it.
func (t *tokens) invalidate(tok string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.access == tok {
		t.access = ""
	}
}

// fetch renews the token: with the refresh token if there is one, else
// (or if that is refused) with the configured flow.
func (t *tokens) fetch(ctx context.Context) (string, error) {
	t.mu.Lock()
	rt := t.refresh
	t.mu.Unlock()
	cr := t.creds
	if rt != "" {
		tok, err := t.grant(ctx, map[string]any{"grant_type": "refresh_token", "refresh_token": rt})
		if err == nil {
			return tok, nil
		}
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status >= 500 || isRateLimit(ae.Status) {
			return "", err
		}
		t.c.log.Warn().Str("flow", cr.Flow).Str("reason", ae.Code).Msg("podio refused the refresh token; authenticating again")
	}
	params := map[string]any{"grant_type": cr.Flow}
	switch cr.Flow {
	case job.PodioFlowApp:
		params["app_id"], params["app_token"] = cr.AppID, cr.AppToken
	case job.PodioFlowPassword:
		params["username"], params["password"] = cr.Username, cr.Password
	case job.PodioFlowRefreshToken:
		params["refresh_token"] = cr.RefreshToken
	default:
		return "", fmt.Errorf("authenticate: unknown flow %q", cr.Flow)
	}
	return t.grant(ctx, params)
}

// grant posts to the token endpoint, retrying what can be retried.
func (t *tokens) grant(ctx context.Context, params map[string]any) (string, error) {
	params["client_id"], params["client_secret"] = t.creds.ClientID, t.creds.ClientSecret
	body, _ := json.Marshal(params)
	bo := t.c.newBackoff()
	for attempt := 1; ; attempt++ {
		ans, err := t.post(ctx, body)
		if err == nil {
			t.mu.Lock()
			t.access = ans.AccessToken
			if ans.RefreshToken != "" {
				t.refresh = ans.RefreshToken
			}
			life := time.Duration(ans.ExpiresIn) * time.Second
			if life <= 0 {
				life = time.Hour
			}
			// Renew with a tenth of the life, at most a minute, to spare.
			t.expires = t.c.now().Add(life - min(life/10, time.Minute))
			t.grants++
			t.mu.Unlock()
			t.c.log.Debug().Str("flow", t.creds.Flow).Dur("expires_in", life).Msg("podio access token obtained")
			return ans.AccessToken, nil
		}
		var ae *APIError
		var wait time.Duration
		switch {
		case errors.As(err, &ae) && isRateLimit(ae.Status):
			wait, _ = retryAfter(ae, nil, t.c.now())
			wait = max(wait, bo.NextBackOff())
		case errors.As(err, &ae) && ae.Status < 500:
			return "", fmt.Errorf("authenticate with the %s flow: %w", t.creds.Flow, Classify(ae))
		default:
			if attempt >= t.c.maxAttempts {
				return "", fmt.Errorf("authenticate with the %s flow after %d attempts: %w", t.creds.Flow, attempt, networkError(err))
			}
			wait = bo.NextBackOff()
		}
		if err := sleep(ctx, wait); err != nil {
			return "", err
		}
	}
}

func (t *tokens) post(ctx context.Context, body []byte) (*tokenAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.c.base+"/oauth/token/v2", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := t.c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, parseAPIError(resp.StatusCode, data)
	}
	var ans tokenAnswer
	if err := json.Unmarshal(data, &ans); err != nil || ans.AccessToken == "" {
		return nil, fmt.Errorf("decode token answer: not a token (%d bytes)", len(data))
	}
	return &ans, nil
}

// Grants is the number of tokens obtained so far.
func (c *Client) Grants() int64 {
	c.tok.mu.Lock()
	defer c.tok.mu.Unlock()
	return c.tok.grants
}
