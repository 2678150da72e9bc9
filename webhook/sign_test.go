package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSign(t *testing.T) {
	t.Parallel()

	t.Run("MatchesAHandComputedHMAC", func(t *testing.T) {
		key := []byte("0123456789abcdef0123456789abcdef")
		secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
		at := time.Unix(1733140800, 0)
		body := []byte(`{"type":"job.completed","timestamp":"2024-12-02T12:00:00Z","data":{"id":"x"}}`)

		mac := hmac.New(sha256.New, key)
		mac.Write([]byte("evt_1.1733140800." + string(body)))
		want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))

		got, err := Sign([]string{secret}, "evt_1", at, body)
		require.NoError(t, err)
		require.Equal(t, want, got)
	})

	t.Run("TheSpecsExample", func(t *testing.T) {
		// The example of the Standard Webhooks reference libraries' tests.
		got, err := Sign([]string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, "msg_p5jXN8AQM9LWM0D4loKWxJek",
			time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
		require.NoError(t, err)
		require.Equal(t, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", got)
	})

	t.Run("OneSignaturePerSecretSpaceSeparated", func(t *testing.T) {
		a := "whsec_" + base64.StdEncoding.EncodeToString([]byte("key-a"))
		b := "whsec_" + base64.StdEncoding.EncodeToString([]byte("key-b"))
		both, err := Sign([]string{a, b}, "id", time.Unix(1, 0), []byte("{}"))
		require.NoError(t, err)
		sa, _ := Sign([]string{a}, "id", time.Unix(1, 0), []byte("{}"))
		sb, _ := Sign([]string{b}, "id", time.Unix(1, 0), []byte("{}"))
		require.Equal(t, []string{sa, sb}, strings.Split(both, " "))
		require.NotEqual(t, sa, sb)
	})

	t.Run("ABadSecretIsAnError", func(t *testing.T) {
		_, err := Sign([]string{"whsec_not base64!"}, "id", time.Unix(1, 0), []byte("{}"))
		require.Error(t, err)
	})
}
