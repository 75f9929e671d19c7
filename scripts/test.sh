#!/usr/bin/env bash
# The test command: installs what is missing, starts Postgres and Redis, checks that the contract
# artifacts match their sources, checks the Prometheus rules (promtool), checks formatting and lints (`cargo fmt --check`, `cargo clippy
# --all-targets --all-features -- -D warnings`), then runs every test of the workspace (with the
# `dev` feature: the demo and benchmark commands are tested too). Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh --test devchain`, `scripts/test.sh -- --nocapture`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

scripts/install-deps.sh
scripts/services.sh

export DATABASE_URL="${DATABASE_URL:-postgres://root@127.0.0.1:5432/test}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chainsync-target}"
tools="${CHAINSYNC_TOOLS:-$HOME/.local/chainsync-tools}"
if ! command -v anvil >/dev/null 2>&1 && [ -z "${ANVIL_BIN:-}" ]; then
    for bin in "$tools"/node_modules/@foundry-rs/anvil-linux-*/bin/anvil; do
        [ -x "$bin" ] && export ANVIL_BIN="$bin"
    done
fi

scripts/build-contracts.sh --check

# The shipped Prometheus rules (install-deps.sh installs promtool from Debian's prometheus).
if command -v promtool >/dev/null 2>&1; then
    echo "test: promtool check rules deploy/prometheus/alerts.yml"
    promtool check rules deploy/prometheus/alerts.yml
else
    echo "test: promtool not found; deploy/prometheus/alerts.yml not checked"
fi

echo "test: cargo fmt --all --check"
cargo fmt --all --check
echo "test: cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

# All targets unless the arguments pick some themselves (cargo would otherwise run the union).
targets=(--all-targets)
for arg in "$@"; do
    [ "$arg" = "--" ] && break
    case "$arg" in
        --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --benches | --bench | \
            --bench=* | --examples | --example | --example=* | --doc | --all-targets)
            targets=()
            ;;
    esac
done
echo "test: cargo test --workspace --all-features ${targets[*]} $* (target dir $CARGO_TARGET_DIR)"
cargo test --workspace --all-features "${targets[@]}" "$@"
# Documentation examples (the engine's crate docs show a kind of one's own, a transactional enqueue
# and a runtime): compiled, as `--all-targets` leaves them out. Only for a whole-suite run.
if [ "$#" -eq 0 ]; then
    echo "test: cargo test --workspace --all-features --doc"
    cargo test --workspace --all-features --doc
fi
