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
