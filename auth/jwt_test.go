package auth_test

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

const (
	testSecret   = "0123456789abcdef0123456789abcdef-jwt-test"
	testAudience = "authenticated"
)

var (
	testUser   = uuid.MustParse("5e1f0000-0000-4000-8000-00000000000a")
	testTenant = uuid.MustParse("7e7a0000-0000-4000-8000-00000000000b")
)

// newJWT returns a verifier for testSecret and testAudience, with issuer iss
// required when it is not empty.
func newJWT(t *testing.T, iss string) *auth.JWT {
	t.Helper()
	j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(testSecret), Audience: testAudience, Issuer: iss})
	require.NoError(t, err)
	return j
}

// withClaim returns c with name set to v (nil: present as JSON null).
func withClaim(c jwt.MapClaims, name string, v any) jwt.MapClaims {
	c[name] = v
	return c
}

// validClaims are the claims of a token Verify accepts; tests change one thing.
func validClaims() jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"sub":  testUser.String(),
		"aud":  testAudience,
		"role": string(auth.RoleUser),
		"iat":  now.Unix(),
		"exp":  now.Add(time.Hour).Unix(),
	}
}

// sign signs claims with HS256 and testSecret.
func sign(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	return signWith(t, jwt.SigningMethodHS256, []byte(testSecret), claims)
}

func signWith(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
	require.NoError(t, err)
	return tok
}

// requireUnauthenticated checks that err is an UNAUTHENTICATED fault that
// mentions want and does not echo the token or any of its parts.
func requireUnauthenticated(t *testing.T, err error, token, want string) {
	t.Helper()
	require.Error(t, err)
	var fe *fault.Error
	require.ErrorAs(t, err, &fe)
	require.Equal(t, fault.Unauthenticated, fault.CodeOf(err))
	require.Contains(t, err.Error(), want)
	if token != "" {
		require.NotContains(t, err.Error(), token)
		for _, part := range strings.Split(token, ".") {
			if len(part) >= 8 {
				require.NotContains(t, err.Error(), part, "the message echoes part of the token")
			}
		}
	}
}

func TestJWTVerify(t *testing.T) {
	t.Parallel()

	t.Run("ValidUserToken", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		p, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
		require.Equal(t, testUser, p.UserID)
		require.Equal(t, auth.RoleUser, p.Role)
		require.Equal(t, auth.DefaultTenant, p.TenantID)
		require.Equal(t, c["exp"], p.ExpiresAt.Unix())
		require.Equal(t, "user:"+testUser.String(), p.Actor())
	})

	t.Run("ValidServiceToken", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["role"] = string(auth.RoleService)
		p, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
		require.Equal(t, auth.RoleService, p.Role)
		require.Equal(t, testUser, p.UserID)
	})

	t.Run("AudienceInList", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["aud"] = []string{"other", testAudience}
		_, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
	})

	t.Run("TenantFromTopLevelClaim", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["tenant_id"] = testTenant.String()
		p, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
		require.Equal(t, testTenant, p.TenantID)
	})

	t.Run("TenantFromAppMetadata", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["app_metadata"] = map[string]any{"tenant_id": testTenant.String(), "provider": "email"}
		p, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
		require.Equal(t, testTenant, p.TenantID)
	})

	t.Run("SameTenantInBothPlaces", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["tenant_id"] = testTenant.String()
		c["app_metadata"] = map[string]any{"tenant_id": strings.ToUpper(testTenant.String())}
		p, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
		require.Equal(t, testTenant, p.TenantID)
	})

	t.Run("DefaultTenantWhenAbsent", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["app_metadata"] = map[string]any{"provider": "email"}
		p, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
		require.Equal(t, auth.DefaultTenant, p.TenantID)
	})

	// With RequireTenant a token naming no tenant is refused, and one that
	// names one still passes.
	t.Run("RequireTenant", func(t *testing.T) {
		t.Parallel()
		j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(testSecret), Audience: testAudience, RequireTenant: true})
		require.NoError(t, err)
		for _, c := range []jwt.MapClaims{validClaims(), withClaim(validClaims(), "app_metadata", map[string]any{"provider": "email"}),
			withClaim(validClaims(), "tenant_id", nil)} {
			token := sign(t, c)
			p, err := j.Verify(token)
			require.Nil(t, p)
			requireUnauthenticated(t, err, token, "names no tenant")
		}
		tok, err := j.Mint(auth.MintOptions{UserID: testUser, Role: auth.RoleUser, TTL: time.Minute})
		require.NoError(t, err)
		_, err = j.Verify(tok)
		requireUnauthenticated(t, err, tok, "names no tenant")
		c := validClaims()
		c["app_metadata"] = map[string]any{"tenant_id": testTenant.String()}
		p, err := j.Verify(sign(t, c))
		require.NoError(t, err)
		require.Equal(t, testTenant, p.TenantID)
	})

	t.Run("ExpiredWithinLeewayAccepted", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["iat"] = time.Now().Add(-time.Hour).Unix()
		c["exp"] = time.Now().Add(-auth.Leeway / 3).Unix()
		_, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
	})

	t.Run("NotBeforeWithinLeewayAccepted", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["nbf"] = time.Now().Add(auth.Leeway / 3).Unix()
		_, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
	})

	t.Run("AnyIssuerAcceptedWhenNotConfigured", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["iss"] = "https://anyone.example.com/auth/v1"
		_, err := newJWT(t, "").Verify(sign(t, c))
		require.NoError(t, err)
	})

	t.Run("ConfiguredIssuerAccepted", func(t *testing.T) {
		t.Parallel()
		c := validClaims()
		c["iss"] = "https://project.supabase.co/auth/v1"
		_, err := newJWT(t, "https://project.supabase.co/auth/v1").Verify(sign(t, c))
		require.NoError(t, err)
	})

	refusals := []struct {
		name   string
		iss    string // issuer the verifier requires
		token  func(t *testing.T) string
		reason string // what the message must say
	}{
		{"ExpiredBeyondLeeway", "", func(t *testing.T) string {
			c := validClaims()
			c["iat"] = time.Now().Add(-time.Hour).Unix()
			c["exp"] = time.Now().Add(-auth.Leeway - 30*time.Second).Unix()
			return sign(t, c)
		}, "expired"},
		{"NotBeforeInTheFuture", "", func(t *testing.T) string {
			c := validClaims()
			c["nbf"] = time.Now().Add(10 * time.Minute).Unix()
			return sign(t, c)
		}, "not valid yet"},
		{"IssuedInTheFuture", "", func(t *testing.T) string {
			c := validClaims()
			c["iat"] = time.Now().Add(10 * time.Minute).Unix()
			return sign(t, c)
		}, "not valid yet"},
		{"MissingExp", "", func(t *testing.T) string {
			c := validClaims()
			delete(c, "exp")
			return sign(t, c)
		}, "missing required claim exp"},
		{"WrongAudience", "", func(t *testing.T) string {
			c := validClaims()
			c["aud"] = "anon"
			return sign(t, c)
		}, "wrong audience"},
		{"MissingAudience", "", func(t *testing.T) string {
			c := validClaims()
			delete(c, "aud")
			return sign(t, c)
		}, "missing required claim aud"},
		{"WrongIssuer", "https://project.supabase.co/auth/v1", func(t *testing.T) string {
			c := validClaims()
			c["iss"] = "https://evil.example.com/auth/v1"
			return sign(t, c)
		}, "wrong issuer"},
		{"MissingIssuerWhenConfigured", "https://project.supabase.co/auth/v1", func(t *testing.T) string {
			return sign(t, validClaims())
		}, "missing required claim iss"},
		{"AlgNone", "", func(t *testing.T) string {
			return signWith(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, validClaims())
		}, "HS256 required"},
		{"HS384", "", func(t *testing.T) string {
			return signWith(t, jwt.SigningMethodHS384, []byte(testSecret), validClaims())
		}, "HS256 required"},
		{"HS512", "", func(t *testing.T) string {
			return signWith(t, jwt.SigningMethodHS512, []byte(testSecret), validClaims())
		}, "HS256 required"},
		{"RS256", "", func(t *testing.T) string {
			key, err := rsa.GenerateKey(rand.Reader, 2048)
			require.NoError(t, err)
			return signWith(t, jwt.SigningMethodRS256, key, validClaims())
		}, "HS256 required"},
		{"BadSignature", "", func(t *testing.T) string {
			return signWith(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-0123456789"), validClaims())
		}, "bad signature"},
		{"TamperedPayload", "", func(t *testing.T) string {
			good := strings.Split(sign(t, validClaims()), ".")
			c := validClaims()
			c["role"] = string(auth.RoleService)
			forged := strings.Split(sign(t, c), ".")
			return good[0] + "." + forged[1] + "." + good[2]
		}, "bad signature"},
		{"Malformed", "", func(*testing.T) string { return "not-a-jwt" }, "malformed"},
		{"MalformedSegments", "", func(*testing.T) string { return "aaaaaaaaaa.bbbbbbbbbb.cccccccccc" }, "malformed"},
		{"Empty", "", func(*testing.T) string { return "" }, "malformed"},
		{"RoleAnon", "", func(t *testing.T) string {
			c := validClaims()
			c["role"] = "anon"
			return sign(t, c)
		}, "role"},
		{"RoleOther", "", func(t *testing.T) string {
			c := validClaims()
			c["role"] = "supabase_admin"
			return sign(t, c)
		}, "role"},
		{"RoleMissing", "", func(t *testing.T) string {
			c := validClaims()
			delete(c, "role")
			return sign(t, c)
		}, "role"},
		{"SubNotUUID", "", func(t *testing.T) string {
			c := validClaims()
			c["sub"] = "alice"
			return sign(t, c)
		}, "sub"},
		{"SubMissing", "", func(t *testing.T) string {
			c := validClaims()
			delete(c, "sub")
			return sign(t, c)
		}, "sub"},
		{"TenantNotUUID", "", func(t *testing.T) string {
			c := validClaims()
			c["tenant_id"] = "acme"
			return sign(t, c)
		}, "tenant_id"},
		{"AppMetadataTenantNotUUID", "", func(t *testing.T) string {
			c := validClaims()
			c["app_metadata"] = map[string]any{"tenant_id": "acme"}
			return sign(t, c)
		}, "tenant_id"},
		// The nil UUID is no one: no user, and no tenant (a principal
		// without one is the installation's own, never a token's).
		{"SubNilUUID", "", func(t *testing.T) string {
			c := validClaims()
			c["sub"] = uuid.Nil.String()
			return sign(t, c)
		}, "sub"},
		{"TenantNilUUID", "", func(t *testing.T) string {
			c := validClaims()
			c["role"] = "service_role"
			c["tenant_id"] = uuid.Nil.String()
			return sign(t, c)
		}, "tenant_id"},
		{"AppMetadataTenantNilUUID", "", func(t *testing.T) string {
			c := validClaims()
			c["app_metadata"] = map[string]any{"tenant_id": uuid.Nil.String()}
			return sign(t, c)
		}, "tenant_id"},
		// A tenant claim that is there names a tenant: an empty one is the
		// issuer's mistake, not a request for the default tenant.
		{"TenantEmpty", "", func(t *testing.T) string {
			return sign(t, withClaim(validClaims(), "tenant_id", ""))
		}, "tenant_id"},
		{"AppMetadataTenantEmpty", "", func(t *testing.T) string {
			return sign(t, withClaim(validClaims(), "app_metadata", map[string]any{"tenant_id": ""}))
		}, "tenant_id"},
		{"TenantEmptyAppMetadataTenantSet", "", func(t *testing.T) string {
			c := withClaim(validClaims(), "tenant_id", "")
			c["app_metadata"] = map[string]any{"tenant_id": testTenant.String()}
			return sign(t, c)
		}, "tenant_id"},
		{"TenantNotAString", "", func(t *testing.T) string {
			return sign(t, withClaim(validClaims(), "tenant_id", 42))
		}, ""},
		// Two claims naming different tenants: which one the issuer meant
		// is unknown, so neither.
		{"TenantsDisagree", "", func(t *testing.T) string {
			c := withClaim(validClaims(), "tenant_id", testTenant.String())
			c["app_metadata"] = map[string]any{"tenant_id": uuid.NewString()}
			return sign(t, c)
		}, "different tenants"},
	}
	for _, tt := range refusals {
		t.Run("Refuses"+tt.name, func(t *testing.T) {
			t.Parallel()
			token := tt.token(t)
			p, err := newJWT(t, tt.iss).Verify(token)
			require.Nil(t, p)
			requireUnauthenticated(t, err, token, tt.reason)
		})
	}
}

func TestJWTMint(t *testing.T) {
	t.Parallel()

	t.Run("RoundTrips", func(t *testing.T) {
		t.Parallel()
		j := newJWT(t, "https://issuer.example.com")
		for _, role := range []auth.Role{auth.RoleUser, auth.RoleService} {
			tok, err := j.Mint(auth.MintOptions{UserID: testUser, TenantID: testTenant, Role: role, TTL: time.Hour})
			require.NoError(t, err)
			p, err := j.Verify(tok)
			require.NoError(t, err)
			require.Equal(t, testUser, p.UserID)
			require.Equal(t, testTenant, p.TenantID)
			require.Equal(t, role, p.Role)
			require.WithinDuration(t, time.Now().Add(time.Hour), p.ExpiresAt, 5*time.Second)
		}
	})

	t.Run("NoTenantMeansDefaultTenant", func(t *testing.T) {
		t.Parallel()
		j := newJWT(t, "")
		tok, err := j.Mint(auth.MintOptions{UserID: testUser, Role: auth.RoleUser, TTL: time.Minute})
		require.NoError(t, err)
		p, err := j.Verify(tok)
		require.NoError(t, err)
		require.Equal(t, auth.DefaultTenant, p.TenantID)
	})

	t.Run("OtherSecretRefusesMintedToken", func(t *testing.T) {
		t.Parallel()
		tok, err := newJWT(t, "").Mint(auth.MintOptions{UserID: testUser, Role: auth.RoleUser, TTL: time.Minute})
		require.NoError(t, err)
		other, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(strings.Repeat("x", 32)), Audience: testAudience})
		require.NoError(t, err)
		_, err = other.Verify(tok)
		requireUnauthenticated(t, err, tok, "bad signature")
	})

	t.Run("OtherAudienceRefusesMintedToken", func(t *testing.T) {
		t.Parallel()
		tok, err := newJWT(t, "").Mint(auth.MintOptions{UserID: testUser, Role: auth.RoleUser, TTL: time.Minute})
		require.NoError(t, err)
		other, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(testSecret), Audience: "service"})
		require.NoError(t, err)
		_, err = other.Verify(tok)
		requireUnauthenticated(t, err, tok, "wrong audience")
	})

	t.Run("RefusesBadRoles", func(t *testing.T) {
		t.Parallel()
		j := newJWT(t, "")
		for _, role := range []auth.Role{"", "anon", "admin"} {
			tok, err := j.Mint(auth.MintOptions{UserID: testUser, Role: role, TTL: time.Hour})
			require.Error(t, err, "role %q", role)
			require.Empty(t, tok)
		}
	})

	t.Run("RefusesNonPositiveTTL", func(t *testing.T) {
		t.Parallel()
		j := newJWT(t, "")
		for _, ttl := range []time.Duration{0, -time.Minute} {
			tok, err := j.Mint(auth.MintOptions{UserID: testUser, Role: auth.RoleUser, TTL: ttl})
			require.Error(t, err, "ttl %s", ttl)
			require.Empty(t, tok)
		}
	})
}

func TestNewJWT(t *testing.T) {
	t.Parallel()

	t.Run("RefusesShortSecret", func(t *testing.T) {
		t.Parallel()
		for _, secret := range []string{"", "short", strings.Repeat("s", 31)} {
			j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(secret), Audience: testAudience})
			require.Error(t, err)
			require.Contains(t, err.Error(), "32 bytes")
			require.Nil(t, j)
		}
	})

	t.Run("AcceptsThirtyTwoByteSecret", func(t *testing.T) {
		t.Parallel()
		_, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(strings.Repeat("s", 32)), Audience: testAudience})
		require.NoError(t, err)
	})

	t.Run("RefusesEmptyAudience", func(t *testing.T) {
		t.Parallel()
		j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(testSecret)})
		require.Error(t, err)
		require.Contains(t, err.Error(), "audience")
		require.Nil(t, j)
	})
}

func TestBearerToken(t *testing.T) {
	t.Parallel()

	for _, tt := range []struct {
		name, header, token string
		ok                  bool
	}{
		{"Bearer", "Bearer abc.def.ghi", "abc.def.ghi", true},
		{"LowercaseScheme", "bearer abc", "abc", true},
		{"UppercaseScheme", "BEARER abc", "abc", true},
		{"SurroundingSpaces", "  Bearer   abc  ", "abc", true},
		{"Empty", "", "", false},
		{"SchemeOnly", "Bearer", "", false},
		{"SchemeAndSpaces", "Bearer    ", "", false},
		{"OtherScheme", "Basic dXNlcjpwYXNz", "", false},
		{"TokenWithoutScheme", "abc.def.ghi", "", false},
		{"SchemePrefix", "Bearerabc", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			token, ok := auth.BearerToken(tt.header)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.token, token)
		})
	}
}

// signRaw signs a token whose header and claims are the given JSON texts,
// byte for byte, with HS256 and testSecret: what a library would never
// produce, and an issuer (or someone holding the secret by mistake) might.
func signRaw(header, claims string) string {
	enc := base64.RawURLEncoding
	input := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(claims))
	mac := hmac.New(sha256.New, []byte(testSecret))
	mac.Write([]byte(input))
	return input + "." + enc.EncodeToString(mac.Sum(nil))
}

// rawClaims returns the JSON of validClaims with extra members appended
// verbatim (extra starts with a comma).
func rawClaims(t *testing.T, drop []string, extra string) string {
	t.Helper()
	c := validClaims()
	for _, k := range drop {
		delete(c, k)
	}
	b, err := json.Marshal(c)
	require.NoError(t, err)
	return string(b[:len(b)-1]) + extra + "}"
}

// TestJWTVerifyStrict covers what RFC 7515 and RFC 7519 require a recipient
// to refuse and the jwt library accepts: critical extensions, NumericDates
// that are not numbers or not times, duplicate members, headers that change
// what the token is, and non-canonical encodings.
func TestJWTVerifyStrict(t *testing.T) {
	t.Parallel()
	const hs = `{"alg":"HS256","typ":"JWT"}`
	future := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)

	t.Run("ControlRawTokenAccepted", func(t *testing.T) {
		t.Parallel()
		for _, header := range []string{hs, `{"alg":"HS256"}`, `{"alg":"HS256","typ":"jwt"}`, `{"alg":"HS256","typ":"application/jwt"}`, `{"alg":"HS256","typ":"JWT","kid":"key-1"}`} {
			_, err := newJWT(t, "").Verify(signRaw(header, rawClaims(t, nil, "")))
			require.NoError(t, err, "header %s", header)
		}
		// A fractional NumericDate is a time too.
		_, err := newJWT(t, "").Verify(signRaw(hs, rawClaims(t, []string{"exp"}, `,"exp":`+future+`.5`)))
		require.NoError(t, err)
	})

	refusals := []struct {
		name, header, claims string
		reason               string
	}{
		{"CritUnknownExtension", `{"alg":"HS256","typ":"JWT","crit":["urn:example:must-understand"],"urn:example:must-understand":true}`, "", "crit"},
		{"CritEmpty", `{"alg":"HS256","typ":"JWT","crit":[]}`, "", "crit"},
		{"CritNamingExp", `{"alg":"HS256","typ":"JWT","crit":["exp"]}`, "", "crit"},
		{"UnencodedPayload", `{"alg":"HS256","typ":"JWT","b64":false}`, "", "b64"},
		{"Compressed", `{"alg":"HS256","typ":"JWT","zip":"DEF"}`, "", "zip"},
		{"NestedToken", `{"alg":"HS256","typ":"JWT","cty":"JWT"}`, "", "cty"},
		{"TypOther", `{"alg":"HS256","typ":"at+jwt+evil"}`, "", "typ"},
		{"TypNotString", `{"alg":"HS256","typ":7}`, "", "typ"},
		{"DuplicateHeaderAlg", `{"alg":"none","alg":"HS256","typ":"JWT"}`, "", "malformed header"},
		{"HeaderNotObject", `["HS256"]`, "", "malformed header"},
		{"HeaderTrailingData", hs + `{}`, "", "malformed header"},
		{"ExpString", hs, rawClaims(t, []string{"exp"}, `,"exp":"`+future+`"`), "exp must be a number"},
		{"NbfString", hs, rawClaims(t, nil, `,"nbf":"0"`), "nbf must be a number"},
		{"IatString", hs, rawClaims(t, []string{"iat"}, `,"iat":"0"`), "iat must be a number"},
		{"ExpNull", hs, rawClaims(t, []string{"exp"}, `,"exp":null`), "exp must be a number"},
		{"ExpBoolean", hs, rawClaims(t, []string{"exp"}, `,"exp":true`), "exp must be a number"},
		{"ExpObject", hs, rawClaims(t, []string{"exp"}, `,"exp":{"n":`+future+`}`), "exp must be a number"},
		{"ExpHugeFloat", hs, rawClaims(t, []string{"exp"}, `,"exp":1e300`), "exp is out of range"},
		{"ExpHugeInteger", hs, rawClaims(t, []string{"exp"}, `,"exp":99999999999999999999999`), "exp is out of range"},
		{"ExpPastYear9999", hs, rawClaims(t, []string{"exp"}, `,"exp":253402300800`), "exp is out of range"},
		{"ExpNegative", hs, rawClaims(t, []string{"exp"}, `,"exp":-1e300`), "exp is out of range"},
		{"NbfHugeNegative", hs, rawClaims(t, nil, `,"nbf":-1e19`), "nbf is out of range"},
		{"IatHugeFloat", hs, rawClaims(t, []string{"iat"}, `,"iat":1e19`), "iat is out of range"},
		{"DuplicateRole", hs, rawClaims(t, []string{"role"}, `,"role":"user","role":"service"`), "malformed claims"},
		{"DuplicateExp", hs, rawClaims(t, []string{"exp"}, `,"exp":`+future+`,"exp":`+future), "malformed claims"},
		{"DuplicateNestedTenant", hs, rawClaims(t, nil, `,"app_metadata":{"tenant_id":"`+testTenant.String()+`","tenant_id":"`+uuid.NewString()+`"}`), "malformed claims"},
		{"ClaimsTrailingData", hs, rawClaims(t, nil, "") + `{"role":"service"}`, "malformed claims"},
		{"ClaimsInvalidUTF8", hs, rawClaims(t, nil, `,"name":"`+"\xff\xfe"+`"`), "malformed claims"},
		{"ClaimsNull", hs, `null`, "malformed claims"},
	}
	for _, tt := range refusals {
		t.Run("Refuses"+tt.name, func(t *testing.T) {
			t.Parallel()
			claims := tt.claims
			if claims == "" {
				claims = rawClaims(t, nil, "")
			}
			token := signRaw(tt.header, claims)
			p, err := newJWT(t, "").Verify(token)
			require.Nil(t, p)
			requireUnauthenticated(t, err, token, tt.reason)
		})
	}

	// encoding/json binds a member to a field ignoring case, and folds ſ
	// to s and K (Kelvin) to k: "ROLE" after "role" made a user token a
	// service token, "Tenant_Id" moved it to another tenant, "ſub" made it
	// another user's and "EXP" alone stood for exp. Claims are read by
	// their exact names; a look-alike is another claim, ignored.
	t.Run("LookAlikeNamesAreOtherClaims", func(t *testing.T) {
		t.Parallel()
		other := uuid.New()
		for name, extra := range map[string]string{
			"RoleByCase":            `,"ROLE":"service_role","Role":"service_role"`,
			"TenantByCase":          `,"tenant_id":"` + testTenant.String() + `","Tenant_Id":"` + other.String() + `"`,
			"SubjectByFolding":      `,"ſub":"` + other.String() + `","SUB":"` + other.String() + `"`,
			"NestedTenantByCase":    `,"app_metadata":{"tenant_id":"` + testTenant.String() + `","TENANT_ID":"` + other.String() + `"},"App_Metadata":{"tenant_id":"` + other.String() + `"}`,
			"NestedTenantByFolding": `,"app_metadata":{"tenant_id":"` + testTenant.String() + `","tenant_\u0130d":"` + other.String() + `"}`,
			"ExpiryByCase":          `,"EXP":1,"Exp":"1"`,
		} {
			p, err := newJWT(t, "").Verify(signRaw(hs, rawClaims(t, nil, extra)))
			require.NoError(t, err, name)
			require.Equal(t, testUser, p.UserID, name)
			require.Equal(t, auth.RoleUser, p.Role, name)
			if strings.Contains(name, "Tenant") {
				require.Equal(t, testTenant, p.TenantID, name)
			} else {
				require.Equal(t, auth.DefaultTenant, p.TenantID, name)
			}
			require.WithinDuration(t, time.Now().Add(time.Hour), p.ExpiresAt, time.Minute, name)
		}
		// Without exp, a look-alike does not stand for it.
		token := signRaw(hs, rawClaims(t, []string{"exp"}, `,"EXP":`+future+`,"Exp":`+future))
		p, err := newJWT(t, "").Verify(token)
		require.Nil(t, p)
		requireUnauthenticated(t, err, token, "missing required claim exp")
	})

	t.Run("RefusesNonCanonicalBase64", func(t *testing.T) {
		t.Parallel()
		// A 32-byte signature is 43 base64url characters whose last one
		// carries two unused bits: flipping them gives another string for
		// the same bytes, which a lenient decoder accepts.
		token := sign(t, validClaims())
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		last := strings.IndexByte(alphabet, token[len(token)-1])
		require.Zero(t, last&3, "a canonical encoding leaves the unused bits zero")
		forged := token[:len(token)-1] + string(alphabet[last|1])
		p, err := newJWT(t, "").Verify(forged)
		require.Nil(t, p)
		requireUnauthenticated(t, err, forged, "")
	})

	t.Run("RefusesCharactersOutsideBase64URL", func(t *testing.T) {
		t.Parallel()
		token := sign(t, validClaims())
		parts := strings.Split(token, ".")
		for _, forged := range []string{
			parts[0] + "\n." + parts[1] + "." + parts[2], // a decoder skips newlines
			parts[0] + "." + parts[1] + "\r\n." + parts[2],
			parts[0] + "==." + parts[1] + "." + parts[2],
		} {
			p, err := newJWT(t, "").Verify(forged)
			require.Nil(t, p)
			requireUnauthenticated(t, err, forged, "malformed")
		}
	})
}

// TestVerifiedTokenCache checks the cache of verified tokens: a repeated
// token is not decoded again, a cached token is refused once it expires
// (whatever it was when cached), tokens that fail are never kept, and the
// cache stays bounded.
func TestVerifiedTokenCache(t *testing.T) {
	// Not parallel: testing.AllocsPerRun refuses to run beside other tests.
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(testSecret), Audience: testAudience, Now: clock})
	require.NoError(t, err)
	token, err := j.Mint(auth.MintOptions{UserID: testUser, TenantID: testTenant, Role: auth.RoleUser, TTL: time.Hour})
	require.NoError(t, err)

	p, err := j.Verify(token)
	require.NoError(t, err)
	require.Equal(t, 1, j.CachedTokens())
	again, err := j.Verify(token)
	require.NoError(t, err)
	require.Equal(t, *p, *again)
	require.NotSame(t, p, again, "each caller gets its own copy")
	again.Role = auth.RoleService
	third, err := j.Verify(token)
	require.NoError(t, err)
	require.Equal(t, auth.RoleUser, third.Role, "a caller's change does not reach the cache")
	allocs := testing.AllocsPerRun(50, func() { _, _ = j.Verify(token) })
	require.Less(t, allocs, 10.0, "a cached token is not decoded again (an uncached one takes about 220 allocations)")

	// Tampered and wrongly signed tokens are refused every time, and never kept.
	parts := strings.Split(token, ".")
	for _, bad := range []string{parts[0] + "." + parts[1] + ".AAAA", token + "x", strings.Replace(token, parts[1], base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"x"}`)), 1)} {
		for range 2 {
			_, err := j.Verify(bad)
			require.Equal(t, fault.Unauthenticated, fault.CodeOf(err))
		}
	}
	require.Equal(t, 1, j.CachedTokens())

	// Past its exp and the leeway, the cached token is refused as expired.
	offset.Store(int64(time.Hour + auth.Leeway + time.Second))
	_, err = j.Verify(token)
	require.Equal(t, fault.Unauthenticated, fault.CodeOf(err))
	require.ErrorContains(t, err, "expired")
	require.Zero(t, j.CachedTokens())
	offset.Store(0)

	// Bounded: many distinct tokens never grow it past its size.
	for i := range 10_500 {
		tok, err := j.Mint(auth.MintOptions{UserID: testUser, TenantID: testTenant, Role: auth.RoleUser, TTL: time.Hour + time.Duration(i)*time.Second})
		require.NoError(t, err)
		_, err = j.Verify(tok)
		require.NoError(t, err)
	}
	require.LessOrEqual(t, j.CachedTokens(), 10_000)
}

// TestJWTVerifyRefusesDeepNestingCheaply sends tokens whose header or
// claims nest deeper than any real token. They are refused as malformed
// before the signature is checked, so anyone may send one (a websocket's
// connection_init carries a megabyte); refusing one must cost about its
// size. json.Decoder.Token bounds no nesting: the duplicate-member check
// recursed once per level, and grew its token stack with it, before the
// bound. Not parallel: other tests would blur the bytes allocated.
func TestJWTVerifyRefusesDeepNestingCheaply(t *testing.T) {
	j := newJWT(t, "")
	const hs = `{"alg":"HS256","typ":"JWT"}`
	nested := func(depth int) string {
		return `{"alg":"HS256","x":` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + "}"
	}

	// Real tokens nest a few levels; up to 32 is accepted.
	deepClaims := rawClaims(t, nil, `,"user_metadata":`+strings.Repeat(`{"a":`, 31)+"1"+strings.Repeat("}", 31))
	_, err := j.Verify(signRaw(nested(32), deepClaims))
	require.NoError(t, err)

	for name, token := range map[string]string{
		"Header": signRaw(nested(33), rawClaims(t, nil, "")),
		"Claims": signRaw(hs, rawClaims(t, nil, `,"user_metadata":`+strings.Repeat(`{"a":`, 32)+"1"+strings.Repeat("}", 32))),
	} {
		t.Run(name, func(t *testing.T) {
			p, err := j.Verify(token)
			require.Nil(t, p)
			requireUnauthenticated(t, err, token, "malformed")
		})
	}

	// 200,000 levels, unsigned, cost what decoding the segment costs (its
	// 200 KB), not a token stack per level.
	deep := base64.RawURLEncoding.EncodeToString([]byte(strings.Repeat("[", 200_000))) + ".e30.x"
	_, err = j.Verify(deep)
	requireUnauthenticated(t, err, deep, "malformed header")
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const runs = 10
	for range runs {
		_, err := j.Verify(deep)
		require.Error(t, err)
	}
	runtime.ReadMemStats(&after)
	perRun := (after.TotalAlloc - before.TotalAlloc) / runs
	t.Logf("refusing a %d-byte token allocates %d bytes", len(deep), perRun)
	require.Less(t, perRun, uint64(len(deep)), "refusing a %d-byte token allocated %d bytes", len(deep), perRun)
}
