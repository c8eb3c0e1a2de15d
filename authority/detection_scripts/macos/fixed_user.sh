#!/bin/bash
# Holdfast user detection for macOS: always reports the same user, set below.
#
# When to use it: test organizations with test devices, and demos; never for real users (every
# device with this script registers as the same user). Copy this file, edit the two lines below
# (keep the double quotes), and give the copy to `holdfast-authority policy create --script
# macos=PATH`. The agent runs detection scripts with a clean environment, so the values must be
# in the script itself: environment variables set on the device do not reach it.
#   FIXED_USERNAME   the user name to register: an e-mail address for local authentication,
#                    the directory's user name for LDAP or SSO
#   FIXED_USER_HOME  the absolute path of the folder to back up (it should exist on the device)
# With either one empty the script prints nothing, which the agent reads as "no user yet".
#
# Output (CONTRACT.md section 3): AGENT_USERNAME=<name> and AGENT_USER_HOME=<home>. It reads and
# writes nothing and needs no network.
FIXED_USERNAME="user@example.com"
FIXED_USER_HOME="/Users/user"

if [[ -n "$FIXED_USERNAME" && -n "$FIXED_USER_HOME" ]]; then
    printf 'AGENT_USERNAME=%s\n' "$FIXED_USERNAME"
    printf 'AGENT_USER_HOME=%s\n' "$FIXED_USER_HOME"
fi
