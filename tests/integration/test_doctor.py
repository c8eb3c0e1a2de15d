"""`holdfast doctor` as support staff run it: a real command against a real authority."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest

from agent.pinning import fingerprints_of
from tests.conftest import require_tool
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin, admin_json, free_port

CHECKS = ["installer arguments", "DNS", "TCP", "TLS", "token", "clock", "detection", "disk space"]
WRONG_PIN = "ab" * 20


def cp_args(authority: Authority) -> str:
    value: str = admin_json(authority.data, "policy", "show", "--org", "Demo")["install_args"][
        "cp_args"
    ]
    return value


def doctor(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    device = Agent(home=home)
    device.configure()
    return subprocess.run(
        device.command("doctor", *args), capture_output=True, text=True, timeout=120, check=False
    )


def lines_of(output: str) -> dict[str, str]:
    """The report's line for each check, by check name (fix lines are indented under it)."""
    found: dict[str, str] = {}
    current = ""
    for line in output.splitlines():
        for name in CHECKS:
            if line[6:].startswith(f"{name}  "):
                current = name
                found[name] = line
                break
        else:
            if line.lstrip().startswith("fix:") and current:
                found[current] += "\n" + line
    return found


def status(line: str) -> str:
    return line.split(maxsplit=1)[0]


def test_good_arguments_pass_every_check_and_record_nothing(
    authority: Authority, token: str, tmp_path: Path
) -> None:
    require_tool(shutil.which("bwrap") is not None, "bubblewrap is not installed (bubblewrap)")
    # The detection check must run the script in the daemon's strong sandbox, not a weaker one.
    admin(authority.data, "policy", "set", "--org", "Demo", "require_strong_sandbox=true")
    result = doctor(tmp_path / "agent", "--deploy-args", cp_args(authority))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_of(result.stdout)
    assert list(lines) == CHECKS
    assert all(status(line) == "OK" for line in lines.values()), result.stdout
    sha1, sha256 = fingerprints_of(_der(authority))
    assert sha1 in lines["TLS"] and sha256 in lines["TLS"]
    assert "'Demo'" in lines["token"]
    assert "jdoe@example.com" in lines["detection"]
    assert "bubblewrap" in lines["detection"]
    assert result.stdout.splitlines()[-1].startswith("8 OK, 0 FAIL, 0 SKIP")
    assert token not in result.stdout + result.stderr
    # A dry run: the authority saw no device.
    assert admin_json(authority.data, "device", "list") == []


def test_a_wrong_pin_fails_tls_and_prints_the_fingerprint_seen(
    authority: Authority, token: str, tmp_path: Path
) -> None:
    args = (
        f"DEPLOYMENT_URL={authority.url}&DEPLOYMENT_POLICY_TOKEN={token}&SSL_WHITELIST={WRONG_PIN}"
    )
    result = doctor(tmp_path / "agent", "--deploy-args", args)
    assert result.returncode == 1
    lines = lines_of(result.stdout)
    assert status(lines["TLS"]) == "FAIL"
    sha1, sha256 = fingerprints_of(_der(authority))
    assert sha1 in lines["TLS"] and sha256 in lines["TLS"]
    assert "NOT in SSL_WHITELIST" in lines["TLS"]
    assert "fix:" in lines["TLS"] and "tls show" in lines["TLS"]
    assert "intercepts TLS" in lines["TLS"]
    # The token is not sent to a server whose certificate is not pinned.
    assert status(lines["token"]) == "SKIP" and "TLS check failed" in lines["token"]
    assert status(lines["detection"]) == "SKIP"
    assert token not in result.stdout + result.stderr


def test_an_unknown_token_fails_the_token_check_with_its_fix(
    authority: Authority, token: str, tmp_path: Path
) -> None:
    wrong = str(uuid.uuid4())
    result = doctor(tmp_path / "agent", "--deploy-args", cp_args(authority).replace(token, wrong))
    assert result.returncode == 1
    lines = lines_of(result.stdout)
    assert [status(lines[n]) for n in ("DNS", "TCP", "TLS", "clock")] == ["OK"] * 4
    assert status(lines["token"]) == "FAIL"
    assert "token_unknown" in lines["token"]
    assert "fix:" in lines["token"] and "policy show" in lines["token"]
    assert status(lines["detection"]) == "SKIP"
    assert wrong not in result.stdout + result.stderr


def test_a_rotated_token_says_so_and_points_to_the_current_arguments(
    authority: Authority, token: str, tmp_path: Path
) -> None:
    old = cp_args(authority)
    admin(authority.data, "policy", "rotate-token", "--org", "Demo")
    home = tmp_path / "agent"
    # From conf/deploy.properties this time, as on a deployed device.
    (home / "conf").mkdir(parents=True)
    (home / "conf" / "deploy.properties").write_text(old.replace("&", "\n") + "\n")
    result = doctor(home)
    assert result.returncode == 1
    lines = lines_of(result.stdout)
    assert str(home / "conf" / "deploy.properties") in lines["installer arguments"]
    assert status(lines["token"]) == "FAIL"
    assert "token_rotated" in lines["token"] and "rotated" in lines["token"].split("fix:")[1]
    assert token not in result.stdout + result.stderr


def test_an_unreachable_server_fails_tcp_and_skips_what_needs_it(
    authority: Authority, token: str, tmp_path: Path
) -> None:
    closed = free_port()
    args = cp_args(authority).replace(f":{authority.port}", f":{closed}")
    result = doctor(tmp_path / "agent", "--deploy-args", args)
    assert result.returncode == 1
    lines = lines_of(result.stdout)
    assert status(lines["DNS"]) == "OK"
    assert status(lines["TCP"]) == "FAIL"
    assert "refused" in lines["TCP"] and "fix:" in lines["TCP"]
    for later in ("TLS", "token", "clock", "detection"):
        assert status(lines[later]) == "SKIP"
        assert "the TCP check failed" in lines[later]
    assert status(lines["disk space"]) == "OK"  # needs no network
    assert "4 SKIP" in result.stdout.splitlines()[-1]
    assert token not in result.stdout + result.stderr


A_TOKEN = "0b7e4b56-4f0e-4d7c-9a55-2c1d3e4f5a6b"


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("", "DEPLOYMENT_URL: is required"),
        (f"DEPLOYMENT_URL=http://127.0.0.1:4285&DEPLOYMENT_POLICY_TOKEN={A_TOKEN}", "http://"),
        ("DEPLOYMENT_URL=https://127.0.0.1:4285&DEPLOYMENT_POLICY_TOKEN=nope", "TOKEN"),
    ],
)
def test_bad_arguments_fail_the_first_check_without_a_traceback(
    tmp_path: Path, given: str, named: str
) -> None:
    result = doctor(tmp_path / "agent", "--deploy-args", given)
    assert result.returncode == 1
    lines = lines_of(result.stdout)
    assert status(lines["installer arguments"]) == "FAIL"
    assert named in lines["installer arguments"]
    assert "fix:" in lines["installer arguments"]
    assert all(status(lines[n]) == "SKIP" for n in CHECKS[1:-1])
    assert "Traceback" not in result.stdout + result.stderr
    assert A_TOKEN not in result.stdout and "nope" not in result.stdout
    assert not (tmp_path / "agent" / "state").exists()  # doctor writes nothing


def _der(authority: Authority) -> bytes:
    return ssl.PEM_cert_to_DER_cert((authority.data / "tls" / "current.crt").read_text())
