@echo off
rem Holdfast user detection for Windows (batch file): always reports the same user, set below.
rem
rem When to use it: test organizations with test devices, and demos; never for real users
rem (every device with this script registers as the same user). Copy this file, edit the two
rem set lines below (keep the quotes; no spaces around =), and give the copy to
rem `holdfast-authority policy create --script windows=PATH`. The agent runs detection scripts
rem with a clean environment, so the values must be in the script itself: environment
rem variables set on the device do not reach it.
rem   FIXED_USERNAME   the user name to register: an e-mail address for local authentication,
rem                    the directory's user name for LDAP or SSO
rem   FIXED_USER_HOME  the absolute path of the folder to back up (it should exist on the device)
rem With either one empty the script prints nothing, which the agent reads as "no user yet".
rem fixed_user.ps1 does the same in PowerShell.
rem
rem Output (CONTRACT.md section 3): AGENT_USERNAME=<name> and AGENT_USER_HOME=<home>. It reads
rem and writes nothing and needs no network. MANUAL-CHECK.md describes the check on a Windows
rem machine.
setlocal EnableExtensions DisableDelayedExpansion
set "FIXED_USERNAME=user@example.com"
set "FIXED_USER_HOME=C:\Users\user"

chcp 65001 >nul 2>&1
if not defined FIXED_USERNAME exit /b 0
if not defined FIXED_USER_HOME exit /b 0
for %%V in ("%FIXED_USERNAME%") do echo AGENT_USERNAME=%%~V
for %%V in ("%FIXED_USER_HOME%") do echo AGENT_USER_HOME=%%~V
exit /b 0
