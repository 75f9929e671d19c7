#!/usr/bin/env bash
# Rebuilds contracts/out/*.json from contracts/src/*.sol with the solc version pinned in
# contracts/package-lock.json. The artifacts are checked in; running this again reproduces them
# byte for byte. Usage: scripts/build-contracts.sh [--check]
#   --check  rebuild into a temporary copy and fail if the checked-in artifacts differ.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
contracts="$repo/contracts"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "build-contracts: node and npm are needed (apt-get install nodejs npm)" >&2
    exit 1
fi

if [ ! -f "$contracts/node_modules/solc/package.json" ]; then
    (cd "$contracts" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ "${1:-}" = "--check" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    cp -r "$contracts/src" "$contracts/compile.js" "$tmp/"
    ln -s "$contracts/node_modules" "$tmp/node_modules"
    node "$tmp/compile.js" >/dev/null
    if ! diff -r "$contracts/out" "$tmp/out"; then
        echo "build-contracts: contracts/out is stale; run scripts/build-contracts.sh" >&2
        exit 1
    fi
    echo "build-contracts: artifacts up to date"
else
    node "$contracts/compile.js"
fi
