"""The agent as a PyInstaller executable: how it starts itself again, and system programs.

packaging/tests/test_frozen_agent.py runs the real executable; these pin the rules with
`sys.frozen` and `sys.executable` set as PyInstaller's bootloader sets them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent import cli
from agent.frozen import original_environment, self_command

EXECUTABLE = "/opt/holdfast/holdfast"
TOKEN = "0fb12341-246b-448d-b07f-c6573ad5ad02"
CP_ARGS = f"DEPLOYMENT_URL=https://127.0.0.1:9&DEPLOYMENT_POLICY_TOKEN={TOKEN}"
# What the bootloader makes of an environment that had LD_LIBRARY_PATH=/usr/local/lib.
BOOTLOADER_ENVIRONMENT = {
    "PATH": "/usr/bin:/bin",
    "DISPLAY": ":0",
    "LD_LIBRARY_PATH": "/opt/holdfast/_internal:/usr/local/lib",
    "LD_LIBRARY_PATH_ORIG": "/usr/local/lib",
    "_PYI_ARCHIVE_FILE": EXECUTABLE,
    "_PYI_PARENT_PROCESS_LEVEL": "1",
    "_PYI_LINUX_PROCESS_NAME": "holdfast",
}


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", EXECUTABLE)


def test_from_source_the_agent_is_this_python_running_the_agent_module() -> None:
    assert self_command() == [sys.executable, "-m", "agent"]


@pytest.mark.usefixtures("frozen")
def test_frozen_the_agent_is_the_executable_itself_with_no_m() -> None:
    assert self_command() == [EXECUTABLE]


@pytest.mark.usefixtures("frozen")
def test_frozen_other_programs_get_the_environment_from_before_the_bootloader() -> None:
    assert original_environment(BOOTLOADER_ENVIRONMENT) == {
        "PATH": "/usr/bin:/bin",
        "DISPLAY": ":0",
        "LD_LIBRARY_PATH": "/usr/local/lib",
    }


@pytest.mark.usefixtures("frozen")
def test_frozen_without_a_library_path_before_other_programs_get_none() -> None:
    environment = {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/holdfast/_internal"}
    assert original_environment(environment) == {"PATH": "/usr/bin"}


@pytest.mark.usefixtures("frozen")
def test_frozen_the_default_is_this_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/holdfast/_internal")
    monkeypatch.delenv("LD_LIBRARY_PATH_ORIG", raising=False)
    monkeypatch.setenv("_PYI_ARCHIVE_FILE", EXECUTABLE)
    environment = original_environment()
    assert "LD_LIBRARY_PATH" not in environment
    assert "_PYI_ARCHIVE_FILE" not in environment
    assert environment["PATH"] == os.environ["PATH"]


def test_from_source_the_environment_is_passed_on_as_it_is() -> None:
    assert original_environment(BOOTLOADER_ENVIRONMENT) == BOOTLOADER_ENVIRONMENT
    assert original_environment() == dict(os.environ)


class Replaced(Exception):
    """os.execve was called: the process would now be the program it names."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(path)
        self.path, self.argv, self.env = path, argv, env


def replace_process(path: str, argv: list[str], env: dict[str, str]) -> None:
    raise Replaced(path, argv, env)


@pytest.mark.usefixtures("frozen")
def test_frozen_run_starts_the_executable_again_without_the_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in BOOTLOADER_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "execve", replace_process)
    home = str(tmp_path / "agent")
    with pytest.raises(Replaced) as replaced:
        cli.main(["run", "--deploy-args", CP_ARGS, "--home", home])
    assert replaced.value.path == EXECUTABLE
    assert replaced.value.argv == [EXECUTABLE, "run", "--home", home]
    assert replaced.value.env["LD_LIBRARY_PATH"] == "/usr/local/lib"
    assert not any(name.startswith("_PYI_") for name in replaced.value.env)
    assert (tmp_path / "agent" / "conf" / "deploy.properties").exists()


def test_from_source_run_starts_python_m_agent_again_without_the_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "execve", replace_process)
    home = str(tmp_path / "agent")
    with pytest.raises(Replaced) as replaced:
        cli.main(["--home", home, "run", f"--deploy-args={CP_ARGS}"])
    assert replaced.value.argv == [sys.executable, "-m", "agent", "--home", home, "run"]
    assert replaced.value.env == dict(os.environ)
