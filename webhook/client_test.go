package webhook

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The SSRF guard: with private addresses not allowed, the client refuses to
// connect to loopback, private, link-local (metadata) and other reserved
// addresses, whatever the URL's name resolves to, and on every redirect.
// None of these attempts reaches the network: the guard refuses before the
// connection is made.
func TestClientGuard(t *testing.T) {
	t.Parallel()

	// receiver counts the requests that reach it.
	receiver := func(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
		var hits atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			h(w, r)
		}))
		t.Cleanup(srv.Close)
		return srv, &hits
	}
	ok := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }
	post := func(c *http.Client, url string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
		require.NoError(t, err)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}

	t.Run("RefusesPrivateAddresses", func(t *testing.T) {
		srv, hits := receiver(t, ok)
		port := srv.Listener.Addr().(*net.TCPAddr).Port
		c := NewClient(ClientConfig{})
		for _, tc := range []struct{ url, want string }{
			{srv.URL, "127.0.0.1 is a loopback address"},
			// A name that resolves to loopback is refused on its address.
			{"http://localhost:" + strconv.Itoa(port), "is a loopback address"},
			{"http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local (metadata) address"},
			{"http://10.1.2.3/", "10.1.2.3 is a private address"},
			{"http://192.168.0.1/", "is a private address"},
			{"http://[::1]:" + strconv.Itoa(port), "::1 is a loopback address"},
			{"http://[::ffff:127.0.0.1]:" + strconv.Itoa(port), "is a loopback address"},
			{"http://0.0.0.0:" + strconv.Itoa(port), "address"},
			{"http://100.64.0.1/", "shared (carrier-grade NAT) address"},
		} {
			err := post(c, tc.url)
			require.Error(t, err, tc.url)
			require.Contains(t, err.Error(), "webhook delivery refused", tc.url)
			require.Contains(t, err.Error(), tc.want, tc.url)
		}
		require.Zero(t, hits.Load(), "a refused delivery reached the receiver")
	})

	t.Run("AllowPrivateReachesLoopback", func(t *testing.T) {
		srv, hits := receiver(t, ok)
		require.NoError(t, post(NewClient(ClientConfig{AllowPrivate: true}), srv.URL))
		require.EqualValues(t, 1, hits.Load())
	})

	t.Run("RedirectsAreNotFollowedByDefault", func(t *testing.T) {
		target, targetHits := receiver(t, ok)
		first, _ := receiver(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.URL, http.StatusFound)
		})
		c := NewClient(ClientConfig{AllowPrivate: true})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, first.URL, strings.NewReader("{}"))
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusFound, resp.StatusCode)
		require.Zero(t, targetHits.Load())
	})

	t.Run("AFollowedRedirectToLoopbackIsRefused", func(t *testing.T) {
		target, targetHits := receiver(t, ok)
		first, firstHits := receiver(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.URL, http.StatusTemporaryRedirect)
		})
		// Only the first receiver is let through, as if it were public.
		firstAddr := netip.MustParseAddrPort(first.Listener.Addr().String())
		c := NewClient(ClientConfig{FollowRedirects: 3, exempt: func(ap netip.AddrPort) bool { return ap == firstAddr }})
		err := post(c, first.URL)
		require.Error(t, err)
		require.Contains(t, err.Error(), "127.0.0.1 is a loopback address")
		require.EqualValues(t, 1, firstHits.Load())
		require.Zero(t, targetHits.Load(), "the redirect reached loopback")
	})
}
