"""The .deb's sources (packaging/debian/, packaging/build.py) and the step its postinst runs.

Building and installing the package is `make package` and packaging/tests/check_deb.sh, in
.ci/run; here: the maintainer scripts are clean shell, `holdfast save-deploy-args` saves the
installer arguments as the postinst needs, and the files the build lays out match the units.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from agent import cli
from agent.deploy_args import read_properties_file
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "packaging" / "debian"
SHELL_SCRIPTS = [
    DEBIAN / "postinst",
    DEBIAN / "prerm",
    DEBIAN / "postrm",
    REPO / "packaging" / "tests" / "check_deb.sh",
]
TOKEN = "0fb12341-246b-448d-b07f-c6573ad5ad02"
URL = "https://backup.example.com:4285"
CP_ARGS = f"DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN={TOKEN}"


@pytest.fixture(scope="module")
def build() -> ModuleType:
    """packaging/build.py, loaded by path (`packaging` is also a PyPI package's name)."""
    spec = importlib.util.spec_from_file_location("holdfast_build", REPO / "packaging/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def save(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    code = cli.main(["save-deploy-args", *args, "--home", str(home)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_the_shell_scripts_pass_shellcheck(script: Path) -> None:
    require_tool(shutil.which("shellcheck") is not None, "shellcheck is not installed (shellcheck)")
    done = subprocess.run(
        ["shellcheck", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_the_shell_scripts_are_executable_and_stop_on_errors(script: Path) -> None:
    assert mode(script) & 0o111
    assert "\nset -e" in script.read_text()


def test_save_deploy_args_reads_the_cp_args_from_stdin_and_saves_them_privately(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(CP_ARGS + "&SOME_FUTURE_KEY=1\n"))
    code, out, err = save(capsys, tmp_path, "--deploy-args", "-")
    assert (code, err) == (0, "")
    saved = tmp_path / "conf" / "deploy.properties"
    assert out.splitlines() == [
        "Warning: Installer argument 'SOME_FUTURE_KEY' is not one this agent knows; it was "
        "ignored.",
        f"Saved the installer arguments in {saved} (readable by root only).",
    ]
    assert read_properties_file(saved).token == TOKEN
    assert mode(saved) == 0o600
    assert mode(saved.parent) == 0o700


def test_save_deploy_args_normalises_a_deploy_properties_written_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The postinst's case: the administrator wrote the file, readable by all, before install.
    conf = tmp_path / "conf"
    conf.mkdir(mode=0o755)
    written = conf / "deploy.properties"
    lines = ["# by the MDM", f"DEPLOYMENT_URL={URL}", f"DEPLOYMENT_POLICY_TOKEN={TOKEN}"]
    written.write_text("\r\n".join(lines) + "\r\n")
    written.chmod(0o644)
    code, out, _ = save(capsys, tmp_path, "--deploy-file", str(written))
    assert code == 0
    assert TOKEN not in out
    assert mode(written) == 0o600
    assert mode(conf) == 0o700
    assert f"DEPLOYMENT_POLICY_TOKEN={TOKEN}\n" in written.read_text()
    assert "\r" not in written.read_text()


def test_save_deploy_args_refuses_bad_arguments_in_one_line_and_keeps_the_saved_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert save(capsys, tmp_path, "--deploy-args", CP_ARGS)[0] == 0
    saved = tmp_path / "conf" / "deploy.properties"
    before = saved.read_bytes()
    bad = CP_ARGS.replace("https://", "http://").replace(TOKEN, TOKEN[::-1])
    code, out, err = save(capsys, tmp_path, "--deploy-args", bad)
    assert code == 2
    assert out == ""
    assert err.startswith("holdfast: installer argument DEPLOYMENT_URL: ")
    assert err.count("\n") == 1
    assert TOKEN[::-1] not in err
    assert saved.read_bytes() == before


def test_save_deploy_args_needs_arguments_and_is_not_in_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as usage:
        cli.main(["save-deploy-args"])
    assert usage.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "save-deploy-args" not in capsys.readouterr().out


def test_the_packaged_autostart_is_the_shipped_one_with_try_exec(build: ModuleType) -> None:
    shipped = (REPO / "agent" / "units" / "holdfast-tray.desktop").read_text()
    packaged = build.autostart_text()
    assert packaged.replace("TryExec=/usr/bin/holdfast\n", "", 1) == shipped
    lines = packaged.splitlines()
    assert lines.index("TryExec=/usr/bin/holdfast") < lines.index("Exec=holdfast tray")


def test_the_packaged_unit_runs_usr_bin_holdfast() -> None:
    unit = (REPO / "agent" / "units" / "holdfast-agent.service").read_text()
    assert re.search(r"^ExecStart=/usr/bin/holdfast run$", unit, re.MULTILINE)


def test_the_conffiles_are_the_files_the_package_puts_in_etc() -> None:
    assert (DEBIAN / "conffiles").read_text().splitlines() == [
        "/etc/xdg/autostart/holdfast-tray.desktop"
    ]


def test_the_control_template_depends_on_bubblewrap_and_has_only_known_placeholders(
    build: ModuleType,
) -> None:
    text = (DEBIAN / "control.in").read_text()
    assert set(re.findall(r"@[A-Z_]+@", text)) == {
        "@VERSION@",
        "@ARCHITECTURE@",
        "@INSTALLED_SIZE@",
        "@GLIBC@",
    }
    assert re.search(r"^Depends: .*\bbubblewrap\b", text, re.MULTILINE)


def test_the_package_version_is_the_agents(build: ModuleType) -> None:
    from agent import __version__

    assert build.version() == __version__
