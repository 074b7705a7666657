package slimcache_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives the tests: a cache's expiry
// timer runs its function in a goroutine of its own when it fires.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
