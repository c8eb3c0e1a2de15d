#!/bin/sh
# Writes Holdfast's installer arguments where the agent reads them, with the values written
# into the script itself: for a Munki `preinstall_script`, an Intune macOS PKG app's
# pre-install script, or a Jamf script without parameters (docs/deployment.md). The values
# never appear in a process listing, as script parameters do.
#
# Replace the lines between the PROPERTIES markers with the deploy.properties form that
# `holdfast-authority policy show --org ORG` prints.
set -eu

base="/Library/Application Support/Holdfast"
conf="$base/conf"

mkdir -p "$base"
umask 077
mkdir -p "$conf"
chown 0:0 "$conf"
chmod 0700 "$conf"
tmp=$(mktemp "$conf/.deploy.properties.XXXXXX")
cat >"$tmp" <<'PROPERTIES'
DEPLOYMENT_URL=https://backup.example.com:4285
DEPLOYMENT_POLICY_TOKEN=TOKEN
SSL_WHITELIST=SHA1_FINGERPRINT
CP_SILENT=true
DEVICE_CLOAKED=false
PROPERTIES
chmod 0600 "$tmp"
mv -f "$tmp" "$conf/deploy.properties"
echo "Wrote $conf/deploy.properties"
