package slimcache

import "fmt"

// SetMinGarbage lowers the garbage a compaction waits for, so that small
// tests compact.
func SetMinGarbage(c *Cache, n int64) { c.minGarbage = n }

// SetMaxChunks lowers the number of arena chunks, so that a test can fill
// the arena.
func SetMaxChunks(c *Cache, n int) { c.maxChunks = n }

// SetHashMask narrows every hash to mask, so that keys collide in group
// and tag, and rebuilds the table for it.
func SetHashMask(c *Cache, mask uint64) {
	c.hashMask = mask
	if c.words != nil {
		c.relayout(c.clock(), false, c.ngroups)
	}
}

// ArenaBytes returns the bytes of records held, dead ones included, and
// the dead bytes.
func ArenaBytes(c *Cache) (used, garbage int64) { return c.arenaUsed, c.garbage }

// CheckInvariants verifies the internal bookkeeping of c.
func CheckInvariants(c *Cache) error {
	var used, garbage, capacity int64
	liveRecords := 0
	for i, ch := range c.chunks {
		if i < c.headChunk {
			if ch != nil {
				return fmt.Errorf("chunk %d before head chunk %d is held", i, c.headChunk)
			}
			continue
		}
		if ch == nil {
			return fmt.Errorf("chunk %d at or after head chunk %d is nil", i, c.headChunk)
		}
		capacity += int64(cap(ch))
		used += int64(len(ch))
		for p := 0; p < len(ch); {
			h, n := uvarintAt(ch, p)
			if n <= 0 {
				return fmt.Errorf("chunk %d position %d: bad header", i, p)
			}
			end := p + n + int(h>>2) + idLen
			if end > len(ch) {
				return fmt.Errorf("chunk %d position %d: record past the chunk end", i, p)
			}
			off := uint32(i)<<chunkBits | uint32(p)
			if h&flagDead != 0 {
				garbage += int64(end - p)
			} else {
				if off < c.head {
					return fmt.Errorf("live record at %#x before head %#x", off, c.head)
				}
				liveRecords++
			}
			p = end
		}
	}
	if used != c.arenaUsed || garbage != c.garbage || capacity != c.arenaCap {
		return fmt.Errorf("arena used/garbage/cap %d/%d/%d, counted %d/%d/%d",
			c.arenaUsed, c.garbage, c.arenaCap, used, garbage, capacity)
	}
	if liveRecords != c.live {
		return fmt.Errorf("live %d, live records %d", c.live, liveRecords)
	}
	full, tombs := 0, 0
	for s := uint64(0); s < c.ngroups*groupSlots; s++ {
		switch b := c.ctrlAt(s); {
		case b == ctrlEmpty:
		case b == ctrlDeleted:
			tombs++
		default:
			full++
			off := offsetAt(c.words, s/groupSlots*groupWords, s%groupSlots)
			ch, p, ks, kl := c.decode(off)
			if ch[p]&flagDead != 0 {
				return fmt.Errorf("slot %d points at dead record %#x", s, off)
			}
			h := c.hashBytes(ch[ks : ks+kl])
			if uint64(b) != tagOf(h) {
				return fmt.Errorf("slot %d tag %#x, want %#x", s, b, tagOf(h))
			}
			if c.slotOf(off) != s {
				return fmt.Errorf("slot %d not reached by its key's probe", s)
			}
		}
	}
	if full != c.live || tombs != c.tombs {
		return fmt.Errorf("live/tombs %d/%d, table holds %d/%d", c.live, c.tombs, full, tombs)
	}
	for g := uint64(0); g < c.ngroups; g++ {
		if spareBytes := c.words[g*groupWords+1] >> 32; spareBytes != 0 {
			return fmt.Errorf("group %d: unused control bytes %#x", g, spareBytes)
		}
	}
	if c.live+c.tombs > c.limit {
		return fmt.Errorf("live+tombs %d over limit %d", c.live+c.tombs, c.limit)
	}
	if c.maxEntries > 0 && c.live > c.maxEntries {
		return fmt.Errorf("live %d over MaxEntries %d", c.live, c.maxEntries)
	}
	if len(c.cpOff) != len(c.cpTime) {
		return fmt.Errorf("checkpoint lists differ in length")
	}
	for k := 1; k < len(c.cpOff); k++ {
		if c.cpOff[k] <= c.cpOff[k-1] || c.cpTime[k] < c.cpTime[k-1] {
			return fmt.Errorf("checkpoints out of order at %d", k)
		}
	}
	if c.live > 0 && (len(c.cpOff) == 0 || c.cpOff[0] > c.norm(c.head)) {
		return fmt.Errorf("no checkpoint covers the head")
	}
	if tail := c.tail(); c.head > tail || c.hand > tail || c.hand < c.head {
		return fmt.Errorf("head %#x or hand %#x past tail %#x", c.head, c.hand, tail)
	}
	return nil
}
