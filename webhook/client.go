package webhook

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"fleetgraph/db"
)

// guard decides, at connect time, which addresses a delivery may reach.
// Checking the address the dialer is about to connect to (after DNS
// resolution, on every redirect, for every retry) rather than the URL's
// name means that no DNS answer, rebinding or redirect can lead a delivery
// to loopback, private, link-local or metadata addresses.
type guard struct {
	allowPrivate bool
	// exempt lets tests reach one loopback receiver with the guard on.
	exempt func(netip.AddrPort) bool
}

// control is the dialer's Control function: it runs for each connection
// attempt with the resolved address, before the connection is made.
func (g guard) control(network, address string, _ syscall.RawConn) error {
	if g.allowPrivate {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("webhook delivery refused: cannot tell the address of %q", address)
	}
	if g.exempt != nil && g.exempt(ap) {
		return nil
	}
	if reason := db.ForbiddenAddress(ap.Addr()); reason != "" {
		return fmt.Errorf("webhook delivery refused: %s is a %s address (set WEBHOOK_ALLOW_PRIVATE=true to allow it in development)", ap.Addr(), reason)
	}
	return nil
}

// ClientConfig shapes the delivery HTTP client.
type ClientConfig struct {
	// Timeout bounds a whole attempt: connecting, sending, and reading the
	// answer (default 10 s).
	Timeout time.Duration
	// AllowPrivate lets deliveries reach private addresses (development).
	AllowPrivate bool
	// FollowRedirects is how many redirects an attempt follows (default 0:
	// a redirect is an answer like any other non-2xx, and is retried).
	// Each hop's address passes the same guard.
	FollowRedirects int

	exempt func(netip.AddrPort) bool
}

// NewClient returns the HTTP client deliveries are sent with. It uses no
// proxy from the environment (a proxy would connect on the delivery's
// behalf, past the guard), keeps no cookies, and caps the answer's headers.
func NewClient(cfg ClientConfig) *http.Client {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	g := guard{allowPrivate: cfg.AllowPrivate, exempt: cfg.exempt}
	dialer := &net.Dialer{Timeout: cfg.Timeout, Control: g.control}
	transport := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSHandshakeTimeout:    cfg.Timeout,
		ResponseHeaderTimeout:  cfg.Timeout,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConns:           100,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true,
	}
	return &http.Client{
		Transport: transport,
		Timeout:   cfg.Timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > cfg.FollowRedirects {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
}
