package graph

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCheckOriginPattern checks that the patterns ALLOWED_ORIGINS accepts
// match the origins they name, and that those it refuses are the ones
// that match no origin at all (originAllowed ignores a bad pattern, and
// no origin has a path), which were once accepted and silently useless.
func TestCheckOriginPattern(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		pattern, origin string // origin: one the pattern allows
	}{
		{"app.example.com", "https://app.example.com"},
		{"*.example.com", "https://ui.example.com"},
		{"App.Example.com", "https://app.example.COM"},
		{"localhost:3000", "http://localhost:3000"},
		{"localhost:*", "http://localhost:5173"},
		{"https://app.example.com", "https://app.example.com"},
		{"http*://app.example.com", "http://app.example.com"},
		{"*", "https://anything.example.org"},
	} {
		require.NoError(t, CheckOriginPattern(tt.pattern), tt.pattern)
		require.True(t, originAllowed(tt.origin, []string{tt.pattern}), "%s allows %s", tt.pattern, tt.origin)
	}
	origins := []string{"https://app.example.com", "http://app.example.com", "https://app.example.com:443", "https://[abc", "https://a"}
	for _, tt := range []struct{ pattern, why string }{
		{"[abc", "not a valid pattern"},
		{"app.example.com[", "not a valid pattern"},
		{`app.example.com\`, "not a valid pattern"},
		{"https://app.example.com/", "has a path"},
		{"app.example.com/", "has a path"},
		{"app.example.com/ui", "has a path"},
		{"https://app.example.com/*", "has a path"},
		{"https://", "needs a scheme and a host"},
		{"://app.example.com", "needs a scheme and a host"},
	} {
		err := CheckOriginPattern(tt.pattern)
		require.ErrorContains(t, err, tt.why, tt.pattern)
		for _, o := range origins {
			require.False(t, originAllowed(o, []string{tt.pattern}), "%s allows %s", tt.pattern, o)
		}
	}
}
