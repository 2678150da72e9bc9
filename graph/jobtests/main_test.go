// Package jobtests holds the tests of the job queue and of webhooks through
// the GraphQL API: claims (single, batched and waiting), the job state
// machine and its fencing, lease rescue, the queue under concurrent robots,
// and webhook delivery, its refusals and its isolation. They are package
// graph's tests, kept apart only so that each package has go test's time
// limit to itself and the two run side by side: together they were the
// suite's longest package, near that limit when two suites ran at once.
package jobtests

import (
	"testing"

	"fleetgraph/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }
