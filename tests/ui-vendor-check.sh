#!/usr/bin/env bash
# The dashboard's vendored uPlot files are byte for byte the ones the npm
# registry publishes for the pinned version (and the integrity recorded in
# coordinator/ui/vendor/VENDOR.md is the registry's). `--update` copies
# them in instead.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-check}"
VERSION=1.6.32
VENDOR=coordinator/ui/vendor
if ! command -v npm >/dev/null; then
    echo "npm not found: vendored uPlot not checked against the registry" >&2
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$VERSION" >/dev/null && tar xzf "uplot-$VERSION.tgz")
integrity=$(cd "$tmp" && npm view --silent "uplot@$VERSION" dist.integrity)
pairs=("dist/uPlot.iife.min.js uPlot.iife.min.js" "dist/uPlot.min.css uPlot.min.css" "LICENSE uPlot.LICENSE")
if [ "$MODE" = --update ]; then
    for p in "${pairs[@]}"; do set -- $p; cp "$tmp/package/$1" "$VENDOR/$2"; done
    echo "copied uplot $VERSION; record integrity $integrity in $VENDOR/VENDOR.md"
    exit 0
fi
for p in "${pairs[@]}"; do
    set -- $p
    cmp -s "$tmp/package/$1" "$VENDOR/$2" || { echo "$VENDOR/$2 differs from uplot@$VERSION's $1" >&2; exit 1; }
done
grep -q -- "$integrity" "$VENDOR/VENDOR.md" || { echo "VENDOR.md does not record $integrity" >&2; exit 1; }
echo "vendored uplot $VERSION matches the npm registry ($integrity)"
