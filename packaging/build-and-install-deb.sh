#!/usr/bin/env bash
# Build the spambridge .deb from this checkout, install it with dpkg -i, and check the installed
# package the way an admin meets it:
#   - `spambridge --version` prints the version in pyproject.toml
#   - /etc/spambridge/spambridge.toml passes `spambridge check-config` (the shipped one on a
#     first install; on an upgrade the admin's own, which dpkg keeps)
#   - the milter starts as user spambridge with NO network (a fresh network namespace where not
#     even loopback is up), opens /var/spool/postfix/spambridge/spambridge.sock with group postfix
#     and mode 0660, and stops cleanly on SIGTERM
# The package stays installed. Output: dist/spambridge_VERSION_ARCH.deb (or $DEB_OUT).
# SPAMBRIDGE_DEB=path/to/spambridge_*.deb installs and checks that package instead of building.
# Run it again to upgrade. Without a terminal on stdin (a script, CI) dpkg cannot ask about an
# /etc/spambridge/spambridge.toml you changed when the package ships a new one
# (DEBIAN_FRONTEND=noninteractive does not reach that question): yours is kept and the package's
# lands beside it as spambridge.toml.dpkg-dist. With a terminal, dpkg asks.
# A milter already listening on the socket (the service, restarted by the upgrade) is left alone.
# Needs root (apt-get for build dependencies, dpkg -i); CI calls it from tests/integration/test_deb.py.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${DEB_OUT:-$here/dist}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

step() { printf '==> %s\n' "$*"; }

work=$(mktemp -d /tmp/spambridge-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Build the .deb into $out; sets $deb and $version.
build() {
    # -- build dependencies (packaging/debian/control Build-Depends) ----------------------------
    need=(debhelper dh-virtualenv dpkg-dev fakeroot python3-dev python3-venv libmilter-dev gcc)
    missing=()
    for p in "${need[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        step "installing build dependencies: ${missing[*]}"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}"
    fi

    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/pyproject.toml" | head -1)
    deb_version=$(dpkg-parsechangelog -l "$here/packaging/debian/changelog" -S Version)
    if [ "$version" != "$deb_version" ]; then
        echo "pyproject.toml says $version but packaging/debian/changelog says $deb_version" >&2
        exit 1
    fi

    # -- build in a copy, so the checkout stays clean (dpkg-buildpackage writes to ..) -----------
    src="$work/spambridge-$version"
    mkdir -p "$src"
    step "copying the source tree to $src"
    if git -C "$here" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$here" && git ls-files -z --cached --others --exclude-standard \
            | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$src"
    else
        tar -C "$here" --exclude=.venv --exclude=dist --exclude=.git -cf - . | tar -xf - -C "$src"
    fi
    rm -rf "$src/debian"
    cp -a "$here/packaging/debian" "$src/debian"

    step "dpkg-buildpackage -us -uc -b"
    start=$(date +%s)
    (cd "$src" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 || {
        tail -n 80 "$work/build.log" >&2
        echo "dpkg-buildpackage failed (log above)" >&2
        exit 1
    }
    arch=$(dpkg --print-architecture)
    deb="$work/spambridge_${version}_${arch}.deb"
    mkdir -p "$out"
    cp "$deb" "$out/"
    deb="$out/$(basename "$deb")"
    step "built $deb in $(( $(date +%s) - start ))s ($(du -h "$deb" | cut -f1))"
}

deb=${SPAMBRIDGE_DEB:-}
if [ -z "$deb" ]; then
    build
else
    [ -f "$deb" ] || { echo "SPAMBRIDGE_DEB=$deb: no such file" >&2; exit 1; }
    deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
    # what `spambridge --version` says: the upstream part of the Debian version
    version=$(dpkg-deb -f "$deb" Version)
    version=${version#*:}
    version=${version%-*}
    step "installing $deb (SPAMBRIDGE_DEB): not building"
fi

# -- install --------------------------------------------------------------------------------------
conf=/etc/spambridge/spambridge.toml
confopts=()
if [ ! -t 0 ]; then
    # nobody to answer dpkg's conffile question: it would stop with "end of file on stdin at
    # conffile prompt" and leave the package unconfigured. Keep the admin's file.
    confopts=(--force-confdef --force-confold)
fi
aptopts=()
for o in "${confopts[@]}"; do aptopts+=(-o "Dpkg::Options::=$o"); done
dist_before=$(stat -c %Z "$conf.dpkg-dist" 2>/dev/null || true)
step "dpkg ${confopts[*]} -i $deb"
if ! $SUDO env DEBIAN_FRONTEND=noninteractive dpkg "${confopts[@]}" -i "$deb"; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -f "${aptopts[@]}"
fi
dpkg-query -W -f='${Status}\n' spambridge | grep -q "install ok installed"
if [ -e "$conf.dpkg-dist" ] && [ "$(stat -c %Z "$conf.dpkg-dist")" != "$dist_before" ]; then
    echo "note: kept your $conf; the package's new one is $conf.dpkg-dist:" \
        "compare them (diff -u $conf $conf.dpkg-dist) and merge what you want"
fi

# -- check what got installed ---------------------------------------------------------------------
step "spambridge --version"
got=$(/usr/bin/spambridge --version)
echo "$got"
[ "$got" = "spambridge $version" ] || { echo "expected 'spambridge $version'" >&2; exit 1; }

step "spambridge check-config ($conf)"
/usr/bin/spambridge check-config --no-postfix --config "$conf"

step "man pages"
for page in /usr/share/man/man8/spambridge.8.gz /usr/share/man/man5/spambridge.toml.5.gz; do
    [ -s "$page" ] || { echo "missing $page" >&2; exit 1; }
done
getent passwd spambridge >/dev/null || { echo "user spambridge was not created" >&2; exit 1; }

if command -v systemd-analyze >/dev/null 2>&1; then
    step "systemd-analyze verify spambridge.service"
    unit=$(dpkg -L spambridge | grep '/spambridge\.service$' | head -1)
    out_verify=$(systemd-analyze verify "$unit" 2>&1 || true)
    echo "${out_verify:-clean}"
    if printf '%s\n' "$out_verify" | grep -q 'spambridge\.service'; then
        echo "the installed unit has problems (above)" >&2
        exit 1
    fi
fi

sock=/var/spool/postfix/spambridge/spambridge.sock
if [ -n "$(ss -xlnH src "$sock" 2>/dev/null)" ]; then
    # an upgrade: the service (which dpkg restarted) already listens there. A second milter
    # would only fail with "in use by another running milter"; leave the running one alone.
    step "a milter already listens on $sock (systemctl status spambridge): not starting another"
    perms=$(stat -c '%U:%G %a' "$sock")
    echo "socket: $perms"
    [ "$perms" = "spambridge:postfix 660" ] || { echo "socket must be spambridge:postfix 660" >&2; exit 1; }
elif getent group postfix >/dev/null && [ -d /var/spool/postfix/spambridge ]; then
    step "start the milter as user spambridge without network, socket $sock"
    log="$work/run.log"
    # the installed config as it is (engine bayes: creates its empty database on first start)
    # unshare and setpriv exec (no fork), so $! is the milter itself and gets our SIGTERM
    $SUDO unshare --net setpriv --reuid=spambridge --regid=spambridge --init-groups \
        /usr/bin/spambridge run \
        --config "$conf" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 150); do
        [ -S "$sock" ] && grep -q "listening on" "$log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    # libmilter installs its SIGTERM handling only once milter.main() runs, a moment after
    # the socket opens: give it that moment, so the stop below tests the graceful path
    sleep 1
    if [ ! -S "$sock" ]; then
        cat "$log" >&2
        kill "$pid" 2>/dev/null || true
        echo "the installed milter did not open $sock" >&2
        exit 1
    fi
    perms=$(stat -c '%U:%G %a' "$sock")
    echo "socket: $perms"
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    cat "$log"
    [ "$perms" = "spambridge:postfix 660" ] || { echo "socket must be spambridge:postfix 660" >&2; exit 1; }
    [ "$rc" -eq 0 ] || { echo "milter exited $rc after SIGTERM" >&2; exit 1; }
else
    echo "Postfix is not installed here: skipping the socket check (group postfix missing)"
fi
step "OK: $deb installed and working"
