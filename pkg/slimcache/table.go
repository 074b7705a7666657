package slimcache

import (
	"bytes"
	"errors"
	"hash/maphash"
	"math/bits"
)

// The table is open addressing over groups of 8 slots, probed group by
// group from the group the hash picks. A group is 5 words: a control word
// whose byte j describes slot j (0x00 empty, 0x01 deleted, 0x80|tag full,
// where tag is 7 bits of the hash), then the 8 slots' uint32 record
// offsets, two to a word. A lookup compares the tags of a whole group at
// once and reads the arena only for a matching tag, then always compares
// the stored key bytes: a tag match alone is never a hit.

func (c *Cache) hashString(s string) uint64 { return maphash.String(c.seed, s) }
func (c *Cache) hashBytes(b []byte) uint64  { return maphash.Bytes(c.seed, b) }

func tagOf(h uint64) uint64 { return h&0x7f | 0x80 }

// matchByte flags the bytes of w equal to b, plus, rarely, a byte just
// above a match (callers compare keys anyway).
func matchByte(w, b uint64) uint64 {
	x := w ^ (lsb * b)
	return (x - lsb) &^ x & msb
}

// matchEmpty is nonzero if w has an empty byte, and its lowest flagged
// byte is empty.
func matchEmpty(w uint64) uint64 { return (w - lsb) &^ w & msb }

// matchFree flags the empty and deleted bytes of w exactly.
func matchFree(w uint64) uint64 { return ^w & msb }

func (c *Cache) resetTable(ngroups uint64) {
	c.words = nil // let the old table go before the new one is made
	c.words = make([]uint64, ngroups*groupWords)
	c.ngroups = ngroups
	c.limit = int(ngroups * groupLimit)
	c.live = 0
	c.tombs = 0
}

func (c *Cache) home(h uint64) uint64 {
	g, _ := bits.Mul64(h, c.ngroups)
	return g
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
		w := words[base]
		for m := matchByte(w, tag); m != 0; m &= m - 1 {
			j := uint64(bits.TrailingZeros64(m)) >> 3
			o := uint32(words[base+1+j>>1] >> (32 * (j & 1)))
			if c.keyEquals(o, key) {
				return g*groupSlots + j, o, true
			}
		}
		if free == noSlot {
			if f := matchFree(w); f != 0 {
				free = g*groupSlots + uint64(bits.TrailingZeros64(f))>>3
			}
		}
		if matchEmpty(w) != 0 {
			return free, 0, false
		}
		if g++; g == c.ngroups {
			g = 0
		}
	}
}

func (c *Cache) ctrlAt(slot uint64) byte {
	return byte(c.words[slot/groupSlots*groupWords] >> (8 * (slot % groupSlots)))
}

func (c *Cache) setSlotOff(slot uint64, off uint32) {
	i := slot/groupSlots*groupWords + 1 + slot%groupSlots>>1
	sh := 32 * (slot & 1)
	c.words[i] = c.words[i]&^(0xffffffff<<sh) | uint64(off)<<sh
}

// setSlot fills a free slot.
func (c *Cache) setSlot(slot uint64, h uint64, off uint32) {
	if c.ctrlAt(slot) == ctrlDeleted {
		c.tombs--
	}
	base := slot / groupSlots * groupWords
	sh := 8 * (slot % groupSlots)
	c.words[base] = c.words[base]&^(0xff<<sh) | tagOf(h)<<sh
	c.setSlotOff(slot, off)
	c.live++
}

// clearSlot frees a full slot. It may become empty only if its group
// already has an empty slot: then no probe ever passed this group, so no
// key lies beyond it on a probe path through it.
func (c *Cache) clearSlot(slot uint64) {
	base := slot / groupSlots * groupWords
	sh := 8 * (slot % groupSlots)
	w := c.words[base]
	var b uint64 = ctrlEmpty
	if matchEmpty(w) == 0 {
		b = ctrlDeleted
		c.tombs++
	}
	c.words[base] = w&^(0xff<<sh) | b<<sh
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
		w := c.words[base]
		for m := matchByte(w, tag); m != 0; m &= m - 1 {
			j := uint64(bits.TrailingZeros64(m)) >> 3
			if uint32(c.words[base+1+j>>1]>>(32*(j&1))) == off {
				return g*groupSlots + j
			}
		}
		if matchEmpty(w) != 0 {
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
	for {
		base := g * groupWords
		w := c.words[base]
		for m := matchByte(w, tag); m != 0; m &= m - 1 {
			j := uint64(bits.TrailingZeros64(m)) >> 3
			o := uint32(c.words[base+1+j>>1] >> (32 * (j & 1)))
			och, _, oks, okl := c.decode(o)
			if bytes.Equal(och[oks:oks+okl], key) {
				return errDuplicate
			}
		}
		if f := matchFree(w); f != 0 {
			c.setSlot(g*groupSlots+uint64(bits.TrailingZeros64(f))>>3, h, off)
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
