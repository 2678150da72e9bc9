package auth

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"fleetgraph/fault"
)

// KeyPrefix starts every robot API key; a bearer credential with it is a key,
// not a JWT.
const KeyPrefix = "crpa_"

// KeyVerifier resolves a robot API key presented from the address ip. It
// returns an UNAUTHENTICATED fault for unknown, revoked and expired keys.
type KeyVerifier func(ctx context.Context, key, ip string) (*Principal, error)

// Authenticator resolves the credentials of an HTTP request or a websocket
// connection_init payload to a Principal: a JWT for users, an API key for
// robots.
type Authenticator struct {
	jwt  *JWT
	keys KeyVerifier
	// KeyCheckTimeout bounds each check of an API key (DefaultKeyCheckTimeout
	// when 0).
	KeyCheckTimeout time.Duration
}

// DefaultKeyCheckTimeout bounds one check of an API key against the
// database (its lookup, its last use, an audit of a refusal). A blocked
// database (a locked table, a pool at its limit) must not hold a request,
// a websocket's connection_init or a stream's re-check, and what they hold
// (the socket's place, its reader, a goroutine), for as long as it stays
// blocked: a check out of time could not be made, which is INTERNAL as in
// an outage (a 500, a websocket closed with "try again later", a stream's
// re-check left for the next).
const DefaultKeyCheckTimeout = 10 * time.Second

type recheckKey struct{}

// Recheck marks ctx as a connection's check, again, of the credential it
// opened with (a robot's websocket or stream does so while it lasts): such
// checks are bounded by the connections, and must see a revocation
// whatever else comes from the address, so per-address limits of key
// lookups leave them out.
func Recheck(ctx context.Context) context.Context {
	return context.WithValue(ctx, recheckKey{}, true)
}

// IsRecheck reports whether ctx is a re-check (Recheck).
func IsRecheck(ctx context.Context) bool {
	v, _ := ctx.Value(recheckKey{}).(bool)
	return v
}

// NewAuthenticator returns an Authenticator that accepts the tokens j
// verifies and the API keys keys verifies (nil: API keys are refused).
func NewAuthenticator(j *JWT, keys KeyVerifier) *Authenticator {
	return &Authenticator{jwt: j, keys: keys}
}

// credential resolves one bearer credential.
func (a *Authenticator) credential(ctx context.Context, cred, ip string) (*Principal, error) {
	if strings.HasPrefix(cred, KeyPrefix) {
		if a.keys == nil {
			return nil, fault.New(fault.Unauthenticated, "API keys are not accepted here")
		}
		timeout := a.KeyCheckTimeout
		if timeout <= 0 {
			timeout = DefaultKeyCheckTimeout
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return a.keys(ctx, cred, ip)
	}
	return a.jwt.Verify(cred)
}

// FromAuthorization resolves an Authorization header value. An empty value
// is an anonymous caller (nil, nil); anything else must be a valid
// `Bearer <jwt>` or `Bearer crpa_...`.
func (a *Authenticator) FromAuthorization(ctx context.Context, header, ip string) (*Principal, error) {
	if header == "" {
		return nil, nil
	}
	cred, ok := BearerToken(header)
	if !ok {
		return nil, fault.New(fault.Unauthenticated, "the Authorization header must be `Bearer <token>`")
	}
	return a.credential(ctx, cred, ip)
}

// FromRequest resolves an HTTP request's credentials: the Authorization
// header, else an X-Api-Key header. Sending both is refused as ambiguous.
func (a *Authenticator) FromRequest(r *http.Request) (*Principal, error) {
	header, key := r.Header.Get("Authorization"), r.Header.Get("X-Api-Key")
	ip := ClientIP(r)
	switch {
	case header != "" && key != "":
		return nil, fault.New(fault.Unauthenticated, "send either Authorization or X-Api-Key, not both")
	case key != "":
		if !strings.HasPrefix(key, KeyPrefix) {
			return nil, fault.New(fault.Unauthenticated, "X-Api-Key must hold a robot API key (crpa_...)")
		}
		return a.credential(r.Context(), key, ip)
	}
	return a.FromAuthorization(r.Context(), header, ip)
}

// FromInitPayload resolves the credentials a websocket client sends in its
// connection_init payload: `Authorization` (or `authorization`) with a
// "Bearer <token>" value, or a bare token or key in `authToken`, `apiKey` or
// `X-Api-Key`; the first of these present is read (InitCredential).
func (a *Authenticator) FromInitPayload(ctx context.Context, payload map[string]any, ip string) (*Principal, error) {
	for key, v := range InitCredential(payload) {
		s, isString := v.(string)
		if key == "Authorization" || key == "authorization" {
			if !isString {
				return nil, fault.New(fault.Unauthenticated, "connection_init %s must be a string", key)
			}
			return a.FromAuthorization(ctx, s, ip)
		}
		if !isString || s == "" {
			return nil, fault.New(fault.Unauthenticated, "connection_init %s must be a non-empty string", key)
		}
		return a.credential(ctx, s, ip)
	}
	return nil, nil
}

// InitCredential returns the one member of a connection_init payload that
// FromInitPayload reads, as a payload of its own (nil: there is none). A
// connection that checks its credential again keeps this, not the payload,
// whose other members may hold a megabyte of anything.
func InitCredential(payload map[string]any) map[string]any {
	for _, key := range [...]string{"Authorization", "authorization", "authToken", "apiKey", "X-Api-Key"} {
		if v, ok := payload[key]; ok {
			return map[string]any{key: v}
		}
	}
	return nil
}

// ClientIP is the address a request came from: the connection's peer. (Behind
// a proxy this is the proxy; forwarded headers are not trusted.)
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// AddressKey names the client an address (as ClientIP returns it) is for
// every per-address limit: an IPv4 address is itself (an IPv4-mapped IPv6
// address counts as its IPv4 address), an IPv6 address is its /64, which
// is what one host is routinely given: keyed by its full address, one
// such host was as many clients as it cared to be. An address that does
// not parse is its own key. What is recorded of an address (a key's
// last_used_ip, audit rows) stays the full address.
func AddressKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(64)
	return p.String()
}

// Middleware puts the caller's Principal in the request context. A request
// without credentials goes on anonymously (the API refuses what needs a
// caller); a request with bad credentials is refused here with 401 and a
// GraphQL-shaped UNAUTHENTICATED error, so no resolver ever runs for it.
// A credential that could not be checked (the key lookup failed) is a 500
// INTERNAL whose cause goes to log at error level, with the request id the
// client is told to quote (the response's X-Request-Id); nil log discards.
// A credential refused as RATE_LIMITED (an address past its lookups of API
// keys) is a 429 with Retry-After.
func (a *Authenticator) Middleware(log *slog.Logger, next http.Handler) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(WithClientIP(r.Context(), ClientIP(r)))
		p, err := a.FromRequest(r)
		if err != nil {
			status := http.StatusUnauthorized
			switch fault.CodeOf(err) {
			case fault.RateLimited:
				status = http.StatusTooManyRequests
				w.Header().Set("Retry-After", strconv.Itoa(RetryAfter(err)))
			case fault.Internal:
				status = http.StatusInternalServerError
				log.ErrorContext(r.Context(), "internal error: checking credentials",
					"request_id", w.Header().Get("X-Request-Id"), "error", err)
			}
			WriteError(w, status, err)
			return
		}
		if p != nil {
			r = r.WithContext(WithPrincipal(r.Context(), p))
		}
		next.ServeHTTP(w, r)
	})
}

// RetryAfter is the seconds a RATE_LIMITED refusal asks its client to
// wait: its extensions.retryAfter, at least 1.
func RetryAfter(err error) int {
	var f *fault.Error
	if errors.As(err, &f) {
		if n, ok := f.Extra["retryAfter"].(int); ok && n > 1 {
			return n
		}
	}
	return 1
}

// WriteError answers a request that never reached GraphQL execution with a
// GraphQL-shaped error body, so clients parse every failure the same way.
// An INTERNAL error carries the request id (the X-Request-Id the response
// already has), as the GraphQL presenter's do; the caller logs its cause
// with that id, since WriteError has no logger.
func WriteError(w http.ResponseWriter, status int, err error) {
	code := fault.CodeOf(err)
	msg := err.Error()
	ext := map[string]any{"code": code}
	// What the error presenter adds to a refusal: the field it names and
	// its extras (reason, limit, max).
	var f *fault.Error
	if code != fault.Internal && errors.As(err, &f) {
		if f.Field != "" {
			ext["field"] = f.Field
		}
		for k, v := range f.Extra {
			if _, taken := ext[k]; !taken {
				ext[k] = v
			}
		}
	}
	if code == fault.Internal {
		msg = "internal error"
		if id := w.Header().Get("X-Request-Id"); id != "" {
			msg = "internal error; quote request id " + id + " when reporting it"
			ext["requestId"] = id
		}
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="fleetgraph"`)
	}
	// The endpoint's writer counts the errors it sends (graph's metrics).
	if c, ok := w.(interface{ CountError(code string) }); ok {
		c.CountError(string(code))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"errors": []map[string]any{{"message": msg, "extensions": ext}},
	})
}
