#!/bin/bash
# Holdfast user detection for Linux: the user of the active graphical or console session,
# skipping the accounts listed in EXCLUDE.
#
# What it detects, first match wins:
#   1. systemd-logind (`loginctl`): a local session of class "user" that is not closing; an
#      active graphical one (x11, wayland, mir) before any other active one, before the rest;
#   2. utmp (`who`): the first user on a local terminal or display (remote logins are skipped);
#   3. nobody logged in: the most recently modified folder under HOMES_ROOT that is the home
#      of its owner.
# Only regular accounts count: uid 1000 or more and not nobody (65534), as `getent passwd`
# reports them, so local, LDAP and sssd accounts all work. The home comes from `getent passwd`.
#
# When to use it: devices that administrators set up or image (gold images) before the user
# gets them: an excluded account is never registered, the script goes on to the next
# candidate (another session, a utmp login, the most recent other home) and prints nothing
# when none is left, so the agent waits for the real user. EXCLUDE holds account names or
# shell patterns (admin-* is every name starting with admin-), compared ignoring case.
# To also report an e-mail address, copy the EMAIL_DOMAIN lines of console_user_email.sh.
#
# Output (CONTRACT.md section 3): AGENT_USERNAME=<name> and AGENT_USER_HOME=<home>, or nothing
# at all when no user qualifies (exit 0: the agent retries on its registration schedule).
# It writes nothing but its log: LOG_FILE, appended to only when its folder exists (set
# LOG_FILE="" for none); log lines also go to stderr. It needs no network.
#
# Settings: the agent runs the script with a clean environment, so edit them here.
EXCLUDE=("root" "admin" "admin-*")
LOG_FILE="/var/log/holdfast/userDetect_Result.log"
HOMES_ROOT="/home"

log_line() {
    local line
    line="$(date '+%Y-%m-%d %H:%M:%S') ${0##*/}: $*"
    echo "$line" >&2
    if [[ -n "$LOG_FILE" && -d "${LOG_FILE%/*}" ]]; then
        { echo "$line" >>"$LOG_FILE"; } 2>/dev/null
    fi
}

excluded() {
    local pattern
    shopt -s nocasematch
    for pattern in "${EXCLUDE[@]}"; do
        # shellcheck disable=SC2053 # the pattern is a shell pattern on purpose
        if [[ "$1" == $pattern ]]; then
            shopt -u nocasematch
            log_line "Skipping excluded account $1"
            return 0
        fi
    done
    shopt -u nocasematch
    return 1
}

# person NAME_OR_UID: sets USER_NAME and USER_HOME when it is a regular account with a home
# that is not excluded.
person() {
    local name="" uid="" home=""
    [[ -n "$1" ]] || return 1
    IFS=: read -r name _ uid _ _ home _ < <(getent passwd "$1" 2>/dev/null)
    [[ -n "$name" && -n "$home" && "$uid" =~ ^[0-9]+$ ]] || return 1
    ((uid >= 1000 && uid != 65534)) || return 1
    excluded "$name" && return 1
    USER_NAME=$name
    USER_HOME=$home
}

from_loginctl() {
    local session key value name remote class type active state rank best=0 best_name best_home
    command -v loginctl >/dev/null 2>&1 || return 1
    while read -r session _; do
        [[ -n "$session" ]] || continue
        name="" remote="" class="" type="" active="" state=""
        while IFS='=' read -r key value; do
            case "$key" in
                Name) name=$value ;;
                Remote) remote=$value ;;
                Class) class=$value ;;
                Type) type=$value ;;
                Active) active=$value ;;
                State) state=$value ;;
            esac
        done < <(loginctl show-session "$session" \
            -p Name -p Remote -p Class -p Type -p Active -p State 2>/dev/null)
        [[ "$remote" == no && "$class" == user && "$state" != closing ]] || continue
        rank=1
        if [[ "$active" == yes ]]; then
            rank=2
            [[ "$type" == x11 || "$type" == wayland || "$type" == mir ]] && rank=3
        fi
        ((rank > best)) || continue
        person "$name" || continue
        best=$rank best_name=$USER_NAME best_home=$USER_HOME
    done < <(loginctl list-sessions --no-legend 2>/dev/null)
    ((best > 0)) || return 1
    USER_NAME=$best_name
    USER_HOME=$best_home
}

from_who() {
    local name rest host
    command -v who >/dev/null 2>&1 || return 1
    while read -r name rest; do
        # A remote login ends in (host); a local one in nothing, (:0) or (tty2).
        if [[ "$rest" =~ \(([^\)]*)\)[[:space:]]*$ ]]; then
            host=${BASH_REMATCH[1]}
            [[ "$host" == :* || "$host" == tty* ]] || continue
        fi
        person "$name" && return 0
    done < <(who 2>/dev/null)
    return 1
}

from_recent_home() {
    local root=${HOMES_ROOT%/} dir owner stamp newest=-1 found_name="" found_home=""
    for dir in "$root"/*; do
        [[ -d "$dir" && ! -L "$dir" ]] || continue
        owner="" stamp=""
        read -r owner stamp < <(stat -c '%u %Y' -- "$dir" 2>/dev/null)
        [[ "$owner" =~ ^[0-9]+$ && "$stamp" =~ ^[0-9]+$ ]] || continue
        ((stamp > newest)) || continue
        person "$owner" || continue
        [[ "${USER_HOME%/}" == "$dir" ]] || continue
        newest=$stamp found_name=$USER_NAME found_home=$USER_HOME
    done
    [[ -n "$found_name" ]] || return 1
    USER_NAME=$found_name
    USER_HOME=$found_home
}

USER_NAME=""
USER_HOME=""
if from_loginctl; then
    how="logind session"
elif from_who; then
    how="utmp login"
elif from_recent_home; then
    how="most recently used home under $HOMES_ROOT"
else
    log_line "No user detected (no local session, no local login, no regular user's home" \
        "under $HOMES_ROOT). Will retry user detection in 60 minutes."
    exit 0
fi
log_line "Detected user $USER_NAME (from the $how), home $USER_HOME"
printf 'AGENT_USERNAME=%s\n' "$USER_NAME"
printf 'AGENT_USER_HOME=%s\n' "$USER_HOME"
