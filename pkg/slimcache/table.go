package slimcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"math/bits"
)

// The table is open addressing over groups of 12 slots, probed group by
// group from the group the hash picks. A group is one 64-byte cache line
// of 8 words: two control words whose bytes describe the slots (byte j of
// the pair for slot j; 0 empty, 1 deleted, 2-255 full, the value a tag
// of 8 hash bits; the last 4 bytes are unused), then the 12 slots'
// uint32 record offsets, two to a word. A lookup compares the tags of a
// whole group in two word operations, and reads the arena only for a
// matching tag; it then always compares the stored key bytes: a tag
// match alone is never a hit.

// The hash mask is all ones; tests narrow it to make keys collide, so
// that the key comparison is what tells them apart.
func (c *Cache) hashString(s string) uint64 { return maphash.String(c.seed, s) & c.hashMask }
func (c *Cache) hashBytes(b []byte) uint64  { return maphash.Bytes(c.seed, b) & c.hashMask }

// tagOf maps the low byte of h onto 2-255.
func tagOf(h uint64) uint64 { return 2 + (h&0xff)*254>>8 }

// spare marks the unused high half of a group's second control word as
// full, so that it never counts as free; matches in it are masked off.
const (
	spare   = 0xffffffff_00000000
	lowHalf = 0x00000000_80808080
	lsbFree = 0x0202020202020202
)

// matchByte flags the bytes of w equal to b, plus, rarely, a byte just
// above a match (callers compare keys anyway).
func matchByte(w, b uint64) uint64 {
	x := w ^ (lsb * b)
	return (x - lsb) &^ x & msb
}

// matchEmpty is nonzero if w has an empty byte, and its lowest flagged
// byte is empty.
func matchEmpty(w uint64) uint64 { return (w - lsb) &^ w & msb }

// matchFree is nonzero if w has an empty or deleted byte, and its lowest
// flagged byte is one.
func matchFree(w uint64) uint64 { return (w - lsbFree) &^ w & msb }

func (c *Cache) resetTable(ngroups uint64) {
	c.words = nil // let the old table go before the new one is made
	c.words = make([]uint64, ngroups*groupWords)
	c.ngroups = ngroups
	c.limit = int(ngroups * groupLimit2 / 2)
	c.live = 0
	c.tombs = 0
}

func (c *Cache) home(h uint64) uint64 {
	g, _ := bits.Mul64(h, c.ngroups)
	return g
}

func offsetAt(words []uint64, base, j uint64) uint32 {
	return uint32(words[base+2+j>>1] >> (32 * (j & 1)))
}

// matches returns the slots of a group whose tag is tag, as one mask:
// slot j < 8 is bit 8j, slot j >= 8 is bit 8(j-8)+4. w1 includes spare.
func matches(w0, w1, tag uint64) uint64 {
	return matchByte(w0, tag)>>7 | (matchByte(w1, tag)&lowHalf)>>3
}

// slotBit returns the slot of the lowest bit of a matches mask.
func slotBit(m uint64) uint64 {
	b := uint64(bits.TrailingZeros64(m))
	return b>>3 + (b&4)<<1
}

// find looks key up. If it is there, find returns its slot and record
// offset. If not, it returns the first free slot on key's probe path,
// where an insert goes.
func (c *Cache) find(key string, h uint64) (slot uint64, off uint32, found bool) {
	words := c.words
	g := c.home(h)
	tag := tagOf(h)
	free := noSlot
	for {
		base := g * groupWords
		w0, w1 := words[base], words[base+1]|spare
		for m := matches(w0, w1, tag); m != 0; m &= m - 1 {
			j := slotBit(m)
			if o := offsetAt(words, base, j); c.holds(o, key) {
				return g*groupSlots + j, o, true
			}
		}
		if free == noSlot {
			if f := matchFree(w0)>>7 | matchFree(w1)>>3; f != 0 {
				free = g*groupSlots + slotBit(f)
			}
		}
		if matchEmpty(w0)|matchEmpty(w1) != 0 {
			return free, 0, false
		}
		if g++; g == c.ngroups {
			g = 0
		}
	}
}

// lookupShort is find for Get and Lookup with a key of at most 31 bytes
// (a one-byte record header), the common case. It tracks no free slot
// and compares keys with word loads against words of the key taken once,
// with no calls, which keeps the probe in registers, so that
// consecutive lookups overlap their cache misses.
func (c *Cache) lookupShort(key string, h uint64) (uint32, bool) {
	n := len(key)
	var first, last uint64 // key[:8] and key[n-8:], or key zero-padded
	mask := ^uint64(0)
	if n >= 8 {
		first, last = load64(key, 0), load64(key, n-8)
	} else {
		for i := n - 1; i >= 0; i-- {
			first = first<<8 | uint64(key[i])
		}
		mask = 1<<(8*uint(n)) - 1
	}
	hdr := byte(n << 2)
	words := c.words
	g := c.home(h)
	tag := tagOf(h)
	for {
		base := g * groupWords
		w0, w1 := words[base], words[base+1]|spare
		for m := matches(w0, w1, tag); m != 0; m &= m - 1 {
			o := offsetAt(words, base, slotBit(m))
			ch := c.chunks[o>>chunkBits]
			p := int(o & chunkMask)
			// The record holds n key bytes and 8 id bytes after its
			// header, so each load below stays inside it.
			if ch[p]&^(flagDead|flagVisited) == hdr &&
				binary.LittleEndian.Uint64(ch[p+1:])&mask == first &&
				(n < 8 || binary.LittleEndian.Uint64(ch[p+1+n-8:]) == last) &&
				(n <= 16 || binary.LittleEndian.Uint64(ch[p+9:]) == load64(key, 8)) &&
				(n <= 24 || binary.LittleEndian.Uint64(ch[p+17:]) == load64(key, 16)) {
				return o, true
			}
		}
		if matchEmpty(w0)|matchEmpty(w1) != 0 {
			return 0, false
		}
		if g++; g == c.ngroups {
			g = 0
		}
	}
}

// sameShort reports whether ch[q:q+len(key)] is key, for a key of at
// most 31 bytes stored with its 8-byte id after it, by overlapping word
// loads.
func sameShort(ch []byte, q int, key string) bool {
	n := len(key)
	switch {
	case n >= 8:
		if binary.LittleEndian.Uint64(ch[q:]) != load64(key, 0) ||
			binary.LittleEndian.Uint64(ch[q+n-8:]) != load64(key, n-8) {
			return false
		}
		if n > 16 && binary.LittleEndian.Uint64(ch[q+8:]) != load64(key, 8) {
			return false
		}
		return n <= 24 || binary.LittleEndian.Uint64(ch[q+16:]) == load64(key, 16)
	case n >= 4:
		return binary.LittleEndian.Uint32(ch[q:]) == load32(key, 0) &&
			binary.LittleEndian.Uint32(ch[q+n-4:]) == load32(key, n-4)
	case n > 0:
		return ch[q] == key[0] && ch[q+n/2] == key[n/2] && ch[q+n-1] == key[n-1]
	}
	return true
}

// load64 and load32 read key bytes little-endian; the compiler turns each
// into a single load.
func load64(s string, i int) uint64 {
	b := s[i : i+8]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

func load32(s string, i int) uint32 {
	b := s[i : i+4]
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// holds reports whether the record at off holds key.
func (c *Cache) holds(off uint32, key string) bool {
	ch := c.chunks[off>>chunkBits]
	p := int(off & chunkMask)
	if hb := ch[p]; hb < 0x80 {
		return int(hb>>2) == len(key) && sameShort(ch, p+1, key)
	}
	return c.keyEquals(off, key)
}

func (c *Cache) ctrlAt(slot uint64) byte {
	g, j := slot/groupSlots, slot%groupSlots
	return byte(c.words[g*groupWords+j/8] >> (8 * (j % 8)))
}

func (c *Cache) setCtrl(slot uint64, b uint64) {
	g, j := slot/groupSlots, slot%groupSlots
	i := g*groupWords + j/8
	sh := 8 * (j % 8)
	c.words[i] = c.words[i]&^(0xff<<sh) | b<<sh
}

func (c *Cache) setSlotOff(slot uint64, off uint32) {
	g, j := slot/groupSlots, slot%groupSlots
	i := g*groupWords + 2 + j>>1
	sh := 32 * (j & 1)
	c.words[i] = c.words[i]&^(0xffffffff<<sh) | uint64(off)<<sh
}

// setSlot fills a free slot.
func (c *Cache) setSlot(slot uint64, h uint64, off uint32) {
	if c.ctrlAt(slot) == ctrlDeleted {
		c.tombs--
	}
	c.setCtrl(slot, tagOf(h))
	c.setSlotOff(slot, off)
	c.live++
}

// clearSlot frees a full slot. It may become empty only if its group
// already has an empty slot: then no probe ever passed this group, so no
// key lies beyond it on a probe path through it.
func (c *Cache) clearSlot(slot uint64) {
	base := slot / groupSlots * groupWords
	if matchEmpty(c.words[base])|matchEmpty(c.words[base+1]|spare) != 0 {
		c.setCtrl(slot, ctrlEmpty)
	} else {
		c.setCtrl(slot, ctrlDeleted)
		c.tombs++
	}
	c.live--
}

// slotOf returns the slot that points at the live record at off.
func (c *Cache) slotOf(off uint32) uint64 {
	ch, _, ks, kl := c.decode(off)
	h := c.hashBytes(ch[ks : ks+kl])
	g := c.home(h)
	tag := tagOf(h)
	for {
		base := g * groupWords
		w0, w1 := c.words[base], c.words[base+1]|spare
		for m := matches(w0, w1, tag); m != 0; m &= m - 1 {
			if j := slotBit(m); offsetAt(c.words, base, j) == off {
				return g*groupSlots + j
			}
		}
		if matchEmpty(w0)|matchEmpty(w1) != 0 {
			panic("slimcache: a live record is missing from the table")
		}
		if g++; g == c.ngroups {
			g = 0
		}
	}
}

var errDuplicate = errors.New("duplicate key")

// insertFresh indexes the record at off in a table being rebuilt. It
// fails if the key is already indexed, which only a corrupt snapshot
// can cause.
func (c *Cache) insertFresh(off uint32) error {
	ch, _, ks, kl := c.decode(off)
	key := ch[ks : ks+kl]
	h := c.hashBytes(key)
	g := c.home(h)
	tag := tagOf(h)
	same := func(o uint32) bool {
		och, _, oks, okl := c.decode(o)
		return bytes.Equal(och[oks:oks+okl], key)
	}
	for {
		base := g * groupWords
		w0, w1 := c.words[base], c.words[base+1]|spare
		for m := matches(w0, w1, tag); m != 0; m &= m - 1 {
			if same(offsetAt(c.words, base, slotBit(m))) {
				return errDuplicate
			}
		}
		if f := matchFree(w0)>>7 | matchFree(w1)>>3; f != 0 {
			c.setSlot(g*groupSlots+slotBit(f), h, off)
			return nil
		}
		if g++; g == c.ngroups {
			g = 0
		}
	}
}

// relayout drops the table and builds a new one with ngroups groups from
// the live records. With compact, it also copies the live records that
// have not expired into new chunks, releasing each old chunk as soon as
// it is copied, so that old and new arena overlap by about one chunk.
func (c *Cache) relayout(now int64, compact bool, ngroups uint64) {
	c.resetTable(ngroups)
	if !compact {
		if err := c.reindex(); err != nil {
			panic("slimcache: " + err.Error())
		}
		return
	}
	old, oldOff, oldTime := c.chunks, c.cpOff, c.cpTime
	first, hand := c.headChunk, c.hand
	c.chunks = make([][]byte, 0, max(len(old)-first, 1))
	c.cpOff, c.cpTime = nil, nil
	c.headChunk, c.head = 0, 0
	c.arenaCap, c.arenaUsed, c.garbage = 0, 0, 0
	newHand, handSet := uint32(0), false
	k := 0
	for i := first; i < len(old); i++ {
		ch := old[i]
		for p := 0; p < len(ch); {
			h, n := uint64(ch[p]), 1
			if h >= 0x80 {
				h, n = uvarintAt(ch, p)
			}
			end := p + n + int(h>>2) + idLen
			if ch[p]&flagDead == 0 {
				off := uint32(i)<<chunkBits | uint32(p)
				for k+1 < len(oldOff) && oldOff[k+1] <= off {
					k++
				}
				if t := oldTime[k]; c.ttl >= 0 && now-t >= c.ttl {
					c.expirations++
					c.lossy = true
				} else {
					noff := c.appendRaw(ch[p:end], t)
					if !handSet && off >= hand {
						newHand, handSet = noff, true
					}
					if err := c.insertFresh(noff); err != nil {
						panic("slimcache: " + err.Error())
					}
				}
			}
			p = end
		}
		old[i] = nil
	}
	if !handSet {
		newHand = c.tail()
	}
	c.hand = newHand
	c.compactions++
}

// reindex inserts every live record from the head on into the (empty)
// table.
func (c *Cache) reindex() error {
	for i := c.headChunk; i < len(c.chunks); i++ {
		ch := c.chunks[i]
		for p := 0; p < len(ch); {
			h, n := uint64(ch[p]), 1
			if h >= 0x80 {
				h, n = uvarintAt(ch, p)
			}
			if h&flagDead == 0 {
				if err := c.insertFresh(uint32(i)<<chunkBits | uint32(p)); err != nil {
					return err
				}
			}
			p += n + int(h>>2) + idLen
		}
	}
	return nil
}
