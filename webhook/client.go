package webhook

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
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
		return &RefusedError{Address: address, Reason: "unknown"}
	}
	if g.exempt != nil && g.exempt(ap) {
		return nil
	}
	if reason := db.ForbiddenAddress(ap.Addr()); reason != "" {
		return &RefusedError{Address: ap.Addr().String(), Reason: reason}
	}
	return nil
}

// RefusedError is the guard refusing to connect to an address where
// webhooks are not delivered.
type RefusedError struct {
	// Address is the address the endpoint's name resolved to.
	Address string
	// Reason is the kind of address: "loopback", "private", ...
	Reason string
}

func (e *RefusedError) Error() string {
	if e.Reason == "unknown" {
		return fmt.Sprintf("webhook delivery refused: cannot tell the address of %q", e.Address)
	}
	return fmt.Sprintf("webhook delivery refused: %s is a %s address (set WEBHOOK_ALLOW_PRIVATE=true to allow it in development)", e.Address, e.Reason)
}

// Describe is what a tenant reads of an attempt that got no answer (a
// delivery attempt's error): the kind of failure, without what the
// server's network told it on the way (the address a name resolved to,
// the server's DNS resolver, its own addresses), which would let a tenant
// map that network by pointing endpoints at internal names. The whole
// error goes to the server's log.
func Describe(err error) string {
	var refused *RefusedError
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	var netErr net.Error
	switch {
	case errors.As(err, &refused):
		if refused.Reason == "unknown" {
			return "refused: the endpoint's address could not be checked"
		}
		return "refused: the endpoint's host is at a " + refused.Reason + " address, where webhooks are not delivered"
	case errors.As(err, &dnsErr):
		switch {
		case dnsErr.IsNotFound:
			return "the endpoint's host name does not resolve"
		case dnsErr.IsTimeout:
			return "the endpoint's host name did not resolve in time"
		}
		return "the endpoint's host name could not be resolved"
	case errors.As(err, &certErr):
		return "the endpoint's TLS certificate was not accepted: " + strings.TrimPrefix(certErr.Err.Error(), "x509: ")
	case errors.As(err, &recordErr), strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"): // net/http's own words
		return "the endpoint does not answer in TLS"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "the endpoint refused the connection"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		// net/http's words for a close that came while the request was
		// being written (a POST is not sent again): the same hang-up.
		strings.Contains(err.Error(), "http: server closed idle connection"):
		return "the endpoint closed the connection"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "the endpoint's host is unreachable"
	case errors.As(err, &netErr) && netErr.Timeout():
		return "the endpoint did not answer in time"
	}
	return "the request to the endpoint failed"
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
