#!/usr/bin/env bash
# The .deb on a real Debian system, as an MDM would install it: as root, on a machine where
# systemd is not the running init (a CI machine, an image being built). Run by .ci/run after
# `make package`; it leaves the machine without holdfast, whatever happens.
#
#   packaging/tests/check_deb.sh [dist/holdfast_<version>_<arch>.deb]
#
# Checks: the installed files; a deploy.properties written before the install is checked
# and saved 0600 by the postinst, which starts nothing without systemd; HOLDFAST_DEPLOY_ARGS
# on a reinstall and with dpkg-reconfigure; bad arguments fail the install without showing
# the token; the installed daemon runs and stops; `dpkg -r` keeps the agent's files, and
# `dpkg -P` removes them all.
set -euo pipefail
cd "$(dirname "$0")/../.."

UNIT=holdfast-agent.service
UNIT_FILE=/lib/systemd/system/$UNIT
WANTS=/etc/systemd/system/multi-user.target.wants/$UNIT
MASK=/etc/systemd/system/$UNIT
AUTOSTART=/etc/xdg/autostart/holdfast-tray.desktop
CONF=/etc/holdfast
DEPLOY=$CONF/deploy.properties
FOLDERS=(/etc/holdfast /var/lib/holdfast /var/log/holdfast /run/holdfast)
# An authority nobody serves, on loopback: the daemon only retries.
URL=https://127.0.0.1:9
FIRST_TOKEN=0fb12341-246b-448d-b07f-c6573ad5ad02
SECOND_TOKEN=1fb12341-246b-448d-b07f-c6573ad5ad02
THIRD_TOKEN=2fb12341-246b-448d-b07f-c6573ad5ad02
OUT=$(mktemp -d)
daemon=""

fail() {
    echo "check_deb: FAIL: $*" >&2
    exit 1
}

check() {
    echo "ok: $*"
}

mode_of() {
    stat -c '%a %U:%G' "$1"
}

cleanup() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    dpkg -P holdfast >/dev/null 2>&1 || true
    rm -rf "${FOLDERS[@]}" "$OUT"
}

[ "$(id -u)" = 0 ] || fail "run it as root: it installs the package"
deb=${1:-}
if [ -z "$deb" ]; then
    shopt -s nullglob
    found=(dist/holdfast_*.deb)
    [ "${#found[@]}" = 1 ] || fail "give the .deb to check (dist/ has ${#found[@]}); make package builds it"
    deb=${found[0]}
fi
[ -f "$deb" ] || fail "$deb does not exist"
if dpkg-query -W holdfast >/dev/null 2>&1; then
    fail "holdfast is installed already; this check needs a machine without it"
fi
[ ! -e "$CONF" ] || fail "$CONF exists already; this check needs a machine without it"
[ ! -d /run/systemd/system ] || echo "note: systemd runs here; the service will start"
version=$(dpkg-deb -f "$deb" Version)
# From here on, whatever happens: no holdfast, no agent folders left behind.
trap cleanup EXIT
echo "== $deb (holdfast $version)"

echo "== install with a deploy.properties written beforehand, as an administrator would"
mkdir -p "$CONF"
chmod 0755 "$CONF"
printf '%s\r\n' "# written by the MDM" "DEPLOYMENT_URL=$URL" \
    "DEPLOYMENT_POLICY_TOKEN=$FIRST_TOKEN" "SOME_FUTURE_KEY=1" >"$DEPLOY"
chmod 0644 "$DEPLOY"
# apt-get rather than dpkg -i: it brings the Depends (bubblewrap) too.
apt-get install -y -q --no-install-recommends "./$deb" >"$OUT/install.out" 2>&1 ||
    { cat "$OUT/install.out"; fail "apt-get install ./$deb failed"; }
grep -q "Saved the installer arguments in $DEPLOY" "$OUT/install.out" ||
    { cat "$OUT/install.out"; fail "the postinst did not save the installer arguments"; }
grep -q "Warning: Installer argument 'SOME_FUTURE_KEY'" "$OUT/install.out" ||
    fail "the postinst did not warn of the unknown key"
! grep -q "$FIRST_TOKEN" "$OUT/install.out" || fail "the install printed the token"
check "installed; the postinst saved the arguments and did not print the token"

echo "== the files"
[ "$(/usr/bin/holdfast --version)" = "holdfast $version" ] || fail "/usr/bin/holdfast --version"
[ "$(readlink /usr/bin/holdfast)" = /opt/holdfast/holdfast ] || fail "/usr/bin/holdfast is not a link to /opt/holdfast/holdfast"
[ -x /opt/holdfast/holdfast ] || fail "/opt/holdfast/holdfast is not an executable"
[ -d /opt/holdfast/_internal ] || fail "/opt/holdfast/_internal is missing"
check "/usr/bin/holdfast -> /opt/holdfast/holdfast, says holdfast $version"
[ "$(mode_of "$UNIT_FILE")" = "644 root:root" ] || fail "$UNIT_FILE: $(mode_of "$UNIT_FILE")"
grep -qx 'ExecStart=/usr/bin/holdfast run' "$UNIT_FILE" || fail "$UNIT_FILE does not run /usr/bin/holdfast run"
systemd-analyze verify "$UNIT_FILE" || fail "systemd-analyze verify $UNIT_FILE"
check "$UNIT_FILE passes systemd-analyze verify"
[ "$(mode_of "$AUTOSTART")" = "644 root:root" ] || fail "$AUTOSTART: $(mode_of "$AUTOSTART")"
grep -qx 'Exec=holdfast tray' "$AUTOSTART" || fail "$AUTOSTART does not start holdfast tray"
grep -qx 'TryExec=/usr/bin/holdfast' "$AUTOSTART" || fail "$AUTOSTART has no TryExec"
if command -v desktop-file-validate >/dev/null; then
    desktop-file-validate "$AUTOSTART" || fail "desktop-file-validate $AUTOSTART"
fi
dpkg-query -W -f='${Conffiles}' holdfast | grep -q "$AUTOSTART" || fail "$AUTOSTART is not a conffile"
check "$AUTOSTART, a conffile"
dpkg-query -W -f='${Status}' bubblewrap | grep -q 'install ok installed' || fail "bubblewrap was not installed"
check "bubblewrap came with it"

echo "== the saved arguments; nothing started without systemd"
[ "$(mode_of "$CONF")" = "700 root:root" ] || fail "$CONF: $(mode_of "$CONF")"
[ "$(mode_of "$DEPLOY")" = "600 root:root" ] || fail "$DEPLOY: $(mode_of "$DEPLOY")"
grep -qx "DEPLOYMENT_POLICY_TOKEN=$FIRST_TOKEN" "$DEPLOY" || fail "$DEPLOY lost the token"
grep -qx "DEPLOYMENT_URL=$URL" "$DEPLOY" || fail "$DEPLOY lost the URL"
! grep -q SOME_FUTURE_KEY "$DEPLOY" || fail "$DEPLOY kept the unknown key"
check "$DEPLOY normalised, 0600 in a 0700 folder"
[ -L "$WANTS" ] || fail "$UNIT is not enabled ($WANTS missing)"
check "$UNIT enabled for the next boot"
if [ ! -d /run/systemd/system ]; then
    [ ! -e /run/holdfast ] || fail "something started the agent: /run/holdfast exists"
    ! pgrep -f '^/opt/holdfast/holdfast run' >/dev/null || fail "the agent runs without systemd"
    check "without systemd, nothing was started"
fi

echo "== HOLDFAST_DEPLOY_ARGS on a reinstall (the upgrade path)"
HOLDFAST_DEPLOY_ARGS="DEPLOYMENT_URL=$URL&DEPLOYMENT_POLICY_TOKEN=$SECOND_TOKEN" \
    dpkg -i "$deb" >"$OUT/reinstall.out" 2>&1 || { cat "$OUT/reinstall.out"; fail "dpkg -i again"; }
grep -qx "DEPLOYMENT_POLICY_TOKEN=$SECOND_TOKEN" "$DEPLOY" || fail "HOLDFAST_DEPLOY_ARGS was not saved"
[ "$(mode_of "$DEPLOY")" = "600 root:root" ] || fail "$DEPLOY: $(mode_of "$DEPLOY")"
! grep -q "$SECOND_TOKEN" "$OUT/reinstall.out" || fail "the reinstall printed the token"
check "HOLDFAST_DEPLOY_ARGS replaced the arguments"

echo "== bad arguments fail the install, name the key, keep the saved ones, hide the token"
if HOLDFAST_DEPLOY_ARGS="DEPLOYMENT_URL=http://127.0.0.1:9&DEPLOYMENT_POLICY_TOKEN=$FIRST_TOKEN" \
    dpkg -i "$deb" >"$OUT/bad.out" 2>&1; then
    fail "dpkg -i with an http:// URL succeeded"
fi
grep -q 'holdfast: installer argument DEPLOYMENT_URL' "$OUT/bad.out" ||
    { cat "$OUT/bad.out"; fail "the failure does not name DEPLOYMENT_URL"; }
! grep -q "$FIRST_TOKEN" "$OUT/bad.out" || fail "the failed install printed the token"
grep -qx "DEPLOYMENT_POLICY_TOKEN=$SECOND_TOKEN" "$DEPLOY" || fail "the failed install changed $DEPLOY"
dpkg --configure holdfast >"$OUT/configure.out" 2>&1 ||
    { cat "$OUT/configure.out"; fail "dpkg --configure holdfast after fixing nothing"; }
check "refused with one line; dpkg --configure then finished it with the saved arguments"

echo "== new arguments later: dpkg-reconfigure with HOLDFAST_DEPLOY_ARGS"
HOLDFAST_DEPLOY_ARGS="DEPLOYMENT_URL=$URL&DEPLOYMENT_POLICY_TOKEN=$THIRD_TOKEN" \
    dpkg-reconfigure holdfast >"$OUT/reconfigure.out" 2>&1 ||
    { cat "$OUT/reconfigure.out"; fail "dpkg-reconfigure holdfast"; }
grep -qx "DEPLOYMENT_POLICY_TOKEN=$THIRD_TOKEN" "$DEPLOY" || fail "dpkg-reconfigure did not save them"
! grep -q "$THIRD_TOKEN" "$OUT/reconfigure.out" || fail "dpkg-reconfigure printed the token"
check "dpkg-reconfigure saved the new arguments"

echo "== the installed daemon runs, and stops on SIGTERM"
/usr/bin/holdfast run >"$OUT/run.out" 2>&1 &
daemon=$!
for _ in $(seq 100); do
    [ -e /run/holdfast/holdfast.pid ] && break
    kill -0 "$daemon" 2>/dev/null || { cat "$OUT/run.out"; fail "holdfast run exited"; }
    sleep 0.2
done
/usr/bin/holdfast status --json >"$OUT/status.json" || fail "holdfast status --json"
grep -q '"daemon_running": true' "$OUT/status.json" || { cat "$OUT/status.json"; fail "status: not running"; }
kill -TERM "$daemon"
code=0
wait "$daemon" || code=$?
daemon=""
[ "$code" = 0 ] || fail "holdfast run exited $code on SIGTERM"
for folder in "${FOLDERS[@]}"; do
    [ -d "$folder" ] || fail "the daemon did not make $folder"
done
check "holdfast run made its folders, answered status, exited 0 on SIGTERM"

gone() {
    [ ! -e "$1" ] && [ ! -L "$1" ]
}

echo "== dpkg -r keeps the settings, identity and logs"
dpkg -r holdfast >"$OUT/remove.out" 2>&1 || { cat "$OUT/remove.out"; fail "dpkg -r holdfast"; }
for path in /usr/bin/holdfast /opt/holdfast "$UNIT_FILE"; do
    gone "$path" || fail "dpkg -r left $path"
done
# As dh_installsystemd does: masked until purged, so the leftover links start nothing.
[ "$(readlink "$MASK")" = /dev/null ] || fail "dpkg -r did not mask $UNIT"
for kept in "$DEPLOY" /var/lib/holdfast/identity /var/log/holdfast/agent.log; do
    [ -f "$kept" ] || fail "dpkg -r removed $kept"
done
check "removed the program and the unit (masked); kept $DEPLOY, the identity and the log"

echo "== dpkg -P removes everything"
dpkg -P holdfast >"$OUT/purge.out" 2>&1 || { cat "$OUT/purge.out"; fail "dpkg -P holdfast"; }
for path in "${FOLDERS[@]}" "$AUTOSTART" "$WANTS" "$MASK" /opt/holdfast /usr/share/doc/holdfast; do
    gone "$path" || fail "dpkg -P left $path"
done
! dpkg-query -W holdfast >/dev/null 2>&1 || fail "dpkg still knows holdfast after the purge"
check "purged: no folder, unit, link or conffile left"
echo "check_deb: all checks passed"
