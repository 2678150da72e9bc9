package accept_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/graph/accept"
)

// Choose follows RFC 9110: the most specific matching range gives an
// offer its q-value; ties go to the more specific range, then the range
// listed first, then the first offer.
func TestChoose(t *testing.T) {
	t.Parallel()
	offers := []string{accept.JSON, accept.GraphQLResponse}
	cases := map[string]string{
		"":                                  accept.JSON,
		"*/*":                               accept.JSON,
		"application/*":                     accept.JSON,
		"application/json":                  accept.JSON,
		"application/graphql-response+json": accept.GraphQLResponse,
		"application/graphql-response+json, application/json;q=0.9":       accept.GraphQLResponse,
		"application/json, application/graphql-response+json":             accept.JSON,
		"application/graphql-response+json, application/json":             accept.GraphQLResponse,
		"application/json;q=0.5, application/graphql-response+json":       accept.GraphQLResponse,
		"*/*, application/graphql-response+json":                          accept.GraphQLResponse,
		"*/*;q=0.8, application/json;q=0.1":                               accept.GraphQLResponse,
		"application/*;q=0.2, application/json;q=0":                       accept.GraphQLResponse,
		"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8": accept.JSON,
		"text/html":       "",
		"application/xml": "",
		"*/*;q=0":         "",
		"application/json;q=0, application/graphql-response+json;q=0": "",
		"application/json;q=bad": accept.JSON, // nothing parses: as if absent
		"text/*;q=1, */*;q=0":    "",
		"APPLICATION/JSON":       accept.JSON,
		// A q-value that is no number from 0 to 1 drops its range.
		"application/json;q=NaN, application/graphql-response+json;q=0.5": accept.GraphQLResponse,
		"application/json;q=Inf, application/graphql-response+json;q=0.5": accept.GraphQLResponse,
		// A comma inside a quoted parameter value does not end the range.
		`application/graphql-response+json;note="a,b", application/json;q=0.5`:      accept.GraphQLResponse,
		`application/graphql-response+json;note="a\",b", application/json;q=0.5`:    accept.GraphQLResponse,
		`application/graphql-response+json;q=0.1;note="x,", application/json;q=0.5`: accept.JSON,
	}
	for header, want := range cases {
		require.Equal(t, want, accept.Choose(header, offers...), "Accept: %q", header)
	}
	require.Equal(t, "", accept.Choose("", []string{}...))
}
