# Holdfast user detection for Windows (PowerShell): always reports the same user, set below.
#
# When to use it: test organizations with test devices, and demos; never for real users (every
# device with this script registers as the same user). Copy this file, edit the two lines below
# (keep the quotes), and give the copy to `holdfast-authority policy create --script
# windows=PATH`. The agent runs detection scripts with a clean environment, so the values must
# be in the script itself: environment variables set on the device do not reach it.
#   FIXED_USERNAME   the user name to register: an e-mail address for local authentication,
#                    the directory's user name for LDAP or SSO
#   FIXED_USER_HOME  the absolute path of the folder to back up (it should exist on the device)
# With either one empty the script prints nothing, which the agent reads as "no user yet".
# fixed_user.bat does the same as a batch file.
#
# Output (CONTRACT.md section 3): AGENT_USERNAME=<name> and AGENT_USER_HOME=<home>. It reads and
# writes nothing and needs no network. MANUAL-CHECK.md describes the check on a Windows machine.
$FIXED_USERNAME = "user@example.com"
$FIXED_USER_HOME = "C:\Users\user"

try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
if ($FIXED_USERNAME -and $FIXED_USER_HOME) {
    Write-Output "AGENT_USERNAME=$FIXED_USERNAME"
    Write-Output "AGENT_USER_HOME=$FIXED_USER_HOME"
}
exit 0
