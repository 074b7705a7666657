package podio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/connector"
)

// Options configure a Client.
type Options struct {
	// BaseURL is the API's address; "" means https://api.podio.com.
	BaseURL     string
	Credentials Credentials
	// Timeout bounds one request; 0 means 60s.
	Timeout time.Duration
	// MaxAttempts bounds the attempts at a request that fails in a way
	// that can be retried; 0 means 6. Waits for a rate limit or a new
	// token are not attempts.
	MaxAttempts int
	// RateWindow is the API's quota window; 0 means an hour.
	RateWindow time.Duration
	// QuotaShare N makes the client use at most 1/N of each quota window
	// (see Gate); 0 or 1 means the whole quota. A Gate given below keeps
	// its own share.
	QuotaShare int
	// Gate, if set, is shared with other clients on the same quota.
	Gate *Gate
	// Backoff between retried attempts: it starts at BackoffInitial
	// (0 means 250ms) and grows, with jitter, up to BackoffMax (0 means
	// 15s).
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// MaxRateLimitWait bounds the time one request waits in total for
	// rate limits; 0 means 2h, twice Podio's window.
	MaxRateLimitWait time.Duration
	// HTTPClient carries the requests; nil means a client of its own.
	HTTPClient *http.Client
	Logger     zerolog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Client speaks the Podio API for one set of credentials. It is safe for
// concurrent use; all its calls pass one Gate.
type Client struct {
	base        string
	http        *http.Client
	ownHTTP     bool
	timeout     time.Duration
	maxAttempts int
	boInit      time.Duration
	boMax       time.Duration
	maxRLWait   time.Duration
	gate        *Gate
	tok         *tokens
	log         zerolog.Logger
	now         func() time.Time
}

// NewClient returns a client; it makes no call until one is needed.
func NewClient(o Options) *Client {
	c := &Client{
		base:        strings.TrimRight(o.BaseURL, "/"),
		http:        o.HTTPClient,
		timeout:     o.Timeout,
		maxAttempts: o.MaxAttempts,
		boInit:      o.BackoffInitial,
		boMax:       o.BackoffMax,
		maxRLWait:   o.MaxRateLimitWait,
		gate:        o.Gate,
		log:         o.Logger,
		now:         o.Now,
	}
	if c.base == "" {
		c.base = "https://api.podio.com"
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.timeout <= 0 {
		c.timeout = 60 * time.Second
	}
	if c.maxAttempts <= 0 {
		c.maxAttempts = 6
	}
	if c.boInit <= 0 {
		c.boInit = 250 * time.Millisecond
	}
	if c.boMax <= 0 {
		c.boMax = 15 * time.Second
	}
	if c.maxRLWait <= 0 {
		c.maxRLWait = 2 * time.Hour
	}
	if c.gate == nil {
		c.gate = NewGateShare(o.RateWindow, o.QuotaShare, c.now)
	}
	if c.http == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 32
		// File transfers (stream) have no overall timeout, as a large
		// file may take long; a server that does not even answer is
		// still given up on.
		tr.ResponseHeaderTimeout = c.timeout
		c.http = &http.Client{Transport: tr}
		c.ownHTTP = true
	}
	c.tok = &tokens{c: c, creds: o.Credentials}
	return c
}

// Close releases idle connections.
func (c *Client) Close() {
	if c.ownHTTP {
		c.http.CloseIdleConnections()
	}
}

// Gate returns the client's rate gate.
func (c *Client) Gate() *Gate { return c.gate }

func (c *Client) newBackoff() *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     c.boInit,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         c.boMax,
	}
	b.Reset()
	return b
}

// request is one API call.
type request struct {
	method string
	path   string
	query  url.Values
	body   any
	// once marks a call that must not be sent again when its outcome is
	// unknown (a create): do returns an *uncertainError instead.
	once bool
	// limited marks a call of Podio's "Rate limited" tier.
	limited bool
}

// uncertainError is a failed call that may have been carried out.
type uncertainError struct{ err error }

func (e *uncertainError) Error() string { return "outcome unknown: " + e.err.Error() }
func (e *uncertainError) Unwrap() error { return e.err }

// notSent reports whether err happened before the request could reach
// the server.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// do sends a request, with its token, through the gate, and retries what
// can be retried. out, if not nil, receives the decoded answer. It
// returns the status of the answer.
func (c *Client) do(ctx context.Context, r request, out any) (int, error) {
	var body []byte
	if r.body != nil {
		var err error
		if body, err = json.Marshal(r.body); err != nil {
			return 0, fmt.Errorf("encode %s %s: %w", r.method, r.path, err)
		}
	}
	u := c.base + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	bo := c.newBackoff()
	attempts, renewals := 0, 0
	var waited time.Duration
	// A write under a hold (a drain) gives up while it waits, but only
	// as long as nothing of it may have taken effect: before its first
	// answer, after a 420 or an expired token, or after a request that
	// was never sent. Once a send failed in a way that may have reached
	// the API (a 5xx, a lost answer), it goes on as usual.
	hold := connector.Hold(ctx)
	holdNow := func() <-chan struct{} { return hold }
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		tok, err := c.tok.get(ctx)
		if err != nil {
			return 0, err
		}
		t, err := c.gate.wait(ctx, r.limited, holdNow())
		if err != nil {
			return 0, err
		}
		status, h, data, err := c.send(ctx, r.method, u, tok, body)
		if err != nil {
			t.release()
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			attempts++
			if !notSent(err) {
				hold = nil
			}
			if r.once && !notSent(err) {
				return 0, &uncertainError{err: networkError(fmt.Errorf("%s %s: %w", r.method, r.path, err))}
			}
			if attempts >= c.maxAttempts {
				return 0, networkError(fmt.Errorf("%s %s after %d attempts: %w", r.method, r.path, attempts, err))
			}
			c.log.Debug().Err(err).Str("path", r.path).Int("attempt", attempts).Msg("podio request failed; retrying")
			if err := sleepHold(ctx, holdNow(), bo.NextBackOff()); err != nil {
				return 0, err
			}
			continue
		}
		var ae *APIError
		if status >= 300 {
			ae = parseAPIError(status, data)
		}
		var wait time.Duration
		if ae != nil && isRateLimit(status) {
			var ok bool
			if wait, ok = retryAfter(ae, h, c.now()); !ok {
				wait = bo.NextBackOff()
			}
		}
		t.observe(status, h, wait)
		switch {
		case status < 300:
			if out != nil && status != http.StatusNoContent && len(data) > 0 {
				if err := json.Unmarshal(data, out); err != nil {
					return status, fmt.Errorf("decode answer to %s %s: %w", r.method, r.path, err)
				}
			}
			return status, nil
		case ae.expired():
			renewals++
			if renewals > 3 {
				return status, fmt.Errorf("%s %s: the access token keeps expiring: %w", r.method, r.path, Classify(ae))
			}
			c.log.Info().Str("path", r.path).Msg("podio access token expired; renewing it")
			c.tok.invalidate(tok)
		case isRateLimit(status):
			waited += wait
			if waited > c.maxRLWait {
				return status, fmt.Errorf("%s %s: rate limited for more than %s: %w", r.method, r.path, c.maxRLWait, Classify(ae))
			}
			c.log.Info().Str("path", r.path).Dur("wait", wait).Msg("podio rate limit hit; waiting")
			if err := sleepHold(ctx, holdNow(), wait); err != nil {
				return status, err
			}
		case status >= 500:
			attempts++
			hold = nil
			if r.once {
				return status, &uncertainError{err: Classify(ae)}
			}
			if attempts >= c.maxAttempts {
				return status, fmt.Errorf("%s %s after %d attempts: %w", r.method, r.path, attempts, Classify(ae))
			}
			if err := sleep(ctx, bo.NextBackOff()); err != nil {
				return status, err
			}
		default:
			return status, Classify(ae)
		}
	}
}

// send makes one HTTP request and reads the whole answer.
func (c *Client) send(ctx context.Context, method, u, tok string, body []byte) (int, http.Header, []byte, error) {
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(rctx, method, u, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "OAuth2 "+tok)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, nil, nil, err
	}
	return resp.StatusCode, resp.Header, data, nil
}

// isNotFound reports a 404.
func isNotFound(err error) bool {
	var ie *connector.ItemError
	if errors.As(err, &ie) {
		var ae *APIError
		return errors.As(ie.Err, &ae) && ae.Status == http.StatusNotFound
	}
	return false
}

// stream sends one request whose body (if any) is read as it goes, and
// returns the answer unread, for files: nothing is held whole. It
// passes the token and the gate like do, but sends once: a failure is
// returned, retryable or not, and the caller starts the transfer again.
func (c *Client) stream(ctx context.Context, method, path, contentType string, body io.Reader, limited bool) (*http.Response, error) {
	tok, err := c.tok.get(ctx)
	if err != nil {
		return nil, err
	}
	t, err := c.gate.wait(ctx, limited, connector.Hold(ctx))
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		t.release()
		return nil, err
	}
	req.Header.Set("Authorization", "OAuth2 "+tok)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		t.release()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, networkError(fmt.Errorf("%s %s: %w", method, path, err))
	}
	if resp.StatusCode < 300 {
		t.observe(resp.StatusCode, resp.Header, 0)
		return resp, nil
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	ae := parseAPIError(resp.StatusCode, data)
	var wait time.Duration
	if isRateLimit(resp.StatusCode) {
		if wait, _ = retryAfter(ae, resp.Header, c.now()); wait <= 0 {
			wait = c.boInit
		}
	}
	t.observe(resp.StatusCode, resp.Header, wait)
	if ae.expired() {
		c.tok.invalidate(tok)
		ie := Classify(ae)
		ie.Retryable = true
		return nil, fmt.Errorf("%s %s: %w", method, path, ie)
	}
	return nil, fmt.Errorf("%s %s: %w", method, path, Classify(ae))
}
