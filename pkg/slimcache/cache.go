package slimcache

import (
	"encoding/binary"
	"hash/maphash"
	"sync/atomic"
	"time"
	"unsafe"
)

// MaxKeyLen is the longest key the cache stores: 64 KiB. Put ignores a
// longer key (and counts it in Stats.Rejected); Get and Lookup report it
// not found, and Lookup says that the miss is not certain.
const MaxKeyLen = 64 << 10

// DefaultTTL is the lifetime of an entry when Options.TTL is zero, as in
// the original tool's prefetch cache.
const DefaultTTL = 12 * time.Hour

// Options configure a Cache. The zero value is an unbounded cache with
// the default TTL and the real clock.
type Options struct {
	// TTL is how long an entry lives after its Put. Zero means
	// DefaultTTL; a negative TTL means that entries never expire.
	TTL time.Duration
	// MaxEntries bounds the cache. Zero (or less) means unbounded. Above
	// zero, a Put of a new key into a full cache evicts one entry first
	// (CLOCK, see the package documentation).
	MaxEntries int
	// ExpectedEntries sizes the hash table up front, so that a prefetch
	// of that many entries does not regrow it. In bounded mode it is
	// capped at MaxEntries.
	ExpectedEntries int
	// Now is the clock. Nil means the real clock: the wall time at New
	// plus the monotonic time elapsed since, which is cheaper to read
	// than time.Now and does not jump with the wall clock.
	Now func() time.Time
}

// Stats are the cache's counters. Hits and Misses count Get and Lookup
// calls.
type Stats struct {
	// Entries is Len: entries stored and not yet found expired.
	Entries int
	// Bytes is EstimatedBytes.
	Bytes       int64
	Hits        uint64
	Misses      uint64
	Evictions   uint64
	Expirations uint64
	// Rejected counts Puts that stored nothing: keys longer than
	// MaxKeyLen, or new keys once the 4 GiB arena is full.
	Rejected uint64
	// Compactions counts rewrites of the arena that dropped garbage.
	Compactions uint64
}

// Cache is an exact map from a key (a normalized match value) to an item
// id, stored without pointers. See the package documentation for the
// layout.
//
// A Cache is not safe for concurrent use, not even for concurrent Gets:
// a lookup updates counters, eviction marks and expired entries. Callers
// that share a Cache between goroutines hold a mutex around every call.
type Cache struct {
	ttl        int64 // nanoseconds; negative: entries never expire
	gran       int64 // see appendRecord
	maxEntries int
	minGroups  uint64
	now        func() time.Time
	wallBase   int64
	monoBase   time.Time
	lastClock  int64  // the clock as a lookup last read it
	alarm      *alarm // alarm.due: a lookup must read the clock
	margin     int64  // zero: no timer, alarm.due stays set
	seed       maphash.Seed
	hashMask   uint64

	// The arena. Record offsets are chunk<<chunkBits | position.
	chunks    [][]byte
	headChunk int    // chunks before it are released (nil)
	head      uint32 // first record that may be live
	hand      uint32 // CLOCK hand (bounded mode)
	arenaCap  int64  // capacity of the chunks held
	arenaUsed int64  // bytes of records in the chunks held
	garbage   int64  // bytes of dead records in the chunks held

	// The hash table: groups of 12 slots in 8 words (see table.go).
	words   []uint64
	ngroups uint64
	live    int
	tombs   int
	limit   int // live+tombs never exceeds it: 7 of every 8 slots

	// Time checkpoints: the records from cpOff[i] on were put at
	// cpTime[i] or later. Both are ascending.
	cpOff  []uint32
	cpTime []int64

	// lossy is set once an entry has left the cache other than by
	// Delete (eviction, expiry, a full arena): from then on a miss no
	// longer proves absence.
	lossy bool

	hits, misses, evictions, expirations, rejected, compactions uint64

	maxChunks  int   // a test can lower it to reach "arena full"
	minGarbage int64 // compaction waits for at least this much garbage
}

const (
	chunkBits     = 20
	chunkSpan     = 1 << chunkBits
	chunkMask     = chunkSpan - 1
	maxChunkCount = 1<<(32-chunkBits) - 1 // keeps the tail offset below 2^32
	idLen         = 8

	flagDead    = 1
	flagVisited = 2

	groupSlots  = 12
	groupWords  = 8
	groupLimit2 = 21 // at most 10.5 of 12 slots (7 in 8) are full or deleted

	ctrlEmpty   = 0x00
	ctrlDeleted = 0x01
	lsb         = 0x0101010101010101
	msb         = 0x8080808080808080

	defaultMinGarbage = 64 << 10
	noSlot            = ^uint64(0)
)

// New returns an empty cache.
func New(opts Options) *Cache {
	c := newCache(opts)
	if c.minGroups > 0 {
		c.resetTable(c.minGroups)
	}
	return c
}

func newCache(opts Options) *Cache {
	c := &Cache{
		now:        opts.Now,
		seed:       maphash.MakeSeed(),
		hashMask:   ^uint64(0),
		maxChunks:  maxChunkCount,
		minGarbage: defaultMinGarbage,
	}
	c.alarm = &alarm{}
	c.alarm.due.Store(true)
	if opts.Now == nil {
		c.monoBase = time.Now()
		c.wallBase = c.monoBase.UnixNano()
	}
	switch ttl := opts.TTL; {
	case ttl < 0:
		c.ttl = -1
		c.gran = int64(time.Second)
	default:
		if ttl == 0 {
			ttl = DefaultTTL
		}
		c.ttl = int64(ttl)
		c.gran = min(max(c.ttl/1024, 1), int64(time.Second))
		if opts.Now == nil && c.ttl >= int64(time.Second) {
			c.margin = min(c.ttl/4, int64(time.Minute))
		}
	}
	if opts.MaxEntries > 0 {
		c.maxEntries = opts.MaxEntries
	}
	if n := opts.ExpectedEntries; n > 0 {
		if c.maxEntries > 0 {
			n = min(n, c.maxEntries)
		}
		c.minGroups = groupsFor(n)
	}
	return c
}

func (c *Cache) clock() int64 {
	if c.now != nil {
		return c.now().UnixNano()
	}
	return c.wallBase + int64(time.Since(c.monoBase))
}

// Len returns the number of entries, counting expired entries that no
// lookup, purge or compaction has found yet.
func (c *Cache) Len() int { return c.live }

// EstimatedBytes returns the heap bytes the cache holds: its arena
// chunks, its table, its time checkpoints and its own struct.
func (c *Cache) EstimatedBytes() int64 {
	return c.arenaCap +
		int64(cap(c.words))*8 +
		int64(cap(c.cpOff))*4 + int64(cap(c.cpTime))*8 +
		int64(cap(c.chunks))*int64(unsafe.Sizeof([]byte(nil))) +
		int64(unsafe.Sizeof(*c))
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	return Stats{
		Entries:     c.live,
		Bytes:       c.EstimatedBytes(),
		Hits:        c.hits,
		Misses:      c.misses,
		Evictions:   c.evictions,
		Expirations: c.expirations,
		Rejected:    c.rejected,
		Compactions: c.compactions,
	}
}

// Get returns the item id stored for key. It is Lookup without the
// certainty of a miss.
func (c *Cache) Get(key string) (int64, bool) {
	id, found, _ := c.Lookup(key)
	return id, found
}

// Lookup returns the item id stored for key. When found is false,
// certain says whether the miss proves that key was never Put (or was
// deleted since): it is false once the cache has lost an entry to
// eviction, expiry or a full arena, and always false for an expired
// entry or a key longer than MaxKeyLen. A found entry is always exact.
func (c *Cache) Lookup(key string) (id int64, found, certain bool) {
	if len(key) > MaxKeyLen {
		c.misses++
		return 0, false, false
	}
	if c.live == 0 {
		c.misses++
		return 0, false, !c.lossy
	}
	var off uint32
	var ok bool
	if h := c.hashString(key); len(key) < 32 {
		off, ok = c.lookupShort(key, h)
	} else {
		_, off, ok = c.find(key, h)
	}
	if !ok {
		c.misses++
		return 0, false, !c.lossy
	}
	if c.ttl >= 0 && c.alarm.due.Load() && c.mayHaveExpired() && c.expired(off, c.lastClock) {
		c.clearSlot(c.slotOf(off))
		c.markDead(off)
		c.expirations++
		c.misses++
		c.lossy = true
		c.skipDeadHead()
		return 0, false, false
	}
	c.hits++
	ch := c.chunks[off>>chunkBits]
	p := int(off & chunkMask)
	idAt := p + uvarintLen(uint64(len(key))<<2) + len(key)
	if c.maxEntries > 0 {
		ch[p] |= flagVisited
	}
	return int64(binary.LittleEndian.Uint64(ch[idAt:])), true, true
}

// mayHaveExpired reports whether a lookup must check the found entry's
// age, reading the clock into lastClock if needed.
//
// Reading the real clock costs tens of nanoseconds here and, worse,
// orders memory loads, so that consecutive lookups can no longer overlap
// their cache misses: it would double the cost of a hit. So with the
// real clock (and a TTL of at least a second), a lookup skips the clock
// while a runtime timer says that the earliest possible expiry of any
// entry is more than a margin (TTL/4, at most a minute) away. Once the
// timer fires, every lookup reads the clock, until the earliest expiry
// has moved on and the timer is set again. An injected clock is read on
// every lookup.
func (c *Cache) mayHaveExpired() bool {
	now := c.clock()
	c.lastClock = now
	if c.margin == 0 {
		return true // no timer: read the clock every time
	}
	if early := c.cpTime[0] + c.ttl - c.margin; now < early {
		c.alarm.set(time.Duration(early - now))
		return false
	}
	return true
}

// alarm is a timer that marks, from another goroutine, that the earliest
// expiry is near (due). It refers to nothing else, so a dropped Cache is
// not kept alive by its pending timer. Without a timer, due stays set.
type alarm struct {
	due   atomic.Bool
	timer *time.Timer
}

func (a *alarm) set(d time.Duration) {
	a.due.Store(false)
	if a.timer == nil {
		a.timer = time.AfterFunc(d, func() { a.due.Store(true) })
		return
	}
	a.timer.Reset(d)
}

// Put stores itemID for key, replacing any id stored before (the last
// Put wins) and restarting the entry's TTL. A key longer than MaxKeyLen
// is ignored.
func (c *Cache) Put(key string, itemID int64) {
	if len(key) > MaxKeyLen {
		c.rejected++
		return
	}
	now := c.putClock()
	room := c.prepare(recordLen(len(key)), now)
	if c.words == nil {
		c.resetTable(max(c.minGroups, 1))
	}
	h := c.hashString(key)
	slot, off, found := c.find(key, h)
	if found {
		if !room || c.fresh(off, now) {
			ch, p, ks, kl := c.decode(off)
			binary.LittleEndian.PutUint64(ch[ks+kl:], uint64(itemID))
			if c.maxEntries > 0 {
				ch[p] |= flagVisited
			}
			return
		}
		noff := c.appendRecord(key, itemID, now)
		c.setSlotOff(slot, noff)
		c.markDead(off)
		c.skipDeadHead()
		return
	}
	if !room {
		c.rejected++
		c.lossy = true
		return
	}
	if c.maxEntries > 0 && c.live >= c.maxEntries {
		c.evictOne()
		slot, _, _ = c.find(key, h)
	}
	if c.live+c.tombs >= c.limit && c.ctrlAt(slot) != ctrlDeleted {
		c.grow(now)
		slot, _, _ = c.find(key, h)
	}
	noff := c.appendRecord(key, itemID, now)
	c.setSlot(slot, h, noff)
}

// Delete removes key and reports whether a live entry was removed. A
// miss for a deleted key stays certain: Delete is for keys known to be
// gone from the target. An expired entry is removed too, but Delete
// reports false and counts an expiration.
func (c *Cache) Delete(key string) bool {
	if len(key) > MaxKeyLen || c.live == 0 {
		return false
	}
	slot, off, ok := c.find(key, c.hashString(key))
	if !ok {
		return false
	}
	now := c.clock()
	expired := c.ttl >= 0 && c.expired(off, now)
	c.clearSlot(slot)
	c.markDead(off)
	if expired {
		c.expirations++
		c.lossy = true
	}
	c.skipDeadHead()
	if c.garbageHigh() {
		c.relayout(now, true, c.groupsAfterCompaction())
	}
	return !expired
}

// putClock reads the clock for a Put, keeps time monotonic in arena
// order, and purges the expired records at the head of the arena.
func (c *Cache) putClock() int64 {
	now := c.clock()
	if n := len(c.cpTime); n > 0 {
		if last := c.cpTime[n-1]; now < last {
			now = last
		}
		if c.ttl >= 0 && now-c.cpTime[0] >= c.ttl {
			c.purgeExpired(now)
		}
	}
	return now
}

// prepare makes room for a record of n bytes, compacting when garbage
// is high or the arena is out of chunks. It reports whether the record
// fits.
func (c *Cache) prepare(n int, now int64) bool {
	if c.garbageHigh() {
		c.relayout(now, true, c.groupsAfterCompaction())
	}
	if c.hasRoom(n) {
		return true
	}
	if c.garbage > 0 || c.headChunk > 0 {
		c.relayout(now, true, c.groupsAfterCompaction())
		return c.hasRoom(n)
	}
	return false
}

func (c *Cache) garbageHigh() bool {
	return c.garbage > c.minGarbage && c.garbage*4 > c.arenaUsed
}

// fresh reports whether the record at off may take a new id in place:
// it carries the newest time checkpoint, so its TTL restarts anyway.
func (c *Cache) fresh(off uint32, now int64) bool {
	if c.ttl < 0 {
		return true
	}
	n := len(c.cpOff)
	return off >= c.cpOff[n-1] && now-c.cpTime[n-1] < c.gran
}

// expired reports whether the record at off is at least TTL old.
func (c *Cache) expired(off uint32, now int64) bool {
	if now-c.cpTime[0] < c.ttl {
		return false
	}
	return now-c.timeOf(off) >= c.ttl
}

// timeOf returns the time of the last checkpoint at or before off.
func (c *Cache) timeOf(off uint32) int64 {
	lo, hi := 0, len(c.cpOff)
	for hi-lo > 1 {
		mid := int(uint(lo+hi) >> 1)
		if c.cpOff[mid] <= off {
			lo = mid
		} else {
			hi = mid
		}
	}
	return c.cpTime[lo]
}

// purgeExpired drops the expired records at the head of the arena.
// Records are in time order, so the expired ones form a prefix.
func (c *Cache) purgeExpired(now int64) {
	tail := c.tail()
	off := c.norm(c.head)
	k := 0
	for off < tail {
		for k+1 < len(c.cpOff) && c.cpOff[k+1] <= off {
			k++
		}
		if now-c.cpTime[k] < c.ttl {
			break
		}
		ch, p, _, _ := c.decode(off)
		if ch[p]&flagDead == 0 {
			c.clearSlot(c.slotOf(off))
			c.markDead(off)
			c.expirations++
			c.lossy = true
		}
		off = c.next(off)
	}
	c.setHead(off)
}

// evictOne evicts one live entry with the CLOCK algorithm: the hand
// walks the arena in order, clearing the visited mark of an entry that
// was read since the hand last passed, and evicts the first entry that
// was not.
func (c *Cache) evictOne() {
	tail := c.tail()
	off := c.norm(c.hand)
	for {
		if off >= tail {
			off = c.norm(c.head)
		}
		ch, p, _, _ := c.decode(off)
		next := c.next(off)
		if f := ch[p]; f&flagDead == 0 {
			if f&flagVisited != 0 {
				ch[p] = f &^ flagVisited
			} else {
				c.clearSlot(c.slotOf(off))
				c.markDead(off)
				c.evictions++
				c.lossy = true
				c.hand = next
				c.skipDeadHead()
				return
			}
		}
		off = next
	}
}

// grow rebuilds the table for one more entry: 1.5 times the live
// entries (capped at MaxEntries), which also clears deleted slots.
func (c *Cache) grow(now int64) {
	need := c.live + 1
	target := need + need/2
	if c.maxEntries > 0 && target > c.maxEntries {
		target = max(need, c.maxEntries)
	}
	c.relayout(now, c.garbageHigh(), max(groupsFor(target), c.minGroups))
}

func (c *Cache) groupsAfterCompaction() uint64 {
	n := c.live + c.live/2 + 1
	if c.maxEntries > 0 {
		n = min(n, max(c.live+1, c.maxEntries))
	}
	return max(groupsFor(n), c.minGroups)
}

// groupsFor returns the number of groups that hold n entries.
func groupsFor(n int) uint64 {
	return uint64(max((2*n+groupLimit2-1)/groupLimit2, 1))
}
