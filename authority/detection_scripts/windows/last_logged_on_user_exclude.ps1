# Holdfast user detection for Windows (PowerShell): the user who last signed in to this device.
# Accounts listed in EXCLUDE are skipped.
#
# What it detects, first match wins:
#   1. LastLoggedOnUser under HKLM\Software\Microsoft\Windows\CurrentVersion\Authentication\LogonUI
#      (the user the sign-in screen offers), with its SID from LastLoggedOnUserSID;
#   2. when that value is missing or that user has no profile here: the owner of a running
#      explorer.exe (the desktop shell).
# The domain prefix is stripped (CORP\alice and .\alice become alice). The home is LocalPath of
# the Win32_UserProfile whose SID is the user's, so a profile folder that is not
# C:\Users\<name> (alice.CORP, renamed accounts) is reported where it really is.
#
# When to use it: devices that administrators set up or image (gold images) before the user
# gets them: an excluded account is never registered, the script goes on to the next
# candidate (the owners of explorer.exe) and prints nothing when none is left, so the agent
# waits for the real user. $EXCLUDE holds account names (without domain) or wildcard patterns
# ('admin-*' is every name starting with admin-), compared ignoring case; defaultuser0 is the
# account Windows set-up (OOBE) runs as. To also report an e-mail address, copy the
# EMAIL_DOMAIN lines of last_logged_on_user_email.ps1. last_logged_on_user_exclude.bat is the
# batch-file version.
#
# Output (CONTRACT.md section 3): AGENT_USERNAME=<name> and AGENT_USER_HOME=<home>, or nothing
# at all when no user qualifies (exit 0: the agent retries on its registration schedule).
# It writes nothing but its log: LOG_FILE, appended to only when its folder exists (set
# $LOG_FILE = '' for none); log lines also go to stderr. It reads the registry and WMI only.
# It runs as SYSTEM under Windows PowerShell 5.1 or PowerShell 7. It cannot run in the
# project's tests: MANUAL-CHECK.md describes the check on a Windows machine.
#
# Settings: the agent runs the script with a clean environment, so edit them here.
$EXCLUDE = @('Administrator', 'admin', 'admin-*', 'defaultuser0')
$LOG_FILE = 'C:\ProgramData\Holdfast\log\userDetect_Result.log'

$LogonUIKey = 'HKLM:\Software\Microsoft\Windows\CurrentVersion\Authentication\LogonUI'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }

function Write-Log([string]$Message) {
    $line = '{0} {1}: {2}' -f (Get-Date -Format 'yyyy-MM-dd HH:mm:ss'), (Split-Path -Leaf $PSCommandPath), $Message
    [Console]::Error.WriteLine($line)
    if ($LOG_FILE -and (Test-Path -LiteralPath (Split-Path -Parent $LOG_FILE) -PathType Container)) {
        try { Add-Content -LiteralPath $LOG_FILE -Value $line -Encoding UTF8 -ErrorAction Stop } catch { }
    }
}

function Get-SidOf([string]$Account) {
    if ($Account.StartsWith('.\')) { $Account = $Account.Substring(2) }
    try {
        $ntAccount = New-Object System.Security.Principal.NTAccount($Account)
        $ntAccount.Translate([System.Security.Principal.SecurityIdentifier]).Value
    } catch { $null }
}

function Get-LastLoggedOnUser {
    $logonUI = Get-ItemProperty -LiteralPath $LogonUIKey -ErrorAction SilentlyContinue
    if (-not $logonUI -or -not $logonUI.LastLoggedOnUser) { return }
    $sid = $logonUI.LastLoggedOnUserSID
    if (-not $sid) { $sid = Get-SidOf $logonUI.LastLoggedOnUser }
    [pscustomobject]@{
        Name = ($logonUI.LastLoggedOnUser -split '\\')[-1]
        Sid = $sid
        Source = 'LastLoggedOnUser'
    }
}

function Get-ExplorerOwners {
    Get-CimInstance -ClassName Win32_Process -Filter "Name = 'explorer.exe'" -ErrorAction SilentlyContinue |
        ForEach-Object {
            $owner = Invoke-CimMethod -InputObject $_ -MethodName GetOwner -ErrorAction SilentlyContinue
            $ownerSid = Invoke-CimMethod -InputObject $_ -MethodName GetOwnerSid -ErrorAction SilentlyContinue
            if ($owner -and $owner.User) {
                [pscustomobject]@{ Name = $owner.User; Sid = $ownerSid.Sid; Source = 'explorer.exe' }
            }
        }
}

function Get-ProfilePath([string]$Sid) {
    if ($Sid -notmatch '^S-1-[0-9-]+$') { return }
    $userProfile = Get-CimInstance -ClassName Win32_UserProfile -Filter "SID = '$Sid'" -ErrorAction SilentlyContinue |
        Select-Object -First 1
    if ($userProfile -and $userProfile.LocalPath) { $userProfile.LocalPath }
}

# The candidate with its home, when it qualifies.
function Resolve-User($Candidate) {
    if (-not $Candidate -or -not $Candidate.Name) { return }
    foreach ($pattern in $EXCLUDE) {
        if ($Candidate.Name -like $pattern) {
            Write-Log "Skipping excluded account $($Candidate.Name) (from $($Candidate.Source))"
            return
        }
    }
    $userHome = Get-ProfilePath $Candidate.Sid
    if (-not $userHome) {
        Write-Log "No profile on this device for $($Candidate.Name) (from $($Candidate.Source))"
        return
    }
    [pscustomobject]@{ Name = $Candidate.Name; Home = $userHome; Source = $Candidate.Source }
}

$user = Resolve-User (Get-LastLoggedOnUser)
if (-not $user) {
    $user = Get-ExplorerOwners | ForEach-Object { Resolve-User $_ } | Select-Object -First 1
}
if (-not $user) {
    Write-Log 'No user detected (no LastLoggedOnUser, no explorer.exe owner that is not excluded and has a profile). Will retry user detection in 60 minutes.'
    exit 0
}
Write-Log "Detected user $($user.Name) (from $($user.Source)), home $($user.Home)"
Write-Output "AGENT_USERNAME=$($user.Name)"
Write-Output "AGENT_USER_HOME=$($user.Home)"
exit 0
