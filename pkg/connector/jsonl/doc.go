// Package jsonl is the file connector, the embedded default.
//
// A source file holds one item per line:
//
//	{"item_id": 17, "fields": {"email": "a@x.io", "name": "Ann"}}
//
// item_id is a positive integer, unique in the file; it becomes the
// target's external_id. Blank lines are ignored. A line that is not such
// an object is a malformed record: the runner writes it to failed.jsonl
// with its line number and goes on.
//
// A target file is an append-only log:
//
//	{"item_id": 1, "external_id": "17", "fields": {"email": "a@x.io", "name": "Ann"}}
//
// A create appends a line with a new item_id (one more than the highest in
// the file) and the source item's id as external_id. An update appends a
// line with the same item_id and no external_id. The last line for an
// item_id holds the item's fields. Writes are buffered; Sync flushes and
// fsyncs them, and the runner commits a checkpoint only after Sync, so
// every write a checkpoint covers is durable. On open, a torn last line (a
// write cut short by a kill or a power cut) is cut off and logged: no
// checkpoint covered it.
package jsonl
