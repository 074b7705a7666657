// Package podioemu is an in-process emulator of the subset of the Podio
// API that memvisor uses, for tests, benchmarks and the examples. The real
// client (pkg/podio) is the code under test; the emulator follows Podio's
// documented behaviour and JSON shapes, and can misbehave on purpose.
//
// # What it serves
//
//   - POST /oauth/token/v2 (and /oauth/token): the app, password and
//     refresh_token grants with client_id and client_secret, in a JSON or
//     form body. Tokens expire after Config.TokenTTL. An expired token is
//     answered 401 {"error":"invalid_token","error_description":"expired_token"}.
//     An app token reaches its own app only (403 elsewhere).
//   - GET /app/{app_id}: the app with its fields, category options and
//     referenced apps.
//   - POST /item/app/{app_id}/filter/: sort_by (item_id, created_on,
//     last_edit_on), sort_desc, offset, limit (at most 500, else 400), and
//     the filters created_on and last_event_on ({"from","to"}), tags, and
//     by field (category, question, app and contact by id; number, money,
//     progress and duration by {"from","to"}). It answers total, filtered
//     and items.
//   - GET /item/app/{app_id}/count, GET /item/{item_id},
//     GET /item/app/{app_id}/external_id/{external_id}.
//   - POST /item/app/{app_id}/ (create, with external_id, silent, hook
//     and file_ids; only that exact path: POST /item/app/{id}/delete or
//     /calculate is a 404, as every unknown route)
//     and PUT /item/{item_id} (update; 204 when nothing changed, else 200
//     with the revision). Values are checked per field type as Podio does:
//     an unknown category option, a missing referenced item, a progress
//     outside 0..100 or a write to a calculation field is a 400. An image
//     field takes file ids. Dates are read in Config.UserZone (not UTC
//     by default) unless given as *_utc, and answered in both forms.
//     Several items may share an external_id; the lookup answers the
//     oldest.
//   - Files (files.go): POST /file/v2/ (and /file/, as podio-js posts)
//     multipart with filename and source, written to disk as it arrives;
//     GET /file/{id} and GET /file/{id}/raw, streamed; POST
//     /file/{id}/attach. Seeded files are generated from a seed
//     (Content), so a 100 MB file costs nothing until it is uploaded.
//   - Comments (comments.go): GET and POST /comment/item/{item_id}/, with
//     external_id, silent and hook.
//
// Quotas (quota.go) follow Podio's two tiers: every call, the token
// endpoint included, counts against Config.RateLimit calls per
// Config.RateWindow for the caller (per user or app, per API key; a
// refreshed token keeps its quota), and the calls IsRateLimitedCall names
// also against Config.LimitedRateLimit (a quarter by default, as 250 of
// 1,000). A window starts with the first call after the previous one
// ended. Answers carry X-Rate-Limit-Limit (the ceiling of the call just
// made) and X-Rate-Limit-Remaining; once either tier is spent, every call
// is answered 420 {"error":"rate_limit","error_description":"You have hit
// the rate limit. Please wait N seconds before trying again"}.
// QuotaWindows reports every window with its calls per access token, so a
// test can see how clients that share credentials split a quota.
//
// Auth (auth.go): refresh tokens expire after Config.RefreshTTL and can
// be revoked (RevokeRefreshToken, RevokeAll), which also revokes the
// access tokens issued with them.
//
// # Faults
//
// Faults (Config.Faults) are drawn from a seeded generator: a rate of 5xx
// answers (for a write, a share of them after the write was committed), a
// rate of lost responses (the write is committed, then the connection is
// closed without an answer), bursts of 420s, latency, and every N calls
// the expiry of every access token issued so far. The emulator never
// commits a write whose client has gone away while it was delayed.
//
// # Seeding and dumping
//
// LoadJSONL reads lines of {"kind":"client"|"user"|"app"|"item", ...}
// (see Seed); DumpJSONL writes an app's items, one GET /item body per
// line, in item_id order. /_emulator/dump?app_id=N and /_emulator/stats
// serve the same over HTTP for scripts; they are not Podio endpoints.
package podioemu
