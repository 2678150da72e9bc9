package live

import (
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"
	"weak"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
)

// TestInitReauthKeepsOnlyTheCredential checks what a robot's websocket
// keeps to check its credential again for the socket's life: the
// credential, not the connection_init payload it came in. A payload padded
// with a megabyte of {} decodes to tens of megabytes of maps; once the
// payload is dropped, nothing the check keeps may hold them.
func TestInitReauthKeepsOnlyTheCredential(t *testing.T) {
	t.Parallel()
	j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte("0123456789abcdef0123456789abcdef-reauth"), Audience: "authenticated"})
	require.NoError(t, err)
	user := uuid.New()
	token, err := j.Mint(auth.MintOptions{UserID: user, Role: auth.RoleUser, TTL: time.Hour})
	require.NoError(t, err)

	// What connection_init leaves behind: the check, and a weak pointer to
	// the payload's padding (its array of 100,001 maps).
	reauth, padding := func() (func(context.Context) (*auth.Principal, error), weak.Pointer[any]) {
		raw := `{"authToken":"` + token + `","pad":[` + strings.Repeat("{},", 100_000) + `{}]}`
		var payload map[string]any
		require.NoError(t, json.Unmarshal([]byte(raw), &payload))
		return initReauth(auth.NewAuthenticator(j, nil), payload, "192.0.2.1"), weak.Make(&payload["pad"].([]any)[0])
	}()
	runtime.GC()
	require.Nil(t, padding.Value(), "the payload's padding outlives connection_init")

	p, err := reauth(t.Context())
	require.NoError(t, err)
	require.Equal(t, user, p.UserID, "the credential kept still checks")
}
