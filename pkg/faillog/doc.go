// Package faillog is failed.jsonl: one JSON line per item that could not be
// migrated, streamed to disk and never held in memory. The runner appends
// to it and makes it durable with every checkpoint; the API pages through
// it by byte offset; --retry-failed reads it back.
//
// A line:
//
//	{"time":"2026-11-29T12:00:00Z","source_id":17,"line":3,"pos":{"index":2,"offset":120,"line":2},
//	 "category":"validation","retryable":false,"error":"...","detail":{...},"raw":"..."}
//
// source_id is 0 when a malformed line had no readable id; line is the
// 1-based line of a line-oriented source, else 0; detail is the remote
// service's error body, verbatim; raw is the start of a malformed line.
package faillog
