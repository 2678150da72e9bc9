// Package bench holds the job queue's benchmarks: claim-to-complete
// throughput, enqueue-to-claim latency of a waiting robot, and batch
// enqueueing, all through the real HTTP API over a test database, and the
// scheduler's round with 10,000 schedules (see BENCHMARKS.md for how to run
// them and what they measured). It has no
// non-test code; `go test ./...` runs no benchmark.
package bench
