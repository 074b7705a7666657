package synthetic_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"testing"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/connector/synthetic"
)

func TestDeterministicAndRandomAccess(t *testing.T) {
	o := synthetic.Options{Count: 1000, Seed: 7, PayloadBytes: 50, DuplicateRate: 0.1, EmptyKeyRate: 0.05}
	a, b := synthetic.New(o), synthetic.New(o)
	ctx := context.Background()
	var all []connector.Record
	cur := connector.Cursor{}
	for {
		recs, next, err := a.Read(ctx, cur, 128)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, recs...)
		cur = next
	}
	if len(all) != 1000 {
		t.Fatalf("read %d items, want 1000", len(all))
	}
	for _, i := range []int64{0, 1, 499, 999} {
		got, _, _ := b.Read(ctx, connector.Cursor{Index: i}, 1)
		if got[0].Item.ID != i+1 || string(got[0].Item.Fields["payload"]) != string(all[i].Item.Fields["payload"]) {
			t.Errorf("item %d differs between sequential and random access", i)
		}
		it, err := b.GetItem(ctx, i+1)
		if err != nil || string(it.Fields["email"]) != string(all[i].Item.Fields["email"]) {
			t.Errorf("GetItem(%d) differs: %v", i+1, err)
		}
	}
	var p string
	json.Unmarshal(all[3].Item.Fields["payload"], &p)
	if len(p) != 50 {
		t.Errorf("payload length %d, want 50", len(p))
	}
}

func TestRates(t *testing.T) {
	const n = 20000
	s := synthetic.New(synthetic.Options{Count: n, Seed: 1, DuplicateRate: 0.2, EmptyKeyRate: 0.1})
	seen := map[string]int{}
	var empty, dup int
	for i := int64(0); i < n; i++ {
		e := s.Email(i)
		switch k, j := s.KindOf(i); k {
		case synthetic.Empty:
			empty++
			if e != "" {
				t.Fatalf("empty item %d has email %q", i, e)
			}
		case synthetic.Duplicate:
			dup++
			if j >= i {
				t.Fatalf("duplicate %d refers forward to %d", i, j)
			}
		}
		if e != "" {
			seen[e]++
		}
	}
	if math.Abs(float64(empty)/n-0.1) > 0.02 || math.Abs(float64(dup)/n-0.2) > 0.02 {
		t.Errorf("empty share %.3f, duplicate share %.3f; want about 0.1 and 0.2", float64(empty)/n, float64(dup)/n)
	}
	if len(seen) >= n-empty {
		t.Errorf("%d distinct emails for %d non-empty items: duplicates are not duplicates", len(seen), n-empty)
	}
}
