package localpg

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// serverUserName is the system user that runs initdb and postgres when this
// process is root, because both refuse to run as root.
const serverUserName = "postgres"

// account is the system user the server binaries run as.
type account struct {
	name     string
	uid, gid uint32
	groups   []uint32 // supplementary groups, for the permission checks
}

// serverAccount returns the account to run initdb and postgres as: nil (this
// process's own user) unless we are root, in which case the postgres user.
func serverAccount() (*account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(serverUserName)
	if err != nil {
		if errors.As(err, new(user.UnknownUserError)) {
			return nil, fmt.Errorf("finding a user to run PostgreSQL as: this process is root, which PostgreSQL refuses, and there is no %q system user to run it as; "+
				"create one (e.g. `useradd --system --home-dir /var/lib/postgresql postgres`) or run as a normal user: %w", serverUserName, err)
		}
		return nil, fmt.Errorf("looking up the %q system user to run PostgreSQL as: %w", serverUserName, err)
	}
	acct := &account{name: u.Username}
	if acct.uid, err = parseID(u.Uid); err != nil {
		return nil, err
	}
	if acct.gid, err = parseID(u.Gid); err != nil {
		return nil, err
	}
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("looking up the groups of the %q user: %w", serverUserName, err)
	}
	for _, g := range gids {
		id, err := parseID(g)
		if err != nil {
			return nil, err
		}
		acct.groups = append(acct.groups, id)
	}
	return acct, nil
}

// parseID parses a numeric user or group id as os/user reports it on Unix.
func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("parsing user or group id %q: %w", s, err)
	}
	return uint32(n), nil
}

// credential is the SysProcAttr credential that runs a child as a; nil (run
// as ourselves) when a is nil.
func (a *account) credential() *syscall.Credential {
	if a == nil {
		return nil
	}
	return &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}
}

// canSearch reports whether a may traverse the directory fi describes,
// following the owner/group/other permission bits the kernel applies (ACLs
// are not considered).
func (a *account) canSearch(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true // cannot tell; let PostgreSQL report the problem
	}
	perm := fi.Mode().Perm()
	switch {
	case st.Uid == a.uid:
		return perm&0o100 != 0
	case st.Gid == a.gid || slices.Contains(a.groups, st.Gid):
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

// checkReachable returns an error when a cannot traverse every parent of dir,
// the usual trap when root keeps the data under /root (mode 0700).
func (a *account) checkReachable(dir string) error {
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("checking that the %s user can reach %s: %w", a.name, dir, err)
		}
		if !a.canSearch(fi) {
			return fmt.Errorf("preparing %s for PostgreSQL: this process is root, so PostgreSQL runs as the %s user, which cannot reach that folder because %s (mode %v) is not searchable by it; "+
				"set DATA_DIR to a folder it can reach, e.g. under /tmp or /var/lib, or run as a normal user", dir, a.name, p, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// chownTree gives dir and everything in it to a, which PostgreSQL requires of
// its data folder. It does nothing when dir already belongs to a, so a
// restart does not walk the whole cluster.
func (a *account) chownTree(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("inspecting %s: %w", dir, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == a.uid {
		return nil
	}
	err = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(a.uid), int(a.gid))
	})
	if err != nil {
		return fmt.Errorf("giving %s to the %s user, who runs PostgreSQL: %w", dir, a.name, err)
	}
	return nil
}
