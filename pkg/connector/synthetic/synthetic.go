package synthetic

import (
	"context"
	"encoding/json"
	"io"
	"strconv"

	"github.com/memvisor/memvisor/pkg/connector"
)

// Options configure a generator.
type Options struct {
	Count         int64
	Seed          int64
	PayloadBytes  int
	DuplicateRate float64
	EmptyKeyRate  float64
}

// Source generates items.
type Source struct {
	o Options
}

var _ connector.Source = (*Source)(nil)
var _ connector.ItemGetter = (*Source)(nil)

// New returns a generator.
func New(o Options) *Source { return &Source{o: o} }

// Total returns Count.
func (s *Source) Total(context.Context) (int64, bool, error) { return s.o.Count, true, nil }

// Close does nothing.
func (s *Source) Close() error { return nil }

// Read generates up to limit items from cur.Index.
func (s *Source) Read(ctx context.Context, cur connector.Cursor, limit int) ([]connector.Record, connector.Cursor, error) {
	if err := ctx.Err(); err != nil {
		return nil, cur, err
	}
	n := min(int64(limit), s.o.Count-cur.Index)
	if n <= 0 {
		return nil, cur, io.EOF
	}
	recs := make([]connector.Record, n)
	for k := range recs {
		i := cur.Index + int64(k)
		recs[k] = connector.Record{Pos: connector.Cursor{Index: i}, Item: s.Item(i)}
	}
	return recs, connector.Cursor{Index: cur.Index + n}, nil
}

// GetItem returns the item with the given id.
func (s *Source) GetItem(_ context.Context, id int64) (connector.Item, error) {
	if id < 1 || id > s.o.Count {
		return connector.Item{}, connector.ErrNotFound
	}
	return s.Item(id - 1), nil
}

// Kind says which email an item carries.
type Kind int

// The kinds of email.
const (
	Unique Kind = iota
	Duplicate
	Empty
)

// KindOf returns the kind of item i's email and, for a duplicate, the
// index of the earlier item whose unique email it repeats.
func (s *Source) KindOf(i int64) (Kind, int64) {
	h := mix(uint64(s.o.Seed), uint64(i))
	u := float64(h>>11) / (1 << 53)
	switch {
	case u < s.o.EmptyKeyRate:
		return Empty, 0
	case i > 0 && u < s.o.EmptyKeyRate+s.o.DuplicateRate:
		return Duplicate, int64(mix(h, 1) % uint64(i))
	}
	return Unique, 0
}

// Email returns item i's email, "" for an empty one.
func (s *Source) Email(i int64) string {
	switch k, j := s.KindOf(i); k {
	case Empty:
		return ""
	case Duplicate:
		return s.uniqueEmail(j)
	}
	return s.uniqueEmail(i)
}

func (s *Source) uniqueEmail(i int64) string {
	b := make([]byte, 0, 40)
	b = append(b, "user"...)
	b = strconv.AppendInt(b, i+1, 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, mix(uint64(s.o.Seed), uint64(i)^0x5bd1e995)&0xffffff, 36)
	b = append(b, "@example.com"...)
	return string(b)
}

const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "

// Item returns item i.
func (s *Source) Item(i int64) connector.Item {
	f := make(connector.Fields, 4)
	email := s.Email(i)
	f["email"] = quote(email)
	h := mix(uint64(s.o.Seed)^0x9e37, uint64(i))
	f["name"] = quote("Person " + strconv.FormatUint(h%100000, 10))
	f["n"] = json.RawMessage(strconv.AppendInt(nil, int64(h%1000000), 10))
	if s.o.PayloadBytes > 0 {
		p := make([]byte, 0, s.o.PayloadBytes+2)
		p = append(p, '"')
		x := h
		for range s.o.PayloadBytes {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			p = append(p, alphabet[x%uint64(len(alphabet))])
		}
		f["payload"] = append(p, '"')
	}
	return connector.Item{ID: i + 1, Fields: f}
}

func quote(s string) json.RawMessage {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// mix is splitmix64 over a and b.
func mix(a, b uint64) uint64 {
	z := a*0x9e3779b97f4a7c15 + b + 0x632be59bd9b4e5f5
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
