#!/usr/bin/env bash
# The queue benchmark through PgBouncer in transaction mode next to direct connections, in one
# session: starts a private PgBouncer (Debian's package, scripts/install-deps.sh) on a free port
# in front of the server of DATABASE_URL, then REPS times, interleaved: `chainsync bench queue`
# direct, through the pooler with LISTEN on a direct connection, and through the pooler polling
# only (misc: single enqueue + enqueue-to-start latency; drain: CONFIGS). Prints medians.
# Usage: scripts/bench-pooler.sh   (env: REPS=3 CONFIGS="c500-b500" POOL_SIZE=20 JOBS=100000 BENCH_DB=bench_pooler BIN=…)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPS="${REPS:-3}"; CONFIGS="${CONFIGS:-c500-b500}"; POOL_SIZE="${POOL_SIZE:-20}"; JOBS="${JOBS:-100000}"
DB="${BENCH_DB:-bench_pooler}"  # scratch database, dropped and re-created by each unit
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chainsync-target}"
export DATABASE_URL="${DATABASE_URL:-postgres://root@127.0.0.1:5432/test}"
PGBOUNCER="${PGBOUNCER_BIN:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}"

# BIN: a chainsync binary built with --features dev (default: a release build made here)
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --features dev --manifest-path "$ROOT/Cargo.toml" --bin chainsync
  BIN="$CARGO_TARGET_DIR/release/chainsync"
fi
OUT="$ROOT/target/bench-pooler/$(date -u +%Y%m%dT%H%M%SZ)"; mkdir -p "$OUT"

# host and port of the server behind DATABASE_URL (postgres://user@host:port/db)
hostport="${DATABASE_URL#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$hostport" ] && port=5432
user="${DATABASE_URL#*://}"; user="${user%%@*}"; user="${user%%:*}"
pport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
dir="$(mktemp -d)"; chmod 755 "$dir"
printf '"%s" ""\n' "$user" > "$dir/users.txt"
cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=$host port=$port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pport
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
INI
as_user=(); [ "$(id -u)" -eq 0 ] && as_user=(-u postgres)
"$PGBOUNCER" "${as_user[@]}" "$dir/pgbouncer.ini" > "$dir/log" 2>&1 &
pgb=$!
trap 'kill "$pgb" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$pport") 2>/dev/null && break; sleep 0.05; done
POOLER="postgres://$user@127.0.0.1:$pport"
echo "pgbouncer $("$PGBOUNCER" --version | head -1) on port $pport, default_pool_size $POOL_SIZE" >&2

: > "$OUT/raw.jsonl"
run() {  # label, args...
  local label="$1"; shift
  res="$(timeout 300 "$BIN" bench queue --database "$DB" --jobs "$JOBS" "$@" | grep '^RESULT ' | tail -1)" || true
  if [ -n "$res" ]; then
    echo "${res#RESULT }" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["label"]=sys.argv[1]; print(json.dumps(d))' "$label" >> "$OUT/raw.jsonl"
    echo "   $label: ${res:0:220}" >&2
  else
    echo "   $label: no result" >&2
  fi
}
for rep in $(seq 1 "$REPS"); do
  echo "== rep $rep" >&2
  run direct --mode misc
  run pooler --mode misc --pooler-url "$POOLER"
  run pooler-poll --mode misc --pooler-url "$POOLER" --listen off
  for c in $CONFIGS; do
    run direct --mode drain --drain-config "$c"
    run pooler --mode drain --drain-config "$c" --pooler-url "$POOLER"
  done
done

python3 - "$OUT/raw.jsonl" <<'PY' | tee "$OUT/table.md"
import json, sys, statistics as st
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(lambda: defaultdict(list))
for r in rows:
    k = r["label"]
    if "single_jobs_s" in r: by["single enqueue jobs/s"][k].append(r["single_jobs_s"])
    if "latency" in r and r["latency"].get("p50_ms") is not None:
        by["enqueue→start p50 ms"][k].append(r["latency"]["p50_ms"])
        by["enqueue→start p99 ms"][k].append(r["latency"]["p99_ms"])
    if "drain_jobs_s" in r:
        by[f"drain {r['config']} jobs/s"][k].append(r["drain_jobs_s"])
        by[f"bulk enqueue jobs/s"][k].append(r["bulk_jobs_s"])
labels = ["direct", "pooler", "pooler-poll"]
print(f"\n## chainsync direct vs through PgBouncer (transaction mode), medians of {max((len(v) for m in by.values() for v in m.values()), default=0)} runs\n")
print("| metric | " + " | ".join(labels) + " |")
print("|---|" + "---|" * len(labels))
for metric, per in by.items():
    cells = []
    for l in labels:
        v = per.get(l)
        cells.append(f"{st.median(v):,.1f}" if v else "")
    print(f"| {metric} | " + " | ".join(cells) + " |")
PY
echo "raw results: $OUT/raw.jsonl" >&2
