package localpg

import "syscall"

// sysProcAttr puts a child in its own process group (so a terminal's Ctrl-C
// reaches only our process, which then stops the child in order), runs it as
// acct when set, and asks the kernel to send it deathSig if this process dies
// first, so a crashed server or test binary leaves no PostgreSQL behind. Go
// sets the death signal after changing credentials, so it survives the setuid.
func sysProcAttr(acct *account, deathSig syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig, Credential: acct.credential()}
}
