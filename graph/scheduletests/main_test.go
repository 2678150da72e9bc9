// Package scheduletests holds the tests of schedules through the GraphQL
// API: the scheduler stepped through simulated days, the schedule
// operations' refusals and their isolation. They are package graph's
// tests, kept apart only so that each package has go test's time limit
// to itself and the two run side by side: together they were the suite's
// longest package, near that limit when two suites ran at once.
package scheduletests

import (
	"testing"

	"fleetgraph/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }
