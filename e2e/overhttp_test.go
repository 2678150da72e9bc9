package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// TestGraphQLOverHTTPAudits runs every audit of the graphql-http package
// (the GraphQL-over-HTTP spec's MUST, SHOULD and MAY, as its authors test
// servers) against the real server and requires all of them to pass. The
// audits ask anonymously and use introspection (__type), so the server has
// it on.
func TestGraphQLOverHTTPAudits(t *testing.T) {
	t.Parallel()
	b := setup(t, apitest.Options{Introspection: true})
	sc := runScript(b.ctx, t, "audit.mjs", map[string]string{"URL": b.server.URL})
	sc.finish(b.ctx, t)

	var failed []string
	n := 0
	for _, l := range sc.all() {
		if a := l.Audit; a != nil {
			n++
			if a.Status != "ok" {
				failed = append(failed, fmt.Sprintf("%s %s (%s): %s; got %d %s", a.ID, a.Name, a.Status, a.Reason, a.HTTPStatus, a.Body))
			}
		}
	}
	require.Greater(t, n, 50, "graphql-http ran fewer audits than it has")
	require.Empty(t, failed, "%d of %d audits failed:\n%s", len(failed), n, strings.Join(failed, "\n"))
}
