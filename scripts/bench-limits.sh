#!/usr/bin/env bash
# Cost of queue control on the drain: the same binary runs drain units with and without
# cluster-wide limits (`chainsync bench queue --drain-config c500-b500[-l…]`), interleaved: each
# repetition runs every unit once, in an order rotated by one from the previous repetition, so
# machine noise falls on all alike. Prints the median drain of each unit and its ratio to the
# first unit (the baseline without limits).
# Usage: scripts/bench-limits.sh BIN   (env: REPS=5 JOBS=100000 UNITS="c500-b500 c500-b500-lother …")
set -euo pipefail
BIN="${1:?usage: bench-limits.sh BIN}"
REPS="${REPS:-5}"
UNITS="${UNITS:-c500-b500 c500-b500-lother c500-b500-lkind c500-b500-lqueue c500-b500-lrate c500-b500-bind50}"
export DATABASE_URL="${DATABASE_URL:-postgres://root@127.0.0.1:5432/test}"
OUT="${OUT:-$(mktemp -d)/limits.jsonl}"
echo "raw results: $OUT" >&2
read -r -a units <<< "$UNITS"
n=${#units[@]}
for rep in $(seq 1 "$REPS"); do
  echo "== rep $rep" >&2
  for i in $(seq 0 $((n - 1))); do
    unit="${units[$(((i + rep - 1) % n))]}"
    res="$(timeout 300 "$BIN" bench queue --mode drain --drain-config "$unit" ${JOBS:+--jobs "$JOBS"} 2>/dev/null | grep '^RESULT ' | tail -1)" || true
    if [ -n "$res" ]; then
      echo "${res#RESULT }" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["unit"]=sys.argv[1]; d["rep"]=int(sys.argv[2]); print(json.dumps(d))' "$unit" "$rep" >> "$OUT"
      echo "   $unit: ${res:7:120}" >&2
    else
      echo "   $unit: no result" >&2
    fi
  done
done
python3 - "$OUT" "${units[0]}" <<'PY'
import json, sys, statistics as st
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
base = sys.argv[2]
by = defaultdict(list)
for r in rows:
    by[r["unit"]].append(r["drain_jobs_s"])
b = st.median(by[base]) if by.get(base) else None
print("| drain config | median jobs/s | runs | vs " + base + " |")
print("|---|---|---|---|")
for unit, v in by.items():
    m = st.median(v)
    ratio = f"{m / b:.2f}" if b else "-"
    print(f"| {unit} | {m:.0f} | {len(v)} | {ratio} |")
PY
