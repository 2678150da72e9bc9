package auth_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"fleetgraph/auth"
)

// BenchmarkJWTVerify measures one token's verification, which reads no
// database: "first" is a token's first verification (the HMAC, the strict
// checks of header and claims, the Principal), "repeat" a token verified
// before, which the verifier remembers until it expires. Run with
// -benchmem (see BENCHMARKS.md).
func BenchmarkJWTVerify(b *testing.B) {
	j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte("bench-secret-bench-secret-bench-secret-0123"), Audience: "authenticated"})
	if err != nil {
		b.Fatal(err)
	}
	mint := func(i int) string {
		token, err := j.Mint(auth.MintOptions{UserID: uuid.New(), Role: auth.RoleUser, TTL: time.Hour + time.Duration(i)*time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		return token
	}
	b.Run("first", func(b *testing.B) {
		b.ReportAllocs()
		tokens := make([]string, 1000)
		for i := 0; i < b.N; i++ {
			if i%len(tokens) == 0 {
				b.StopTimer()
				for k := range tokens {
					tokens[k] = mint(i + k)
				}
				b.StartTimer()
			}
			if _, err := j.Verify(tokens[i%len(tokens)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("repeat", func(b *testing.B) {
		token := mint(-1)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := j.Verify(token); err != nil {
				b.Fatal(err)
			}
		}
	})
}
