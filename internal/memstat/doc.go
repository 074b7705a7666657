// Package memstat reads the process's own memory figures cheaply: RSS from
// /proc/self/statm and the Go heap from runtime/metrics, without stopping
// the world as runtime.ReadMemStats does.
package memstat
