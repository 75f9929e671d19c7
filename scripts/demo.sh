#!/usr/bin/env bash
# The README's first command: installs what is missing, starts Postgres and Redis, builds chainsync
# and runs `chainsync demo` (a local anvil chain, a token with thousands of holders, jobs, dead
# letters, a replay, a summary). Extra arguments go to `chainsync demo` (e.g. --holders 20000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
scripts/services.sh
export DATABASE_URL="${DATABASE_URL:-postgres://root@127.0.0.1:5432/test}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chainsync-target}"
cargo build --release --quiet --features dev --bin chainsync
exec "$CARGO_TARGET_DIR/release/chainsync" demo "$@"
