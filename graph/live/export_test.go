package live

// ReadServerFrame is readServerFrame, for package live_test.
var ReadServerFrame = readServerFrame
