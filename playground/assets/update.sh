#!/usr/bin/env bash
# Reproduces the third-party files that the playground embeds.
#
# It packs pinned npm versions into a temporary directory with `npm pack`
# (which checks each tarball against the registry's integrity hash), copies
# only the files the page loads plus each package's LICENSE, and rewrites
# VERSIONS with the versions, licenses and SHA-256 sums of what it copied.
# To upgrade, change a version below, run this script from anywhere, and run
# `go test ./playground/` (it drives a real browser when chromium is installed).
set -euo pipefail

GRAPHIQL=3.9.0   # last 3.x: the last line that publishes a UMD bundle
REACT=18.3.1     # react and react-dom; React 19 publishes no UMD builds
GRAPHQL_WS=5.16.2 # 6.x publishes no UMD build

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
for spec in "graphiql@$GRAPHIQL" "react@$REACT" "react-dom@$REACT" "graphql-ws@$GRAPHQL_WS"; do
	name="${spec%@*}"
	mkdir -p "$name"
	tarball="$(npm pack --silent "$spec")"
	tar -xzf "$tarball" -C "$name"
done

# Source, destination pairs: only what index.html loads, no source maps.
files=(
	graphiql/package/graphiql.min.js graphiql.min.js
	graphiql/package/graphiql.min.css graphiql.min.css
	react/package/umd/react.production.min.js react.production.min.js
	react-dom/package/umd/react-dom.production.min.js react-dom.production.min.js
	graphql-ws/package/umd/graphql-ws.min.js graphql-ws.min.js
)
for ((i = 0; i < ${#files[@]}; i += 2)); do
	cp "${files[i]}" "$here/${files[i + 1]}"
done
for name in graphiql react react-dom graphql-ws; do
	cp "$name"/package/LICENSE* "$here/licenses/$name.LICENSE"
done

{
	echo "# Third-party files embedded by fleetgraph/playground; written by update.sh, do not edit."
	echo "# package version license"
	for name in graphiql react react-dom graphql-ws; do
		node -e 'const p = require(process.argv[1]); console.log(p.name, p.version, p.license)' \
			"$tmp/$name/package/package.json"
	done
	echo "# sha256 file"
	(cd "$here" && for ((i = 1; i < ${#files[@]}; i += 2)); do sha256sum "${files[i]}"; done)
} >"$here/VERSIONS"

echo "updated $here"
