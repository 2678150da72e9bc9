package auth_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"fleetgraph/auth"
)

// BenchmarkJWTVerify measures one token's verification, which reads no
// database and caches nothing: the HMAC, the strict checks of header and
// claims, and the Principal. Run with -benchmem (see BENCHMARKS.md).
func BenchmarkJWTVerify(b *testing.B) {
	j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte("bench-secret-bench-secret-bench-secret-0123"), Audience: "authenticated"})
	if err != nil {
		b.Fatal(err)
	}
	token, err := j.Mint(auth.MintOptions{UserID: uuid.New(), Role: auth.RoleUser, TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := j.Verify(token); err != nil {
			b.Fatal(err)
		}
	}
}
