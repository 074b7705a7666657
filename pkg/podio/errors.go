package podio

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/memvisor/memvisor/pkg/connector"
)

// Errors, matched with errors.Is.
var (
	// ErrNotFilterable means a field's type cannot be filtered by the
	// Podio API (text, email, phone, location, date).
	ErrNotFilterable = errors.New("field type cannot be filtered by the Podio API")
	// ErrOutcomeUnknown means a create may or may not have been made and
	// the lookup by external_id that should tell could not be done.
	ErrOutcomeUnknown = errors.New("outcome of the create is unknown")
	// ErrUnknownField names a field that the app does not have.
	ErrUnknownField = errors.New("no such field in the app")
	// ErrReadOnlyField names a field that cannot be written.
	ErrReadOnlyField = errors.New("field cannot be written")
	// ErrCredentials means a secret the job names is missing.
	ErrCredentials = errors.New("podio credentials missing")
)

// APIError is an error answer of the Podio API.
type APIError struct {
	Status      int
	Code        string // the body's "error"
	Description string // the body's "error_description"
	Detail      json.RawMessage
	// Body is the answer verbatim (at most 4 KiB), for failed.jsonl.
	Body []byte
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("podio answered %d", e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Description != "" {
		msg += ": " + e.Description
	}
	return msg
}

// parseAPIError reads Podio's error body.
func parseAPIError(status int, body []byte) *APIError {
	e := &APIError{Status: status}
	if len(body) > 4096 {
		body = body[:4096]
	}
	e.Body = append([]byte(nil), body...)
	var b struct {
		Error       string          `json:"error"`
		Description string          `json:"error_description"`
		Detail      json.RawMessage `json:"error_detail"`
	}
	if json.Unmarshal(body, &b) == nil {
		e.Code, e.Description, e.Detail = b.Error, b.Description, b.Detail
	} else if status >= 500 {
		e.Code = http.StatusText(status)
	}
	return e
}

// expired reports whether a 401 asks for a new access token: an expired
// one, or one Podio no longer knows (invalid_token, as after a
// revocation), as the official SDK treats them.
func (e *APIError) expired() bool {
	return e.Status == http.StatusUnauthorized &&
		(strings.Contains(e.Code, "expired_token") || strings.Contains(e.Description, "expired_token") ||
			e.Code == "invalid_token")
}

var waitSeconds = regexp.MustCompile(`(?i)wait\s+(\d+)\s+seconds?`)

// retryAfter is how long a 420 or 429 asks to wait: "wait N seconds" in
// error_description, else the Retry-After header; ok is false when the
// answer does not say.
func retryAfter(e *APIError, h http.Header, now time.Time) (time.Duration, bool) {
	if m := waitSeconds.FindStringSubmatch(e.Description); m != nil {
		n, _ := strconv.Atoi(m[1])
		return time.Duration(n) * time.Second, true
	}
	if ra := h.Get("Retry-After"); ra != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(ra)); err == nil && n >= 0 {
			return time.Duration(n) * time.Second, true
		}
		if t, err := http.ParseTime(ra); err == nil {
			return max(t.Sub(now), 0), true
		}
	}
	return 0, false
}

func isRateLimit(status int) bool { return status == 420 || status == http.StatusTooManyRequests }

// Classify turns an API error into the item error that failed.jsonl
// records, with Podio's body verbatim as the detail.
func Classify(e *APIError) *connector.ItemError {
	ie := &connector.ItemError{Category: connector.CategoryUnknown, Err: e}
	if len(e.Body) > 0 && json.Valid(e.Body) {
		ie.Detail = json.RawMessage(e.Body)
	}
	code := strings.ToLower(e.Code + " " + e.Description)
	switch {
	case isRateLimit(e.Status):
		ie.Category, ie.Retryable = connector.CategoryRateLimit, true
	case e.Status >= 500:
		ie.Category, ie.Retryable = connector.CategoryNetwork, true
	case e.Status == http.StatusConflict || strings.Contains(code, "duplicate"):
		ie.Category = connector.CategoryDuplicate
	case e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden ||
		strings.Contains(code, "forbidden") || strings.Contains(code, "invalid_grant") || strings.Contains(code, "invalid_client"):
		ie.Category = connector.CategoryPermission
	case e.Status == http.StatusBadRequest || e.Status == http.StatusNotFound || e.Status == http.StatusGone ||
		e.Status == http.StatusUnprocessableEntity:
		ie.Category = connector.CategoryValidation
	}
	return ie
}

// networkError wraps a transport failure as a retryable item error.
func networkError(err error) *connector.ItemError {
	return &connector.ItemError{Category: connector.CategoryNetwork, Retryable: true, Err: err}
}

// validationError is a failure of the item's own values.
func validationError(format string, args ...any) *connector.ItemError {
	err := fmt.Errorf(format, args...)
	detail, _ := json.Marshal(map[string]string{"error": "invalid_value", "error_description": err.Error()})
	return &connector.ItemError{Category: connector.CategoryValidation, Err: err, Detail: detail}
}
