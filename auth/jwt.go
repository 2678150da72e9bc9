package auth

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	"fleetgraph/fault"
)

// Leeway is the clock skew tolerated on exp, nbf and iat.
const Leeway = 30 * time.Second

// JWTConfig configures token verification and minting.
type JWTConfig struct {
	// Secret is the HS256 key shared with the identity provider (Supabase's JWT secret).
	Secret []byte
	// Audience must appear in the token's aud claim.
	Audience string
	// Issuer, when set, must equal the token's iss claim.
	Issuer string
	// RequireTenant refuses a token that names no tenant; without it such
	// a token is in DefaultTenant (a single-tenant installation taking an
	// identity provider's tokens unchanged).
	RequireTenant bool
	// Now is the clock tokens are checked and minted by (nil: time.Now).
	Now func() time.Time
}

// JWT verifies and mints Supabase-compatible HS256 tokens.
type JWT struct {
	cfg    JWTConfig
	parser *jwt.Parser
	now    func() time.Time
	cache  tokenCache
}

// tokenCache remembers tokens verified lately. Whether a token verifies
// depends on the token, the secret and the clock alone, and a JWT cannot
// be revoked: a token that verified stays valid until its exp (plus the
// leeway), so a repeated token (every request of a dashboard, every
// subscription of a socket) is checked once, not decoded twice and hashed
// each time. Only tokens that verified are kept, at most tokenCacheSize.
type tokenCache struct {
	mu      sync.Mutex
	entries map[string]cachedToken
}

type cachedToken struct {
	p     Principal
	until time.Time // exp + Leeway: refused after
}

// tokenCacheSize bounds the verified tokens kept (about 0.5 KB each).
const tokenCacheSize = 10_000

func (c *tokenCache) get(token string, now time.Time) (*Principal, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[token]
	if !ok {
		return nil, false
	}
	if now.After(e.until) {
		delete(c.entries, token)
		return nil, false
	}
	p := e.p
	return &p, true
}

func (c *tokenCache) put(token string, p *Principal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]cachedToken{}
	}
	if len(c.entries) >= tokenCacheSize {
		// Full: forget a tenth, whichever the map yields first.
		n := tokenCacheSize / 10
		for k := range c.entries {
			delete(c.entries, k)
			if n--; n == 0 {
				break
			}
		}
	}
	c.entries[token] = cachedToken{p: *p, until: p.ExpiresAt.Add(Leeway)}
}

// CachedTokens is how many verified tokens are remembered.
func (j *JWT) CachedTokens() int {
	j.cache.mu.Lock()
	defer j.cache.mu.Unlock()
	return len(j.cache.entries)
}

// NewJWT returns a verifier for cfg. The secret must be at least 32 bytes.
func NewJWT(cfg JWTConfig) (*JWT, error) {
	if len(cfg.Secret) < 32 {
		return nil, errors.New("the JWT secret must be at least 32 bytes")
	}
	if cfg.Audience == "" {
		return nil, errors.New("the JWT audience must not be empty")
	}
	opts := []jwt.ParserOption{
		// Pinning the algorithm refuses `none` and every asymmetric algorithm,
		// closing the classic key-confusion attacks.
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithAudience(cfg.Audience),
		jwt.WithLeeway(Leeway),
		jwt.WithIssuedAt(),
		// One token, one encoding: no non-zero padding bits in a segment.
		jwt.WithStrictDecoding(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	opts = append(opts, jwt.WithTimeFunc(now))
	return &JWT{cfg: cfg, parser: jwt.NewParser(opts...), now: now}, nil
}

// claims are the parts of a Supabase access token we read.
type claims struct {
	jwt.RegisteredClaims
	Role        string      `json:"role"`
	TenantID    *string     `json:"tenant_id,omitempty"`
	AppMetadata appMetadata `json:"app_metadata"`
}

// appMetadata is the part of app_metadata we read.
type appMetadata struct {
	TenantID *string `json:"tenant_id,omitempty"`
}

// UnmarshalJSON reads each claim by its exact name. encoding/json binds a
// member to a field whose name it equals ignoring case, and folds ſ to s
// and K (Kelvin) to k: "ROLE", "Tenant_Id" or "ſub", which an identity
// provider's hook copying a user's metadata into the token may not guard,
// would have set role, tenant or subject, the last of the look-alikes
// winning. A member whose name differs is another claim, which we ignore.
func (c *claims) UnmarshalJSON(b []byte) error {
	return exactMembers(b, map[string]any{
		"iss": &c.Issuer, "sub": &c.Subject, "aud": &c.Audience,
		"exp": &c.ExpiresAt, "nbf": &c.NotBefore, "iat": &c.IssuedAt, "jti": &c.ID,
		"role": &c.Role, "tenant_id": &c.TenantID, "app_metadata": &c.AppMetadata,
	})
}

// UnmarshalJSON reads app_metadata's members by their exact names, as
// claims.UnmarshalJSON does.
func (m *appMetadata) UnmarshalJSON(b []byte) error {
	return exactMembers(b, map[string]any{"tenant_id": &m.TenantID})
}

// exactMembers decodes the JSON object b, each member named in fields into
// its value, by exact name; other members are ignored. A JSON null is an
// object without members, as encoding/json reads it into a struct.
func exactMembers(b []byte, fields map[string]any) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(b, &members); err != nil {
		return err
	}
	for name, dst := range fields {
		if raw, ok := members[name]; ok {
			if err := json.Unmarshal(raw, dst); err != nil {
				return err
			}
		}
	}
	return nil
}

// Verify checks a token and returns its principal. Every failure is an
// UNAUTHENTICATED fault whose message says what was wrong without echoing the token.
func (j *JWT) Verify(token string) (*Principal, error) {
	if p, ok := j.cache.get(token, j.now()); ok {
		return p, nil
	}
	if problem := strictProblem(token); problem != "" {
		return nil, fault.New(fault.Unauthenticated, "invalid token: %s", problem)
	}
	var c claims
	_, err := j.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return j.cfg.Secret, nil })
	if err != nil {
		return nil, fault.New(fault.Unauthenticated, "invalid token: %s", tokenProblem(err))
	}
	userID, err := uuid.Parse(c.Subject)
	if err != nil || userID == uuid.Nil {
		return nil, fault.New(fault.Unauthenticated, "invalid token: sub must be a user id (a UUID, not the nil one)")
	}
	role := Role(c.Role)
	if role != RoleUser && role != RoleService {
		return nil, fault.New(fault.Unauthenticated, "invalid token: role %q is not allowed; use %q or %q", c.Role, RoleUser, RoleService)
	}
	tenant, err := j.tenant(&c)
	if err != nil {
		return nil, err
	}
	p := &Principal{UserID: userID, TenantID: tenant, Role: role, ExpiresAt: c.ExpiresAt.Time}
	j.cache.put(token, p)
	return p, nil
}

// tenant returns the tenant c names, at the top level or in app_metadata.
// A claim that is present (not JSON null, which reads as absent) names a
// tenant or the token is refused: an
// empty one, the nil UUID (a principal without a tenant is the
// installation's own, the operator CLI, never a token's) and two claims
// naming different tenants are mistakes of the issuer, not a request for
// the default. A token naming none is in DefaultTenant, unless
// RequireTenant.
func (j *JWT) tenant(c *claims) (uuid.UUID, error) {
	var tenant uuid.UUID
	for _, raw := range []*string{c.TenantID, c.AppMetadata.TenantID} {
		if raw == nil {
			continue
		}
		t, err := uuid.Parse(*raw)
		if err != nil || t == uuid.Nil {
			return uuid.Nil, fault.New(fault.Unauthenticated, "invalid token: tenant_id must be a UUID, not the nil one")
		}
		if tenant != uuid.Nil && t != tenant {
			return uuid.Nil, fault.New(fault.Unauthenticated, "invalid token: tenant_id and app_metadata.tenant_id name different tenants")
		}
		tenant = t
	}
	switch {
	case tenant != uuid.Nil:
		return tenant, nil
	case j.cfg.RequireTenant:
		return uuid.Nil, fault.New(fault.Unauthenticated, "invalid token: it names no tenant (a tenant_id claim, at the top level or in app_metadata)")
	}
	return DefaultTenant, nil
}

// maxNumericDate is 9999-12-31T23:59:59Z: a NumericDate past it (or before
// 1970) is no time a token is issued, valid or expiring at. Converting a
// larger float to a time overflows, differently on each CPU (one reads 1e300
// as long expired, another as never expiring).
const maxNumericDate = 253402300799

// strictProblem checks what the jwt library lets through, before the
// signature is checked so that the answer is the same whoever signed the
// token. It returns "" for a token the library may then verify, else what is
// wrong with it:
//
//   - a segment that is not canonical base64url (RFC 7515 §2), or a header
//     or claims set that is not one JSON object of valid UTF-8 with unique
//     member names at every level (RFC 7515 §4, RFC 7519 §4: we refuse
//     duplicates rather than let the last one silently win), nested at
//     most maxTokenNesting deep;
//   - a "crit" header (RFC 7515 §4.1.11: a token naming extensions the
//     recipient must understand is refused when it does not; we understand
//     none), "b64" (RFC 7797 unencoded payloads), "zip" (compression is for
//     JWE), or "cty" (a nested token, RFC 7519 §5.2);
//   - a "typ" other than JWT (RFC 7519 §5.1; RFC 8725 §3.11 explicit typing);
//   - exp, nbf or iat that is not a JSON number (RFC 7519 §2 NumericDate:
//     the library would read the string "9999999999" as a number) or lies
//     outside 1970..9999.
//
// The key-locating headers (kid, jku, jwk, x5u, x5c, x5t) are ignored: the
// one shared secret verifies every token and no key is ever fetched.
func strictProblem(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "" // the library names it malformed
	}
	for _, p := range parts {
		if strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return "malformed (segments must be unpadded base64url)"
		}
	}
	header, ok := decodeObject(parts[0])
	if !ok {
		return "malformed header (one JSON object, unique member names, UTF-8)"
	}
	if _, ok := header["crit"]; ok {
		return "unsupported critical header parameters (crit)"
	}
	for _, name := range []string{"b64", "zip", "cty"} {
		if _, ok := header[name]; ok {
			return "unsupported header parameter " + name
		}
	}
	if raw, ok := header["typ"]; ok {
		var typ string
		if json.Unmarshal(raw, &typ) != nil || !(strings.EqualFold(typ, "JWT") || strings.EqualFold(typ, "application/jwt")) {
			return "typ must be JWT"
		}
	}
	payload, ok := decodeObject(parts[1])
	if !ok {
		return "malformed claims (one JSON object, unique member names, UTF-8)"
	}
	for _, name := range []string{"exp", "nbf", "iat"} {
		raw, ok := payload[name]
		if !ok {
			continue
		}
		var n json.Number
		if c := raw[0]; (c != '-' && (c < '0' || c > '9')) || json.Unmarshal(raw, &n) != nil {
			return name + " must be a number of seconds since 1970 (a NumericDate)"
		}
		f, err := n.Float64()
		if err != nil || f < 0 || f > maxNumericDate {
			return name + " is out of range"
		}
	}
	return ""
}

// decodeObject decodes a segment that must be one JSON object in valid UTF-8
// with unique member names at every level, nested at most maxTokenNesting
// deep, returning its top-level members.
func decodeObject(segment string) (map[string]json.RawMessage, bool) {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(segment)
	if err != nil || !utf8.Valid(raw) || !uniqueMembers(raw) {
		return nil, false
	}
	var members map[string]json.RawMessage
	if json.Unmarshal(raw, &members) != nil || members == nil {
		return nil, false
	}
	return members, true
}

// maxTokenNesting bounds how deeply a JWT header or claims set may nest
// objects and arrays. Real ones nest two or three levels (Supabase's
// app_metadata, amr). json.Decoder.Token, unlike Decode, sets no bound of
// its own, and this check runs before the signature's: without one, a
// megabyte of '[' in an anonymous websocket's token recursed as deep,
// growing its goroutine's stack by hundreds of megabytes.
const maxTokenNesting = 32

// uniqueMembers reports whether raw is exactly one JSON value, nested at
// most maxTokenNesting deep, in which no object has the same member name
// twice.
func uniqueMembers(raw []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if !uniqueValue(dec, 0) {
		return false
	}
	_, err := dec.Token()
	return err == io.EOF
}

// uniqueValue reads one value from dec, inside depth objects and arrays.
func uniqueValue(dec *json.Decoder, depth int) bool {
	tok, err := dec.Token()
	if err != nil {
		return false
	}
	if d, ok := tok.(json.Delim); ok && (d == '{' || d == '[') && depth == maxTokenNesting {
		return false
	}
	switch tok {
	case json.Delim('{'):
		names := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			name, ok := tok.(string)
			if err != nil || !ok || names[name] {
				return false
			}
			names[name] = true
			if !uniqueValue(dec, depth+1) {
				return false
			}
		}
	case json.Delim('['):
		for dec.More() {
			if !uniqueValue(dec, depth+1) {
				return false
			}
		}
	default:
		return true
	}
	_, err = dec.Token() // the closing delimiter
	return err == nil
}

// tokenProblem turns a jwt error into a short, safe explanation.
func tokenProblem(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "bad signature or algorithm (HS256 required)"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		// The parser requires exp always, and aud and iss when configured;
		// its error text names the missing ones ("aud claim is required").
		var missing []string
		for _, claim := range []string{"exp", "aud", "iss"} {
			if strings.Contains(err.Error(), claim+" claim is required") {
				missing = append(missing, claim)
			}
		}
		if len(missing) == 0 {
			return "a required claim is missing"
		}
		return "missing required claim " + strings.Join(missing, ", ")
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	}
	return "rejected"
}

// MintOptions describes a token to mint.
type MintOptions struct {
	UserID   uuid.UUID
	TenantID uuid.UUID
	Role     Role
	TTL      time.Duration
}

// Mint signs a token that Verify accepts, for development and operators.
func (j *JWT) Mint(o MintOptions) (string, error) {
	if o.Role != RoleUser && o.Role != RoleService {
		return "", fmt.Errorf("role must be %q or %q, not %q", RoleUser, RoleService, o.Role)
	}
	if o.TTL <= 0 {
		return "", errors.New("the token lifetime must be positive")
	}
	now := j.now()
	c := claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   o.UserID.String(),
			Audience:  jwt.ClaimStrings{j.cfg.Audience},
			Issuer:    j.cfg.Issuer,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(o.TTL)),
		},
		Role: string(o.Role),
	}
	if o.TenantID != uuid.Nil {
		t := o.TenantID.String()
		c.TenantID = &t
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(j.cfg.Secret)
}

// BearerToken extracts the token from an Authorization header value
// ("Bearer <token>", scheme case-insensitive). ok is false when the header is
// absent or has another scheme.
func BearerToken(header string) (token string, ok bool) {
	scheme, token, found := strings.Cut(strings.TrimSpace(header), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
