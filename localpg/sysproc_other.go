//go:build unix && !linux

package localpg

import "syscall"

// sysProcAttr puts a child in its own process group and runs it as acct when
// set. Only Linux can signal a child when its parent dies, so deathSig is
// ignored here and a hard crash may leave the postmaster running; the next
// Start attaches to it.
func sysProcAttr(acct *account, _ syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: acct.credential()}
}
