package podio_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/podio"
	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

func TestAuthFlows(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{}, 1)
	rt, err := s.IssueRefreshToken(clientID, username)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		creds podio.Credentials
		cat   connector.Category // "" for success
	}{
		{"app", appCreds(srcApp, srcToken), ""},
		{"password", podio.Credentials{Flow: job.PodioFlowPassword, ClientID: clientID, ClientSecret: clientSecret, Username: username, Password: password}, ""},
		{"refresh_token", podio.Credentials{Flow: job.PodioFlowRefreshToken, ClientID: clientID, ClientSecret: clientSecret, RefreshToken: rt}, ""},
		{"wrong app token", appCreds(srcApp, "nope"), connector.CategoryPermission},
		{"wrong client secret", podio.Credentials{Flow: job.PodioFlowApp, ClientID: clientID, ClientSecret: "x", AppID: srcApp, AppToken: srcToken}, connector.CategoryPermission},
		{"wrong password", podio.Credentials{Flow: job.PodioFlowPassword, ClientID: clientID, ClientSecret: clientSecret, Username: username, Password: "x"}, connector.CategoryPermission},
		{"unknown refresh token", podio.Credentials{Flow: job.PodioFlowRefreshToken, ClientID: clientID, ClientSecret: clientSecret, RefreshToken: "x"}, connector.CategoryPermission},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, s, tc.creds, nil)
			n, err := c.Count(t.Context(), srcApp)
			cat, retry := connector.Classify(err)
			if tc.cat == "" {
				if err != nil || n != 1 {
					t.Fatalf("count: %d, %v", n, err)
				}
				return
			}
			if cat != tc.cat || retry {
				t.Fatalf("got %v (category %s, retryable %v), want %s", err, cat, retry, tc.cat)
			}
			if c.Grants() != 0 {
				t.Fatalf("grants %d, want 0", c.Grants())
			}
		})
	}
}

// Twenty calls that all find their token expired renew it once.
func TestRefreshIsSingleFlight(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{}, 1)
	c := newClient(t, s, appCreds(srcApp, srcToken), nil)
	if _, err := c.Count(t.Context(), srcApp); err != nil {
		t.Fatal(err)
	}
	s.ExpireTokens()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Count(t.Context(), srcApp)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if g := c.Grants(); g != 2 {
		t.Fatalf("tokens obtained: %d, want 2 (the first and one renewal)", g)
	}
	if st := s.Stats(); st.Expired401 == 0 || st.TokensIssued != 2 {
		t.Fatalf("emulator: %d expired 401s, %d tokens issued; want some and 2", st.Expired401, st.TokensIssued)
	}
}

// A token is renewed before it expires, so no call meets a 401.
func TestRefreshBeforeExpiry(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{TokenTTL: 2 * time.Second}, 1)
	c := newClient(t, s, appCreds(srcApp, srcToken), nil)
	for range 12 {
		if _, err := c.Count(t.Context(), srcApp); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st := s.Stats(); st.Expired401 != 0 || c.Grants() < 2 {
		t.Fatalf("%d calls met an expired token, %d tokens obtained; want 0 and at least 2", st.Expired401, c.Grants())
	}
}

// Five goroutines sharing a client spend three quota windows without a
// 420: the gate holds them until the window ends.
func TestGateKeepsUnderTheQuota(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{RateLimit: 40, RateWindow: time.Second}, 1)
	c := newClient(t, s, appCreds(srcApp, srcToken), func(o *podio.Options) { o.RateWindow = time.Second })
	var wg sync.WaitGroup
	start := time.Now()
	limitedSeen := false
	var mu sync.Mutex
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if _, err := c.Count(t.Context(), srcApp); err != nil {
					t.Error(err)
					return
				}
				if !c.Gate().Until().IsZero() {
					mu.Lock()
					limitedSeen = true
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	st := s.Stats()
	if st.Quota420 > 0 {
		t.Errorf("%d calls hit the quota (420), want 0", st.Quota420)
	}
	if el < 2*time.Second {
		t.Errorf("100 calls at 40 per second took %s, want at least 2s", el)
	}
	if !limitedSeen {
		t.Error("the gate never reported that it was holding calls")
	}
	t.Logf("100 calls in %s; %+v", el, st)
}

// A 420 makes every caller wait the seconds it names.
func TestGateWaitsFor420(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{}, 1)
	c := newClient(t, s, appCreds(srcApp, srcToken), nil)
	if _, err := c.Count(t.Context(), srcApp); err != nil {
		t.Fatal(err)
	}
	s.SetFaults(podioemu.Faults{RateLimitBurstEvery: 2, RateLimitBurstLength: 1, RateLimitBurstWait: 1})
	start := time.Now()
	if _, err := c.Count(t.Context(), srcApp); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < time.Second {
		t.Fatalf("the call after a 420 asking for 1s came after %s", el)
	}
	if c.Gate().Hits() != 1 {
		t.Fatalf("hits %d, want 1", c.Gate().Hits())
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		cat    connector.Category
		retry  bool
	}{
		{400, `{"error":"invalid_value","error_description":"Invalid value"}`, connector.CategoryValidation, false},
		{404, `{"error":"not_found","error_description":"Object not found"}`, connector.CategoryValidation, false},
		{401, `{"error":"invalid_grant","error_description":"bad"}`, connector.CategoryPermission, false},
		{403, `{"error":"forbidden","error_description":"no"}`, connector.CategoryPermission, false},
		{409, `{"error":"conflict","error_description":"changed"}`, connector.CategoryDuplicate, false},
		{400, `{"error":"duplicate","error_description":"exists"}`, connector.CategoryDuplicate, false},
		{420, `{"error":"rate_limit","error_description":"Please wait 5 seconds"}`, connector.CategoryRateLimit, true},
		{429, `{}`, connector.CategoryRateLimit, true},
		{500, `{"error":"server_error"}`, connector.CategoryNetwork, true},
		{503, `<html>down</html>`, connector.CategoryNetwork, true},
		{418, `{"error":"teapot"}`, connector.CategoryUnknown, false},
	} {
		t.Run(tc.body, func(t *testing.T) {
			ie := podio.Classify(podio.ParseAPIError(tc.status, []byte(tc.body)))
			if ie.Category != tc.cat || ie.Retryable != tc.retry {
				t.Fatalf("got %s retry=%v, want %s retry=%v", ie.Category, ie.Retryable, tc.cat, tc.retry)
			}
			if jsonBody := tc.body[0] == '{'; jsonBody && string(ie.Detail) != tc.body {
				t.Fatalf("detail %s, want the body verbatim", ie.Detail)
			}
			var ae *podio.APIError
			if !errors.As(ie, &ae) || ae.Status != tc.status {
				t.Fatalf("the API error is not wrapped: %v", ie)
			}
		})
	}
}

func TestLoadCredentials(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/podio.yaml"
	if err := writeFile(file, "client_id: fromfile\nclient_secret: filesecret\napp_token: filetoken\n"); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SECRET": "envsecret"}
	getenv := func(k string) string { return env[k] }
	for _, tc := range []struct {
		name string
		auth job.PodioAuth
		want string // client_id/secret/token, or "error"
	}{
		{"env", job.PodioAuth{Flow: "app", ClientID: "c", ClientSecretEnv: "SECRET", AppTokenEnv: "SECRET"}, "c/envsecret/envsecret"},
		{"file", job.PodioAuth{Flow: "app", CredentialsFile: file}, "fromfile/filesecret/filetoken"},
		{"env wins over file", job.PodioAuth{Flow: "app", ClientSecretEnv: "SECRET", CredentialsFile: file}, "fromfile/envsecret/filetoken"},
		{"unset variable", job.PodioAuth{Flow: "app", ClientID: "c", ClientSecretEnv: "NOPE", AppTokenEnv: "SECRET"}, "error"},
		{"no password", job.PodioAuth{Flow: "password", ClientID: "c", ClientSecretEnv: "SECRET", UsernameEnv: "SECRET"}, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := podio.LoadCredentials(&job.Podio{AppID: 1, Auth: &tc.auth}, getenv)
			got := "error"
			if err == nil {
				got = c.ClientID + "/" + c.ClientSecret + "/" + c.AppToken
			} else if !errors.Is(err, podio.ErrCredentials) && tc.name != "no password" {
				t.Logf("error: %v", err)
			}
			if got != tc.want {
				t.Fatalf("got %s (%v), want %s", got, err, tc.want)
			}
			if s := c.String(); err == nil && (contains(s, c.ClientSecret) || contains(s, c.AppToken)) {
				t.Fatalf("String shows a secret: %s", s)
			}
		})
	}
}

// A refresh token that expired or was revoked is refused; the client
// then authenticates again with its configured flow. With the
// refresh_token flow there is nothing to fall back to, and the call
// fails as a permission error.
func TestRefreshTokenExpiryAndRevocation(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{RefreshTTL: 300 * time.Millisecond}, 1)
	c := newClient(t, s, podio.Credentials{Flow: job.PodioFlowPassword, ClientID: clientID, ClientSecret: clientSecret, Username: username, Password: password}, nil)
	ctx := t.Context()
	if _, err := c.Count(ctx, srcApp); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // the refresh token expires
	s.ExpireTokens()
	if _, err := c.Count(ctx, srcApp); err != nil {
		t.Fatalf("after the refresh token expired: %v", err)
	}
	if g := c.Grants(); g != 2 {
		t.Fatalf("grants %d, want 2 (a new password grant)", g)
	}
	s.RevokeAll()
	if _, err := c.Count(ctx, srcApp); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	if g := c.Grants(); g != 3 {
		t.Fatalf("grants %d, want 3", g)
	}

	rt, err := s.IssueRefreshToken(clientID, username)
	if err != nil {
		t.Fatal(err)
	}
	rc := newClient(t, s, podio.Credentials{Flow: job.PodioFlowRefreshToken, ClientID: clientID, ClientSecret: clientSecret, RefreshToken: rt}, nil)
	if _, err := rc.Count(ctx, srcApp); err != nil {
		t.Fatal(err)
	}
	s.RevokeAll()
	_, err = rc.Count(ctx, srcApp)
	if cat, _ := connector.Classify(err); cat != connector.CategoryPermission {
		t.Fatalf("refresh_token flow after revocation: %v (category %s), want a permission error", err, cat)
	}
}

// A call waiting out a 420 gives up unsent when its hold closes: a drain
// does not wait for a rate limit.
func TestHoldEndsAWaitForARateLimit(t *testing.T) {
	s, _ := newEmu(t, podioemu.Config{}, 1)
	c := newClient(t, s, appCreds(srcApp, srcToken), nil)
	if _, err := c.Count(t.Context(), srcApp); err != nil {
		t.Fatal(err)
	}
	s.SetFaults(podioemu.Faults{RateLimitBurstEvery: 2, RateLimitBurstLength: 1, RateLimitBurstWait: 60})
	hold := make(chan struct{})
	time.AfterFunc(100*time.Millisecond, func() { close(hold) })
	_, err := c.Count(connector.WithHold(t.Context(), hold), srcApp)
	if !errors.Is(err, connector.ErrNotSent) {
		t.Fatalf("got %v, want ErrNotSent once the hold closed", err)
	}
	// The gate is still blocked for everyone else; the hold did not lift it.
	if c.Gate().Hits() != 1 {
		t.Fatalf("hits %d, want 1", c.Gate().Hits())
	}
}
