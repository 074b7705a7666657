// Package slimcache is the exact, compact, pointer-free index from a
// normalized match value (an email, an external id, a name) to a target
// item id that the batcher checks every source item against.
//
// It replaces a map[string]int64. A map of strings is a map of pointers:
// at 10M entries the GC has to mark 10M strings on every cycle, and each
// entry costs about 69 bytes. The cache holds the same entries in a few
// large pointer-free allocations, at under 40 bytes an entry for 24-byte
// keys, and a GC cycle does not look inside them.
//
// # Exactness
//
// A hash picks where to look, but a lookup always compares the stored key
// bytes, so a found entry is the entry that was Put: there are no false
// positives. The last Put of a key wins.
//
// # Layout
//
// Entries live in an arena of byte chunks (4 KiB, 16 KiB, 64 KiB,
// 256 KiB, then 1 MiB each). A record is
//
//	uvarint(len(key)<<2 | flags)   one byte for keys up to 31 bytes
//	key bytes
//	item id                        8 bytes, little-endian
//
// so a 24-byte key takes 33 bytes. The two flag bits mark a record dead
// (deleted, overwritten, evicted or expired) and visited (for CLOCK). A
// record is addressed by a uint32 offset, chunk<<20 | position, which
// caps the arena at 4095 chunks (4 GiB, about 130M 24-byte entries).
//
// The hash table (a seeded hash/maphash hash) is open addressing over
// groups of 12 slots, each group one 64-byte cache line: two words of
// control bytes (one per slot: empty, deleted, or full with an 8-bit tag
// of the hash), then the 12 slots' uint32 record offsets. A probe compares
// the 12 tags in two word operations and visits the arena only on a tag
// match. At most 7 slots in 8 are in use, so the table costs 5.33 bytes a
// slot, about 6.1 bytes an entry when full; the number of groups is not a
// power of two, so that the table can be sized to the entries it holds.
// Without a size hint the table grows 1.5 times at a time. Growing drops
// the old table before building the new one from a sequential scan of
// the arena, so the old and the new table are never both held.
//
// Time is not stored per entry. Records are appended in time order, so a
// short list of checkpoints (offset, put time as int64 Unix nanoseconds)
// gives every record's put time: the record shares the time of the last
// checkpoint at or before it. A Put starts a new checkpoint when the
// clock has moved at least min(TTL/1024, 1s) since the last one, which
// makes an entry look up to that much older than it is: it expires early
// (by at most 0.1% of the TTL, or 1 s), never late. A clock that goes
// backwards is held at the last checkpoint's time.
//
// Deleting, overwriting, evicting or expiring leaves a dead record in the
// arena. When dead bytes exceed a quarter of the arena (and 64 KiB), the
// next Put or Delete compacts: live records are copied in order into new
// chunks and each old chunk is released as soon as it is copied, so old
// and new arena overlap by about one chunk rather than doubling. Chunks
// at the head of the arena whose records are all dead are released
// without copying. Len, Stats and EstimatedBytes read counters and take
// constant time.
//
// # Keys
//
// A key is any string up to MaxKeyLen (64 KiB) bytes; the batcher uses
// the keys that Normalize returns. Put ignores a longer key (counting it
// in Stats.Rejected), and a lookup of one reports "not found, not
// certain", so that the batcher asks the target instead. If the arena is
// full (4 GiB even after compaction), Put rejects new keys the same way
// and from then on misses are not certain.
//
// # TTL
//
// An entry expires TTL after its Put (Options.TTL; zero means 12 hours,
// as in the original tool; negative means never). Expiry is lazy: a
// lookup that finds an expired entry removes it and reports a miss, and
// a Put first drops the expired records at the head of the arena (they
// form a prefix, since records are in time order). Overwriting a key
// restarts its TTL.
//
// The clock is injectable (Options.Now); an injected clock is read on
// every lookup. The real clock is read as the wall time at New plus the
// monotonic time since. Reading it costs tens of nanoseconds and orders
// memory loads, which would keep consecutive lookups from overlapping
// their cache misses, so with a TTL of a second or more a lookup does not
// read it while a runtime timer says that the earliest possible expiry
// of any entry is more than a margin (TTL/4, at most a minute) away. Once
// the timer has fired, every lookup reads the clock until the earliest
// expiry has moved on. Only if the process is stopped across that margin
// (SIGSTOP, a suspended VM) can a lookup in the first instants after it
// resumes, before the overdue timer runs, return an entry that has just
// expired. The timer's function refers only to a flag, so a dropped Cache
// is collected even while its timer is pending.
//
// # Bounded mode
//
// With Options.MaxEntries above zero, a Put of a new key into a full
// cache evicts one entry first, by CLOCK: Get, Lookup and Put set an
// entry's visited bit; the hand walks the arena in order and evicts the
// first entry it finds without the bit, clearing the bits it passes.
// Entries read since the hand last passed them survive another round.
//
// Once any entry has left the cache other than by Delete (evicted,
// expired, or rejected by a full arena), a miss no longer proves that
// the key is absent from the target. Get still returns two results;
// Lookup adds certain, which is false for such misses, and the batcher
// then asks the target by key. Before that, in any mode, a miss is
// certain.
//
// # Normalization
//
// Normalize and NormalizeJSON turn a field value into a key, following
// the original tool's documented rules, with its known bugs fixed:
//
//   - Text is trimmed of white space (Unicode white space and U+FEFF, as
//     JavaScript's trim) and lowercased. Nothing else: "01234" stays
//     "01234" and "0x1A" becomes "0x1a", never a number.
//   - Numbers, only real JSON numbers (json.Number, float64, float32 and
//     the integer types), are canonicalised: the exact decimal value is
//     written as JavaScript's Number.prototype.toString writes it, so 1,
//     1.0, 1e0 and 10e-1 are all "1", -0 is "0", 0.5 is "0.5", 1e21 is
//     "1e+21" and 1e-7 is "1e-7". A json.Number keeps all its digits (two
//     numbers share a key only if they are equal); a float64 uses its
//     shortest round-trip digits. NaN and infinities are empty. A
//     json.Number that is not a valid number is treated as text.
//   - true and false are the keys "true" and "false". 0 and false are
//     valid keys.
//   - An array is normalized element by element; empty elements are
//     dropped, the rest sorted (bytewise) and joined with ",".
//     Duplicates are kept, and an element that contains a comma is not
//     escaped, as in the original.
//   - An object uses the first of item_id, profile_id, user_id and value
//     whose value normalizes to a non-empty key (recursively, so
//     {"value": {"item_id": 7}} is "7"). Any other object is empty.
//   - null, "", white space, [] and {} (and arrays or objects with
//     nothing usable) are empty: Normalize returns ("", false) and the
//     value never matches.
//
// # Snapshots
//
// WriteSnapshot and ReadSnapshot let a restarted runner resume without
// prefetching the target again; SaveFile writes one atomically (temporary
// file, fsync, rename, directory fsync). The format, all integers
// little-endian:
//
//	magic      8 bytes  "SLIMCSNP"
//	version    uint32   1
//	flags      uint32   bit 0: misses are not certain (entries were lost)
//	count      uint64   number of entries
//	base time  int64    Unix nanoseconds
//	count entries, in put-time order:
//	    uvarint  key length (at most 64 KiB)
//	    bytes    key
//	    uint64   item id
//	    uvarint  put time minus the previous entry's (the first: minus base)
//	checksum   uint32   CRC-32C (Castagnoli) of every byte before it
//
// Entries keep their put times across a restore, so TTLs run on; hit and
// miss counters and CLOCK bits are not saved. ReadSnapshot rejects a torn
// or corrupt snapshot (bad magic, version or flags, truncation, an
// oversized key, a duplicate key, a bad checksum, trailing bytes) with an
// error wrapping ErrCorruptSnapshot. It never panics, and it allocates in
// proportion to the bytes it has actually read, not to the count in the
// header; the table is built once, at its final size, after the checksum
// has been verified.
//
// # Concurrency
//
// A Cache is not safe for concurrent use, not even for concurrent Gets
// (a lookup updates counters, CLOCK bits and expired entries). The batcher
// owns its cache, or holds a mutex around every call.
package slimcache
