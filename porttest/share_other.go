//go:build !linux

package porttest

// shareable: elsewhere (BSD semantics) binding an address already bound
// needs SO_REUSEPORT on both sockets (see ForServer).
const shareable = false
