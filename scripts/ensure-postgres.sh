#!/usr/bin/env bash
# Makes sure this machine's PostgreSQL is running and accepting connections, starting it the way
# the machine starts it when it is not. The cluster tests and `.ci/run` call this; it never
# installs anything or changes PostgreSQL's settings.
set -euo pipefail
host="${PGHOST:-127.0.0.1}"
port="${PGPORT:-5432}"

ready() { pg_isready -q -h "$host" -p "$port"; }

if ready; then
    exit 0
fi
if ! command -v pg_ctlcluster >/dev/null || [ ! -d /etc/postgresql ]; then
    echo "ensure-postgres: PostgreSQL is not running on $host:$port and no local cluster is installed to start" >&2
    exit 1
fi
version="$(ls /etc/postgresql | sort -V | tail -n 1)"
echo "ensure-postgres: starting PostgreSQL $version (cluster main)" >&2
pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for _ in $(seq 1 60); do
    if ready; then
        exit 0
    fi
    sleep 0.5
done
echo "ensure-postgres: PostgreSQL $version did not become ready on $host:$port" >&2
exit 1
