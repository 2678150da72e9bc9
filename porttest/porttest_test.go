package porttest

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// A refusing port refuses connections and cannot be bound by anyone else;
// once it listens, it accepts.
func TestRefusing(t *testing.T) {
	t.Parallel()
	p := Refusing(t)
	_, err := net.Dial("tcp", p.Addr)
	require.True(t, errors.Is(err, syscall.ECONNREFUSED), "dialing a refusing port: %v", err)
	_, err = net.Listen("tcp", p.Addr)
	require.True(t, errors.Is(err, syscall.EADDRINUSE), "listening on a reserved port: %v", err)

	ln := p.Listen(t)
	require.Equal(t, p.Addr, ln.Addr().String())
	go func() {
		if c, err := ln.Accept(); err == nil {
			_, _ = c.Write([]byte("hi"))
			_ = c.Close()
		}
	}()
	c, err := net.Dial("tcp", p.Addr)
	require.NoError(t, err)
	defer c.Close()
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, "hi", string(got))
}

// A server under test may listen on a port reserved for it, which then
// accepts as usual; until then, only a bind with SO_REUSEADDR shares it.
func TestForServer(t *testing.T) {
	t.Parallel()
	addr := ForServer(t)
	if shareable {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		require.NoError(t, err)
		defer syscall.Close(fd)
		port := netip.MustParseAddrPort(addr).Port()
		err = syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(port)})
		require.ErrorIs(t, err, syscall.EADDRINUSE)
	}
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			_ = c.Close()
		}
	}()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_ = c.Close()
}
