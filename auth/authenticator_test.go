package auth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

func TestAuthenticator(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		auth  *auth.Authenticator
		token string // a valid user token for testUser in testTenant
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		j := newJWT(t, "")
		tok, err := j.Mint(auth.MintOptions{UserID: testUser, TenantID: testTenant, Role: auth.RoleUser, TTL: time.Hour})
		require.NoError(t, err)
		return &testBundle{auth: auth.NewAuthenticator(j, nil), token: tok}
	}
	requirePrincipal := func(t *testing.T, p *auth.Principal) {
		t.Helper()
		require.NotNil(t, p)
		require.Equal(t, testUser, p.UserID)
		require.Equal(t, testTenant, p.TenantID)
		require.Equal(t, auth.RoleUser, p.Role)
	}

	t.Run("FromAuthorizationEmptyIsAnonymous", func(t *testing.T) {
		t.Parallel()
		p, err := setup(t).auth.FromAuthorization(context.Background(), "", "")
		require.NoError(t, err)
		require.Nil(t, p)
	})

	t.Run("FromAuthorizationBearer", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		p, err := b.auth.FromAuthorization(context.Background(), "Bearer "+b.token, "")
		require.NoError(t, err)
		requirePrincipal(t, p)
	})

	t.Run("FromAuthorizationBadScheme", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		for _, header := range []string{"Basic " + b.token, b.token, "Bearer", "Token " + b.token} {
			p, err := b.auth.FromAuthorization(context.Background(), header, "")
			require.Nil(t, p)
			requireUnauthenticated(t, err, b.token, "Bearer <token>")
		}
	})

	t.Run("FromAuthorizationBadToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		p, err := b.auth.FromAuthorization(context.Background(), "Bearer "+b.token+"x", "")
		require.Nil(t, p)
		requireUnauthenticated(t, err, b.token, "bad signature")
	})

	t.Run("FromInitPayload", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		for name, payload := range map[string]map[string]any{
			"Authorization": {"Authorization": "Bearer " + b.token},
			"authorization": {"authorization": "Bearer " + b.token},
			"authToken":     {"authToken": b.token},
		} {
			p, err := b.auth.FromInitPayload(context.Background(), payload, "")
			require.NoError(t, err, name)
			requirePrincipal(t, p)
		}
	})

	t.Run("FromInitPayloadAnonymous", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		for name, payload := range map[string]map[string]any{
			"Nil":        nil,
			"Empty":      {},
			"OtherKeys":  {"clientVersion": "1.2.3"},
			"EmptyValue": {"Authorization": ""},
		} {
			p, err := b.auth.FromInitPayload(context.Background(), payload, "")
			require.NoError(t, err, name)
			require.Nil(t, p, name)
		}
	})

	t.Run("FromInitPayloadRefusals", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		for _, tt := range []struct {
			name    string
			payload map[string]any
			reason  string
		}{
			{"AuthorizationNotString", map[string]any{"Authorization": 42}, "must be a string"},
			{"AuthorizationObject", map[string]any{"Authorization": map[string]any{"token": b.token}}, "must be a string"},
			{"LowercaseNotString", map[string]any{"authorization": true}, "must be a string"},
			{"AuthorizationBadScheme", map[string]any{"Authorization": b.token}, "Bearer <token>"},
			{"AuthorizationBadToken", map[string]any{"Authorization": "Bearer garbage"}, "malformed"},
			{"AuthTokenNotString", map[string]any{"authToken": 42}, "authToken"},
			{"AuthTokenEmpty", map[string]any{"authToken": ""}, "authToken"},
			{"AuthTokenBad", map[string]any{"authToken": b.token + "x"}, "bad signature"},
			// A bad Authorization is not rescued by a good authToken.
			{"AuthorizationWins", map[string]any{"Authorization": "Bearer garbage", "authToken": b.token}, "malformed"},
		} {
			p, err := b.auth.FromInitPayload(context.Background(), tt.payload, "")
			require.Nil(t, p, tt.name)
			requireUnauthenticated(t, err, b.token, tt.reason)
		}
	})

	// serveLogged runs a request through Middleware, behind a request id,
	// and reports the principal the next handler saw, whether it ran at
	// all, and what the middleware logged.
	serveLogged := func(t *testing.T, a *auth.Authenticator, header string) (rec *httptest.ResponseRecorder, ran bool, seen *auth.Principal, logged string) {
		t.Helper()
		next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ran = true
			seen = auth.FromContext(r.Context())
			w.WriteHeader(http.StatusTeapot)
		})
		req := httptest.NewRequest(http.MethodPost, "/graphql", nil)
		if header != "" {
			req.Header.Set("Authorization", header)
		}
		rec = httptest.NewRecorder()
		rec.Header().Set("X-Request-Id", "req-0123456789")
		var log bytes.Buffer
		a.Middleware(slog.New(slog.NewTextHandler(&log, nil)), next).ServeHTTP(rec, req)
		return rec, ran, seen, log.String()
	}
	// serve is serveLogged for tests that do not read the log.
	serve := func(t *testing.T, a *auth.Authenticator, header string) (rec *httptest.ResponseRecorder, ran bool, seen *auth.Principal) {
		t.Helper()
		rec, ran, seen, _ = serveLogged(t, a, header)
		return rec, ran, seen
	}

	t.Run("MiddlewareLogsInternalErrors", func(t *testing.T) {
		t.Parallel()
		// A key lookup that fails is not the caller's fault: 500, and the
		// cause is logged under the request id the client is told to quote.
		errLookup := errors.New(`looking up the API key: pq: relation "api_keys" does not exist`)
		a := auth.NewAuthenticator(newJWT(t, ""), func(context.Context, string, string) (*auth.Principal, error) { return nil, errLookup })
		rec, ran, _, logged := serveLogged(t, a, "Bearer "+auth.KeyPrefix+"0123456789")
		require.False(t, ran)
		require.Equal(t, http.StatusInternalServerError, rec.Code)
		require.NotContains(t, rec.Body.String(), "api_keys")
		require.Contains(t, rec.Body.String(), "req-0123456789")
		require.Contains(t, logged, "level=ERROR")
		require.Contains(t, logged, "request_id=req-0123456789")
		require.Contains(t, logged, `relation \"api_keys\" does not exist`)

		// A refusal is the caller's: nothing to log.
		rec, _, _, logged = serveLogged(t, setup(t).auth, "Bearer not-a-token")
		require.Equal(t, http.StatusUnauthorized, rec.Code)
		require.Empty(t, logged)
	})

	t.Run("MiddlewareAnonymousPassesThrough", func(t *testing.T) {
		t.Parallel()
		rec, ran, seen := serve(t, setup(t).auth, "")
		require.True(t, ran)
		require.Nil(t, seen)
		require.Equal(t, http.StatusTeapot, rec.Code)
	})

	t.Run("MiddlewareGoodToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		rec, ran, seen := serve(t, b.auth, "Bearer "+b.token)
		require.True(t, ran)
		require.Equal(t, http.StatusTeapot, rec.Code)
		requirePrincipal(t, seen)
	})

	t.Run("MiddlewareBadCredentials", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		for _, header := range []string{"Bearer " + b.token + "x", "Basic " + b.token} {
			rec, ran, _ := serve(t, b.auth, header)
			require.False(t, ran, "the next handler must not run for %q", header)
			require.Equal(t, http.StatusUnauthorized, rec.Code)
			require.Equal(t, `Bearer realm="fleetgraph"`, rec.Header().Get("WWW-Authenticate"))
			require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
			require.NotContains(t, rec.Body.String(), b.token)

			var body struct {
				Errors []struct {
					Message    string         `json:"message"`
					Extensions map[string]any `json:"extensions"`
				} `json:"errors"`
			}
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body), rec.Body.String())
			require.Len(t, body.Errors, 1)
			require.NotEmpty(t, body.Errors[0].Message)
			require.Equal(t, map[string]any{"code": string(fault.Unauthenticated)}, body.Errors[0].Extensions)
		}
	})

	t.Run("WriteErrorHidesInternalErrors", func(t *testing.T) {
		t.Parallel()
		errSecret := errors.New(`pq: password authentication failed for user "fleet"`)
		rec := httptest.NewRecorder()
		auth.WriteError(rec, http.StatusInternalServerError, errSecret)
		require.Equal(t, http.StatusInternalServerError, rec.Code)
		require.Empty(t, rec.Header().Get("WWW-Authenticate"))
		require.NotContains(t, rec.Body.String(), errSecret.Error())
		require.JSONEq(t, `{"errors":[{"message":"internal error","extensions":{"code":"INTERNAL"}}]}`, rec.Body.String())

		// Behind the request-id middleware, the id the response carries is quoted.
		rec = httptest.NewRecorder()
		rec.Header().Set("X-Request-Id", "req-0123456789")
		auth.WriteError(rec, http.StatusInternalServerError, errSecret)
		require.NotContains(t, rec.Body.String(), errSecret.Error())
		require.JSONEq(t, `{"errors":[{"message":"internal error; quote request id req-0123456789 when reporting it",
			"extensions":{"code":"INTERNAL","requestId":"req-0123456789"}}]}`, rec.Body.String())
	})
}

// Per-address limits key IPv6 clients by their /64 (one host routinely
// has one) and IPv4-mapped addresses as IPv4.
func TestAddressKey(t *testing.T) {
	for ip, want := range map[string]string{
		"203.0.113.5":                   "203.0.113.5",
		"::ffff:203.0.113.5":            "203.0.113.5",
		"2001:db8:1:2::1":               "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff:ffff:ffff:1": "2001:db8:1:2::/64",
		"2001:db8:1:3::1":               "2001:db8:1:3::/64",
		"fe80::1%eth0":                  "fe80::/64",
		"::1":                           "::/64",
		"not an address":                "not an address",
		"":                              "",
	} {
		require.Equal(t, want, auth.AddressKey(ip), "AddressKey(%q)", ip)
	}
	// ClientIP's result, from a request's RemoteAddr, keys as well.
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "[2001:db8:1:2::abcd]:443"
	require.Equal(t, "2001:db8:1:2::/64", auth.AddressKey(auth.ClientIP(r)))
}
