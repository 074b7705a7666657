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
		{"quota share", okAuth + "  quota_share: 3\n", okAuth + "  quota_share: 1\n", ""},
		{"negative quota share", okAuth, okAuth + "  quota_share: -2\n", "target.quota_share: must be between 1 and 100"},
		{"huge quota share", okAuth + "  quota_share: 101\n", okAuth, "source.quota_share: must be between 1 and 100"},
		{"fractional quota share", okAuth + "  quota_share: 0.5\n", okAuth, "quota_share"},
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

// files, comments, files_concurrency and external_id_format: defaults
// when both ends are Podio, errors naming the field otherwise.
func TestPodioTransferKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec string
		want string
	}{
		{"both podio, defaults", podioJob(okAuth, okAuth), ""},
		{"both podio, set", podioJob(okAuth, okAuth+"  files: false\n  comments: true\n  files_concurrency: 4\n  external_id_format: \"migrated-{id}\"\n"), ""},
		{"files with a jsonl source", "id: p\nsource: {type: jsonl, path: in.jsonl}\ntarget:\n  type: podio\n  app_id: 2\n" + okAuth + "  files: true\n",
			"target.files: applies only when source and target are both podio"},
		{"comments with a jsonl source", "id: p\nsource: {type: jsonl, path: in.jsonl}\ntarget:\n  type: podio\n  app_id: 2\n" + okAuth + "  comments: false\n",
			"target.comments: applies only when source and target are both podio"},
		{"files on a jsonl target", "id: p\nsource:\n  type: podio\n  app_id: 1\n" + okAuth + "target: {type: jsonl, path: out.jsonl, files: true}\n",
			"target.files: applies only when source and target are both podio"},
		{"files on the source", podioJob(okAuth+"  files: true\n", okAuth), "source.files: applies to a podio target only"},
		{"concurrency", podioJob(okAuth, okAuth+"  files_concurrency: 99\n"), "target.files_concurrency: must be between 1 and 32"},
		{"format without id", podioJob(okAuth, okAuth+"  external_id_format: \"migrated\"\n"), "target.external_id_format: must contain {id} exactly once"},
		{"format with a slash", podioJob(okAuth, okAuth+"  external_id_format: \"a/{id}\"\n"), "target.external_id_format: must not contain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := job.Parse(strings.NewReader(tc.spec))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
			if tc.name == "both podio, defaults" && (!s.PodioCopiesFiles() || !s.PodioCopiesComments()) {
				t.Errorf("files %v comments %v, want both true by default", s.PodioCopiesFiles(), s.PodioCopiesComments())
			}
			if tc.name == "both podio, set" && (s.PodioCopiesFiles() || !s.PodioCopiesComments()) {
				t.Errorf("files %v comments %v, want false and true", s.PodioCopiesFiles(), s.PodioCopiesComments())
			}
		})
	}
}
