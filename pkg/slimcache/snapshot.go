package slimcache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"

	"github.com/memvisor/memvisor/internal/atomicfile"
)

// ErrCorruptSnapshot is wrapped by every error that ReadSnapshot and
// LoadFile return for bytes that are not a whole, intact snapshot: a torn
// write, a flipped bit, another file, trailing data.
var ErrCorruptSnapshot = errors.New("corrupt cache snapshot")

const (
	snapMagic     = "SLIMCSNP"
	snapVersion   = 1
	snapHeaderLen = 32
	snapFlagLossy = 1
	snapBufSize   = 256 << 10 // holds the largest record with room to spare
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// WriteSnapshot writes the live entries to w in the snapshot format (see
// the package documentation): a versioned header, the entries in arena
// order with their put times, and a CRC-32C of everything before it.
func (c *Cache) WriteSnapshot(w io.Writer) error {
	buf := make([]byte, 0, snapBufSize)
	var sum uint32
	flush := func() error {
		sum = crc32.Update(sum, castagnoli, buf)
		_, err := w.Write(buf)
		buf = buf[:0]
		return err
	}
	var flags uint32
	if c.lossy {
		flags |= snapFlagLossy
	}
	var base int64
	if len(c.cpTime) > 0 {
		base = c.cpTime[0]
	}
	buf = append(buf, snapMagic...)
	buf = binary.LittleEndian.AppendUint32(buf, snapVersion)
	buf = binary.LittleEndian.AppendUint32(buf, flags)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(c.live))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(base))

	prev, k := base, 0
	for i := c.headChunk; i < len(c.chunks); i++ {
		ch := c.chunks[i]
		for p := 0; p < len(ch); {
			h, n := uint64(ch[p]), 1
			if h >= 0x80 {
				h, n = uvarintAt(ch, p)
			}
			kl := int(h >> 2)
			ks := p + n
			off := uint32(i)<<chunkBits | uint32(p)
			p = ks + kl + idLen
			if h&flagDead != 0 {
				continue
			}
			for k+1 < len(c.cpOff) && c.cpOff[k+1] <= off {
				k++
			}
			if len(buf)+kl+2*binary.MaxVarintLen64+idLen > cap(buf) {
				if err := flush(); err != nil {
					return fmt.Errorf("write cache snapshot: %w", err)
				}
			}
			t := c.cpTime[k]
			buf = binary.AppendUvarint(buf, uint64(kl))
			buf = append(buf, ch[ks:ks+kl+idLen]...)
			buf = binary.AppendUvarint(buf, uint64(t-prev))
			prev = t
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("write cache snapshot: %w", err)
	}
	if _, err := w.Write(binary.LittleEndian.AppendUint32(nil, sum)); err != nil {
		return fmt.Errorf("write cache snapshot: %w", err)
	}
	return nil
}

// ReadSnapshot restores a cache written by WriteSnapshot, with opts for
// its TTL, bound and clock (the entries keep their put times). r must
// hold exactly one snapshot: bytes after it are corruption too. Bad bytes
// give an error wrapping ErrCorruptSnapshot, never a panic, and never an
// allocation larger than the bytes actually read. If opts.MaxEntries is
// below the number of entries, the oldest are evicted.
func ReadSnapshot(r io.Reader, opts Options) (*Cache, error) {
	c := newCache(opts)
	if err := c.readSnapshot(r); err != nil {
		return nil, fmt.Errorf("read cache snapshot: %w", err)
	}
	return c, nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptSnapshot, fmt.Sprintf(format, args...))
}

// snapReader buffers r and keeps a CRC-32C of the bytes consumed.
type snapReader struct {
	r        io.Reader
	buf      []byte
	pos, end int
	sum      uint32 // CRC of the bytes before buf[0]... up to hashed
	hashed   int    // buf[:hashed] is in sum
}

// fill makes at least n bytes available from pos.
func (d *snapReader) fill(n int) error {
	if d.end-d.pos >= n {
		return nil
	}
	d.sum = crc32.Update(d.sum, castagnoli, d.buf[d.hashed:d.pos])
	d.end = copy(d.buf, d.buf[d.pos:d.end])
	d.pos, d.hashed = 0, 0
	m, err := io.ReadAtLeast(d.r, d.buf[d.end:], n-d.end)
	d.end += m
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return corrupt("truncated")
	}
	return err
}

func (d *snapReader) uvarint() (uint64, error) {
	for {
		v, n := binary.Uvarint(d.buf[d.pos:d.end])
		if n > 0 {
			d.pos += n
			return v, nil
		}
		if n < 0 || d.end-d.pos >= binary.MaxVarintLen64 {
			return 0, corrupt("bad varint")
		}
		if err := d.fill(d.end - d.pos + 1); err != nil {
			return 0, err
		}
	}
}

// checksum returns the CRC of every byte consumed so far.
func (d *snapReader) checksum() uint32 {
	d.sum = crc32.Update(d.sum, castagnoli, d.buf[d.hashed:d.pos])
	d.hashed = d.pos
	return d.sum
}

func (c *Cache) readSnapshot(r io.Reader) error {
	d := &snapReader{r: r, buf: make([]byte, snapBufSize)}
	if err := d.fill(snapHeaderLen); err != nil {
		return err
	}
	h := d.buf[:snapHeaderLen]
	if string(h[:8]) != snapMagic {
		return corrupt("not a cache snapshot")
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != snapVersion {
		return corrupt("unsupported version %d (want %d)", v, snapVersion)
	}
	flags := binary.LittleEndian.Uint32(h[12:])
	if flags&^snapFlagLossy != 0 {
		return corrupt("unknown flags %#x", flags)
	}
	count := binary.LittleEndian.Uint64(h[16:])
	t := int64(binary.LittleEndian.Uint64(h[24:]))
	d.pos = snapHeaderLen

	for i := uint64(0); i < count; i++ {
		kl, err := d.uvarint()
		if err != nil {
			return err
		}
		if kl > MaxKeyLen {
			return corrupt("entry %d: key of %d bytes", i, kl)
		}
		if err := d.fill(int(kl) + idLen); err != nil {
			return err
		}
		// Copy key and id into the arena now: reading on may refill
		// and move the buffer.
		n := recordLen(int(kl))
		if !c.hasRoom(n) {
			return corrupt("more than the 4 GiB arena holds")
		}
		ci := c.reserve(n)
		off := uint32(ci)<<chunkBits | uint32(len(c.chunks[ci]))
		ch := binary.AppendUvarint(c.chunks[ci], kl<<2)
		c.chunks[ci] = append(ch, d.buf[d.pos:d.pos+int(kl)+idLen]...)
		c.arenaUsed += int64(n)
		d.pos += int(kl) + idLen
		dt, err := d.uvarint()
		if err != nil {
			return err
		}
		if dt > uint64(math.MaxInt64-t) {
			return corrupt("entry %d: time out of range", i)
		}
		t += int64(dt)
		if k := len(c.cpTime); k == 0 || c.cpTime[k-1] != t {
			c.cpOff = append(c.cpOff, off)
			c.cpTime = append(c.cpTime, t)
		}
	}
	want := d.checksum()
	if err := d.fill(4); err != nil {
		return err
	}
	if got := binary.LittleEndian.Uint32(d.buf[d.pos:]); got != want {
		return corrupt("checksum %08x, want %08x", got, want)
	}
	d.pos += 4
	if d.end > d.pos {
		return corrupt("trailing data")
	}
	var one [1]byte
	if n, err := io.ReadFull(r, one[:]); n > 0 {
		return corrupt("trailing data")
	} else if err != io.EOF {
		return err
	}

	// Index every entry first (the table must hold them all before the
	// surplus is evicted); the count is trusted only now that the
	// checksum has matched.
	c.resetTable(max(groupsFor(int(count)), c.minGroups))
	if err := c.reindex(); err != nil {
		return corrupt("%v", err)
	}
	c.lossy = flags&snapFlagLossy != 0
	for c.maxEntries > 0 && c.live > c.maxEntries {
		c.evictOne()
	}
	return nil
}

// SaveFile writes a snapshot to path atomically: a reader or a restart
// after a crash sees the old file or the new one, never a torn one. The
// file is private to the owner (0600): keys are match values such as
// email addresses.
func (c *Cache) SaveFile(path string) error {
	if err := atomicfile.Write(path, 0o600, c.WriteSnapshot); err != nil {
		return fmt.Errorf("save cache snapshot: %w", err)
	}
	return nil
}

// LoadFile restores a cache from a snapshot file written by SaveFile. A
// missing file gives an error satisfying errors.Is(err, fs.ErrNotExist);
// a torn or corrupt one, an error wrapping ErrCorruptSnapshot.
func LoadFile(path string, opts Options) (*Cache, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load cache snapshot: %w", err)
	}
	defer f.Close()
	c, err := ReadSnapshot(f, opts)
	if err != nil {
		return nil, fmt.Errorf("load cache snapshot %s: %w", path, err)
	}
	return c, nil
}
