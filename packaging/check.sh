#!/usr/bin/env bash
# Build both packages and check them: contents and maintainer scripts,
# rpm metadata and file list, lintian (no errors), systemd-analyze verify on
# every unit, and an install -> upgrade -> remove -> purge cycle of each
# .deb into a throwaway root (dpkg --root, scripts run chrootless with
# DPKG_ROOT), where `validate` must pass from the installed path with the
# shipped config.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "packaging check FAILED: $*" >&2; exit 1; }
ok() { echo "  ok: $*"; }

missing=()
for t in rpm lintian; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

packaging/build.sh
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
DIST="$TARGET/dist"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for pkg in spot-agent spot-coordinator; do
    short=${pkg#spot-}
    conf=/etc/$pkg/$short.toml
    state=/var/lib/$pkg
    deb=$(ls "$DIST"/${pkg}_*.deb | head -1)
    rpmf=$(ls "$DIST"/${pkg}-*.rpm | head -1)
    echo "==> $pkg"

    contents=$(dpkg-deb -c "$deb")
    for f in ./usr/bin/$pkg ".$conf" "/$pkg.service" ./usr/share/doc/$pkg/README.md; do
        grep -q -- "$f" <<<"$contents" || fail "$deb lacks $f"
    done
    if [ "$pkg" = spot-coordinator ]; then
        grep -q -- ./usr/bin/spotctl <<<"$contents" || fail "$deb lacks spotctl"
        grep -q -- prometheus/alerts.yml <<<"$contents" || fail "$deb lacks the alert rules"
        grep -q -- doc/spot-coordinator/decision-schema.json <<<"$contents" || fail "$deb lacks the decision schema"
        grep -q -- grafana/spot-optimizer.json <<<"$contents" || fail "$deb lacks the Grafana dashboard"
    fi
    ok "deb contents"
    dpkg-deb -e "$deb" "$WORK/$pkg.ctrl"
    grep -qx "$conf" "$WORK/$pkg.ctrl/conffiles" || fail "$conf is not a conffile"
    grep -q useradd "$WORK/$pkg.ctrl/postinst" || fail "postinst creates no user"
    grep -q "deb-systemd-helper" "$WORK/$pkg.ctrl/postinst" || fail "postinst does not enable the unit"
    grep -q 'rm -rf' "$WORK/$pkg.ctrl/postrm" || fail "postrm does not purge the state"
    ok "conffile and maintainer scripts"

    rpm -qip "$rpmf" >/dev/null || fail "rpm -qip $rpmf"
    files=$(rpm -qlp "$rpmf")
    for f in /usr/bin/$pkg "$conf" /usr/lib/systemd/system/$pkg.service; do
        grep -qx "$f" <<<"$files" || fail "$rpmf lacks $f"
    done
    rpm -qp --configfiles "$rpmf" | grep -qx "$conf" || fail "$conf is not %config in the rpm"
    rpm -qp --scripts "$rpmf" | grep -q useradd || fail "rpm creates no user"
    ok "rpm metadata, files, scripts"

    # Errors fail; warnings are printed for the record.
    lintian --fail-on error --suppress-tags-from-file /dev/null "$deb" || fail "lintian errors in $deb"
    ok "lintian: no errors"

    # Verify a copy of the unit whose binary paths point at the built ones.
    sed "s|/usr/bin/$pkg|$TARGET/release/$pkg|g" "systemd/$pkg.service" > "$WORK/$pkg.service"
    out=$(systemd-analyze verify "$WORK/$pkg.service" 2>&1 || true)
    if grep -v -e "Failed to resolve user" -e "Unknown user" <<<"$out" | grep -qi -e error -e "unknown" -e "invalid"; then
        fail "systemd-analyze verify $pkg.service: $out"
    fi
    ok "systemd-analyze verify"

    # Throwaway root: a dpkg database and the host's user database.
    ROOT="$WORK/root-$pkg"
    mkdir -p "$ROOT/var/lib/dpkg/info" "$ROOT/var/lib/dpkg/updates" "$ROOT/etc"
    : > "$ROOT/var/lib/dpkg/status"
    cp /etc/passwd /etc/group /etc/shadow /etc/gshadow "$ROOT/etc/" 2>/dev/null || cp /etc/passwd /etc/group "$ROOT/etc/"
    # systemctl must not touch this machine's systemd: the DPKG_ROOT-aware
    # helpers act on $ROOT, and a shim records anything else.
    mkdir -p "$WORK/shim"
    printf '#!/bin/sh\necho "systemctl $*" >> "%s/systemctl.log"\n' "$WORK" > "$WORK/shim/systemctl"
    chmod +x "$WORK/shim/systemctl"
    export PATH="$WORK/shim:$PATH"
    dpkg_root() { dpkg --root="$ROOT" --force-script-chrootless --force-not-root --force-depends --log=/dev/null "$@"; }

    dpkg_root -i "$deb" >/dev/null
    for f in /usr/bin/$pkg "$conf"; do [ -e "$ROOT$f" ] || fail "install: $f missing in the root"; done
    unit=$(find "$ROOT" -type f -name "$pkg.service" | head -1)
    [ -n "$unit" ] || fail "install: unit missing"
    # Enabled (a wants/ link), not started: it needs its config first.
    [ -L "$ROOT/etc/systemd/system/multi-user.target.wants/$pkg.service" ] || fail "install: unit not enabled"
    exec_bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
    [ -x "$ROOT$exec_bin" ] || fail "the unit's ExecStart $exec_bin is not installed"
    grep -q "^$pkg:" "$ROOT/etc/passwd" || fail "install: user $pkg not created"
    uid=$(grep "^$pkg:" "$ROOT/etc/passwd" | cut -d: -f3)
    [ "$(stat -c %u "$ROOT$state")" = "$uid" ] || fail "install: $state not owned by $pkg"
    if [ "$pkg" = spot-coordinator ]; then
        # AWS's identity certificates are not shipped: the shipped config
        # names the file the operator puts them in, and until it exists
        # validate (and the start) stops saying which file is missing.
        out=$("$ROOT/usr/bin/$pkg" validate --config "$ROOT$conf" 2>&1) && fail "validate passed without identity certificates"
        grep -q "identity-ca.pem" <<<"$out" || fail "validate does not name the missing identity_ca: $out"
        cp tests/fixtures/identity/test-ca.pem "$ROOT/etc/spot-coordinator/identity-ca.pem"
        sed -i "s|^identity_ca = .*|identity_ca = \"$ROOT/etc/spot-coordinator/identity-ca.pem\"|" "$ROOT$conf"
    fi
    "$ROOT/usr/bin/$pkg" validate --config "$ROOT$conf" >/dev/null || fail "validate with the shipped config"
    ok "install into a throwaway root: files, user, state dir, validate"

    # Upgrade (reinstall) keeps the state and an edited config.
    echo "journal" > "$ROOT$state/keep-me"
    echo "# edited by the operator" >> "$ROOT$conf"
    dpkg_root --force-confold -i "$deb" >/dev/null
    [ -f "$ROOT$state/keep-me" ] || fail "upgrade lost the state"
    grep -q "edited by the operator" "$ROOT$conf" || fail "upgrade clobbered the edited config"
    [ "$pkg" = spot-agent ] && echo "identity" > "$ROOT$state/journal.db"
    dpkg_root -r "$pkg" >/dev/null
    [ -f "$ROOT$state/keep-me" ] || fail "remove deleted the state"
    if [ "$pkg" = spot-agent ]; then
        # A reinstall must register a fresh identity: the journal is set aside.
        [ ! -e "$ROOT$state/journal.db" ] || fail "remove kept the agent's journal in place"
        ls "$ROOT$state"/journal.db.removed-* >/dev/null 2>&1 || fail "remove did not keep the journal aside"
        ok "remove sets the agent's journal aside"
    fi
    dpkg_root -P "$pkg" >/dev/null
    [ ! -e "$ROOT$state" ] || fail "purge kept the state"
    ok "upgrade keeps state and config, remove keeps state, purge deletes it"
done
echo "packaging checks passed"
