package porttest

// shareable: Linux lets two sockets with SO_REUSEADDR bind one address
// while neither listens, and picks no such port for a bind to port 0 or a
// connection (see ForServer).
const shareable = true
