package e2e

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAppClients drives the two GraphQL clients applications use most,
// urql (@urql/core) and Apollo Client 3, each on its default settings,
// against the real server: a query with an Int variable (urql sends it by
// GET, Apollo by POST), a mutation, a subscription that receives an event
// of a mutation made from Go, and two errors that each library must hand
// over as GraphQL errors with their extensions.code, not as a network
// error: one refused in validation (a 200 in application/json for Apollo,
// a 400 in application/graphql-response+json for urql), one failed in
// execution.
func TestAppClients(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		script, made, queryMethod string
		invalidStatus             int
	}{
		{"urql.mjs", "urql-made", "GET", 400},
		{"apollo.mjs", "apollo-made", "POST", 200},
	} {
		t.Run(c.script, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			id := b.createMachine(t, "watched")
			sc := runScript(b.ctx, t, c.script, b.env("", map[string]string{"MACHINE_ID": id}))

			var current, updated machineChange
			sc.wait(b.ctx, t, "CURRENT, STOPPED", change("watch", "CURRENT", "STOPPED", &current))
			require.Equal(t, id, current.ID)

			var machines struct {
				TotalCount int
				Edges      []struct{ Node struct{ ID, Name string } }
			}
			q := sc.wait(b.ctx, t, "the query's result", func(l line) bool { return l.Op == "query" })
			require.True(t, q.data("machines", &machines), "the query failed: %s", q.Raw)
			require.Equal(t, 1, machines.TotalCount)
			require.Equal(t, id, machines.Edges[0].Node.ID)

			var created struct{ ID, Name, Status string }
			m := sc.wait(b.ctx, t, "the mutation's result", func(l line) bool { return l.Op == "mutation" })
			require.True(t, m.data("createMachine", &created), "the mutation failed: %s", m.Raw)
			require.Equal(t, c.made, created.Name)
			var n int
			require.NoError(t, b.server.DB.NewRaw("SELECT count(*) FROM machines WHERE name = ?", c.made).Scan(b.ctx, &n))
			require.Equal(t, 1, n, "the mutation's machine is in the database")

			// In the order the script runs them: a wait moves past what it skips.
			for _, e := range []struct{ op, code string }{{"invalid", "BAD_USER_INPUT"}, {"missing", "NOT_FOUND"}} {
				op, code := e.op, e.code
				l := sc.wait(b.ctx, t, op+"'s error", func(l line) bool { return l.Op == op })
				var e struct {
					GraphQLErrors []gqlError
					NetworkError  *string
				}
				require.NotNil(t, l.Error, "%s did not fail: %s", op, l.Raw)
				require.NoError(t, json.Unmarshal(l.Error, &e))
				require.Nil(t, e.NetworkError, "%s: the library saw a network error, not GraphQL errors: %s", op, l.Raw)
				require.NotEmpty(t, e.GraphQLErrors, "%s: %s", op, l.Raw)
				require.Equal(t, code, e.GraphQLErrors[0].Extensions["code"], "%s: %s", op, l.Raw)
			}
			sc.wait(b.ctx, t, "ready", func(l line) bool { return l.Ready })

			b.machine(t, "startMachine", id, "RUNNING")
			sc.wait(b.ctx, t, "UPDATED, RUNNING", change("watch", "UPDATED", "RUNNING", &updated))
			require.Greater(t, updated.Version, current.Version)
			sc.finish(b.ctx, t)

			// The wire: the query went by the library's default method,
			// and the refused one had the status of the type negotiated.
			var answers []*httpAnswer
			for _, l := range sc.all() {
				if l.HTTP != nil {
					answers = append(answers, l.HTTP)
				}
			}
			require.Len(t, answers, 4, "query, mutation, invalid, missing")
			require.Equal(t, c.queryMethod, answers[0].Method)
			require.Equal(t, 200, answers[0].Status)
			require.Equal(t, c.invalidStatus, answers[2].Status, "the invalid query's status (content type %s)", answers[2].ContentType)
		})
	}
}
