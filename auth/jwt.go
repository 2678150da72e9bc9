package auth

import (
	"errors"
	"fmt"
	"strings"
	"time"

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
}

// JWT verifies and mints Supabase-compatible HS256 tokens.
type JWT struct {
	cfg    JWTConfig
	parser *jwt.Parser
	now    func() time.Time
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
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	return &JWT{cfg: cfg, parser: jwt.NewParser(opts...), now: time.Now}, nil
}

// claims are the parts of a Supabase access token we read.
type claims struct {
	jwt.RegisteredClaims
	Role        string `json:"role"`
	TenantID    string `json:"tenant_id,omitempty"`
	AppMetadata struct {
		TenantID string `json:"tenant_id,omitempty"`
	} `json:"app_metadata"`
}

// Verify checks a token and returns its principal. Every failure is an
// UNAUTHENTICATED fault whose message says what was wrong without echoing the token.
func (j *JWT) Verify(token string) (*Principal, error) {
	var c claims
	_, err := j.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return j.cfg.Secret, nil })
	if err != nil {
		return nil, fault.New(fault.Unauthenticated, "invalid token: %s", tokenProblem(err))
	}
	userID, err := uuid.Parse(c.Subject)
	if err != nil {
		return nil, fault.New(fault.Unauthenticated, "invalid token: sub must be a user id (UUID)")
	}
	role := Role(c.Role)
	if role != RoleUser && role != RoleService {
		return nil, fault.New(fault.Unauthenticated, "invalid token: role %q is not allowed; use %q or %q", c.Role, RoleUser, RoleService)
	}
	tenant := DefaultTenant
	if raw := cmpOr(c.TenantID, c.AppMetadata.TenantID); raw != "" {
		if tenant, err = uuid.Parse(raw); err != nil {
			return nil, fault.New(fault.Unauthenticated, "invalid token: tenant_id must be a UUID")
		}
	}
	return &Principal{UserID: userID, TenantID: tenant, Role: role, ExpiresAt: c.ExpiresAt.Time}, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
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
		c.TenantID = o.TenantID.String()
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
