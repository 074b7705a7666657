// Package synthetic is a deterministic source for demos and benchmarks.
// Item i (0-based) is computed from the seed and i alone, so any position
// can be read without reading the ones before it, and two runs with the
// same settings produce the same items byte for byte.
//
// Every item has the fields email (the match field), name, n and, when
// payload_bytes > 0, payload. Item ids are 1..count. With duplicate_rate
// r, about a share r of the items take the email of an earlier item; with
// empty_key_rate e, about a share e have an empty email. The email of item
// i, when it is neither, is unique to it.
package synthetic
