#!/usr/bin/env bash
# Build the release binaries and the .deb and .rpm packages of spot-agent
# and spot-coordinator into target/dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
DIST="$TARGET/dist"
mkdir -p "$DIST"
for tool in cargo-deb cargo-generate-rpm; do
    if ! command -v "$tool" >/dev/null; then
        echo "==> installing $tool"
        cargo install --locked --quiet "$tool"
    fi
done
echo "==> release build"
cargo build --release -p spot-agent -p spot-coordinator
for pkg in spot-agent spot-coordinator; do
    echo "==> $pkg: deb"
    cargo deb -p "$pkg" --no-build --output "$DIST/"
    echo "==> $pkg: rpm"
    cargo generate-rpm -p "${pkg#spot-}" --output "$DIST/"
done
ls -l "$DIST"
