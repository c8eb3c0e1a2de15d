"""The macOS package's scripts (packaging/macos/scripts), run against a temporary volume.

The .pkg cannot be built or installed on Linux. Its scripts can run here as the macOS
Installer runs them, with the target volume as $3: a temporary folder holding the package's
payload, and `launchctl` and `scutil` stand-ins first on PATH that record their arguments and
keep track of what is loaded. The expected labels and paths come from agent/service_macos.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import service_macos
from agent.deploy_args import read_properties_file
from agent.service import Target
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging" / "macos"
SCRIPTS = PACKAGING / "scripts"
PLISTS = REPO / "service_units" / "macos"
DAEMON = service_macos.DAEMON
TRAY = service_macos.TRAY
IS_ROOT = os.geteuid() == 0
TOKEN = "0fb12341-246b-448d-b07f-c6573ad5ad02"
URL = "https://backup.example.com:4285"
SHA1 = "7746278a457e64737094c44eeb2bbc32357ece44"
# As a Jamf policy script writes it before the package runs: a comment, CRLF, spaces.
JAMF_PROPERTIES = (
    f"# written by Jamf\r\nDEPLOYMENT_URL = {URL}\r\nDEPLOYMENT_POLICY_TOKEN={TOKEN}\r\n"
).encode()

LAUNCHCTL = r"""#!/bin/sh
# launchctl stand-in: records its arguments; keeps what is loaded, one target a line.
echo "launchctl $*" >>"$STUB_DIR/calls"
loaded="$STUB_DIR/loaded"
touch "$loaded"
case $1 in
print) grep -qxF "$2" "$loaded" || exit 113 ;;
bootstrap)
    target="$2/$(basename "$3" .plist)"
    if grep -qxF "$target" "$loaded"; then exit 5; fi
    echo "$target" >>"$loaded" ;;
bootout)
    grep -qxF "$2" "$loaded" || exit 3
    grep -vxF "$2" "$loaded" >"$loaded.new" || true
    mv "$loaded.new" "$loaded" ;;
esac
"""
SCUTIL = r"""#!/bin/sh
# scutil stand-in: answers `show State:/Users/ConsoleUser` with $STUB_DIR/console, if any.
cat >/dev/null
if [ -f "$STUB_DIR/console" ]; then cat "$STUB_DIR/console"; else echo "  No such key"; fi
"""
# Only where the tests do not run as root: chown to root would fail.
CHOWN = r"""#!/bin/sh
echo "chown $*" >>"$STUB_DIR/calls"
"""


@dataclass
class Mac:
    """A target volume with the package's payload, and the stand-ins' records."""

    volume: Path
    stubs: Path

    def path(self, system_path: str) -> Path:
        return self.volume / system_path.lstrip("/")

    @property
    def target(self) -> Target:
        return Target(self.volume, runner=lambda _argv: None, manage=False, executable=None)

    @property
    def deploy_properties(self) -> Path:
        return service_macos.layout(self.target).deploy_properties

    def write_deploy_properties(self, data: bytes, mode: int = 0o600) -> None:
        """As an MDM script does before the package runs."""
        self.deploy_properties.parent.mkdir(parents=True, exist_ok=True)
        self.deploy_properties.write_bytes(data)
        self.deploy_properties.chmod(mode)

    def console(self, name: str, uid: int) -> None:
        (self.stubs / "console").write_text(
            f"<dictionary> {{\n  GID : 20\n  Name : {name}\n  UID : {uid}\n}}\n"
        )

    def load(self, target: str) -> None:
        """A job launchd already runs (from an earlier install, or a user's login)."""
        with (self.stubs / "loaded").open("a") as loaded:
            loaded.write(target + "\n")

    def loaded(self) -> list[str]:
        path = self.stubs / "loaded"
        return path.read_text().split() if path.exists() else []

    def calls(self) -> list[str]:
        path = self.stubs / "calls"
        return [c for c in path.read_text().splitlines() if c.startswith("launchctl ")]

    def forget_calls(self) -> None:
        (self.stubs / "calls").unlink(missing_ok=True)

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        """`script` as the Installer runs it: package, install location, target volume."""
        env = {
            "PATH": f"{self.stubs}:/usr/bin:/bin:/usr/sbin:/sbin",
            "STUB_DIR": str(self.stubs),
            "LC_ALL": "C",
        }
        return subprocess.run(
            ["/bin/sh", str(SCRIPTS / script), "/tmp/Holdfast.pkg", "/", f"{self.volume}/", "/"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def install(self) -> str:
        """preinstall, then postinstall, as one run of the Installer; their output."""
        out = ""
        for script in ("preinstall", "postinstall"):
            done = self.run(script)
            assert done.returncode == 0, f"{script}: {done.stdout}{done.stderr}"
            out += done.stdout
        return out


def stub(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)
    (folder / name).chmod(0o755)


@pytest.fixture
def mac(tmp_path: Path) -> Mac:
    volume = tmp_path / "volume"
    # The payload (packaging/macos/BUILD.md, step 3).
    program = volume / "usr/local/holdfast/holdfast"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    (volume / "usr/local/bin").mkdir(parents=True)
    (volume / "usr/local/bin/holdfast").symlink_to("../holdfast/holdfast")
    (volume / "usr/local/holdfast/launchd").mkdir()
    for plist in PLISTS.glob("*.plist"):
        shutil.copyfile(plist, volume / "usr/local/holdfast/launchd" / plist.name)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    stub(stubs, "launchctl", LAUNCHCTL)
    stub(stubs, "scutil", SCUTIL)
    if not IS_ROOT:
        stub(stubs, "chown", CHOWN)
    return Mac(volume, stubs)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_scripts_pass_shellcheck() -> None:
    require_tool(
        shutil.which("shellcheck") is not None,
        "shellcheck is not installed (Debian package shellcheck)",
    )
    scripts = [SCRIPTS / "preinstall", SCRIPTS / "postinstall", *PACKAGING.glob("examples/*.sh")]
    done = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_scripts_are_executable() -> None:
    # pkgbuild runs them as programs: a script without its x bit fails the install.
    for script in ("preinstall", "postinstall"):
        assert mode(SCRIPTS / script) & 0o111 == 0o111, script


def test_first_install_keeps_deploy_properties_written_before_it(mac: Mac) -> None:
    mac.write_deploy_properties(JAMF_PROPERTIES)
    out = mac.install()

    assert mac.deploy_properties.read_bytes() == JAMF_PROPERTIES
    assert mode(mac.deploy_properties) == 0o600
    assert mode(mac.deploy_properties.parent) == 0o700
    if IS_ROOT:
        assert mac.deploy_properties.stat().st_uid == 0
    assert "kept as they were" in out
    daemon = service_macos.daemon_plist(mac.target)
    assert mac.calls() == [
        f"launchctl print system/{DAEMON}",  # preinstall: nothing to stop
        f"launchctl print system/{DAEMON}",  # postinstall: nothing to unload
        f"launchctl enable system/{DAEMON}",
        f"launchctl bootstrap system {daemon}",
    ]


def test_plists_land_where_launchd_reads_them(mac: Mac) -> None:
    mac.install()
    for installed in (service_macos.daemon_plist(mac.target), service_macos.tray_plist(mac.target)):
        assert installed.read_bytes() == (PLISTS / installed.name).read_bytes()
        assert mode(installed) == 0o644
        if IS_ROOT:
            assert installed.stat().st_uid == 0
    # launchd opens StandardOutPath but does not create its folder.
    assert service_macos.layout(mac.target).log.is_dir()
    # The plists run /usr/local/bin/holdfast, which the payload provides.
    assert service_macos.DEFAULT_EXECUTABLE == "/usr/local/bin/holdfast"
    assert mac.path(service_macos.DEFAULT_EXECUTABLE).exists()


def test_world_readable_deploy_properties_becomes_root_only_unchanged(mac: Mac) -> None:
    mac.write_deploy_properties(JAMF_PROPERTIES, mode=0o644)
    mac.install()
    assert mac.deploy_properties.read_bytes() == JAMF_PROPERTIES
    assert mode(mac.deploy_properties) == 0o600


def test_upgrade_stops_the_agent_first_and_keeps_deploy_properties(mac: Mac) -> None:
    mac.write_deploy_properties(JAMF_PROPERTIES)
    mac.install()
    mac.forget_calls()

    mac.install()

    assert mac.deploy_properties.read_bytes() == JAMF_PROPERTIES
    assert mode(mac.deploy_properties) == 0o600
    calls = mac.calls()
    stop = calls.index(f"launchctl bootout system/{DAEMON}")
    start = calls.index(f"launchctl bootstrap system {service_macos.daemon_plist(mac.target)}")
    assert stop < start
    assert mac.loaded() == [f"system/{DAEMON}"]


def test_upgrade_honours_deploy_properties_rewritten_before_it(mac: Mac) -> None:
    # Unlike the vendor's package: new arguments from the MDM take effect with the upgrade.
    mac.write_deploy_properties(JAMF_PROPERTIES)
    mac.install()
    rewritten = JAMF_PROPERTIES.replace(b"backup.example.com", b"backup2.example.com")
    mac.write_deploy_properties(rewritten, mode=0o644)

    mac.install()

    assert mac.deploy_properties.read_bytes() == rewritten
    assert mode(mac.deploy_properties) == 0o600


def test_without_deploy_properties_the_agent_is_loaded_and_waits(mac: Mac) -> None:
    out = mac.install()
    assert "waits for one" in out
    assert not mac.deploy_properties.exists()
    assert mode(mac.deploy_properties.parent) == 0o700
    assert mac.loaded() == [f"system/{DAEMON}"]


def test_tray_opens_for_the_console_user_when_not_silent(mac: Mac) -> None:
    mac.write_deploy_properties(JAMF_PROPERTIES + b"CP_SILENT = False\r\n")
    mac.console("alice", 501)
    out = mac.install()
    tray = service_macos.tray_plist(mac.target)
    assert f"launchctl bootstrap gui/501 {tray}" in mac.calls()
    assert "opened the tray for alice" in out


def test_tray_waits_for_login_when_silent(mac: Mac) -> None:
    mac.write_deploy_properties(JAMF_PROPERTIES + b"CP_SILENT=true\n")
    mac.console("alice", 501)
    out = mac.install()
    assert not [c for c in mac.calls() if "gui/" in c and "bootstrap" in c]
    assert "next login" in out


def test_tray_stays_closed_on_a_cloaked_device(mac: Mac) -> None:
    mac.write_deploy_properties(JAMF_PROPERTIES + b"CP_SILENT=false\nDEVICE_CLOAKED='yes'\n")
    mac.console("alice", 501)
    out = mac.install()
    assert not [c for c in mac.calls() if "gui/" in c and "bootstrap" in c]
    assert "DEVICE_CLOAKED=true" in out


def test_tray_is_reopened_from_the_new_files_after_an_upgrade(mac: Mac) -> None:
    mac.write_deploy_properties(JAMF_PROPERTIES)
    mac.install()
    mac.console("alice", 501)
    mac.load(f"gui/501/{TRAY}")  # loaded at alice's login
    mac.forget_calls()

    mac.install()

    calls = mac.calls()
    closed = calls.index(f"launchctl bootout gui/501/{TRAY}")
    opened = calls.index(f"launchctl bootstrap gui/501 {service_macos.tray_plist(mac.target)}")
    assert closed < opened
    assert f"gui/501/{TRAY}" in mac.loaded()


@pytest.mark.parametrize("name", ["loginwindow", "_mbsetupuser"])
def test_no_tray_when_no_one_is_at_the_screen(mac: Mac, name: str) -> None:
    mac.write_deploy_properties(JAMF_PROPERTIES + b"CP_SILENT=false\n")
    mac.console(name, 0 if name == "loginwindow" else 248)
    out = mac.install()
    assert not [c for c in mac.calls() if "gui/" in c]
    assert "no one is logged in" in out


def test_a_package_without_its_plists_fails_and_loads_nothing(mac: Mac) -> None:
    shutil.rmtree(mac.path("/usr/local/holdfast/launchd"))
    done = mac.run("postinstall")
    assert done.returncode == 1
    assert "lacks" in done.stdout
    assert mac.loaded() == []


def test_product_installs_on_the_startup_volume_only() -> None:
    # The scripts load launchd jobs into the running system: $3 must be that system's volume.
    root = ET.parse(PACKAGING / "distribution.xml").getroot()  # noqa: S314  # our own file
    domains = root.find("domains")
    assert domains is not None
    assert domains.attrib == {
        "enable_anywhere": "false",
        "enable_currentUserHome": "false",
        "enable_localSystem": "true",
    }


def run_example(tmp_path: Path, name: str, *args: str, text: str | None = None) -> Path:
    """An MDM example script, writing under `tmp_path` instead of /Library; its file."""
    base = "/Library/Application Support/Holdfast"
    script = tmp_path / name
    source = text if text is not None else (PACKAGING / "examples" / name).read_text()
    assert base in source
    script.write_text(source.replace(base, str(tmp_path / "Holdfast")))
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    stub(stubs, "chown", CHOWN)  # the file's owner is checked by the package's scripts
    done = subprocess.run(
        ["/bin/sh", str(script), *args],
        env={"PATH": f"{stubs}:/usr/bin:/bin", "STUB_DIR": str(stubs), "LC_ALL": "C"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    written = tmp_path / "Holdfast" / "conf" / "deploy.properties"
    assert mode(written) == 0o600
    assert mode(written.parent) == 0o700
    return written


def test_jamf_script_writes_what_the_agent_accepts(tmp_path: Path) -> None:
    # Parameter 4 as pasted from `policy show`, quotes included; parameters 5 and 6 given.
    cp_args = f'"DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN={TOKEN}&SSL_WHITELIST={SHA1}"'
    written = run_example(
        tmp_path, "jamf-deploy-properties.sh", "/", "mac-01", "alice", cp_args, "false", ""
    )
    args = read_properties_file(written)
    assert (args.deployment_url, args.token, args.ssl_whitelist) == (URL, TOKEN, (SHA1,))
    assert (args.silent, args.cloaked) == (False, False)


def test_inline_script_writes_what_the_agent_accepts(tmp_path: Path) -> None:
    source = (PACKAGING / "examples" / "write-deploy-properties.sh").read_text()
    filled = source.replace("=TOKEN", f"={TOKEN}").replace("=SHA1_FINGERPRINT", f"={SHA1}")
    args = read_properties_file(run_example(tmp_path, "inline.sh", text=filled))
    assert (args.deployment_url, args.token, args.ssl_whitelist) == (URL, TOKEN, (SHA1,))
