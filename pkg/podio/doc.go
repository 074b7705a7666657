// Package podio is the Podio REST API connector: a Client that speaks the
// API, a Source that reads an app's items and a Target that writes them.
// The emulator the tests run against is in podioemu.
//
// # Job file keys
//
// A podio source or target takes these keys beside type: podio.
//
//	source:
//	  type: podio
//	  api_url: https://api.podio.com   # default; the emulator's address in tests
//	  app_id: 30001
//	  auth:
//	    flow: app                      # app | password | refresh_token
//	    client_id: memvisor
//	    client_secret_env: PODIO_CLIENT_SECRET
//	    app_token_env: PODIO_SOURCE_APP_TOKEN      # app flow
//	    # username_env, password_env               # password flow
//	    # refresh_token_env                        # refresh_token flow
//	    # credentials_file: podio.yaml             # client_id, client_secret, app_token,
//	    #                                          # username, password, refresh_token
//	  filters:                         # source only
//	    created_on: {from: "2024-01-01", to: "2024-06-30"}
//	    last_event_on: {from: "2024-05-01 00:00:00"}
//	    tags: [vip, renewal]           # any of them
//	  page_size: 500                   # items per filter call, at most 500
//	  timeout: 60s                     # one HTTP request
//	  max_attempts: 6                  # retried failures (network, 5xx) per request
//	  rate_window: 1h                  # the quota window, to know when a spent quota returns
//	  quota_share: 1                   # N: use at most 1/N of each window, per tier
//	target:
//	  type: podio
//	  app_id: 30002
//	  auth: {...}
//	  silent: true                     # default: no stream bumps, no notifications
//	  hook: false                      # default: no webhooks fired by the migration
//	  files: true                      # default when both ends are Podio
//	  comments: true                   # default when both ends are Podio
//	  files_concurrency: 2             # file transfers in flight
//	  external_id_format: "{id}"       # e.g. "migrated-{id}", the original tool's form
//
// Secrets are read from the environment variables the file names, or from
// the credentials file (a variable wins over the file). They are held in
// memory only, never logged and never stored in the job's state. Dates in
// filters are "YYYY-MM-DD" or "YYYY-MM-DD HH:MM:SS" (UTC), real calendar
// dates, with from not after to; a date as the end of a range means the
// end of that day. max_items is the job's own key.
//
// # Auth
//
// The app, password and refresh_token flows post to /oauth/token/v2 with
// client_id and client_secret. Calls carry "Authorization: OAuth2
// <token>". A token is renewed (with its refresh token when there is one)
// when a tenth of its life, at most a minute, is left, and at once on a 401
// expired_token. Concurrent callers share a single renewal.
//
// # Reading
//
// The Source pages through POST /item/app/{app_id}/filter/ sorted by
// item_id ascending, offset = the checkpoint's index, so a resume reads
// the same items. Total is GET /item/app/{app_id}/count, or the filtered
// count when filters are set. GetItem (GET /item/{id}) serves
// --retry-failed.
//
// # Writing, exactly once
//
// Every create is POST /item/app/{app_id}/?silent=true&hook=false with
// external_id set to the source item id. When the answer is lost (a reset,
// a timeout, a 5xx) the create may have been made: the Target looks the
// item up with GET /item/app/{app_id}/external_id/{id} before anything
// else, and returns the id it finds. It sends the create again only when
// the item is not there, and fails it only when it knows the item does not
// exist (or, after several tries, that it cannot find out:
// ErrOutcomeUnknown). Updates are PUT /item/{id}; 200 and 204 are both
// success, and a lost answer is simply sent again.
//
// Scan streams the items above a Mark, the highest item id seen: since 0
// it pages ascending; otherwise it pages descending to count the newer
// items, then reads just those ascending. Sync returns the highest item id
// seen or created. Podio item ids grow, so everything created after a
// checkpoint has a higher id than its Mark.
//
// # Files, images and comments
//
// When files or comments are copied (both ends Podio), the Source adds
// CarryField to each item: the source item id, its files (name, size)
// and its comment count; image fields flatten to their files. The Target
// streams each file from GET /file/{id}/raw into a multipart POST
// /file/v2/ through an io.Pipe (files.go), a few tens of kilobytes at a
// time whatever the size, at most files_concurrency at once, and
// attaches the new files with file_ids on the create, so they are
// attached exactly when the item is made; image field values become the
// new file ids. An upload whose create never happened is an orphan in
// Podio, never a second attachment. Update attaches with POST
// /file/{id}/attach, after checking the item's files by name and size,
// so a redone update uploads nothing twice.
//
// Comments (comments.go) are read with GET /comment/item/{id}/ and
// posted with POST /comment/item/{id}/ and the write's silent and hook,
// each marked with external_id "memvisor-comment-<source comment id>";
// the target's comments are read first and a marked one is not posted
// again. An item with comments is created with its external_id plus
// ".pending" and renamed once its comments are copied: a kill in
// between leaves a pending item, which the next Scan finishes (see
// docs/design.md, "Connectors"). When copying them fails instead, Sync's
// mark stays below the item, so the next run's Scan still sees it.
//
// # Adopting earlier work
//
// Scan reports the source item id of every item whose external_id is
// the job's external_id_format, the bare id or "migrated-<id>" (the
// original tool's form), so a half-filled target is recognized whoever
// filled it; references and lookups try the same forms. field_mapping
// keys and the match field may be Podio field ids, as the original
// tool's mappings are: the Source keys those fields by id, and the
// Target resolves a field id as a name.
//
// # Dates and calculations
//
// Podio answers a date in the user's zone and in *_utc keys. The flat
// form takes the UTC one, and the Target writes start_utc/end_utc (a
// date without a time has no zone and stays a date), so no user's zone
// shifts a time. A calculation is read but never written, and one
// without a result is left out rather than flattened to null, so it
// cannot clear the field it is mapped to.
//
// # Rate limits and errors
//
// Each client has one Gate, shared by all the goroutines that write
// through it (see Gate), with a bucket for each of Podio's two tiers
// (1,000 calls an hour, 250 for the calls Podio marks "Rate limited",
// taken to be filter and file upload). It reads X-Rate-Limit-Limit and
// X-Rate-Limit-Remaining, spreads the last tenth of the quota over the
// rest of the window, holds calls when it is spent, and on a 420 or 429
// waits for "wait N seconds" in error_description, else Retry-After, else
// a jittered backoff. A source and a target have a gate each; Podio counts
// quotas per user (or app) and API key, so with the same credentials each
// gate still sees the other's calls in the Remaining header.
//
// quota_share N (Options.QuotaShare) gives an endpoint a fixed part of
// the quota: its gate lets at most 1/N of each tier's limit, less its
// reserve of one call, through in any window's length of time (see
// Gate), so that N jobs on the same credentials each get their part
// whatever the others do. N counts gates, not jobs: a job whose source
// and target share the credentials has two, and a fleet that runs N such
// jobs at once gives each endpoint 2N.
//
// Errors are *connector.ItemError with Podio's error body verbatim as the
// detail: network (transport failures and 5xx, retried with jittered
// exponential backoff up to max_attempts), rate_limit, validation (400,
// 404, 410, and values the target app cannot take), permission (401, 403,
// refused credentials), duplicate (409) and unknown.
//
// # Fields
//
// Values travel in the flat, app-independent form that Flatten documents,
// keyed by field external_id. The target finds the target field for each
// name by external_id, then by label (the source field's label when the
// source is a Podio app), then by the name taken as a label. Fields with
// no place in the target, and read-only ones (calculation), are dropped
// with one warning per field. Category and question options are matched
// by text; a text the target field does not have fails the item as a
// validation error. App references are translated to the target id of the
// referenced source item, found by its external_id in the apps the target
// field references (the target app when it names none); a reference to an
// item that was not migrated, or not yet (a reference to a later item of
// the same app), is dropped with a warning in the log, and the item is
// written without it. Only when nothing else is left to write does the
// item fail, as a validation error. field_mapping targets and the match
// field are checked against the target app when the job opens; a bounded
// match cache (memory.cache_max_entries) needs a match field Podio can
// filter on.
package podio
