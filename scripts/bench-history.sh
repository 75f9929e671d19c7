#!/usr/bin/env bash
# History tables before and after partitioning (migration 20261130000100_partitioned_history.sql;
# finished jobs: scripts/bench-finished-jobs.sh):
# table sizes, prune time and the balance / points lookups, measured on one database of its own.
#
#   scripts/bench-history.sh                 # 5M balance_changes, 5M points_history, 1M events
#   ROWS=500000 POINTS=500000 scripts/bench-history.sh     # smaller
#
# Steps: the schema as it was before partitioning (every migration before 20261130), rows loaded
# with generate_series over 395 days of a 12-second chain (100,000 active holders plus 10,000
# that changed only in the first week), the measurements; then the partitioning migration
# applied to those rows (timed: the migration of an existing database), one maintenance pass
# (chainsync.history_prepare), the same measurements. Prunes run inside a rolled-back
# transaction, so both sides see the same rows. Each query is timed REPEAT times (psql \timing);
# the median is printed. The database is dropped at the end (KEEP=1 keeps it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BENCH_PG:-postgres://root@127.0.0.1:5432}
DB=${BENCH_DB:-chainsync_bench_history}
ROWS=${ROWS:-5000000}
POINTS=${POINTS:-5000000}
EVENTS=${EVENTS:-1000000}
REPEAT=${REPEAT:-7}
HOLDERS=100000
QUIET=10000
SPAN=2844000 # blocks in 395 days of 12-second blocks
URL="$BASE/$DB"

psql -qX "$BASE/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
cleanup() { [ "${KEEP:-0}" = 1 ] || psql -qX "$BASE/postgres" -c "DROP DATABASE IF EXISTS $DB" >/dev/null; }
trap cleanup EXIT

q() { psql -qX -v ON_ERROR_STOP=1 "$URL" "$@"; }

migrations() { # $1: "before" (versions < 20261130) or "partition" (the partitioning migration)
    for f in "$ROOT"/migrations/engine/*.sql "$ROOT"/migrations/jobs/*.sql; do
        echo "$(basename "$f") $f"
    done | sort | while read -r name f; do
        case "$1:$name" in
            before:2026113* | before:202612*) ;;
            before:*) q -f "$f" >/dev/null 2>&1 ;;
            partition:20261130000100_*) q -f "$f" >/dev/null ;;
        esac
    done
}

# Median of REPEAT runs of one statement (ms).
time_ms() {
    local sql=$1
    {
        echo '\timing on'
        for _ in $(seq "$REPEAT"); do echo "$sql"; done
    } | q -o /dev/null 2>&1 | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | sort -n \
        | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

# One run of statements inside a rolled-back transaction (ms of the last statement).
time_rolled_back() {
    printf 'BEGIN;\n\\timing on\n%s\n\\timing off\nROLLBACK;\n' "$1" | q -o /dev/null 2>&1 \
        | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | awk '{s+=$1} END {printf "%.1f\n", s}'
}

size() { # total size of a table and all its partitions
    q -Atc "SELECT pg_size_pretty(coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('chainsync.$1')),
                                           pg_total_relation_size('chainsync.$1')))"
}

addr() { echo "'0x' || lpad(to_hex($1), 40, '0')"; }
TOKEN="'0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48'"

echo "== schema before partitioning; loading rows"
migrations before
q <<SQL
-- Chain time: block B0 + n at T0 + 12 n seconds, T0 395 days ago.
CREATE TEMP TABLE k AS SELECT 20000000::bigint AS b0, date_trunc('hour', now() - interval '395 days') AS t0;
INSERT INTO chainsync.balance_changes
    (chain_id, token, address, old_amount, new_amount, block_number, block_hash, block_time, source)
SELECT 1, $TOKEN, $(addr "g % $HOLDERS"), CASE WHEN g >= $HOLDERS THEN g - $HOLDERS END, g,
       k.b0 + g * $SPAN / $ROWS, 'h', k.t0 + (g * $SPAN / $ROWS) * interval '12 seconds', 'log'
FROM k, generate_series(0::bigint, $ROWS - 1) g;
INSERT INTO chainsync.balance_changes
    (chain_id, token, address, new_amount, block_number, block_hash, block_time, source)
SELECT 1, $TOKEN, $(addr "$HOLDERS + g"), 1000 + g, k.b0 + 5 * g, 'h', k.t0 + (5 * g) * interval '12 seconds', 'read'
FROM k, generate_series(0::bigint, $QUIET - 1) g;
INSERT INTO chainsync.balances (chain_id, token, address, amount, block_number, block_hash)
SELECT DISTINCT ON (address) 1, token, address, new_amount, block_number, 'h'
FROM chainsync.balance_changes ORDER BY address, block_number DESC;
INSERT INTO chainsync.events (chain_id, tx_hash, log_index, block_number, block_hash, contract, event, args)
SELECT 1, '0x' || lpad(to_hex(g), 64, '0'), 0, k.b0 + g * $SPAN / $EVENTS, 'h', $TOKEN, 'Transfer',
       jsonb_build_object('from', $(addr g), 'to', $(addr "g + 1"), 'value', g::text)
FROM k, generate_series(0::bigint, $EVENTS - 1) g;
INSERT INTO chainsync.points_history (chain_id, token, address, window_start, twab, points)
SELECT 1, $TOKEN, $(addr "g % 527"), k.t0 + (g / 527) * interval '1 hour', g, g / 4
FROM k, generate_series(0::bigint, $POINTS - 1) g;
SQL
q -c "VACUUM ANALYZE" >/dev/null

HEAD_B=$(q -Atc "SELECT max(block_number) + 1 FROM chainsync.balance_changes")
MID_B=$(q -Atc "SELECT min(block_number) + $SPAN / 2 FROM chainsync.balance_changes")
CUTOFF="now() - interval '183 days'"
HOUR=$(q -Atc "SELECT date_trunc('hour', now() - interval '200 days')")

# 1000 holders: 900 active, 100 quiet.
HOLDER_SET="(SELECT $(addr "(i * 97) % $HOLDERS") AS address, i FROM generate_series(1, 900) i
             UNION ALL SELECT $(addr "$HOLDERS + i * 97"), i FROM generate_series(1, 100) i)"
before_block() { # the "amount before block B" lookup of a history write, for 1000 holders
    echo "SELECT count(d.new_amount) FROM $HOLDER_SET o LEFT JOIN LATERAL (
            SELECT c.block_number, c.new_amount FROM chainsync.balance_changes c
             WHERE c.chain_id = 1 AND c.token = $TOKEN AND c.address = o.address
               AND c.block_number < o.i * 0 + $1 ORDER BY c.block_number DESC LIMIT 1) d ON true;"
}
GET_BALANCES="SELECT token, amount::text, block_number, updated_at FROM chainsync.balances
  WHERE chain_id = 1 AND address = $(addr 5) AND (NULL::text IS NULL OR token = NULL) ORDER BY token;"
CONSOLE_CHANGES="SELECT c.chain_id, c.token, c.old_amount::text, c.new_amount::text, c.block_number, c.block_time
  FROM (SELECT DISTINCT chain_id, token FROM chainsync.balances WHERE chain_id = ANY('{1}') AND address = $(addr 5)) b
  CROSS JOIN LATERAL (SELECT * FROM chainsync.balance_changes x WHERE x.chain_id = b.chain_id AND x.token = b.token
     AND x.address = $(addr 5) ORDER BY x.block_number DESC LIMIT 100) c ORDER BY c.block_number DESC LIMIT 100;"
CONSOLE_POINTS="SELECT p.chain_id, p.token, p.window_start, p.twab::text, p.points::text
  FROM (SELECT DISTINCT chain_id, token FROM chainsync.balances WHERE chain_id = ANY('{1}') AND address = $(addr 5)) b
  CROSS JOIN LATERAL (SELECT * FROM chainsync.points_history x WHERE x.chain_id = b.chain_id AND x.token = b.token
     AND x.address = $(addr 5) \$POINTS_SINCE ORDER BY x.window_start DESC LIMIT 100) p ORDER BY p.window_start DESC LIMIT 100;"
# The console reads the windows of the last days first (jobs/src/console.rs) since partitioning.
POINTS_SINCE=""
WINDOW_ROWS="SELECT count(*) FROM (SELECT address, old_amount::text, new_amount::text, coalesce(block_time, observed_at) AS at
  FROM chainsync.balance_changes WHERE chain_id = 1 AND token = $TOKEN
   AND coalesce(block_time, observed_at) >= '$HOUR' AND coalesce(block_time, observed_at) < timestamptz '$HOUR' + interval '1 hour'
  ORDER BY address, at, block_number) x;"
WINDOW_OPENING="SELECT count(*) FROM (SELECT DISTINCT ON (address) address, new_amount::text FROM chainsync.balance_changes
  WHERE chain_id = 1 AND token = $TOKEN AND coalesce(block_time, observed_at) < '$HOUR'
  ORDER BY address, coalesce(block_time, observed_at) DESC, block_number DESC) x;"
POINTS_WINDOW="SELECT count(*) FROM chainsync.points_history WHERE chain_id = 1 AND token = $TOKEN
  AND window_start = '$HOUR';"

measure() { # $1: label
    echo "== $1"
    printf '%-48s %s\n' "size balance_changes" "$(size balance_changes)"
    printf '%-48s %s\n' "size points_history" "$(size points_history)"
    printf '%-48s %s\n' "size events" "$(size events)"
    printf '%-48s %8s ms\n' "amount before block (1000 holders, head)" "$(time_ms "$(before_block "$HEAD_B")")"
    printf '%-48s %8s ms\n' "amount before block (1000 holders, mid-history)" "$(time_ms "$(before_block "$MID_B")")"
    printf '%-48s %8s ms\n' "GET /v1/balances read" "$(time_ms "$GET_BALANCES")"
    printf '%-48s %8s ms\n' "console newest 100 changes" "$(time_ms "$CONSOLE_CHANGES")"
    printf '%-48s %8s ms\n' "console newest 100 points" "$(time_ms "${CONSOLE_POINTS//\$POINTS_SINCE/$POINTS_SINCE}")"
    printf '%-48s %8s ms\n' "compute-points window rows (1 hour)" "$(time_ms "$WINDOW_ROWS")"
    printf '%-48s %8s ms\n' "compute-points opening amounts" "$(REPEAT=3 time_ms "$WINDOW_OPENING")"
    printf '%-48s %8s ms\n' "points of one window" "$(time_ms "$POINTS_WINDOW")"
}

measure "before (unpartitioned)"
printf '%-48s %8s ms\n' "prune balance_changes older than 183d" "$(time_rolled_back "
DELETE FROM chainsync.balance_changes c WHERE coalesce(c.block_time, c.observed_at) < $CUTOFF
   AND EXISTS (SELECT 1 FROM chainsync.balance_changes n WHERE n.chain_id = c.chain_id AND n.token = c.token
                  AND n.address = c.address AND n.block_number > c.block_number
                  AND coalesce(n.block_time, n.observed_at) < $CUTOFF);")"
printf '%-48s %8s ms\n' "prune events older than 183d" "$(time_rolled_back "
DELETE FROM chainsync.events WHERE block_number < (SELECT min(block_number) FROM chainsync.balance_changes
   WHERE block_time >= $CUTOFF);")"
printf '%-48s %8s ms\n' "prune points_history older than 183d" "$(time_rolled_back "
DELETE FROM chainsync.points_history WHERE window_start < $CUTOFF;")"

echo "== partitioning migration on these rows"
start=$(date +%s.%N)
migrations partition
printf '%-48s %8.1f s\n' "migration" "$(echo "$(date +%s.%N) - $start" | bc)"
q -Atc "SELECT chainsync.history_prepare(now(), 216000)" >/dev/null
q -c "VACUUM ANALYZE" >/dev/null
printf '%-48s %s\n' "partitions of balance_changes (chain 1)" \
    "$(q -Atc "SELECT count(*) FROM pg_partition_tree('chainsync.balance_changes_c1') WHERE isleaf")"

POINTS_SINCE="AND x.window_start >= '$(q -Atc "SELECT now() - interval '6 days'")'"
measure "after (partitioned)"
printf '%-48s %8s ms\n' "prune balance_changes older than 183d" \
    "$(time_rolled_back "SELECT chainsync.history_retain('balance_changes', $CUTOFF);")"
printf '%-48s %8s ms\n' "prune events older than 183d" \
    "$(time_rolled_back "SELECT chainsync.history_retain('events', $CUTOFF);")"
printf '%-48s %8s ms\n' "prune points_history older than 183d" \
    "$(time_rolled_back "SELECT chainsync.history_retain('points_history', $CUTOFF);")"
