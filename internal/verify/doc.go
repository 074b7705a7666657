// Package verify checks a finished job from the outside: it reads the
// source and the target files directly, never the runner's counters or
// checkpoint, and reports what is missing and what is there twice.
//
// For a job in create or upsert mode, a correct target holds one item per
// distinct normalized match value of the source, plus one item per source
// item without a match value (matched by its external_id). Every
// malformed source line must be in failed.jsonl exactly once.
package verify
