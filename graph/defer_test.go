package graph_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// TestDeferIsRefused checks that @defer, which gqlgen declares but no
// transport here delivers, is refused before execution with a clear reason,
// on a fragment spread or an inline fragment, in a query over HTTP and in a
// subscription over a websocket (where each event once left a goroutine
// waiting to hand over the deferred part until the subscription ended).
func TestDeferIsRefused(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	for _, q := range []string{
		`{ me { id ... @defer { role } } }`,
		`{ me { id ...F @defer } } fragment F on Viewer { role }`,
		`{ me { id ... @defer(if: false) { role } } }`,
		`{ machines { edges { node { id ... on Machine @defer(label: "x") { status } } } } }`,
	} {
		e := s.Do(t, u.Token, q, nil).Code(t, "BAD_USER_INPUT")
		require.Equal(t, "DEFER_NOT_SUPPORTED", e.Extensions["reason"], "%s", q)
	}

	ws := lvConnect(t, s, u.Token)
	require.Equal(t, "BAD_USER_INPUT", ws.refused("d", `subscription { machineUpdated { id ... @defer { machine { name } } } }`, nil))
}
