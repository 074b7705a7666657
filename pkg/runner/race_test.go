//go:build race

package runner_test

// raceEnabled: the race detector's shadow memory counts in RSS and no
// collection frees it.
const raceEnabled = true
