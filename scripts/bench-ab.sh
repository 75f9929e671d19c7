#!/usr/bin/env bash
# Interleaved A/B of two chainsync binaries on the queue benchmark units (`chainsync bench queue`):
# each repetition runs every unit with both binaries, A first on odd repetitions and B first on
# even ones (the second of a pair starts right after the first one's scratch database was
# dropped), so machine noise and ordering fall on both alike.
# Prints the median of each figure per binary and the ratio B/A.
# Usage: scripts/bench-ab.sh BIN_A BIN_B   (env: REPS=5 UNITS="misc c500-b500 c1000-b500-f2-w3")
# Build a binary of another commit with e.g.:
#   git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release --features dev)
set -euo pipefail
A="${1:?usage: bench-ab.sh BIN_A BIN_B}"
B="${2:?usage: bench-ab.sh BIN_A BIN_B}"
REPS="${REPS:-5}"
UNITS="${UNITS:-misc c500-b500 c1000-b500-f2-w3}"
export DATABASE_URL="${DATABASE_URL:-postgres://root@127.0.0.1:5432/test}"
OUT="${OUT:-$(mktemp -d)/ab.jsonl}"
echo "raw results: $OUT" >&2

run() { # bin label unit rep
  local args
  if [ "$3" = misc ]; then args=(--mode misc); else args=(--mode drain --drain-config "$3"); fi
  local res
  res="$(timeout 300 "$1" bench queue "${args[@]}" 2>/dev/null | grep '^RESULT ' | tail -1)" || true
  if [ -n "$res" ]; then
    echo "${res#RESULT }" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["bin"]=sys.argv[1]; d["unit"]=sys.argv[2]; d["rep"]=int(sys.argv[3]); print(json.dumps(d))' "$2" "$3" "$4" >> "$OUT"
    echo "   $2 $3: ${res:7:160}" >&2
  else
    echo "   $2 $3: no result" >&2
  fi
}

for rep in $(seq 1 "$REPS"); do
  echo "== rep $rep" >&2
  for unit in $UNITS; do
    if [ $((rep % 2)) -eq 1 ]; then
      run "$A" A "$unit" "$rep"
      run "$B" B "$unit" "$rep"
    else
      run "$B" B "$unit" "$rep"
      run "$A" A "$unit" "$rep"
    fi
  done
done

python3 - "$OUT" <<'PY'
import json, sys, statistics as st
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
figs = defaultdict(lambda: defaultdict(list))
for r in rows:
    b = r["bin"]
    if "bulk_jobs_s" in r: figs["bulk enqueue jobs/s"][b].append(r["bulk_jobs_s"])
    if "single_jobs_s" in r: figs["single enqueue jobs/s"][b].append(r["single_jobs_s"])
    if "drain_jobs_s" in r: figs["drain jobs/s " + r.get("config", r["unit"])][b].append(r["drain_jobs_s"])
    lat = r.get("latency") or {}
    if lat.get("p50_ms") is not None:
        figs["latency p50 ms"][b].append(lat["p50_ms"])
        figs["latency p99 ms"][b].append(lat["p99_ms"])
print("| figure | A median | B median | B/A | runs |")
print("|---|---|---|---|---|")
for name, by in sorted(figs.items()):
    a, b = by.get("A", []), by.get("B", [])
    if not a or not b:
        continue
    ma, mb = st.median(a), st.median(b)
    print(f"| {name} | {ma:.1f} | {mb:.1f} | {mb / ma:.2f} | {len(a)}/{len(b)} |")
PY
