"""The detection scripts we ship (detection_scripts/), run for real with bash and stub commands.

Every Linux and macOS script runs as `bash SCRIPT` with PATH=<stub folder>:/usr/bin:/bin. The
stub folder comes first and holds a fake of every command whose answer depends on the machine
(Linux: loginctl, who, getent, stat; macOS: scutil, dscl), answering from files the test
writes; a fake refuses arguments its script is not expected to pass, so a script that changes
how it asks fails here instead of quietly reading the real machine.

Settings are lines at the top of each script, never environment variables: the agent gives a
script a clean, allow-listed environment, so an administrator configures a script by editing a
copy of it. The tests do the same. Every run edits the copy's LOG_FILE line to point into
tmp_path (the log is read back, and nothing is written to /var/log or /Library/Logs), and on
Linux its HOMES_ROOT line to a folder of fake homes under tmp_path: the fake `stat` reports the
owners the test chose (the folders really belong to whoever runs the tests) and the real
modification times, which the test sets.

The Windows scripts cannot run here: their content is checked, and
authority/detection_scripts/windows/MANUAL-CHECK.md describes the check on a Windows machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.detection import DetectionScript, detect, parse_output
from authority.scripts import interpreter_for, load_script

SCRIPTS = Path(__file__).resolve().parents[2] / "authority" / "detection_scripts"
OPERATING_SYSTEMS = ("linux", "macos", "windows")
SHIPPED = sorted(
    path
    for os_name in OPERATING_SYSTEMS
    for path in (SCRIPTS / os_name).iterdir()
    if path.is_file() and path.suffix != ".md"
)
SHELL_SCRIPTS = [path for path in SHIPPED if path.suffix == ".sh"]
WINDOWS_SCRIPTS = [path for path in SHIPPED if path.parent.name == "windows"]
WINDOWS_DETECTORS = [path for path in WINDOWS_SCRIPTS if path.stem != "fixed_user"]

LINUX = SCRIPTS / "linux"
MACOS = SCRIPTS / "macos"
LINUX_CONSOLE = [LINUX / "console_user.sh", LINUX / "console_user_email.sh"]
LINUX_CONSOLE.append(LINUX / "console_user_exclude.sh")
MACOS_CONSOLE = [MACOS / "console_user.sh", MACOS / "console_user_email.sh"]
MACOS_CONSOLE.append(MACOS / "console_user_exclude.sh")
RETRY = "Will retry user detection in 60 minutes"
MAX_RUN_S = 1.0

REAL_STAT = next(
    (f"{folder}/stat" for folder in ("/usr/bin", "/bin") if os.access(f"{folder}/stat", os.X_OK)),
    "stat",
)

# The fakes. @DATA@ is the folder of answers, @STAT@ the real stat (for real mtimes).
STUBS = {
    "loginctl": r"""
if [[ -e "$data/no-logind" ]]; then
    echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2
    exit 1
fi
case "$1 $2" in
    "list-sessions --no-legend") cat "$data/sessions" ;;
    "show-session "*)
        if [[ ! -f "$data/session-$2" ]]; then
            echo "Failed to get session: No session '$2' known" >&2
            exit 1
        fi
        cat "$data/session-$2"
        ;;
    *) echo "stub loginctl: unexpected arguments: $*" >&2; exit 64 ;;
esac
""",
    "who": r"""
[[ $# -eq 0 ]] || { echo "stub who: unexpected arguments: $*" >&2; exit 64; }
cat "$data/who"
""",
    "getent": r"""
[[ $# -eq 2 && "$1" == passwd ]] || { echo "stub getent: unexpected: $*" >&2; exit 64; }
awk -F: -v key="$2" '$1 == key || $3 == key { print; found = 1; exit }
    END { exit found ? 0 : 2 }' "$data/passwd"
""",
    "stat": r"""
[[ $# -eq 4 && "$1" == -c && "$2" == "%u %Y" && "$3" == -- ]] \
    || { echo "stub stat: unexpected arguments: $*" >&2; exit 64; }
owner=$(awk -F'\t' -v path="$4" '$1 == path { print $2; exit }' "$data/owners")
mtime=$(@STAT@ -c %Y -- "$4") || exit 1
echo "${owner:-0} $mtime"
""",
    "scutil": r"""
[[ $# -eq 0 && "$(cat)" == "show State:/Users/ConsoleUser" ]] \
    || { echo "stub scutil: unexpected use" >&2; exit 64; }
if [[ -f "$data/scutil" ]]; then cat "$data/scutil"; else echo "  No such key"; fi
""",
    "dscl": r"""
if [[ $# -ne 4 || "$1" != . || "$2" != -read || "$3" != /Users/* || "$4" != NFSHomeDirectory ]]
then
    echo "stub dscl: unexpected arguments: $*" >&2
    exit 64
fi
if [[ -f "$data/dscl-${3#/Users/}" ]]; then
    cat "$data/dscl-${3#/Users/}"
else
    echo "<dscl_cmd> DS Error: -14136 (eDSRecordNotFound)" >&2
    exit 56
fi
""",
}


def console_user(name: str, uid: int = 501) -> str:
    """What `scutil` prints for State:/Users/ConsoleUser."""
    return f"""<dictionary> {{
  GID : 20
  Name : {name}
  SessionInfo : <array> {{
    0 : <dictionary> {{
      kCGSSessionAuditIDKey : 100015
      kCGSSessionOnConsoleKey : TRUE
      kCGSSessionUserIDKey : {uid}
      kCGSSessionUserNameKey : {name}
      kCGSessionLongUserNameKey : {name.title()} Example
      kSCConsoleSessionID : 257
    }}
  }}
  UID : {uid}
}}
"""


@dataclass(frozen=True)
class Run:
    stdout: str
    stderr: str
    log: str
    duration_s: float

    def reports(self, username: str, home: str) -> bool:
        """True when the script printed exactly this user, and the agent reads it so."""
        expected = f"AGENT_USERNAME={username}\nAGENT_USER_HOME={home}\n"
        assert self.stdout == expected, self.stderr
        assert parse_output(self.stdout) == (username, home)
        return True

    def reports_nobody(self) -> bool:
        assert self.stdout == "", self.stderr
        assert parse_output(self.stdout) == (None, None)
        return True


class Machine:
    """A fake device: stub commands answering from files this object writes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "stubs"
        self.data = root / "data"
        self.homes = root / "homes"
        self.log_file = root / "log" / "userDetect_Result.log"
        self.work = root / "work"
        for folder in (self.bin, self.data, self.homes, self.log_file.parent, self.work):
            folder.mkdir(parents=True)
        for name in ("passwd", "sessions", "who", "owners"):
            (self.data / name).write_text("")
        header = f"#!/bin/bash\ndata={shlex.quote(str(self.data))}\n"
        for name, body in STUBS.items():
            stub = self.bin / name
            stub.write_text(header + body.replace("@STAT@", shlex.quote(REAL_STAT)))
            stub.chmod(0o755)
        self._sessions = 0

    # Linux
    def user(self, name: str, uid: int, home: str | None = None) -> str:
        home = home if home is not None else f"/home/{name}"
        with (self.data / "passwd").open("a") as passwd:
            passwd.write(f"{name}:x:{uid}:{uid}:{name.title()}:{home}:/bin/bash\n")
        return home

    def session(
        self,
        name: str,
        *,
        active: str = "yes",
        kind: str = "wayland",
        remote: str = "no",
        klass: str = "user",
        state: str = "active",
    ) -> None:
        """A logind session, listed after the earlier ones."""
        self._sessions += 1
        sid = str(self._sessions)
        with (self.data / "sessions").open("a") as sessions:
            sessions.write(f"{sid:>7} 1000 {name:<8} seat0 tty{sid} {state} no -\n")
        (self.data / f"session-{sid}").write_text(
            f"Name={name}\nRemote={remote}\nClass={klass}\nType={kind}\n"
            f"Active={active}\nState={state}\n"
        )

    def no_logind(self) -> None:
        (self.data / "no-logind").touch()

    def who(self, *lines: str) -> None:
        (self.data / "who").write_text("".join(f"{line}\n" for line in lines))

    def home_dir(self, name: str, owner_uid: int, mtime: int) -> Path:
        """A folder under the fake HOMES_ROOT that `stat` says `owner_uid` owns."""
        folder = self.homes / name
        folder.mkdir()
        os.utime(folder, (mtime, mtime))
        with (self.data / "owners").open("a") as owners:
            owners.write(f"{folder}\t{owner_uid}\n")
        return folder

    # macOS
    def console(self, scutil_output: str) -> None:
        (self.data / "scutil").write_text(scutil_output)

    def dscl_home(self, name: str, dscl_output: str) -> None:
        (self.data / f"dscl-{name}").write_text(dscl_output)

    def run(self, script: Path, **settings: str) -> Run:
        """Run a copy of `script` whose setting lines NAME=... say `settings` (shell syntax)."""
        text = script.read_text()
        defaults = {"LOG_FILE": shlex.quote(str(self.log_file))}
        defaults["HOMES_ROOT"] = shlex.quote(str(self.homes))
        for name, value in defaults.items():
            if re.search(rf"^{name}=", text, flags=re.MULTILINE):
                settings.setdefault(name, value)
        for name, value in settings.items():
            text, count = re.subn(
                rf"^{name}=.*$", lambda _m, n=name, v=value: f"{n}={v}", text, flags=re.MULTILINE
            )
            assert count == 1, f"{script.name} has no single {name}= line to edit"
        copy = self.root / script.name
        copy.write_text(text)
        started = time.monotonic()
        done = subprocess.run(
            ["/bin/bash", str(copy)],
            env={"PATH": f"{self.bin}:/usr/bin:/bin"},
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        duration = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert list(self.work.iterdir()) == [], "the script wrote into its working directory"
        assert duration < MAX_RUN_S, f"{script.name} took {duration:.2f} s"
        assert "stub " not in done.stderr, done.stderr
        log = self.log_file.read_text() if self.log_file.exists() else ""
        return Run(done.stdout, done.stderr, log, duration)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_the_stubs_shadow_the_real_commands(machine: Machine) -> None:
    for name in STUBS:
        found = shutil.which(name, path=f"{machine.bin}:/usr/bin:/bin")
        assert found == str(machine.bin / name)


def test_the_shipped_scripts_are_all_there() -> None:
    names = {f"{path.parent.name}/{path.name}" for path in SHIPPED}
    assert names == {
        "linux/console_user.sh",
        "linux/console_user_email.sh",
        "linux/console_user_exclude.sh",
        "linux/fixed_user.sh",
        "macos/console_user.sh",
        "macos/console_user_email.sh",
        "macos/console_user_exclude.sh",
        "macos/fixed_user.sh",
        "windows/fixed_user.bat",
        "windows/fixed_user.ps1",
        "windows/last_logged_on_user.bat",
        "windows/last_logged_on_user.ps1",
        "windows/last_logged_on_user_email.bat",
        "windows/last_logged_on_user_email.ps1",
        "windows/last_logged_on_user_exclude.bat",
        "windows/last_logged_on_user_exclude.ps1",
    }
    assert not (LINUX / "detect_console_user.sh").exists()
    assert (SCRIPTS / "windows" / "MANUAL-CHECK.md").is_file()


@pytest.mark.parametrize("script", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_script_has_a_header_saying_what_and_when(script: Path) -> None:
    head = script.read_text()[:3000]
    assert "Holdfast user detection for" in head
    assert "When to use it:" in head
    if script.parent.name == "macos" and script.stem != "fixed_user":
        assert "stubs" in head  # they run here only with stubs of scutil and dscl


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shell_scripts_parse_and_start_with_bin_bash(script: Path) -> None:
    subprocess.run(["/bin/bash", "-n", str(script)], check=True, capture_output=True)
    raw = script.read_bytes()
    assert raw.startswith(b"#!/bin/bash\n")
    assert b"\r" not in raw


@pytest.mark.parametrize("script", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_policy_create_accepts_every_shipped_script(script: Path) -> None:
    """What `holdfast-authority policy create --script OS=PATH` does with each file."""
    os_name = script.parent.name
    loaded = load_script(f"{os_name}={script}")
    assert (loaded.os, loaded.filename) == (os_name, script.name)
    assert loaded.sha256 == hashlib.sha256(loaded.content.encode("utf-8")).hexdigest()
    if script.suffix == ".sh":
        assert loaded.interpreter == ["/bin/bash"]
    elif script.suffix == ".ps1":
        assert loaded.interpreter[0] == "powershell.exe"
        assert "-NoProfile" in loaded.interpreter
        assert loaded.interpreter[-1] == "-File"
    else:
        assert script.suffix == ".bat"
        assert loaded.interpreter[0] == "cmd.exe"


# Linux: console_user.sh and its variants


def linux_username(script: Path, account: str) -> str:
    return f"{account}@example.com" if script.stem.endswith("_email") else account


@pytest.mark.parametrize("script", LINUX_CONSOLE, ids=lambda p: p.name)
def test_linux_reports_the_active_graphical_session(machine: Machine, script: Path) -> None:
    machine.user("gdm", 120, "/var/lib/gdm3")
    machine.user("bob", 1001)
    machine.user("dave", 1003)
    machine.user("erin", 1004)
    home = machine.user("alice", 1000)
    machine.session("gdm", klass="greeter", kind="x11")
    machine.session("bob", remote="yes", kind="tty")
    machine.session("erin", state="closing")
    machine.session("dave", kind="tty")  # active too, but not graphical
    machine.session("alice")
    machine.who("dave     tty3         2024-05-01 08:00", "bob      pts/0        (10.1.2.3)")
    run = machine.run(script)
    assert run.reports(linux_username(script, "alice"), home)
    assert "Detected user alice (from the logind session" in run.log
    assert "Detected user alice" in run.stderr


def test_linux_prefers_an_active_session_to_an_inactive_one(machine: Machine) -> None:
    machine.user("alice", 1000)
    home = machine.user("bob", 1001)
    machine.session("alice", active="no")
    machine.session("bob", kind="tty")
    assert machine.run(LINUX / "console_user.sh").reports("bob", home)


def test_linux_skips_sessions_of_system_accounts(machine: Machine) -> None:
    machine.user("root", 0, "/root")
    machine.user("nobody", 65534, "/nonexistent")
    home = machine.user("alice", 1000)
    machine.session("root", kind="tty")
    machine.session("nobody", kind="x11")
    machine.session("ghost")  # not in passwd at all
    machine.session("alice", active="no")
    assert machine.run(LINUX / "console_user.sh").reports("alice", home)


@pytest.mark.parametrize("script", LINUX_CONSOLE, ids=lambda p: p.name)
def test_linux_falls_back_from_loginctl_to_who(machine: Machine, script: Path) -> None:
    machine.no_logind()
    machine.user("root", 0, "/root")
    machine.user("bob", 1001)
    home = machine.user("alice", 1000)
    machine.who(
        "root     tty1         2024-05-01 08:00",
        "bob      pts/0        2024-05-01 08:30 (10.1.2.3)",
        "bob      pts/1        2024-05-01 08:31 (laptop.example.com)",
        "alice    tty2         2024-05-01 08:58 (tty2)",
        "bob      pts/2        2024-05-01 09:00 (:0)",
    )
    run = machine.run(script)
    assert run.reports(linux_username(script, "alice"), home)
    assert "(from the utmp login)" in run.log


def test_linux_who_is_used_when_logind_has_no_session(machine: Machine) -> None:
    home = machine.user("bob", 1001)
    machine.session("bob", remote="yes")
    machine.who("bob      :0           2024-05-01 09:00 (:0)")
    assert machine.run(LINUX / "console_user.sh").reports("bob", home)


@pytest.mark.parametrize("script", LINUX_CONSOLE, ids=lambda p: p.name)
def test_linux_falls_back_to_the_most_recently_used_home(machine: Machine, script: Path) -> None:
    machine.no_logind()
    machine.who("carol    pts/0        2024-05-01 08:30 (10.1.2.3)")  # remote only
    alice = machine.home_dir("alice", 1000, mtime=1_700_000_000)
    bob = machine.home_dir("bob", 1001, mtime=1_700_000_300)
    machine.home_dir("svc", 999, mtime=1_700_000_900)  # a system account's
    machine.home_dir("nobody", 65534, mtime=1_700_000_900)
    machine.home_dir("shared", 1002, mtime=1_700_000_900)  # carol's, but not her home
    machine.home_dir("orphan", 4242, mtime=1_700_000_900)  # no such user
    (machine.homes / "newer-file").write_text("not a home")
    (machine.homes / "link").symlink_to(alice)
    machine.user("alice", 1000, str(alice))
    machine.user("bob", 1001, str(bob))
    machine.user("svc", 999, str(machine.homes / "svc"))
    machine.user("nobody", 65534, str(machine.homes / "nobody"))
    machine.user("carol", 1002, "/home/carol")
    run = machine.run(script)
    assert run.reports(linux_username(script, "bob"), str(bob))
    assert "(from the most recently used home under" in run.log


def test_linux_home_fallback_reads_homes_root_from_its_setting(machine: Machine) -> None:
    """HOMES_ROOT is a line of the script: here it names a folder with a space and a slash."""
    machine.no_logind()
    homes = machine.root / "other homes"
    homes.mkdir()
    folder = homes / "Jo Smith"
    folder.mkdir()
    with (machine.data / "owners").open("a") as owners:
        owners.write(f"{folder}\t1000\n")
    machine.user("jo", 1000, str(folder))
    machine.home_dir("alice", 1001, mtime=2_000_000_000)  # under the default test HOMES_ROOT
    machine.user("alice", 1001, str(machine.homes / "alice"))
    run = machine.run(LINUX / "console_user.sh", HOMES_ROOT=shlex.quote(f"{homes}/"))
    assert run.reports("jo", str(folder))


@pytest.mark.parametrize("script", LINUX_CONSOLE, ids=lambda p: p.name)
def test_linux_reports_a_home_with_spaces(machine: Machine, script: Path) -> None:
    home = machine.user("alice", 1000, "/home/Alice Example")
    machine.session("alice")
    assert machine.run(script).reports(linux_username(script, "alice"), home)


@pytest.mark.parametrize("script", LINUX_CONSOLE, ids=lambda p: p.name)
def test_linux_prints_nothing_without_a_user(machine: Machine, script: Path) -> None:
    machine.no_logind()
    machine.user("root", 0, "/root")
    machine.who("root     tty1         2024-05-01 08:00")
    run = machine.run(script)
    assert run.reports_nobody()
    assert "No user detected" in run.log
    assert RETRY in run.log


def test_linux_without_a_log_folder_still_reports(machine: Machine) -> None:
    home = machine.user("alice", 1000)
    machine.session("alice")
    missing = machine.root / "no such folder" / "userDetect_Result.log"
    run = machine.run(LINUX / "console_user.sh", LOG_FILE=shlex.quote(str(missing)))
    assert run.reports("alice", home)
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    ("setting", "account", "expected"),
    [
        (None, "alice", "alice@example.com"),
        ('"corp.example"', "alice", "alice@corp.example"),
        ('"@corp.example"', "alice", "alice@corp.example"),
        ('"corp.example"', "alice@ad.corp.local", "alice@corp.example"),
        ('""', "alice", "alice"),
    ],
)
def test_linux_email_variant_appends_the_domain(
    machine: Machine, setting: str | None, account: str, expected: str
) -> None:
    home = machine.user(account, 1000, "/home/alice")
    machine.session(account)
    settings = {} if setting is None else {"EMAIL_DOMAIN": setting}
    run = machine.run(LINUX / "console_user_email.sh", **settings)
    assert run.reports(expected, home)


def test_linux_exclude_variant_goes_on_to_the_next_candidate(machine: Machine) -> None:
    machine.user("admin-jane", 1005)
    machine.user("Admin", 1006)
    home = machine.user("alice", 1000)
    machine.session("admin-jane")
    machine.session("Admin", kind="x11")
    machine.session("alice", active="no")
    run = machine.run(LINUX / "console_user_exclude.sh")
    assert run.reports("alice", home)
    assert "Skipping excluded account admin-jane" in run.log
    assert "Skipping excluded account Admin" in run.log
    # The same device with the plain script registers the administrator.
    assert machine.run(LINUX / "console_user.sh").reports("admin-jane", "/home/admin-jane")


def test_linux_exclude_variant_prints_nothing_when_all_are_excluded(machine: Machine) -> None:
    machine.user("admin", 1000, str(machine.homes / "admin"))
    machine.user("it-setup", 1001)
    machine.session("admin")
    machine.who("it-setup tty2         2024-05-01 08:58")
    machine.home_dir("admin", 1000, mtime=1_700_000_000)
    run = machine.run(LINUX / "console_user_exclude.sh", EXCLUDE='("admin" "it-*")')
    assert run.reports_nobody()
    assert RETRY in run.log


def test_linux_exclude_variant_skips_excluded_homes(machine: Machine) -> None:
    machine.no_logind()
    alice = machine.home_dir("alice", 1000, mtime=1_700_000_000)
    admin = machine.home_dir("admin-bob", 1001, mtime=1_700_000_500)
    machine.user("alice", 1000, str(alice))
    machine.user("admin-bob", 1001, str(admin))
    assert machine.run(LINUX / "console_user_exclude.sh").reports("alice", str(alice))


# macOS: console_user.sh and its variants


def macos_username(script: Path, account: str) -> str:
    return f"{account}@example.com" if script.stem.endswith("_email") else account


@pytest.mark.parametrize("script", MACOS_CONSOLE, ids=lambda p: p.name)
def test_macos_reports_the_console_user(machine: Machine, script: Path) -> None:
    machine.console(console_user("alice"))
    machine.dscl_home("alice", "NFSHomeDirectory: /Users/alice\n")
    run = machine.run(script)
    assert run.reports(macos_username(script, "alice"), "/Users/alice")
    assert "Detected console user alice" in run.log


@pytest.mark.parametrize("script", MACOS_CONSOLE, ids=lambda p: p.name)
def test_macos_reports_a_home_with_spaces(machine: Machine, script: Path) -> None:
    """dscl puts a value with spaces on its own line, after a space."""
    machine.console(console_user("alice"))
    machine.dscl_home("alice", "NFSHomeDirectory:\n /Users/Alice Example\n")
    run = machine.run(script)
    assert run.reports(macos_username(script, "alice"), "/Users/Alice Example")


def test_macos_reports_the_first_of_several_homes(machine: Machine) -> None:
    """dscl prints several values without spaces on the key's line."""
    machine.console(console_user("alice"))
    machine.dscl_home("alice", "NFSHomeDirectory: /Users/alice /Users/alice.old\n")
    assert machine.run(MACOS / "console_user.sh").reports("alice", "/Users/alice")


def test_macos_reports_a_network_home(machine: Machine) -> None:
    machine.console(console_user("alice", uid=1_234_567))
    machine.dscl_home("alice", "NFSHomeDirectory: /Network/Servers/fs/Users/alice\n")
    run = machine.run(MACOS / "console_user.sh")
    assert run.reports("alice", "/Network/Servers/fs/Users/alice")


@pytest.mark.parametrize("script", MACOS_CONSOLE, ids=lambda p: p.name)
@pytest.mark.parametrize("scutil", [console_user("loginwindow", uid=0), None, ""])
def test_macos_prints_nothing_at_the_login_window(
    machine: Machine, script: Path, scutil: str | None
) -> None:
    if scutil is not None:
        machine.console(scutil)
    machine.dscl_home("loginwindow", "NFSHomeDirectory: /System/Library/CoreServices\n")
    run = machine.run(script)
    assert run.reports_nobody()
    assert RETRY in run.log


def test_macos_prints_nothing_without_a_directory_record(machine: Machine) -> None:
    machine.console(console_user("alice"))
    run = machine.run(MACOS / "console_user.sh")
    assert run.reports_nobody()
    assert "No home folder for alice" in run.log


@pytest.mark.parametrize("account", ["root", "admin", "_mbsetupuser", "admin-jane", "ADMIN"])
def test_macos_exclude_variant_prints_nothing_for_excluded(machine: Machine, account: str) -> None:
    machine.console(console_user(account, uid=0 if account == "root" else 502))
    machine.dscl_home(account, f"NFSHomeDirectory: /Users/{account}\n")
    run = machine.run(MACOS / "console_user_exclude.sh")
    assert run.reports_nobody()
    assert f"Excluded user at the console ({account})" in run.log
    assert RETRY in run.log
    # The plain script reports whoever is at the console.
    assert machine.run(MACOS / "console_user.sh").reports(account, f"/Users/{account}")


def test_macos_exclude_variant_matches_whole_names(machine: Machine) -> None:
    machine.console(console_user("administrator"))
    machine.dscl_home("administrator", "NFSHomeDirectory: /Users/administrator\n")
    run = machine.run(MACOS / "console_user_exclude.sh")
    assert run.reports("administrator", "/Users/administrator")
    run = machine.run(MACOS / "console_user_exclude.sh", EXCLUDE='("admin*")')
    assert run.reports_nobody()


@pytest.mark.parametrize(
    ("setting", "account", "expected"),
    [
        (None, "alice", "alice@example.com"),
        ('"corp.example"', "alice", "alice@corp.example"),
        ('"@corp.example"', "alice", "alice@corp.example"),
        ('""', "alice", "alice"),
    ],
)
def test_macos_email_variant_appends_the_domain(
    machine: Machine, setting: str | None, account: str, expected: str
) -> None:
    machine.console(console_user(account))
    machine.dscl_home(account, f"NFSHomeDirectory: /Users/{account}\n")
    settings = {} if setting is None else {"EMAIL_DOMAIN": setting}
    run = machine.run(MACOS / "console_user_email.sh", **settings)
    assert run.reports(expected, f"/Users/{account}")


@pytest.mark.parametrize("script", MACOS_CONSOLE, ids=lambda p: p.name)
def test_macos_scripts_run_the_same_without_their_shebang(machine: Machine, script: Path) -> None:
    """The vendor's scripts have no #! line; ours work that way too (the agent uses /bin/bash)."""
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n")
    bare = machine.root / "bare" / script.name
    bare.parent.mkdir()
    bare.write_text(text.removeprefix("#!/bin/bash\n"))
    assert interpreter_for("macos", bare.name, bare.read_text()) == ["/bin/bash"]
    machine.console(console_user("alice"))
    machine.dscl_home("alice", "NFSHomeDirectory: /Users/alice\n")
    assert machine.run(bare).stdout == machine.run(script).stdout != ""


# fixed_user


@pytest.mark.parametrize(
    ("script", "home"),
    [(LINUX / "fixed_user.sh", "/home/user"), (MACOS / "fixed_user.sh", "/Users/user")],
)
def test_fixed_user_prints_exactly_its_two_values(
    machine: Machine, script: Path, home: str
) -> None:
    text = script.read_text()
    assert '\nFIXED_USERNAME="user@example.com"\n' in text
    assert f'\nFIXED_USER_HOME="{home}"\n' in text
    assert machine.run(script).reports("user@example.com", home)
    edited = machine.run(
        script, FIXED_USERNAME='"demo.user@corp.example"', FIXED_USER_HOME='"/srv/demo homes/demo"'
    )
    assert edited.reports("demo.user@corp.example", "/srv/demo homes/demo")
    assert machine.run(script, FIXED_USERNAME='""').reports_nobody()


@pytest.mark.parametrize("os_name", ["linux", "macos"])
def test_fixed_user_through_the_agent(os_name: str) -> None:
    """load_script (policy create) then the agent's own runner, as on a real device."""
    loaded = load_script(f"{os_name}={SCRIPTS / os_name / 'fixed_user.sh'}")
    script = DetectionScript(
        os=loaded.os,
        filename=loaded.filename,
        interpreter=tuple(loaded.interpreter),
        script=loaded.content,
        sha256=loaded.sha256,
    )
    result = detect(script, timeout_s=10)
    home = "/home/user" if os_name == "linux" else "/Users/user"
    assert (result.username, result.user_home) == ("user@example.com", home)


# Windows: cannot run here, so their content is checked


@pytest.mark.parametrize("script", WINDOWS_DETECTORS, ids=lambda p: p.name)
def test_windows_scripts_contain_the_expected_lookups(script: Path) -> None:
    text = script.read_text()
    for needed in (
        "LastLoggedOnUser",
        r"Software\Microsoft\Windows\CurrentVersion\Authentication\LogonUI",
        "explorer.exe",
        "Win32_UserProfile",
        "LocalPath",
        "AGENT_USERNAME=",
        "AGENT_USER_HOME=",
        RETRY,
    ):
        assert needed in text, needed
    if script.suffix == ".bat":
        assert "reg query" in text
        assert "powershell -NoProfile" in text
    if "_email" in script.stem:
        assert re.search(r"^(set \"|\$)EMAIL_DOMAIN ?= ?'?example\.com", text, flags=re.MULTILINE)
    if "_exclude" in script.stem:
        assert re.search(r"^(set \"|\$)EXCLUDE ?=", text, flags=re.MULTILINE)
        assert "defaultuser0" in text


@pytest.mark.parametrize("script", WINDOWS_SCRIPTS, ids=lambda p: p.name)
def test_windows_scripts_are_ascii_with_crlf(script: Path) -> None:
    raw = script.read_bytes()
    raw.decode("ascii")
    assert raw.count(b"\n") == raw.count(b"\r\n") > 0
    if script.suffix == ".bat":
        assert raw.startswith(b"@echo off\r\n")


@pytest.mark.parametrize("suffix", [".ps1", ".bat"])
def test_windows_fixed_user_has_the_two_settings_at_the_top(suffix: str) -> None:
    text = (SCRIPTS / "windows" / f"fixed_user{suffix}").read_text()
    if suffix == ".ps1":
        assert '\n$FIXED_USERNAME = "user@example.com"\n' in text
        assert '\n$FIXED_USER_HOME = "C:\\Users\\user"\n' in text
        assert 'Write-Output "AGENT_USERNAME=$FIXED_USERNAME"' in text
    else:
        assert '\nset "FIXED_USERNAME=user@example.com"\n' in text
        assert '\nset "FIXED_USER_HOME=C:\\Users\\user"\n' in text
        assert "AGENT_USERNAME=" in text
    assert "AGENT_USER_HOME=" in text


def test_windows_manual_check_covers_every_windows_script() -> None:
    text = (SCRIPTS / "windows" / "MANUAL-CHECK.md").read_text()
    for script in WINDOWS_SCRIPTS:
        assert script.name in text


# Vendor-style scripts through the agent's runner

VENDOR_SCRIPT = """\
# A vendor-style detection script: no #! line, bash syntax, its own log in a missing folder.
LOG="@LOG@"

function writeLog {
    echo "$(date) - $1" >> "$LOG"
}

function detect {
    local u
    u=alice
    if [[ $u =~ ^a ]]; then
        echo "C42_USERNAME=$u@example.com"
        echo "C42_USER_HOME=/Users/$u"
    fi
}

writeLog "Starting user detection"
detect
"""


@pytest.mark.parametrize("log_last", [False, True], ids=["prints-last", "logs-last"])
def test_vendor_style_script_runs_through_the_agent(tmp_path: Path, log_last: bool) -> None:
    """No #! line means /bin/bash, and a failed write to its own log does not fail detection."""
    log = (
        tmp_path / "Library" / "Application Support" / "CrashPlan" / "log" / "userDetect_Result.log"
    )
    text = VENDOR_SCRIPT.replace("@LOG@", str(log))
    if log_last:
        text += 'writeLog "Done"\n'  # the failed write makes the script exit 1
    assert interpreter_for("linux", "vendor.sh", text) == ["/bin/bash"]
    assert interpreter_for("macos", "vendor.sh", text) == ["/bin/bash"]
    script = DetectionScript(
        os="linux",
        filename="vendor.sh",
        interpreter=("/bin/bash",),
        script=text,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
    result = detect(script, timeout_s=10)
    assert (result.username, result.user_home) == ("alice@example.com", "/Users/alice")
    assert result.run.exit_code == (1 if log_last else 0)
    assert "userDetect_Result.log" in result.run.stderr  # the failed write, in any locale
    assert not (tmp_path / "Library").exists()
