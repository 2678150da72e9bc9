package webhook

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/porttest"
)

// post sends an empty JSON object to url with c, within a minute, and
// returns the client's error.
func post(t *testing.T, c *http.Client, url string) error {
	t.Helper()
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
			err := post(t, c, tc.url)
			require.Error(t, err, tc.url)
			require.Contains(t, err.Error(), "webhook delivery refused", tc.url)
			require.Contains(t, err.Error(), tc.want, tc.url)
		}
		require.Zero(t, hits.Load(), "a refused delivery reached the receiver")
	})

	t.Run("AllowPrivateReachesLoopback", func(t *testing.T) {
		srv, hits := receiver(t, ok)
		require.NoError(t, post(t, NewClient(ClientConfig{AllowPrivate: true}), srv.URL))
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
		err := post(t, c, first.URL)
		require.Error(t, err)
		require.Contains(t, err.Error(), "127.0.0.1 is a loopback address")
		require.EqualValues(t, 1, firstHits.Load())
		require.Zero(t, targetHits.Load(), "the redirect reached loopback")
	})
}

// TestDescribeTellsNoAddresses fails real deliveries in each way an
// endpoint can fail before answering, and checks what the tenant reads of
// each (Describe, an attempt's error): the kind of failure, and no address
// the server's network gave away on the way (what the name resolved to,
// the resolver, the server's own addresses).
func TestDescribeTellsNoAddresses(t *testing.T) {
	t.Parallel()
	// A port nothing listens on (held, so that no one else takes it).
	closedPort := porttest.Refusing(t).Port
	// A listener that hangs up on every connection.
	hangup, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { hangup.Close() })
	go func() {
		for {
			c, err := hangup.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	t.Cleanup(plain.Close)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	t.Cleanup(tlsSrv.Close)

	guarded, open := NewClient(ClientConfig{}), NewClient(ClientConfig{AllowPrivate: true})
	for _, tc := range []struct {
		name   string
		client *http.Client
		url    string
		want   string
	}{
		{"PrivateAddress", guarded, "http://10.1.2.3/", "refused: the endpoint's host is at a private address"},
		{"NameOfLoopback", guarded, "http://localhost:" + strconv.Itoa(closedPort) + "/", "refused: the endpoint's host is at a loopback address"},
		{"ConnectionRefused", open, "http://127.0.0.1:" + strconv.Itoa(closedPort) + "/", "the endpoint refused the connection"},
		{"HangsUp", open, "http://" + hangup.Addr().String() + "/", "the endpoint closed the connection"},
		{"UntrustedCertificate", open, tlsSrv.URL, "the endpoint's TLS certificate was not accepted: certificate signed by unknown authority"},
		{"NotTLS", open, strings.Replace(plain.URL, "http://", "https://", 1), "the endpoint does not answer in TLS"},
	} {
		err := post(t, tc.client, tc.url)
		require.Error(t, err, tc.name)
		got := Describe(err)
		require.True(t, strings.HasPrefix(got, tc.want), "%s: %q (from %v)", tc.name, got, err)
		require.NotRegexp(t, `\d+\.\d+\.\d+\.\d+|::|:\d+`, got, "%s: an address in %q", tc.name, got)
	}

	// A name lookup's error names the server's resolver; built here, since
	// what a lookup does varies with the machine's DNS.
	for _, dnsErr := range []*net.DNSError{
		{Err: "no such host", Name: "intranet.corp", Server: "10.0.0.2:53", IsNotFound: true},
		{Err: "i/o timeout", Name: "intranet.corp", Server: "10.0.0.2:53", IsTimeout: true},
		{Err: "server misbehaving", Name: "intranet.corp", Server: "10.0.0.2:53"},
	} {
		err := &url.Error{Op: "Post", URL: "https://intranet.corp/", Err: &net.OpError{Op: "dial", Net: "tcp", Err: dnsErr}}
		got := Describe(err)
		require.True(t, strings.HasPrefix(got, "the endpoint's host name"), "%q", got)
		require.NotContains(t, got, "10.0.0.2")
	}
	// An answer cut short names both ends of the connection.
	reset := &net.OpError{Op: "read", Net: "tcp", Source: &net.TCPAddr{IP: net.IPv4(10, 0, 3, 7), Port: 48812},
		Addr: &net.TCPAddr{IP: net.IPv4(203, 0, 113, 5), Port: 443}, Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	require.Equal(t, "the endpoint closed the connection", Describe(reset), "from %v", reset)
}
