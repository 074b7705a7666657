// Package connector defines what the runner reads from and writes to: a
// Source that streams records in a stable order from a Cursor, and a
// Target that creates and updates items, finds them by external id, and
// makes confirmed writes durable on Sync. The checkpoint stores the
// source Cursor and the target Mark together, so a resumed runner knows
// both where to read next and which target writes it may not have seen
// confirmed.
//
// The implementations live in subpackages: jsonl (files), synthetic (a
// deterministic generator for demos and benchmarks) and, in pkg/podio,
// the Podio REST API.
package connector
