// Package bench holds the benchmarks that compare whole processes side by
// side in one run: the runner alone, the runner under the supervisor, and
// the runner under PM2's max_memory_restart. Run them with `make bench`.
package bench
