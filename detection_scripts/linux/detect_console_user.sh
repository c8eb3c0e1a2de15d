#!/bin/bash
# Holdfast user detection for Linux: prints the user of the graphical (or console) session.
#
# Output (CONTRACT.md section 3): AGENT_USERNAME=<name> and AGENT_USER_HOME=<home>, or
# nothing when no user is logged in yet (the agent retries on its registration schedule).
# Service accounts are never reported. To append an e-mail domain (organizations with
# local authentication), set EMAIL_DOMAIN below.
EMAIL_DOMAIN=""

is_service_account() {
    case "$1" in
        root|admin|admin-*|gdm|lightdm|sddm|nobody|"") return 0 ;;
    esac
    local uid
    uid=$(getent passwd "$1" | cut -d: -f3)
    [[ -z "$uid" || "$uid" -lt 1000 ]]
}

candidate=""
# 1. Active graphical or console sessions from systemd-logind, local seats first.
if command -v loginctl >/dev/null 2>&1; then
    while read -r session _; do
        [[ -z "$session" ]] && continue
        props=$(loginctl show-session "$session" -p Name -p Remote -p Active -p Class 2>/dev/null)
        name=$(sed -n 's/^Name=//p' <<<"$props")
        if grep -q '^Remote=no' <<<"$props" && grep -q '^Class=user' <<<"$props" \
            && ! is_service_account "$name"; then
            candidate="$name"
            grep -q '^Active=yes' <<<"$props" && break
        fi
    done < <(loginctl list-sessions --no-legend 2>/dev/null)
fi
# 2. utmp: the first non-service user on a local terminal or display.
if [[ -z "$candidate" ]] && command -v who >/dev/null 2>&1; then
    while read -r name _; do
        if ! is_service_account "$name"; then candidate="$name"; break; fi
    done < <(who 2>/dev/null)
fi

[[ -z "$candidate" ]] && exit 0
home=$(getent passwd "$candidate" | cut -d: -f6)
[[ -z "$home" ]] && exit 0
username="$candidate"
[[ -n "$EMAIL_DOMAIN" ]] && username="$candidate@$EMAIL_DOMAIN"
echo "AGENT_USERNAME=$username"
echo "AGENT_USER_HOME=$home"
