#!/usr/bin/env bash
# Starts the local PostgreSQL and Redis the tests use, unless they already answer, and waits until
# they are ready. On a fresh PostgreSQL it also creates the role `root` (trusted on 127.0.0.1) and
# the database `test`, so DATABASE_URL=postgres://root@127.0.0.1:5432/test works.
set -euo pipefail

log() { echo "services: $*"; }

wait_for() { # description, seconds, command...
    local what="$1" seconds="$2"
    shift 2
    for _ in $(seq 1 $((seconds * 10))); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "services: $what not ready after ${seconds}s" >&2
    return 1
}

as_postgres() {
    if [ "$(id -un)" = "postgres" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        sudo -u postgres "$@"
    fi
}

# --- PostgreSQL ------------------------------------------------------------------------------
if pg_isready -h 127.0.0.1 -p 5432 -q; then
    log "postgres already answering on 127.0.0.1:5432"
else
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)"
    if [ -z "$version" ]; then
        version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
        log "creating cluster $version/main"
        pg_createcluster "$version" main >/dev/null
    fi
    log "starting postgres $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for "postgres" 30 pg_isready -h 127.0.0.1 -p 5432 -q
fi

if ! psql "postgres://root@127.0.0.1:5432/postgres" -qtAc 'select 1' >/dev/null 2>&1; then
    # Fresh cluster: role root, trusted over loopback TCP like the development machines.
    log "creating role root (trusted on 127.0.0.1)"
    as_postgres psql -qtAc "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'root') THEN
            CREATE ROLE root SUPERUSER LOGIN;
        END IF; END \$\$;"
    hba="$(as_postgres psql -qtAc 'SHOW hba_file')"
    if ! grep -q '^host all root 127.0.0.1/32 trust' "$hba"; then
        sed -i '1i host all root 127.0.0.1/32 trust\nhost all root ::1/128 trust' "$hba"
        as_postgres psql -qtAc 'SELECT pg_reload_conf()' >/dev/null
    fi
    wait_for "postgres login as root" 10 psql "postgres://root@127.0.0.1:5432/postgres" -qtAc 'select 1'
fi
if [ "$(psql "postgres://root@127.0.0.1:5432/postgres" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'test'")" != "1" ]; then
    log "creating database test"
    psql "postgres://root@127.0.0.1:5432/postgres" -qc 'CREATE DATABASE test'
fi
log "postgres ready"

# --- Redis -----------------------------------------------------------------------------------
if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; then
    log "redis already answering on 127.0.0.1:6379"
else
    log "starting redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_for "redis" 30 sh -c '[ "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = "PONG" ]'
fi
log "redis ready"
