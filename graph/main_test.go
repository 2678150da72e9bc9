package graph_test

import (
	"testing"

	"fleetgraph/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }
