"""`holdfast doctor`: the report's format, which checks run or SKIP, and each rule and fix.

The network, the sandbox, the disk and the clock are replaced through `Probes`; the
authority's answers come through a real AuthorityClient over `httpx.MockTransport`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import socket
import ssl
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent import cli
from agent.deploy_args import DeployArgs
from agent.detection import DetectionResult, DetectionScript, ScriptRun
from agent.doctor import Check, Probes, doctor_command, format_checks, run_doctor
from agent.doctor_checks import clock_check, disk_check, duration
from agent.errors import DetectionError, TransientError
from agent.paths import AgentPaths
from agent.pinning import fingerprints_of
from agent.sandbox import Account, Isolation, Plan, SandboxSettings
from agent.transport import AuthorityClient, ServerProbe
from authority.tls import make_self_signed

TOKEN = "0b7e4b56-4f0e-4d7c-9a55-2c1d3e4f5a6b"
URL = "https://authority.test:4285"
NOW = dt.datetime(2026, 12, 4, 20, 0, 0, tzinfo=dt.UTC)
CHECKS = ["installer arguments", "DNS", "TCP", "TLS", "token", "clock", "detection", "disk space"]
SCRIPT = "echo AGENT_USERNAME=jdoe@example.com\necho AGENT_USER_HOME=/home/jdoe\n"


@pytest.fixture(scope="module")
def der() -> bytes:
    pem, _key = make_self_signed("authority.test")
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def cp_args(der: bytes, *, pin: str | None = None, token: str = TOKEN) -> str:
    pins = fingerprints_of(der)[0] if pin is None else pin
    whitelist = f"&SSL_WHITELIST={pins}" if pins else ""
    return f"DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN={token}{whitelist}"


def policy_document(detection: bool = True) -> dict[str, Any]:
    script = {
        "os": "linux",
        "filename": "detect_user.sh",
        "interpreter": ["/bin/bash"],
        "script": SCRIPT,
        "sha256": hashlib.sha256(SCRIPT.encode()).hexdigest(),
    }
    return {
        "version": 1,
        "org": {"name": "Acme", "auth": "local"},
        "registration": "silent",
        "detection": script if detection else None,
        "settings": {"detection_timeout_seconds": 60},
        "tls_pins": [],
        "updated_at": None,
    }


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


class FakeAuthority:
    """The two calls doctor makes over a client: health, and a dry-run policy fetch."""

    def __init__(self, answer: httpx.Response | None = None) -> None:
        self.answer = answer or httpx.Response(200, json=policy_document())
        self.policy_requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/health":
            return httpx.Response(200, json={"status": "ok", "version": "0.1.0"})
        assert request.url.path == "/api/v1/deploy/policy"
        self.policy_requests.append(request)
        return self.answer

    def client(self, args: DeployArgs, _pins: Sequence[str], timeout: float) -> AuthorityClient:
        return AuthorityClient(
            args.deployment_url, transport=httpx.MockTransport(self.handle), timeout=timeout
        )


def detected(script: DetectionScript, **_kw: Any) -> DetectionResult:
    run = ScriptRun(exit_code=0, stdout="", stderr="", duration_s=0.05)
    return DetectionResult("jdoe@example.com", "/home/jdoe", run)


def a_plan(settings: SandboxSettings) -> Plan:
    return Plan(Account("nobody", 65534, 65534, True), Isolation.BUBBLEWRAP, settings)


def probes(der: bytes, **changes: Any) -> Probes:
    """Everything passes, unless `changes` says otherwise."""
    date = "Fri, 04 Dec 2026 20:00:00 GMT"
    fake = FakeAuthority()
    healthy = Probes(
        clock=lambda: NOW,
        resolve=lambda host, port: ["192.0.2.10"],
        connect=lambda address, port, timeout: None,
        look=lambda url, proxy, timeout: ServerProbe(der, date, None),
        client=fake.client,
        plan=a_plan,
        detect=detected,
        free_bytes=lambda folder: 50 * 10**9,
    )
    return replace(healthy, **changes)


@pytest.fixture
def paths(tmp_path: Path) -> AgentPaths:
    return AgentPaths.under(tmp_path / "agent")


def by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == CHECKS  # always every check, always in this order
    return {c.name: c for c in checks}


def statuses(checks: list[Check]) -> list[str]:
    return [c.status for c in checks]


# The report


def test_a_passing_report_is_one_line_per_check_and_says_ready() -> None:
    checks = [Check(name, "OK", f"{name} is fine", None) for name in CHECKS]
    lines = format_checks(checks).splitlines()
    assert len(lines) == len(CHECKS) + 1
    assert lines[0] == "OK    installer arguments  installer arguments is fine"
    assert lines[3].startswith("OK    TLS                  ")
    assert lines[-1] == "8 OK, 0 FAIL, 0 SKIP: ready to deploy."


def test_a_fail_has_its_fix_indented_under_it_and_the_summary_counts_each_status() -> None:
    checks = [
        Check("DNS", "OK", "resolves", None),
        Check("TCP", "FAIL", "refused", "start the authority"),
        Check("TLS", "SKIP", "not tried: the TCP check failed", None),
    ]
    lines = format_checks(checks).splitlines()
    assert lines[1] == "FAIL  TCP                  refused"
    assert lines[2] == " " * 27 + "fix: start the authority"
    assert lines[3] == "SKIP  TLS                  not tried: the TCP check failed"
    assert lines[4].startswith("1 OK, 1 FAIL, 1 SKIP: not ready")


# Which checks run, and which SKIP


def test_every_check_passes_with_a_healthy_authority(paths: AgentPaths, der: bytes) -> None:
    checks = by_name(run_doctor(paths, cp_args(der), probes=probes(der)))
    assert all(c.status == "OK" for c in checks.values()), checks
    sha1, sha256 = fingerprints_of(der)
    assert sha1 in checks["TLS"].detail and sha256 in checks["TLS"].detail
    assert "'Acme'" in checks["token"].detail
    assert "jdoe@example.com" in checks["detection"].detail
    assert "bubblewrap" in checks["detection"].detail
    assert TOKEN not in checks["installer arguments"].detail
    assert URL in checks["installer arguments"].detail


def test_a_dns_failure_skips_everything_that_needs_the_network_but_not_the_disk(
    paths: AgentPaths, der: bytes
) -> None:
    def no_such_host(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    checks = run_doctor(paths, cp_args(der), probes=probes(der, resolve=no_such_host))
    assert statuses(checks) == ["OK", "FAIL", "SKIP", "SKIP", "SKIP", "SKIP", "SKIP", "OK"]
    named = by_name(checks)
    assert "Name or service not known" in named["DNS"].detail
    assert named["DNS"].fix is not None and "getent hosts authority.test" in named["DNS"].fix
    assert all(c.detail == "not tried: the DNS check failed" for c in checks[2:7])


def test_missing_installer_arguments_skip_all_but_the_disk(paths: AgentPaths, der: bytes) -> None:
    checks = run_doctor(paths, None, probes=probes(der))
    assert statuses(checks) == ["FAIL"] + ["SKIP"] * 6 + ["OK"]
    first = checks[0]
    assert str(paths.deploy_properties) in first.detail
    assert first.fix is not None and "--deploy-args" in first.fix
    assert checks[1].detail == "not tried: the installer arguments check failed"


def test_the_arguments_come_from_deploy_properties_without_deploy_args(
    paths: AgentPaths, der: bytes
) -> None:
    paths.conf.mkdir(parents=True)
    paths.deploy_properties.write_text(cp_args(der).replace("&", "\n") + "\n")
    checks = by_name(run_doctor(paths, None, probes=probes(der)))
    assert checks["installer arguments"].status == "OK"
    assert str(paths.deploy_properties) in checks["installer arguments"].detail
    assert checks["token"].status == "OK"


def test_a_refused_connection_skips_tls_token_clock_and_detection(
    paths: AgentPaths, der: bytes
) -> None:
    def refused(address: str, port: int, timeout: float) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    checks = run_doctor(paths, cp_args(der), probes=probes(der, connect=refused))
    assert statuses(checks) == ["OK", "OK", "FAIL", "SKIP", "SKIP", "SKIP", "SKIP", "OK"]
    tcp = checks[2]
    assert "192.0.2.10: Connection refused" in tcp.detail
    assert tcp.fix is not None and "port 4285" in tcp.fix


def test_a_silent_firewall_is_told_apart_from_a_refusal(paths: AgentPaths, der: bytes) -> None:
    def dropped(address: str, port: int, timeout: float) -> None:
        raise TimeoutError("timed out")

    tcp = run_doctor(paths, cp_args(der), probes=probes(der, connect=dropped))[2]
    assert tcp.status == "FAIL" and "no answer within 5 s" in tcp.detail
    assert tcp.fix is not None and "firewall drops" in tcp.fix


def test_through_a_proxy_dns_and_tcp_check_the_proxy(paths: AgentPaths, der: bytes) -> None:
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["192.0.2.99"]

    given = cp_args(der) + "&PROXY_URL=http://proxy.corp:3128"
    checks = by_name(run_doctor(paths, given, probes=probes(der, resolve=resolve)))
    assert asked == [("proxy.corp", 3128)]
    assert "the proxy http://proxy.corp:3128" in checks["DNS"].detail
    assert "port 3128" in checks["TCP"].detail


def test_a_wrong_pin_fails_tls_shows_what_was_seen_and_sends_no_token(
    paths: AgentPaths, der: bytes
) -> None:
    fake = FakeAuthority()
    checks = by_name(
        run_doctor(paths, cp_args(der, pin="ab" * 20), probes=probes(der, client=fake.client))
    )
    tls = checks["TLS"]
    assert tls.status == "FAIL"
    sha1, sha256 = fingerprints_of(der)
    assert f"sha1 {sha1}" in tls.detail and f"sha256 {sha256}" in tls.detail
    assert "ab" * 20 in tls.detail
    assert tls.fix is not None and "tls show" in tls.fix and "intercepts TLS" in tls.fix
    assert checks["token"].status == "SKIP" and checks["detection"].status == "SKIP"
    assert fake.policy_requests == []  # the token never went to the unpinned server
    assert checks["clock"].status == "OK"  # the time needs no trust in the certificate


def test_a_fingerprint_delivered_by_the_last_policy_is_trusted_as_the_daemon_trusts_it(
    paths: AgentPaths, der: bytes
) -> None:
    paths.state.mkdir(parents=True)
    delivered = {
        "version": 1,
        "phase": "awaiting_policy",
        "facts": {"pins": [fingerprints_of(der)[1]]},
    }
    paths.state_file.write_text(json.dumps(delivered))
    checks = by_name(run_doctor(paths, cp_args(der, pin="ab" * 20), probes=probes(der)))
    assert checks["TLS"].status == "OK"
    assert "delivered by the last policy" in checks["TLS"].detail


def test_without_pins_the_system_trust_store_decides(paths: AgentPaths, der: bytes) -> None:
    def untrusted(request: httpx.Request) -> httpx.Response:
        cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
        cause.verify_message = "self-signed certificate"
        raise httpx.ConnectError("certificate verify failed") from cause

    def client(args: DeployArgs, _pins: Sequence[str], timeout: float) -> AuthorityClient:
        return AuthorityClient(args.deployment_url, transport=httpx.MockTransport(untrusted))

    checks = by_name(run_doctor(paths, cp_args(der, pin=""), probes=probes(der, client=client)))
    assert checks["TLS"].status == "FAIL"
    assert "self-signed certificate" in checks["TLS"].detail
    assert checks["TLS"].fix is not None and "SSL_WHITELIST" in checks["TLS"].fix
    trusted = by_name(run_doctor(paths, cp_args(der, pin=""), probes=probes(der)))
    assert trusted["TLS"].status == "OK"
    assert "system's certificate store" in trusted["TLS"].detail


def test_no_tls_handshake_fails_tls_and_skips_the_clock(paths: AgentPaths, der: bytes) -> None:
    def no_tls(url: str, proxy: str | None, timeout: float) -> ServerProbe:
        raise TransientError("connect_failed", f"no TLS handshake with {url}: wrong version")

    checks = by_name(run_doctor(paths, cp_args(der), probes=probes(der, look=no_tls)))
    assert checks["TLS"].status == "FAIL" and "wrong version" in checks["TLS"].detail
    assert checks["clock"].status == "SKIP"
    assert checks["token"].status == "SKIP"


# The token: the dry run, and each refusal's fix


def test_the_policy_is_asked_for_as_a_dry_run_with_the_token_in_its_header(
    paths: AgentPaths, der: bytes
) -> None:
    fake = FakeAuthority()
    run_doctor(paths, cp_args(der), probes=probes(der, client=fake.client))
    [request] = fake.policy_requests
    body = json.loads(request.content)
    assert "device_guid" not in body  # no GUID: the authority records nothing
    assert body["os"] in ("linux", "macos", "windows")
    assert request.headers["X-Deployment-Token"] == TOKEN


@pytest.mark.parametrize(
    ("status", "code", "in_fix"),
    [
        (404, "token_unknown", "never issued"),
        (404, "token_rotated", "the token was rotated"),
        (410, "policy_deleted", "policy create"),
        (403, "org_deactivated", "deactivated"),
        (503, "overloaded", "run doctor again"),
        (404, "no_such_endpoint", "not a Holdfast authority"),
        (418, "teapot", "docs/contract.md section 9.5"),
    ],
)
def test_each_token_refusal_fails_with_its_code_and_fix(
    paths: AgentPaths, der: bytes, status: int, code: str, in_fix: str
) -> None:
    fake = FakeAuthority(error(status, code, "refused by the authority"))
    checks = by_name(run_doctor(paths, cp_args(der), probes=probes(der, client=fake.client)))
    token = checks["token"]
    assert token.status == "FAIL"
    assert f"(code {code})" in token.detail and "refused by the authority" in token.detail
    assert token.fix is not None and in_fix in token.fix
    assert checks["detection"] == Check("detection", "SKIP", "not tried: the token check failed")


def test_the_token_never_reaches_the_report_even_when_echoed(paths: AgentPaths, der: bytes) -> None:
    fake = FakeAuthority(error(404, "token_unknown", f"no policy has token {TOKEN.upper()}"))
    report = format_checks(run_doctor(paths, cp_args(der), probes=probes(der, client=fake.client)))
    assert TOKEN not in report.lower()
    assert "<token not shown>" in report


# Detection


def test_a_policy_without_a_detection_script_fails_detection(paths: AgentPaths, der: bytes) -> None:
    fake = FakeAuthority(httpx.Response(200, json=policy_document(detection=False)))
    checks = by_name(run_doctor(paths, cp_args(der), probes=probes(der, client=fake.client)))
    assert checks["detection"].status == "FAIL"
    assert checks["detection"].fix is not None and "--script" in checks["detection"].fix


def test_a_failing_script_fails_detection_with_its_reason(paths: AgentPaths, der: bytes) -> None:
    def fails(script: DetectionScript, **_kw: Any) -> DetectionResult:
        raise DetectionError("sandbox_unavailable", "the policy requires a strong sandbox")

    checks = by_name(run_doctor(paths, cp_args(der), probes=probes(der, detect=fails)))
    detection = checks["detection"]
    assert detection.status == "FAIL"
    assert "(code sandbox_unavailable)" in detection.detail
    assert detection.fix is not None and "bubblewrap" in detection.fix


def test_no_user_detected_is_a_failure(paths: AgentPaths, der: bytes) -> None:
    def nobody(script: DetectionScript, **_kw: Any) -> DetectionResult:
        return DetectionResult(None, None, ScriptRun(0, "", "", 0.01))

    checks = by_name(run_doctor(paths, cp_args(der), probes=probes(der, detect=nobody)))
    assert checks["detection"].status == "FAIL"
    assert "no user detected" in checks["detection"].detail


# The clock


@pytest.mark.parametrize(
    ("local", "status", "said"),
    [
        (NOW + dt.timedelta(seconds=1), "OK", "agrees"),
        (NOW + dt.timedelta(minutes=4), "OK", "the device's clock is 4 min ahead"),
        (NOW + dt.timedelta(minutes=5), "OK", "5 min ahead"),
        (NOW + dt.timedelta(minutes=6, seconds=3), "FAIL", "the device's clock is 6 min 3 s"),
        (NOW - dt.timedelta(hours=2), "FAIL", "the authority's clock is 2 h ahead"),
    ],
)
def test_the_clock_fails_beyond_five_minutes_either_way(
    local: dt.datetime, status: str, said: str
) -> None:
    check = clock_check("Fri, 04 Dec 2026 20:00:00 GMT", local)
    assert check.status == status
    assert said in check.detail
    assert (check.fix is not None) == (status == "FAIL")


def test_an_unreadable_date_fails_the_clock() -> None:
    assert clock_check("yesterday", NOW).status == "FAIL"


def test_the_clock_is_read_when_the_server_answered(paths: AgentPaths, der: bytes) -> None:
    late = probes(der, clock=lambda: NOW - dt.timedelta(minutes=10))
    clock = by_name(run_doctor(paths, cp_args(der), probes=late))["clock"]
    assert clock.status == "FAIL" and "the authority's clock is 10 min ahead" in clock.detail


def test_duration_keeps_the_two_largest_units() -> None:
    assert [duration(s) for s in (0, 59, 61, 3600, 90061)] == [
        "0 s",
        "59 s",
        "1 min 1 s",
        "1 h",
        "1 d 1 h",
    ]


# The disk


def test_the_disk_fails_under_100_mb() -> None:
    low = disk_check(99_000_000, Path("/var/lib/holdfast"))
    assert low.status == "FAIL" and "99 MB free" in low.detail
    assert low.fix is not None and "free space" in low.fix
    assert disk_check(100_000_000, Path("/var/lib/holdfast")).status == "OK"


def test_the_disk_of_a_state_folder_not_made_yet_is_measured(paths: AgentPaths, der: bytes) -> None:
    measured: list[Path] = []

    def free(folder: Path) -> int:
        measured.append(folder)
        return 10_000_000

    checks = by_name(run_doctor(paths, cp_args(der), probes=probes(der, free_bytes=free)))
    assert measured == [paths.state.parent.parent]  # tmp_path: the agent's folder is not made
    assert checks["disk space"].status == "FAIL"
    assert not paths.state.exists()


# The command


def test_the_command_exits_0_only_when_every_check_is_ok(paths: AgentPaths, der: bytes) -> None:
    out = io.StringIO()
    assert doctor_command(paths, cp_args(der), out, probes=probes(der)) == 0
    assert out.getvalue().endswith("ready to deploy.\n")
    full = probes(der, free_bytes=lambda folder: 1)
    assert doctor_command(paths, cp_args(der), io.StringIO(), probes=full) == 1


def test_holdfast_doctor_is_a_command_and_bad_arguments_are_one_failed_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["doctor", "--home", str(tmp_path / "agent"), "--deploy-args", "nonsense"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.startswith("FAIL  installer arguments  installer argument DEPLOYMENT_URL")
    assert err == ""


def test_a_bad_agent_yaml_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "agent" / "conf").mkdir(parents=True)
    (tmp_path / "agent" / "conf" / "agent.yaml").write_text("colour: blue\n")
    code = cli.main(["doctor", "--home", str(tmp_path / "agent")])
    _out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("holdfast: ") and err.count("\n") == 1 and "'colour'" in err
