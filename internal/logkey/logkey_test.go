package logkey_test

import (
	"testing"

	"github.com/memvisor/memvisor/internal/logkey"
)

func TestMB(t *testing.T) {
	for _, tc := range []struct {
		in   uint64
		want float64
	}{{0, 0}, {1 << 20, 1}, {3 << 19, 1.5}, {128 << 20, 128}, {1<<20 + 1<<16, 1.1}} {
		if got := logkey.MB(tc.in); got != tc.want {
			t.Errorf("MB(%d): got %v, want %v", tc.in, got, tc.want)
		}
	}
}
