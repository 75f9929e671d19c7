#!/usr/bin/env bash
# Queue benchmark against the peers, in one session: runs ../shared/bench/peers/run.sh (PEERS,
# REPS as there; default graphile + pg-boss), then `chainsync bench queue` REPS times per unit with
# the same workload, aggregates all results with the peers' aggregate.py and prints our ratios
# against the best Postgres peer of this run. Medians of REPS runs.
# Usage: scripts/bench-queue.sh   (env: REPS=3 PEERS="graphile pgboss" CONFIGS="c500-b500 c1000-b500-f2-w3 ...")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_DIR="$ROOT/../shared/bench/peers"
REPS="${REPS:-3}"; export PEERS="${PEERS:-graphile pgboss}"
CONFIGS="${CONFIGS:-c500-b500 c1000-b500-f2-w2 c1000-b500-f2-w3 c1000-b500-f2-w3-keep}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chainsync-target}"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-root}"
export DATABASE_URL="${DATABASE_URL:-postgres://$PGUSER@$PGHOST:$PGPORT/test}"

cargo build --release --quiet --features dev --manifest-path "$ROOT/Cargo.toml" --bin chainsync
BIN="$CARGO_TARGET_DIR/release/chainsync"
OUT="$ROOT/target/bench-queue/$(date -u +%Y%m%dT%H%M%SZ)"; mkdir -p "$OUT"

: > "$OUT/raw.jsonl"
# Interleaved: each repetition runs the peers once (their own run.sh, REPS=1), then our units, so
# machine noise falls on both sides alike.
for rep in $(seq 1 "$REPS"); do
  if [ -n "$PEERS" ]; then
    echo "== rep $rep: peers $PEERS" >&2
    REPS=1 "$PEERS_DIR/run.sh" >&2
    latest="$(ls -t "$PEERS_DIR/results" | grep -v latest | head -1)"
    python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if l.strip():
        d=json.loads(l); d["rep"]=int(sys.argv[2]); print(json.dumps(d))' "$PEERS_DIR/results/$latest/raw.jsonl" "$rep" >> "$OUT/raw.jsonl"
  fi
  for unit in misc $CONFIGS; do
    echo "-- chainsync rep $rep: $unit" >&2
    if [ "$unit" = misc ]; then args=(--mode misc); else args=(--mode drain --drain-config "$unit"); fi
    res="$(timeout 300 "$BIN" bench queue "${args[@]}" | grep '^RESULT ' | tail -1)" || true
    if [ -n "$res" ]; then
      echo "${res#RESULT }" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["rep"]=int(sys.argv[1]); d["key"]="chainsync"; print(json.dumps(d))' "$rep" >> "$OUT/raw.jsonl"
      echo "   ${res:0:200}" >&2
    else
      echo "{\"key\":\"chainsync\",\"rep\":$rep,\"mode\":\"$unit\",\"error\":\"no result\"}" >> "$OUT/raw.jsonl"
    fi
  done
done

python3 "$PEERS_DIR/aggregate.py" "$OUT/raw.jsonl" | tee "$OUT/table.md"
python3 - "$OUT/raw.jsonl" <<'PY' | tee "$OUT/ratios.md"
import json, sys, statistics as st
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if "error" not in r]
def med(xs): return st.median(xs) if xs else None
by = defaultdict(lambda: defaultdict(list))
for r in rows:
    k = r["key"]
    if "bulk_jobs_s" in r: by[k]["bulk"].append(r["bulk_jobs_s"])
    if "single_jobs_s" in r: by[k]["single"].append(r["single_jobs_s"])
    if "drain_jobs_s" in r: by[k]["drain:" + r["config"]].append(r["drain_jobs_s"])
    if "latency" in r and r["latency"].get("p50_ms") is not None:
        by[k]["p50"].append(r["latency"]["p50_ms"]); by[k]["p99"].append(r["latency"]["p99_ms"])
def best_drain(k):
    ds = {c: med(v) for c, v in by[k].items() if c.startswith("drain:")}
    return max(ds.items(), key=lambda x: x[1]) if ds else (None, None)
ours = "chainsync"
pg_peers = [k for k in by if k not in (ours, "bullmq")]
print("\n## chainsync vs the peers measured in this run (medians)\n")
print("| metric | chainsync | best Postgres peer | ratio |")
print("|---|---|---|---|")
for metric, label in [("bulk", "bulk enqueue jobs/s"), ("single", "single enqueue jobs/s")]:
    o = med(by[ours][metric]); cands = [(k, med(by[k][metric])) for k in pg_peers if by[k][metric]]
    if o and cands:
        k, v = max(cands, key=lambda x: x[1]); print(f"| {label} | {o:,.0f} | {v:,.0f} ({k}) | {o/v:.2f}x |")
cfg, o = best_drain(ours)
cands = [(k,) + best_drain(k) for k in pg_peers]
cands = [c for c in cands if c[2]]
if o and cands:
    k, c, v = max(cands, key=lambda x: x[2]); print(f"| drain jobs/s | {o:,.0f} ({cfg[6:]}) | {v:,.0f} ({k}, {c[6:]}) | {o/v:.2f}x |")
for c, v in sorted(by[ours].items()):
    if c.startswith("drain:"): print(f"| drain {c[6:]} | {med(v):,.0f} | | |")
if by[ours]["p50"]:
    print(f"| latency p50 / p99 ms | {med(by[ours]['p50']):.1f} / {med(by[ours]['p99']):.1f} | " + ", ".join(f"{k}: {med(by[k]['p50']):.1f} / {med(by[k]['p99']):.1f}" for k in pg_peers if by[k]['p50']) + " | |")
PY
echo "results in $OUT" >&2
