#!/bin/sh
# Jamf Pro policy script, priority "Before": writes Holdfast's installer arguments where the
# agent reads them, before the same policy installs Holdfast.pkg (docs/deployment.md).
#
# Parameter 4: the CP_ARGS string, as `holdfast-authority policy show --org ORG` prints it:
#              DEPLOYMENT_URL=https://host:4285&DEPLOYMENT_POLICY_TOKEN=...&SSL_WHITELIST=...
# Parameter 5: CP_SILENT, true or false (empty: not written; the agent's default is true).
# Parameter 6: DEVICE_CLOAKED, true or false (empty: not written; the default is false).
# (Jamf passes the mount point, the computer name and the user name as $1 to $3.)
#
# The file is replaced whole, on a first install and on an upgrade alike: the package keeps it
# as it is, and the agent rereads it, so new arguments take effect without a reinstall.
set -eu

cp_args=${4:?"parameter 4 (the CP_ARGS string) is empty"}
base="/Library/Application Support/Holdfast"
conf="$base/conf"

# What gets pasted around the string: surrounding quotes, a leading CP_ARGS=.
cp_args=${cp_args#\"}
cp_args=${cp_args%\"}
cp_args=${cp_args#CP_ARGS=}

mkdir -p "$base"
umask 077
mkdir -p "$conf"
chown 0:0 "$conf"
chmod 0700 "$conf"
tmp=$(mktemp "$conf/.deploy.properties.XXXXXX")
{
    echo "# Holdfast installer arguments, written by a Jamf Pro policy. Root's alone: the token."
    printf '%s\n' "$cp_args" | tr '&' '\n'
    if [ -n "${5:-}" ]; then
        printf 'CP_SILENT=%s\n' "$5"
    fi
    if [ -n "${6:-}" ]; then
        printf 'DEVICE_CLOAKED=%s\n' "$6"
    fi
} >"$tmp"
chmod 0600 "$tmp"
mv -f "$tmp" "$conf/deploy.properties"
echo "Wrote $conf/deploy.properties"
