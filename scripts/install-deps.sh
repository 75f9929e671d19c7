#!/usr/bin/env bash
# Installs what building and testing chainsync needs, and only what is missing:
#   - mold (the linker .cargo/config.toml asks for), before any cargo command
#   - PostgreSQL and Redis (server and client), node and npm, from Debian's packages
#   - anvil from the npm package @foundry-rs/anvil, into $CHAINSYNC_TOOLS
#     (default ~/.local/chainsync-tools), linked as /usr/local/bin/anvil when that is writable
#   - the contracts' npm dependencies (solc) for scripts/build-contracts.sh
#   - Chromium (Debian's package) and playwright-core (npm, into $CHAINSYNC_TOOLS) for the test of
#     the admin page in a real browser
#   - promtool (Debian's prometheus package) for `promtool check rules deploy/prometheus/alerts.yml`
#   - PgBouncer (Debian's package; not started as a service) for the tests and benchmarks that run
#     chainsync behind a transaction-mode pooler
# Idempotent: a second run changes nothing and prints what it found.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${CHAINSYNC_TOOLS:-$HOME/.local/chainsync-tools}"
anvil_version="1.7.1"

log() { echo "install-deps: $*"; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    fi
fi

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        $sudo apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Debian packages -----------------------------------------------------------------------
packages=()
command -v mold >/dev/null 2>&1 || packages+=(mold)
command -v gzip >/dev/null 2>&1 || packages+=(gzip)
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    packages+=(postgresql)
fi
command -v pg_isready >/dev/null 2>&1 || packages+=(postgresql-client)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
[ -x /usr/bin/chromium ] || packages+=(chromium)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || packages+=(pgbouncer)
if [ "${#packages[@]}" -gt 0 ]; then
    apt_install "${packages[@]}"
fi
log "mold $(mold --version | head -n1 | awk '{print $2}')"

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found; install the Rust toolchain (rustup) first" >&2
    exit 1
fi

# --- anvil from npm ------------------------------------------------------------------------
case "$(uname -m)" in
    x86_64 | amd64) platform="linux-amd64" ;;
    aarch64 | arm64) platform="linux-arm64" ;;
    *)
        echo "install-deps: no anvil package for $(uname -m)" >&2
        exit 1
        ;;
esac
# The npm package's bin is a node wrapper; the real binary is in the platform package.
anvil_bin="$tools/node_modules/@foundry-rs/anvil-$platform/bin/anvil"

if command -v anvil >/dev/null 2>&1 && anvil --version >/dev/null 2>&1; then
    anvil_path="$(command -v anvil)"
elif [ -x "$anvil_bin" ] && "$anvil_bin" --version >/dev/null 2>&1; then
    anvil_path="$anvil_bin"
else
    log "npm install @foundry-rs/anvil@$anvil_version into $tools"
    mkdir -p "$tools"
    npm install --prefix "$tools" --no-audit --no-fund --loglevel=error \
        "@foundry-rs/anvil@$anvil_version" "@foundry-rs/anvil-$platform@$anvil_version"
    if [ ! -x "$anvil_bin" ]; then
        echo "install-deps: npm installed no anvil binary at $anvil_bin" >&2
        exit 1
    fi
    anvil_path="$anvil_bin"
fi
if ! command -v anvil >/dev/null 2>&1; then
    if [ -w /usr/local/bin ] || [ -n "$sudo" ]; then
        $sudo ln -sf "$anvil_path" /usr/local/bin/anvil
        log "linked /usr/local/bin/anvil -> $anvil_path"
    else
        log "anvil is at $anvil_path (not on PATH; the tests find it there, or set ANVIL_BIN)"
    fi
fi
log "$("$anvil_path" --version | head -n1)"

# --- contracts' npm dependencies -------------------------------------------------------------
if [ ! -f "$repo/contracts/node_modules/solc/package.json" ]; then
    log "npm ci in contracts/"
    (cd "$repo/contracts" && npm ci --no-audit --no-fund --loglevel=error)
fi
log "solc $(node -p "require('$repo/contracts/node_modules/solc/package.json').version")"

# --- playwright-core for the browser test ----------------------------------------------------
if [ ! -f "$tools/node_modules/playwright-core/package.json" ]; then
    log "npm install playwright-core into $tools"
    mkdir -p "$tools"
    npm install --prefix "$tools" --no-audit --no-fund --loglevel=error "playwright-core@1.65.1"
fi
log "playwright-core $(node -p "require('$tools/node_modules/playwright-core/package.json').version"), $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
