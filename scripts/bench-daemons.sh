#!/usr/bin/env bash
# Daemons per database: N real `chainsync daemon` processes drain the same queue of no-op jobs on
# one Postgres. For each N the script makes a fresh database, migrates it, pauses the `default`
# queue, enqueues JOBS `noop` jobs, starts N daemons and waits until each answers /health, then
# resumes the queue and times until no job is waiting or running. It also samples the server
# connections the daemons hold (from a session opened before they start), and counts the daemons'
# log lines about connections they could not get (the server's `too many clients`, or a pool timed
# out waiting: more daemons than `max_connections` has room for). Repetitions rotate the order of
# N so that machine noise falls on all alike; prints the median of each N.
# With PGBOUNCER=1 the daemons connect through a PgBouncer in transaction mode (Debian's
# `pgbouncer`, started here on a free port with `default_pool_size` PGBOUNCER_POOL, 20), with
# `direct_url` for their LISTEN connection.
# Usage: scripts/bench-daemons.sh BIN   (env: NS="1 2 4 8" REPS=3 JOBS=50000 CONCURRENCY=100
#        FETCH_BATCH=100 POOL_SIZE=20 PGBOUNCER=0 PGBOUNCER_POOL=20
#        DATABASE_URL=postgres://root@127.0.0.1:5432/test)
set -euo pipefail
BIN="${1:?usage: bench-daemons.sh BIN}"
NS="${NS:-1 2 4 8}"
REPS="${REPS:-3}"
JOBS="${JOBS:-50000}"
CONCURRENCY="${CONCURRENCY:-100}"
FETCH_BATCH="${FETCH_BATCH:-100}"
POOL_SIZE="${POOL_SIZE:-20}"
PGBOUNCER="${PGBOUNCER:-0}"
PGBOUNCER_POOL="${PGBOUNCER_POOL:-20}"
ADMIN_URL="${DATABASE_URL:-postgres://root@127.0.0.1:5432/test}"
DB=bench_daemons
URL="${ADMIN_URL%/*}/$DB"
WORK="$(mktemp -d)"
OUT="${OUT:-$WORK/daemons.jsonl}"
echo "raw results: $OUT" >&2

pids=()
stop_daemons() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
pgb=""
trap 'stop_daemons; [ -n "$pgb" ] && kill "$pgb" 2>/dev/null; psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

DAEMON_URL="$URL"
if [ "$PGBOUNCER" = 1 ]; then
    hostport="${URL#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
    host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$hostport" ] && port=5432
    user="${URL#*://}"; user="${user%%@*}"; user="${user%%:*}"
    pport="$(free_port)"
    chmod 755 "$WORK"
    printf '"%s" ""\n' "$user" > "$WORK/users.txt"
    cat > "$WORK/pgbouncer.ini" <<INI
[databases]
* = host=$host port=$port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pport
unix_socket_dir =
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = transaction
default_pool_size = $PGBOUNCER_POOL
max_client_conn = 2000
INI
    as_user=(); [ "$(id -u)" -eq 0 ] && as_user=(-u postgres)
    "$(command -v pgbouncer || echo /usr/sbin/pgbouncer)" "${as_user[@]}" "$WORK/pgbouncer.ini" > "$WORK/pgbouncer.log" 2>&1 &
    pgb=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$pport") 2>/dev/null && break; sleep 0.05; done
    DAEMON_URL="postgres://$user@127.0.0.1:$pport/$DB"
    echo "pgbouncer on port $pport, default_pool_size $PGBOUNCER_POOL" >&2
fi

run_one() {
    local n=$1
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
    local base="$WORK/base.toml"
    printf 'database_url = "%s"\npool_size = %s\n[worker]\nconcurrency = %s\nfetch_batch = %s\n' \
        "$URL" "$POOL_SIZE" "$CONCURRENCY" "$FETCH_BATCH" > "$base"
    "$BIN" --config "$base" migrate >/dev/null 2>&1
    if [ "$PGBOUNCER" = 1 ]; then
        printf 'database_url = "%s"\npool_size = %s\n[database]\npooler = "transaction"\ndirect_url = "%s"\n[worker]\nconcurrency = %s\nfetch_batch = %s\n' \
            "$DAEMON_URL" "$POOL_SIZE" "$URL" "$CONCURRENCY" "$FETCH_BATCH" > "$base"
    fi
    psql -q "$URL" -c "SELECT chainsync.pause_queue('default')" \
        -c "SELECT count(chainsync.enqueue('noop', jsonb_build_object('payload', g))) FROM generate_series(1, $JOBS) g" >/dev/null
    local ports=()
    coproc SAMPLER { psql -qAt -F ' ' "$URL"; }
    for i in $(seq 1 "$n"); do
        local port
        port="$(free_port)"
        ports+=("$port")
        { cat "$base"; printf '[http]\nlisten = "127.0.0.1:%s"\n' "$port"; } > "$WORK/d$i.toml"
        RUST_LOG=warn "$BIN" --config "$WORK/d$i.toml" daemon > "$WORK/d$i.log" 2>&1 &
        pids+=("$!")
    done
    for port in "${ports[@]}"; do
        for _ in $(seq 1 300); do
            curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    # (The sampler: a session of its own, opened before the daemons take the server's connections.)
    local t0 t1 left=1 peak=0 conns
    t0=$(date +%s.%N)
    local resumed
    echo "SELECT chainsync.resume_queue('default');" >&"${SAMPLER[1]}"
    read -r resumed <&"${SAMPLER[0]}"
    while :; do
        echo "SELECT (SELECT count(*) FROM chainsync.jobs WHERE state IN ('available', 'running')), (SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB' AND pid <> pg_backend_pid());" >&"${SAMPLER[1]}"
        read -r left conns <&"${SAMPLER[0]}"
        [ "$conns" -gt "$peak" ] && peak=$conns
        [ "$left" -eq 0 ] && break
        if [ "$(echo "$(date +%s.%N) - $t0 > 300" | bc)" -eq 1 ]; then
            echo "   n=$n: not drained after 300 s" >&2
            break
        fi
        sleep 0.02
    done
    t1=$(date +%s.%N)
    exec {SAMPLER[1]}>&-
    wait "$SAMPLER_PID" 2>/dev/null || true
    stop_daemons
    [ "$left" -eq 0 ] || return 0
    local refused
    refused=$(cat "$WORK"/d*.log | grep -cE "too many clients|pool timed out" || true)
    python3 -c 'import json,sys; n,jobs,t0,t1,peak,rep,refused=sys.argv[1:]; s=float(t1)-float(t0); print(json.dumps({"daemons":int(n),"jobs":int(jobs),"seconds":round(s,3),"jobs_s":round(int(jobs)/s),"peak_connections":int(peak),"refused_logged":int(refused),"rep":int(rep)}))' \
        "$n" "$JOBS" "$t0" "$t1" "$peak" "$rep" "$refused" | tee -a "$OUT" >&2
    rm -f "$WORK"/d*.log
}

read -r -a ns <<< "$NS"
count=${#ns[@]}
for rep in $(seq 1 "$REPS"); do
    echo "== rep $rep" >&2
    for i in $(seq 0 $((count - 1))); do
        run_one "${ns[$(((i + rep - 1) % count))]}"
    done
done
python3 - "$OUT" <<'PY'
import json, sys, statistics as st
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(list)
for r in rows:
    by[r["daemons"]].append(r)
print("| daemons | median jobs/s | runs | peak server connections (median) | log lines: connection refused or pool timed out (median) |")
print("|---|---|---|---|---|")
for n in sorted(by):
    v = by[n]
    print(f"| {n} | {st.median(r['jobs_s'] for r in v):.0f} | {len(v)} | {st.median(r['peak_connections'] for r in v):.0f} | {st.median(r['refused_logged'] for r in v):.0f} |")
PY
