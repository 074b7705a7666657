package job_test

import (
	"strings"
	"testing"

	"github.com/memvisor/memvisor/pkg/job"
)

func podioJob(source, target string) string {
	return "id: p\nsource:\n  type: podio\n  app_id: 1\n" + source +
		"target:\n  type: podio\n  app_id: 2\n" + target
}

const okAuth = "  auth: {flow: app, client_id: c, client_secret_env: S, app_token_env: T}\n"

func TestPodioValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		source string
		target string
		want   string // a substring of the error, "" for valid
	}{
		{"valid", okAuth, okAuth + "  silent: false\n  hook: true\n", ""},
		{"date range", okAuth + "  filters: {created_on: {from: \"2024-01-01\", to: \"2024-12-31 23:59:59\"}, tags: [vip]}\n", okAuth, ""},
		{"same day", okAuth + "  filters: {last_event_on: {from: \"2024-02-29\", to: \"2024-02-29\"}}\n", okAuth, ""},
		{"reversed", okAuth + "  filters: {created_on: {from: \"2024-02-01\", to: \"2024-01-01\"}}\n", okAuth, "source.filters.created_on: from (2024-02-01) is after to"},
		{"not a date", okAuth + "  filters: {created_on: {from: \"2023-02-29\"}}\n", okAuth, "source.filters.created_on.from: must be a date"},
		{"bad format", okAuth + "  filters: {last_event_on: {to: \"01/02/2024\"}}\n", okAuth, "source.filters.last_event_on.to"},
		{"empty range", okAuth + "  filters: {created_on: {}}\n", okAuth, "source.filters.created_on: needs from, to or both"},
		{"empty tag", okAuth + "  filters: {tags: [\" \"]}\n", okAuth, "source.filters.tags: tag 1 is empty"},
		{"filters on target", okAuth, okAuth + "  filters: {tags: [a]}\n", "target.filters: apply to a podio source only"},
		{"silent on source", okAuth + "  silent: true\n", okAuth, "source: silent and hook apply to a podio target only"},
		{"page size", okAuth + "  page_size: 501\n", okAuth, "source.page_size"},
		{"no auth", "", okAuth, "source.auth: is required"},
		{"app flow without token", "  auth: {flow: app, client_id: c, client_secret_env: S}\n", okAuth, "source.auth.app_token_env: is required"},
		{"file instead", "  auth: {flow: password, credentials_file: creds.yaml}\n", okAuth, ""},
		{"secret in place of a name", "  auth: {flow: app, client_id: c, client_secret_env: \"s3cr3t!\", app_token_env: T}\n", okAuth, "source.auth.client_secret_env: must name an environment variable"},
		{"mixed flow keys", "  auth: {flow: refresh_token, client_id: c, client_secret_env: S, refresh_token_env: R, app_token_env: T}\n", okAuth, "do not apply to the refresh_token flow"},
		{"bad flow", "  auth: {flow: magic, client_id: c, client_secret_env: S}\n", okAuth, "source.auth.flow"},
		{"bad url", okAuth + "  api_url: ftp://x\n", okAuth, "source.api_url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := job.Parse(strings.NewReader(podioJob(tc.source, tc.target)))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}
