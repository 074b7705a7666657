package slimcache

import (
	"encoding/binary"
)

// A record is
//
//	uvarint(len(key)<<2 | flags)   1 byte for keys up to 31 bytes
//	key
//	item id, 8 bytes little-endian
//
// The flags sit in the two low bits of the first byte, so they change
// without changing the length of the header.

func recordLen(keyLen int) int {
	return uvarintLen(uint64(keyLen)<<2) + keyLen + idLen
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// decode returns the chunk of the record at off, the position of its
// header, the position of its key and the key's length.
func (c *Cache) decode(off uint32) (ch []byte, p, ks, kl int) {
	ch = c.chunks[off>>chunkBits]
	p = int(off & chunkMask)
	h, n := uint64(ch[p]), 1
	if h >= 0x80 {
		h, n = binary.Uvarint(ch[p:])
	}
	return ch, p, p + n, int(h >> 2)
}

// keyEquals reports whether the record at off holds key.
func (c *Cache) keyEquals(off uint32, key string) bool {
	ch, _, ks, kl := c.decode(off)
	return kl == len(key) && string(ch[ks:ks+kl]) == key
}

// next returns the offset of the record after the one at off.
func (c *Cache) next(off uint32) uint32 {
	_, p, ks, kl := c.decode(off)
	return c.norm(off - uint32(p) + uint32(ks+kl+idLen))
}

// norm moves an offset at the end of a chunk to the start of the next
// chunk, if there is one. An offset at the end of the last chunk is the
// tail.
func (c *Cache) norm(off uint32) uint32 {
	i := int(off >> chunkBits)
	p := int(off & chunkMask)
	for i < len(c.chunks)-1 && p >= len(c.chunks[i]) {
		i++
		p = 0
	}
	return uint32(i)<<chunkBits | uint32(p)
}

// tail returns the offset just after the last record.
func (c *Cache) tail() uint32 {
	n := len(c.chunks)
	if n == 0 {
		return 0
	}
	return uint32(n-1)<<chunkBits | uint32(len(c.chunks[n-1]))
}

// markDead turns the live record at off into garbage.
func (c *Cache) markDead(off uint32) {
	ch, p, ks, kl := c.decode(off)
	ch[p] |= flagDead
	c.garbage += int64(ks + kl + idLen - p)
}

// hasRoom reports whether a record of n bytes fits in the last chunk or
// in a new one.
func (c *Cache) hasRoom(n int) bool {
	if k := len(c.chunks); k > 0 {
		if last := c.chunks[k-1]; cap(last)-len(last) >= n {
			return true
		}
	}
	return len(c.chunks) < c.maxChunks
}

// chunkCap sizes chunk i: small chunks first, so that a small cache
// stays small, then 1 MiB.
func chunkCap(i int) int {
	if i < 4 {
		return 4 << 10 << (2 * i)
	}
	return chunkSpan
}

// reserve returns the chunk index where a record of n bytes goes,
// adding a chunk if needed. The caller has checked hasRoom.
func (c *Cache) reserve(n int) int {
	if k := len(c.chunks); k > 0 {
		if last := c.chunks[k-1]; cap(last)-len(last) >= n {
			return k - 1
		}
	}
	size := max(chunkCap(len(c.chunks)), n)
	c.chunks = append(c.chunks, make([]byte, 0, size))
	c.arenaCap += int64(size)
	return len(c.chunks) - 1
}

// appendRecord appends a record put at time t and returns its offset.
// A record gets a new time checkpoint when t is at least gran after the
// newest one; otherwise it shares that checkpoint, which makes its age
// look up to gran older than it is, so it expires early, never late.
func (c *Cache) appendRecord(key string, id int64, t int64) uint32 {
	n := recordLen(len(key))
	i := c.reserve(n)
	ch := c.chunks[i]
	off := uint32(i)<<chunkBits | uint32(len(ch))
	ch = binary.AppendUvarint(ch, uint64(len(key))<<2)
	ch = append(ch, key...)
	ch = binary.LittleEndian.AppendUint64(ch, uint64(id))
	c.chunks[i] = ch
	c.arenaUsed += int64(n)
	if k := len(c.cpTime); k == 0 || t-c.cpTime[k-1] >= c.gran {
		c.cpOff = append(c.cpOff, off)
		c.cpTime = append(c.cpTime, t)
	}
	return off
}

// appendRaw copies an encoded record put at time t, keeping the time
// exactly, and returns its offset.
func (c *Cache) appendRaw(rec []byte, t int64) uint32 {
	i := c.reserve(len(rec))
	ch := c.chunks[i]
	off := uint32(i)<<chunkBits | uint32(len(ch))
	c.chunks[i] = append(ch, rec...)
	c.arenaUsed += int64(len(rec))
	if k := len(c.cpTime); k == 0 || c.cpTime[k-1] != t {
		c.cpOff = append(c.cpOff, off)
		c.cpTime = append(c.cpTime, t)
	}
	return off
}

// skipDeadHead moves the head past dead records, releasing the chunks
// it leaves behind.
func (c *Cache) skipDeadHead() {
	tail := c.tail()
	off := c.norm(c.head)
	for off < tail {
		ch, p, _, _ := c.decode(off)
		if ch[p]&flagDead == 0 {
			break
		}
		off = c.next(off)
	}
	c.setHead(off)
}

// setHead moves the head to off. Every record before off is dead, so
// the chunks before off's chunk are released whole, and the time
// checkpoints before off are dropped but for the one that covers off.
func (c *Cache) setHead(off uint32) {
	c.head = off
	for i := c.headChunk; i < int(off>>chunkBits); i++ {
		ch := c.chunks[i]
		c.arenaCap -= int64(cap(ch))
		c.arenaUsed -= int64(len(ch))
		c.garbage -= int64(len(ch))
		c.chunks[i] = nil
	}
	c.headChunk = int(off >> chunkBits)
	k := 0
	for k+1 < len(c.cpOff) && c.cpOff[k+1] <= off {
		k++
	}
	if k > 0 {
		// Shift in place rather than reslice, so that the dropped
		// prefix is reused and EstimatedBytes stays true.
		n := copy(c.cpOff, c.cpOff[k:])
		copy(c.cpTime, c.cpTime[k:])
		c.cpOff = c.cpOff[:n]
		c.cpTime = c.cpTime[:n]
	}
	if c.hand < off {
		c.hand = off
	}
}

func uvarintAt(b []byte, p int) (uint64, int) {
	return binary.Uvarint(b[p:])
}
