@echo off
rem Holdfast user detection for Windows (batch file): the user who last signed in to this device.
rem
rem What it detects, first match wins:
rem   1. LastLoggedOnUser under HKLM\Software\Microsoft\Windows\CurrentVersion\Authentication\LogonUI
rem      (the user the sign-in screen offers; `reg query`), with its SID from LastLoggedOnUserSID;
rem   2. when that value is missing or that user has no profile here: the owner of a running
rem      explorer.exe (the desktop shell), asked of WMI with `powershell -NoProfile`.
rem The domain prefix is stripped (CORP\alice and .\alice become alice). The home is LocalPath of
rem the Win32_UserProfile whose SID is the user's (`powershell -NoProfile`), so a profile folder
rem that is not C:\Users\<name> (alice.CORP, renamed accounts) is reported where it really is.
rem
rem When to use it: Windows devices whose organization authenticates with LDAP or SSO (the
rem account name is the directory's user name), where policy prefers batch files; otherwise
rem last_logged_on_user.ps1 does the same. For local authentication, where user names are
rem e-mail addresses, use last_logged_on_user_email.bat; to keep administrators' and set-up
rem accounts from being registered (gold images, IT set-up), use last_logged_on_user_exclude.bat.
rem
rem Output (CONTRACT.md section 3): AGENT_USERNAME=<name> and AGENT_USER_HOME=<home>, or nothing
rem at all when no user qualifies (exit 0: the agent retries on its registration schedule).
rem It writes nothing but its log: LOG_FILE, appended to only when its folder exists (set
rem LOG_FILE= empty for none); log lines also go to stderr. It reads the registry and WMI only.
rem It runs as SYSTEM with cmd.exe. It cannot run in the project's tests: MANUAL-CHECK.md
rem describes the check on a Windows machine.
rem
rem Settings: the agent runs the script with a clean environment, so edit them here.
setlocal EnableExtensions DisableDelayedExpansion
set "LOG_FILE=C:\ProgramData\Holdfast\log\userDetect_Result.log"

chcp 65001 >nul 2>&1
set "SCRIPT_NAME=%~nx0"
set "LOGONUI=HKLM\Software\Microsoft\Windows\CurrentVersion\Authentication\LogonUI"
set "USER_NAME="
set "USER_SID="
set "USER_HOME="

rem 1. LastLoggedOnUser: reg query prints "    LastLoggedOnUser    REG_SZ    CORP\alice".
set "SOURCE=LastLoggedOnUser"
for /f "tokens=2,*" %%A in ('reg query "%LOGONUI%" /v LastLoggedOnUser 2^>nul') do (
    if /i "%%A"=="REG_SZ" set "USER_NAME=%%B"
)
for /f "tokens=2,*" %%A in ('reg query "%LOGONUI%" /v LastLoggedOnUserSID 2^>nul') do (
    if /i "%%A"=="REG_SZ" set "USER_SID=%%B"
)
if defined USER_NAME call :resolve
if defined USER_HOME goto :found

rem 2. The owners of the desktop shell, printed by PowerShell as "alice|S-1-5-21-...".
set "SOURCE=explorer.exe"
for /f "usebackq tokens=1,2 delims=|" %%A in (`powershell -NoProfile -NonInteractive -Command "Get-CimInstance -ClassName Win32_Process | Where-Object { $_.Name -eq 'explorer.exe' } | ForEach-Object { $o = Invoke-CimMethod -InputObject $_ -MethodName GetOwner; $s = Invoke-CimMethod -InputObject $_ -MethodName GetOwnerSid; if ($o.User) { $o.User + '|' + $s.Sid } }" 2^>nul`) do (
    set "USER_NAME=%%A"
    set "USER_SID=%%B"
    call :resolve
    if defined USER_HOME goto :found
)
call :log "No user detected (no LastLoggedOnUser, no explorer.exe owner with a profile). Will retry user detection in 60 minutes."
exit /b 0

:found
call :log "Detected user %USER_NAME% (from %SOURCE%), home %USER_HOME%"
for %%V in ("%USER_NAME%") do echo AGENT_USERNAME=%%~V
for %%V in ("%USER_HOME%") do echo AGENT_USER_HOME=%%~V
exit /b 0

rem :resolve: strips the domain from USER_NAME and sets USER_HOME to the LocalPath of the
rem Win32_UserProfile whose SID is USER_SID (looked up from the name when missing).
:resolve
set "USER_HOME="
set "FULL_NAME=%USER_NAME%"
rem CORP\alice and .\alice become alice.
set "USER_NAME=%USER_NAME:*\=%"
if not defined USER_SID call :sid_of
if not defined USER_SID goto :resolve_none
if not "%USER_SID:~0,4%"=="S-1-" goto :resolve_none
for /f "usebackq delims=" %%P in (`powershell -NoProfile -NonInteractive -Command "Get-CimInstance -ClassName Win32_UserProfile | Where-Object { $_.SID -eq '%USER_SID%' } | ForEach-Object { $_.LocalPath }" 2^>nul`) do (
    set "USER_HOME=%%P"
    exit /b 0
)
:resolve_none
call :log "No profile on this device for %USER_NAME% (from %SOURCE%)"
exit /b 0

rem :sid_of: USER_SID of the account FULL_NAME, when Windows knows it.
:sid_of
set "ACCOUNT=%FULL_NAME%"
if "%ACCOUNT:~0,2%"==".\" set "ACCOUNT=%ACCOUNT:~2%"
set "ACCOUNT=%ACCOUNT:'=''%"
for /f "usebackq delims=" %%S in (`powershell -NoProfile -NonInteractive -Command "(New-Object System.Security.Principal.NTAccount('%ACCOUNT%')).Translate([System.Security.Principal.SecurityIdentifier]).Value" 2^>nul`) do set "USER_SID=%%S"
exit /b 0

rem :log "message": to stderr, and appended to LOG_FILE when its folder exists.
:log
for %%M in (%1) do >&2 echo %DATE% %TIME% %SCRIPT_NAME%: %%~M
if not defined LOG_FILE exit /b 0
for %%F in ("%LOG_FILE%") do if not exist "%%~dpF" exit /b 0
for %%M in (%1) do (>>"%LOG_FILE%" echo %DATE% %TIME% %SCRIPT_NAME%: %%~M) 2>nul
exit /b 0
