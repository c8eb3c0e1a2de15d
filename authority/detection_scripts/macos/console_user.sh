#!/bin/bash
# Holdfast user detection for macOS: the user logged in at the console (the screen).
#
# What it detects: the console user from `scutil` (State:/Users/ConsoleUser); nobody while the
# login window shows (`loginwindow`). The home is the user's NFSHomeDirectory from
# `dscl . -read /Users/<user>`, so it also works for network and mobile accounts whose home is
# not /Users/<user>.
#
# When to use it: Macs whose organization authenticates with LDAP or SSO (the account's short
# name is the directory's user name). For local authentication, where user names are e-mail
# addresses, use console_user_email.sh; to keep administrators' and set-up accounts from being
# registered (root, admin, _mbsetupuser), use console_user_exclude.sh.
#
# Output (CONTRACT.md section 3): AGENT_USERNAME=<name> and AGENT_USER_HOME=<home>, or nothing
# at all when no user qualifies (exit 0: the agent retries on its registration schedule).
# It writes nothing but its log: LOG_FILE, appended to only when its folder exists (set
# LOG_FILE="" for none); log lines also go to stderr. It needs no network.
#
# Written like the vendor's published macOS scripts (functions, bash syntax, its own log) and
# for macOS's bash 3.2; it also runs without its #! line, as the agent then uses /bin/bash.
# scutil and dscl exist only on macOS: the project's tests run it on Linux with stubs of both.
#
# Settings: the agent runs the script with a clean environment, so edit them here.
LOG_FILE="/Library/Logs/Holdfast/userDetect_Result.log"

function writeLog {
    local message
    message="$(date '+%Y-%m-%d %H:%M:%S') ${0##*/}: $*"
    echo "$message" >&2
    if [[ -n "$LOG_FILE" && -d "${LOG_FILE%/*}" ]]; then
        { echo "$message" >>"$LOG_FILE"; } 2>/dev/null
    fi
}

function consoleUser {
    echo "show State:/Users/ConsoleUser" | scutil 2>/dev/null |
        awk '$1 == "Name" && $2 == ":" { print $3; exit }'
}

# dscl prints a value without spaces on the key's line and one with spaces on the next line.
function homeOf {
    dscl . -read "/Users/$1" NFSHomeDirectory 2>/dev/null | awk '
        /^NFSHomeDirectory:/ {
            sub(/^NFSHomeDirectory:[ \t]*/, "")
            if ($0 != "") { print $1; exit }
            more = 1
            next
        }
        more { sub(/^[ \t]+/, ""); sub(/[ \t]+$/, ""); print; exit }'
}

user=$(consoleUser)
if [[ -z "$user" || "$user" == "loginwindow" ]]; then
    writeLog "No user at the console (${user:-none}). Will retry user detection in 60 minutes."
    exit 0
fi
userHome=$(homeOf "$user")
if [[ -z "$userHome" ]]; then
    writeLog "No home folder for $user in the directory. Will retry user detection in 60 minutes."
    exit 0
fi
writeLog "Detected console user $user, home $userHome"
echo "AGENT_USERNAME=$user"
echo "AGENT_USER_HOME=$userHome"
