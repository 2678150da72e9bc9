package auth

import (
	"encoding/json"
	"net/http"

	"fleetgraph/fault"
)

// Authenticator resolves the credentials of an HTTP request or a websocket
// connection_init payload to a Principal.
type Authenticator struct {
	jwt *JWT
}

// NewAuthenticator returns an Authenticator that accepts the tokens j verifies.
func NewAuthenticator(j *JWT) *Authenticator { return &Authenticator{jwt: j} }

// FromAuthorization resolves an Authorization header value. An empty value
// is an anonymous caller (nil, nil); anything else must be a valid bearer token.
func (a *Authenticator) FromAuthorization(header string) (*Principal, error) {
	if header == "" {
		return nil, nil
	}
	token, ok := BearerToken(header)
	if !ok {
		return nil, fault.New(fault.Unauthenticated, "the Authorization header must be `Bearer <token>`")
	}
	return a.jwt.Verify(token)
}

// FromInitPayload resolves the credentials a websocket client sends in its
// connection_init payload: `Authorization` (or `authorization`) with a
// "Bearer <token>" value, or a bare token in `authToken`.
func (a *Authenticator) FromInitPayload(payload map[string]any) (*Principal, error) {
	for _, key := range []string{"Authorization", "authorization"} {
		if v, ok := payload[key]; ok {
			s, isString := v.(string)
			if !isString {
				return nil, fault.New(fault.Unauthenticated, "connection_init %s must be a string", key)
			}
			return a.FromAuthorization(s)
		}
	}
	if v, ok := payload["authToken"]; ok {
		s, isString := v.(string)
		if !isString || s == "" {
			return nil, fault.New(fault.Unauthenticated, "connection_init authToken must be a non-empty string")
		}
		return a.jwt.Verify(s)
	}
	return nil, nil
}

// Middleware puts the caller's Principal in the request context. A request
// without credentials goes on anonymously (the API refuses what needs a
// caller); a request with bad credentials is refused here with 401 and a
// GraphQL-shaped UNAUTHENTICATED error, so no resolver ever runs for it.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := a.FromAuthorization(r.Header.Get("Authorization"))
		if err != nil {
			WriteError(w, http.StatusUnauthorized, err)
			return
		}
		if p != nil {
			r = r.WithContext(WithPrincipal(r.Context(), p))
		}
		next.ServeHTTP(w, r)
	})
}

// WriteError answers a request that never reached GraphQL execution with a
// GraphQL-shaped error body, so clients parse every failure the same way.
func WriteError(w http.ResponseWriter, status int, err error) {
	code := fault.CodeOf(err)
	msg := err.Error()
	if code == fault.Internal {
		msg = "internal error"
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="fleetgraph"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"errors": []map[string]any{{"message": msg, "extensions": map[string]any{"code": code}}},
	})
}
