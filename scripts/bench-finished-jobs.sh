#!/usr/bin/env bash
# Finished jobs before and after they left the hot table (migration
# 20261201000000_finished_jobs.sql): table sizes, prune time, the console's and the API's reads,
# and the cost of completing jobs, measured on one database of its own.
#
#   scripts/bench-finished-jobs.sh                  # 1M finished jobs over 72 h, 100k live
#   JOBS=200000 scripts/bench-finished-jobs.sh      # smaller
#
# Steps: the schema as it was before (every migration before 20261201), rows loaded with
# generate_series (JOBS finished over the last 72 hours, 10 % of them cancelled; LIVE available
# and RUNNING leased jobs), the measurements; then the migration applied to those rows (timed:
# the migration of an existing database), one prune pass as a daemon with 1 day of retention
# runs it (ranges ahead), VACUUM FULL of the hot table, the same measurements. Prunes and completions run inside a rolled-back
# transaction, so both sides see the same rows. Each read is timed REPEAT times (psql \timing);
# the median is printed. The database is dropped at the end (KEEP=1 keeps it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BENCH_PG:-postgres://root@127.0.0.1:5432}
DB=${BENCH_DB:-chainsync_bench_finished}
JOBS=${JOBS:-1000000}
LIVE=${LIVE:-100000}
RUNNING=${RUNNING:-50000}
REPEAT=${REPEAT:-7}
URL="$BASE/$DB"

psql -qX "$BASE/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
cleanup() { [ "${KEEP:-0}" = 1 ] || psql -qX "$BASE/postgres" -c "DROP DATABASE IF EXISTS $DB" >/dev/null; }
trap cleanup EXIT

q() { psql -qX -v ON_ERROR_STOP=1 "$URL" "$@"; }

migrations() { # $1: "before" (versions < 20261201) or "after" (20261201000000)
    for f in "$ROOT"/migrations/engine/*.sql "$ROOT"/migrations/jobs/*.sql; do
        echo "$(basename "$f") $f"
    done | sort | while read -r name f; do
        case "$1:$name" in
            before:202612*) ;;
            before:*) q -f "$f" >/dev/null 2>&1 ;;
            after:20261201000000_*) q -f "$f" >/dev/null ;;
        esac
    done
}

time_ms() { # median of REPEAT runs of one statement (ms)
    local sql=$1
    {
        echo '\timing on'
        for _ in $(seq "$REPEAT"); do echo "$sql"; done
    } | q -o /dev/null 2>&1 | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | sort -n \
        | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

time_rolled_back() { # statements in a rolled-back transaction (ms of them all)
    printf 'BEGIN;\n\\timing on\n%s\n\\timing off\nROLLBACK;\n' "$1" | q -o /dev/null 2>&1 \
        | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | awk '{s+=$1} END {printf "%.1f\n", s}'
}

size() { # a table with its indexes and partitions
    q -Atc "SELECT pg_size_pretty(coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('chainsync.$1')),
                                           pg_total_relation_size('chainsync.$1')))"
}

echo "== schema before; loading $JOBS finished, $LIVE available, $RUNNING running jobs"
migrations before
q <<SQL
INSERT INTO chainsync.jobs (id, kind, queue, args, state, attempt, created_at, run_at, started_at, finished_at)
SELECT chainsync.uuid_v7(), 'k' || (g % 8), 'default', jsonb_build_object('n', g),
       CASE WHEN g % 10 = 0 THEN 'cancelled' ELSE 'completed' END::chainsync.job_state, 1,
       f - interval '1 second', f - interval '1 second', f - interval '100 ms', f
FROM (SELECT g, now() - interval '72 hours' * ($JOBS - g) / $JOBS AS f FROM generate_series(1, $JOBS) g) x
ORDER BY f;
INSERT INTO chainsync.jobs (id, kind, args, run_at)
SELECT chainsync.uuid_v7(), 'k' || (g % 8), jsonb_build_object('n', g), now() + interval '1 hour'
FROM generate_series(1, $LIVE) g;
INSERT INTO chainsync.jobs (id, kind, args, state, attempt, started_at, lease_owner, lease_expires_at)
SELECT chainsync.uuid_v7(), 'k' || (g % 8), jsonb_build_object('n', g), 'running', 1, now(),
       '00000000-0000-7000-8000-000000000001', now() + interval '1 hour'
FROM generate_series(1, $RUNNING) g;
SQL
q -c "VACUUM ANALYZE" >/dev/null
OLD_ID=$(q -Atc "SELECT id FROM chainsync.jobs WHERE state = 'completed' ORDER BY id LIMIT 1 OFFSET $((JOBS / 3))")

# Completing the running jobs in batches of 500 as the completer does (ids and lease tokens as
# parameters), in one transaction.
complete_all() { # $1: the completion statement with $1 ids, $2 tokens
    local stmt=$1
    time_rolled_back "
CREATE TEMP TABLE r AS SELECT id, chainsync.lease_token(id, attempt, lease_owner) AS token,
       (row_number() OVER (ORDER BY id) - 1) / 500 AS b FROM chainsync.jobs WHERE state = 'running';
PREPARE done(uuid[], text[]) AS $stmt;
DO \$\$ DECLARE i int; BEGIN
  FOR i IN 0..(SELECT max(b) FROM r) LOOP
    EXECUTE 'EXECUTE done(\$1, \$2)' USING (SELECT array_agg(id) FROM r WHERE b = i),
                                           (SELECT array_agg(token) FROM r WHERE b = i);
  END LOOP; END \$\$;"
}
COMPLETE_BEFORE="UPDATE chainsync.jobs j
SET state = 'completed', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
WHERE j.id = ANY(\$1::uuid[]) AND chainsync.lease_token(j.id, j.attempt, j.lease_owner) = ANY(\$2::text[])"
COMPLETE_AFTER=$(grep -v '^--' "$ROOT/engine/src/queue/sql/complete_retain.sql")

PRUNE_BEFORE="DELETE FROM chainsync.jobs WHERE id = ANY(ARRAY(
    SELECT id FROM chainsync.jobs
    WHERE state IN ('completed', 'cancelled') AND finished_at < now() - interval '1 day'
    LIMIT 5000 FOR UPDATE SKIP LOCKED));"

measure() { # $1: label, $2: the table of every job, $3: of finished jobs, $4 of live jobs
    local all=$2 fin=$3 live=$4
    echo "== $1"
    printf '%-52s %s\n' "size of the hot table (jobs)" "$(size jobs)"
    printf '%-52s %s\n' "size of the finished jobs" "$(size "$fin")"
    printf '%-52s %8s ms\n' "listing: newest 50 jobs" \
        "$(time_ms "SELECT id, kind, state FROM chainsync.$all ORDER BY id DESC LIMIT 51;")"
    printf '%-52s %8s ms\n' "listing: newest 50 completed of a kind" \
        "$(time_ms "SELECT id FROM chainsync.$all WHERE state = 'completed' AND kind = 'k3' ORDER BY id DESC LIMIT 51;")"
    printf '%-52s %8s ms\n' "listing: newest 50 available" \
        "$(time_ms "SELECT id FROM chainsync.$all WHERE state = 'available' ORDER BY id DESC LIMIT 51;")"
    printf '%-52s %8s ms\n' "job page by id (finished a day ago)" \
        "$(time_ms "SELECT * FROM chainsync.$all WHERE id = '$OLD_ID';")"
    printf '%-52s %8s ms\n' "activity per minute, last hour" \
        "$(time_ms "SELECT date_trunc('minute', finished_at), count(*) FROM chainsync.$fin
                     WHERE state IN ('completed', 'cancelled') AND finished_at >= now() - interval '1 hour' GROUP BY 1;")"
    printf '%-52s %8s ms\n' "start latency, last hour" \
        "$(time_ms "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY started_at - run_at) FROM chainsync.$fin
                     WHERE state IN ('completed', 'cancelled') AND finished_at >= now() - interval '1 hour';")"
    printf '%-52s %8s ms\n' "health depth (live jobs)" \
        "$(time_ms "SELECT count(*) FILTER (WHERE state = 'available'), count(*) FILTER (WHERE state = 'running')
                     FROM chainsync.$live WHERE state IN ('available', 'running');")"
    printf '%-52s %8s ms\n' "jobs per state (console header)" \
        "$(time_ms "SELECT state, count(*) FROM chainsync.$all GROUP BY 1;")"
}

measure "before (finished jobs in chainsync.jobs)" jobs jobs jobs
printf '%-52s %8s ms\n' "complete $RUNNING running jobs (500 per statement)" "$(complete_all "$COMPLETE_BEFORE")"
printf '%-52s %8s ms\n' "prune finished jobs (1 day kept)" \
    "$(time_rolled_back "$(for _ in $(seq $((JOBS / 5000 + 1))); do echo "$PRUNE_BEFORE"; done)")"

echo "== migration on these rows"
start=$(date +%s.%N)
migrations after
printf '%-52s %8.1f s\n' "migration" "$(echo "$(date +%s.%N) - $start" | bc)"
q -Atc "SELECT chainsync.finished_jobs_prepare(now(), interval '1 day')" >/dev/null
q -c "VACUUM ANALYZE" >/dev/null
printf '%-52s %s\n' "size of the hot table after the migration" "$(size jobs)"
# The migration deletes the finished rows from the hot table; their space is reused by new jobs,
# or given back at once by a VACUUM FULL (it locks the table: done here before measuring).
q -c "VACUUM FULL chainsync.jobs" -c "ANALYZE chainsync.jobs" >/dev/null
printf '%-52s %s\n' "ranges of finished_jobs" "$(q -Atc "SELECT count(*) FROM chainsync.finished_job_partitions")"

measure "after (chainsync.finished_jobs, partitioned)" all_jobs finished_jobs jobs
printf '%-52s %8s ms\n' "complete $RUNNING running jobs (500 per statement)" "$(complete_all "$COMPLETE_AFTER")"
printf '%-52s %8s ms\n' "prune finished jobs (1 day kept)" \
    "$(time_rolled_back "SELECT * FROM chainsync.finished_jobs_retain(now() - interval '1 day', 5000);")"
