// Package porttest reserves loopback TCP ports for tests. A port found free
// by listening on port 0 and closing again is free only until someone takes
// it: on a busy machine, other processes' listeners and outgoing
// connections pick from the same ephemeral range, and one may get it before
// the test uses it. A port reserved here stays bound to a socket the test
// holds until the test ends, so the kernel gives it to no one else.
package porttest

import (
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// Port is a loopback port bound to a socket of the test that does not
// listen: a connection to it is refused (the kernel answers with a reset),
// as at a port nothing uses, until Listen.
type Port struct {
	Addr string // 127.0.0.1:port
	Port int
	fd   int // the bound socket; -1 once Listen has handed it over
}

// Refusing reserves a port that refuses connections until Listen, and that
// no other socket may bind while t runs.
func Refusing(t testing.TB) *Port {
	t.Helper()
	return bind(t, false)
}

// ForServer reserves a port for a server under test to listen on itself,
// and returns its address. On Linux the port stays bound until t ends, not
// listening, with SO_REUSEADDR: a listener setting SO_REUSEADDR too (as Go's
// net.Listen does) may bind it, while the ports the kernel picks for others'
// listeners and connections skip it. Other systems allow no such sharing:
// there the port is released at once, and, as with any port found free,
// another process may take it before the server listens.
func ForServer(t testing.TB) string {
	t.Helper()
	p := bind(t, shareable)
	if !shareable {
		require.NoError(t, syscall.Close(p.fd))
		p.fd = -1
	}
	return p.Addr
}

// bind binds a socket to a port the kernel picks on 127.0.0.1, closed when
// t ends; reuse sets SO_REUSEADDR on it first.
func bind(t testing.TB, reuse bool) *Port {
	t.Helper()
	// As the net package does: no exec may inherit the socket, which would
	// keep the port after the test.
	syscall.ForkLock.RLock()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_TCP)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	require.NoError(t, err)
	p := &Port{fd: fd}
	t.Cleanup(func() {
		if p.fd >= 0 {
			_ = syscall.Close(p.fd)
		}
	})
	if reuse {
		require.NoError(t, syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1))
	}
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := syscall.Getsockname(fd)
	require.NoError(t, err)
	p.Port = sa.(*syscall.SockaddrInet4).Port
	p.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port))
	return p
}

// Listen makes the port listen, from then on accepting connections, and
// returns its listener, closed when t ends. Call it once.
func (p *Port) Listen(t testing.TB) net.Listener {
	t.Helper()
	require.GreaterOrEqual(t, p.fd, 0, "port %s listens already", p.Addr)
	require.NoError(t, syscall.Listen(p.fd, syscall.SOMAXCONN))
	// f owns the socket now, and the listener a duplicate of it.
	f := os.NewFile(uintptr(p.fd), "porttest "+p.Addr)
	p.fd = -1
	ln, err := net.FileListener(f)
	require.NoError(t, f.Close())
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}
