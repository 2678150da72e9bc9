package localpg

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrNoBinaries is returned (possibly wrapped) when the PostgreSQL server
// binaries cannot be found. Its message is meant to be shown to a developer
// as is, so it says how to fix the problem.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb and postgres) were not found on PATH or in /usr/lib/postgresql/*/bin; " +
	"on Debian/Ubuntu install them with `apt-get install postgresql` (the postgresql package), " +
	"or set DATABASE_URL to an existing PostgreSQL 14+ server")

// debianBinRoot is where Debian and Ubuntu install one folder per major
// version, none of which is on PATH.
const debianBinRoot = "/usr/lib/postgresql"

// FindBinaries returns the folder holding initdb and postgres: the first
// folder on PATH that has both (the folder postgres links to, if it is a
// symlink), else the highest version in
// /usr/lib/postgresql/*/bin. It returns ErrNoBinaries when there is none.
func FindBinaries() (dir string, err error) {
	return findBinaries(os.Getenv("PATH"), debianBinRoot)
}

// findBinaries is FindBinaries with the PATH list and the versioned root as
// parameters, so tests can point both at folders they control.
func findBinaries(pathList, versionRoot string) (string, error) {
	for _, dir := range filepath.SplitList(pathList) {
		// Relative PATH entries depend on the working directory; skip them as
		// exec.LookPath does.
		if !filepath.IsAbs(dir) || !hasServerBinaries(dir) {
			continue
		}
		// PATH often holds symlinks (e.g. /usr/local/bin/postgres ->
		// /usr/lib/postgresql/15/bin/postgres); return the real folder, which
		// also has the matching psql, pg_dump and friends.
		if target, err := filepath.EvalSymlinks(filepath.Join(dir, "postgres")); err == nil && hasServerBinaries(filepath.Dir(target)) {
			return filepath.Dir(target), nil
		}
		return dir, nil
	}

	// Glob only fails on a malformed pattern, which versionRoot cannot make.
	candidates, _ := filepath.Glob(filepath.Join(versionRoot, "*", "bin"))
	slices.SortFunc(candidates, func(a, b string) int {
		return -slices.Compare(parseVersion(filepath.Base(filepath.Dir(a))), parseVersion(filepath.Base(filepath.Dir(b))))
	})
	for _, dir := range candidates {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", ErrNoBinaries
}

// hasServerBinaries reports whether dir holds executable initdb and postgres
// files, the two programs Start runs.
func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// parseVersion turns a version folder name such as "15" or "9.6" into numbers
// that compare correctly ("10" after "9.6"); a name that is not a version
// gives nil, which sorts before every version.
func parseVersion(name string) []int {
	var parts []int
	for _, field := range strings.Split(name, ".") {
		n, err := strconv.Atoi(field)
		if err != nil {
			return nil
		}
		parts = append(parts, n)
	}
	return parts
}
