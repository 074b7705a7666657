// Package checkpoint stores a job's progress durably: after every batch the
// runner commits where it is in the source, where the target's durable
// writes end, how long failed.jsonl is, and its counters.
//
// A commit writes checkpoint.json through a temporary file, fsync, rename
// and an fsync of the directory, so a crash leaves the old checkpoint or
// the new one. The file carries a SHA-256 of its body: a torn, truncated or
// edited checkpoint is reported as ErrCorrupt, naming the file, and is never
// taken for "no checkpoint, start from zero".
//
// A drain inside a batch adds Partial: the batch's length and a bitmap of
// its done items, so a resume neither repeats nor skips one. Such a
// checkpoint is format version 2; one without it is still written as
// version 1, and both versions load.
package checkpoint
