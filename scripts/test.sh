#!/usr/bin/env bash
# The one test command (README, CI): installs what the tests need, builds
# the debug binaries once (with crash points compiled in), runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# moto_server keeps the agent's EC2 calls honest about the real wire format.
VENV="${SPOT_VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "==> installing moto[server] into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server,ec2]>=5.1,<6'
fi
export SPOT_MOTO_SERVER="$VENV/bin/moto_server"

# promtool checks and unit-tests the shipped alert rules.
if ! command -v promtool >/dev/null; then
    echo "==> installing prometheus (for promtool)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# Headless Chromium and its WebDriver for the dashboard's browser tests.
if [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/chromium ]; then
    echo "==> installing chromium and chromium-driver (browser tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
export SPOT_CHROMEDRIVER=/usr/bin/chromedriver SPOT_CHROMIUM=/usr/bin/chromium

# PostgreSQL 15 for the store on its second engine: one server for the
# store's tests (each takes a database of its own); fleets of several
# coordinators start servers of their own. It runs as the postgres user
# (PostgreSQL refuses root), on a loopback port, in a temporary directory.
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/postgres" ]; then
    echo "==> installing postgresql (server programs)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
export SPOT_PG_BIN="$PG_BIN"
PG_DIR="$(mktemp -d /tmp/spot-pg-ci.XXXXXX)"
chmod 777 "$PG_DIR"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PG_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "==> starting PostgreSQL ($("$PG_BIN/postgres" --version)) on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -o \
    "-k $PG_DIR -p $PG_PORT -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
stop_pg() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$PG_DIR"; }
trap stop_pg EXIT
export SPOT_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"

echo "==> dashboard: vendored uPlot against the npm registry"
tests/ui-vendor-check.sh

echo "==> promtool: alert rules and their unit tests"
promtool check rules packaging/prometheus/alerts.yml
promtool test rules packaging/prometheus/alerts.test.yml

echo "==> cargo fmt --check"
cargo fmt --all -- --check

# Crash points are compiled into these test binaries only (release builds
# and packages never have them).
FEATURES="spot-agent/failpoints,spot-coordinator/failpoints"
echo "==> building binaries"
cargo build --workspace --bins --features "$FEATURES"
echo "==> running tests"
cargo test --workspace --features "$FEATURES"

if [ -x packaging/check.sh ]; then
    echo "==> packaging checks"
    packaging/check.sh
fi
