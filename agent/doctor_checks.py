"""The checks of `holdfast doctor`, in order, and the rules that judge them.

    installer arguments ─▶ DNS ─▶ TCP ─▶ TLS ─┬─▶ token ─▶ detection
                                       └─────┴─▶ clock (the Date of the TLS look)
    disk space, always

A check whose prerequisite did not pass is SKIP, naming the failure that stopped it. DNS
and TCP go to the proxy when PROXY_URL names one. TLS looks at the server accepting any
certificate (agent.transport.probe_server, no secret sent), prints what it saw, then
compares it with the pins. The token goes to the authority in its header, as the daemon
sends it, and nowhere else; the policy is asked for without a device GUID, a dry run the
authority does not record. Detection runs the policy's script through agent.detection, in
the sandbox the daemon would use.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent import __version__
from agent.config import AgentConfig
from agent.deploy_args import DeployArgs, parse_cp_args, read_properties_file
from agent.detection import DetectionResult, DetectionScript, SandboxSettings, detect
from agent.device import authority_client
from agent.doctor_fixes import (
    CLOCK_FIX,
    DISK_FIX,
    arguments_fix,
    detection_fix,
    dns_fix,
    pin_fix,
    tcp_fix,
    tls_fix,
    token_fix,
    untrusted_fix,
)
from agent.errors import AgentError, ContactError, DeployArgsError, DetectionError
from agent.paths import AgentPaths
from agent.pinning import fingerprints_of
from agent.policy import Policy, this_os
from agent.sandbox import Plan, plan
from agent.state import load_state
from agent.transport import AuthorityClient, ServerProbe, probe_server

OK, FAIL, SKIP = "OK", "FAIL", "SKIP"
CLOCK_TOLERANCE_S = 300.0  # beyond this, certificates look expired and logs mislead
MIN_FREE_BYTES = 100_000_000  # MB are millions of bytes, as `holdfast status` counts them
TCP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """The outcome of one check, as one line of the report."""

    name: str
    status: str  # "OK" | "FAIL" | "SKIP"
    detail: str
    fix: str | None = None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _resolve(host: str, port: int) -> list[str]:
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def _connect(address: str, port: int, timeout: float) -> None:
    with socket.create_connection((address, port), timeout=timeout):
        pass


def _look(url: str, proxy: str | None, timeout: float) -> ServerProbe:
    return probe_server(url, proxy=proxy, timeout=timeout)


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


@dataclass(frozen=True)
class Probes:
    """How doctor reaches the network, the disk and the clock; tests replace the slow parts."""

    clock: Callable[[], dt.datetime] = _utcnow
    resolve: Callable[[str, int], list[str]] = _resolve
    connect: Callable[[str, int, float], None] = _connect
    look: Callable[[str, str | None, float], ServerProbe] = _look
    client: Callable[[DeployArgs, Sequence[str], float], AuthorityClient] = authority_client
    plan: Callable[[SandboxSettings], Plan] = plan
    detect: Callable[..., DetectionResult] = detect
    free_bytes: Callable[[Path], int] = _free_bytes


@dataclass
class Found:
    """What the checks learned so far, for the checks that depend on it."""

    args: DeployArgs | None = None
    addresses: list[str] = field(default_factory=list)
    seen: ServerProbe | None = None
    seen_at: dt.datetime | None = None
    policy: Policy | None = None
    failed: dict[str, str] = field(default_factory=dict)  # check -> the failure behind it


class Preflight:
    """The checks in order over one device's folders; each method returns its Check
    unnamed, and `run` names it."""

    def __init__(self, paths: AgentPaths, config: AgentConfig, probes: Probes) -> None:
        self.paths, self.config, self.probes = paths, config, probes
        self.timeout = config.request_timeout
        self.found = Found()

    def run(self, given: str | None) -> list[Check]:
        steps: list[tuple[str, tuple[str, ...], Callable[[], Check]]] = [
            ("installer arguments", (), lambda: self.arguments(given)),
            ("DNS", ("installer arguments",), self.dns),
            ("TCP", ("DNS",), self.tcp),
            ("TLS", ("TCP",), self.tls),
            ("token", ("TLS",), self.token),
            ("clock", ("TCP",), self.clock),
            ("detection", ("token",), self.detection),
            ("disk space", (), self.disk),
        ]
        checks: list[Check] = []
        for name, needs, check in steps:
            blocked = next((n for n in needs if n in self.found.failed), None)
            if blocked is not None:
                cause = self.found.failed[blocked]
                self.found.failed[name] = cause
                checks.append(Check(name, SKIP, f"not tried: the {cause} check failed"))
                continue
            result = replace(check(), name=name)
            if result.status != OK:
                self.found.failed[name] = self.found.failed.get(name, name)
            checks.append(result)
        return checks

    def arguments(self, given: str | None) -> Check:
        source = self.paths.deploy_properties
        try:
            if given is not None:
                args = parse_cp_args(given)
            elif not source.exists():
                detail = f"no installer arguments: {source} does not exist"
                return Check("", FAIL, detail, arguments_fix("missing"))
            else:
                args = read_properties_file(source)
        except DeployArgsError as exc:
            return Check("", FAIL, exc.message, arguments_fix("invalid"))
        except AgentError as exc:  # unreadable: its permissions, or not UTF-8
            kind = "unreadable" if exc.message.startswith("cannot read") else "invalid"
            return Check("", FAIL, exc.message, arguments_fix(kind))
        self.found.args = args
        pins = ",".join(args.ssl_whitelist) if args.ssl_whitelist else "none (CA verification)"
        where = "--deploy-args" if given is not None else str(source)
        warned = "".join(f"; warning: {w}" for w in args.warnings)
        return Check("", OK, f"{args.deployment_url}, SSL_WHITELIST {pins} (from {where}){warned}")

    def _target(self) -> tuple[str, int, str]:
        """Where the first hop goes: the authority, or the proxy that reaches it."""
        assert self.found.args is not None
        proxy = self.found.args.connection_proxy
        parts = urlsplit(proxy or self.found.args.deployment_url)
        default = 80 if parts.scheme == "http" else 443
        what = f"the proxy {proxy}" if proxy else "the authority"
        return parts.hostname or "", parts.port or default, what

    def dns(self) -> Check:
        host, port, what = self._target()
        try:
            self.found.addresses = self.probes.resolve(host, port)
        except (OSError, UnicodeError) as exc:
            return Check("", FAIL, f"{host} ({what}) does not resolve: {_why(exc)}", dns_fix(host))
        if not self.found.addresses:
            return Check("", FAIL, f"{host} ({what}) resolves to no address", dns_fix(host))
        if self.found.addresses == [host]:
            return Check("", OK, f"{host} ({what}) is an IP address: nothing to look up")
        return Check("", OK, f"{host} ({what}) resolves to {', '.join(self.found.addresses)}")

    def tcp(self) -> Check:
        host, port, what = self._target()
        wait = min(TCP_TIMEOUT_S, self.timeout)
        problems: list[str] = []
        silent = False  # a timeout: dropped by a firewall, rather than refused
        for address in self.found.addresses:
            started = time.monotonic()
            try:
                self.probes.connect(address, port, wait)
            except TimeoutError:
                silent = True
                problems.append(f"{address}: no answer within {wait:g} s")
            except OSError as exc:
                problems.append(f"{address}: {_why(exc)}")
            else:
                took = (time.monotonic() - started) * 1000
                return Check(
                    "", OK, f"connected to {address} port {port} ({what}) in {took:.0f} ms"
                )
        detail = f"cannot connect to {host} port {port} ({what}): {'; '.join(problems)}"
        return Check("", FAIL, detail, tcp_fix(port, timed_out=silent))

    def tls(self) -> Check:
        args = self.found.args
        assert args is not None
        try:
            seen = self.probes.look(args.deployment_url, args.connection_proxy, self.timeout)
        except ContactError as exc:
            return Check("", FAIL, exc.message, tls_fix())
        self.found.seen, self.found.seen_at = seen, self.probes.clock()
        sha1, sha256 = fingerprints_of(seen.certificate)
        shown = f"certificate seen: sha1 {sha1} sha256 {sha256}"
        if args.ssl_whitelist:
            if sha1 in args.ssl_whitelist or sha256 in args.ssl_whitelist:
                return Check("", OK, f"{shown}, in SSL_WHITELIST")
            delivered = self._delivered_pins()
            if sha1 in delivered or sha256 in delivered:
                return Check("", OK, f"{shown}, delivered by the last policy (tls_pins)")
            listed = ", ".join(args.ssl_whitelist)
            return Check("", FAIL, f"{shown}, NOT in SSL_WHITELIST ({listed})", pin_fix())
        return self._trusted_by_system(args, shown)

    def _trusted_by_system(self, args: DeployArgs, shown: str) -> Check:
        """Without pins the system's trust store decides, as it will for the daemon."""
        try:
            with self.probes.client(args, (), self.timeout) as client:
                client.health()
        except ContactError as exc:
            if exc.code in ("tls_verify_failed", "tls_pin_mismatch"):
                return Check("", FAIL, f"{shown}; {exc.message}", untrusted_fix())
            if exc.code in ("connect_failed", "timeout"):
                return Check("", FAIL, f"{shown}; {exc.message}", tls_fix())
            # Any other code is an HTTP answer: the verified handshake went through.
        return Check("", OK, f"{shown}, trusted by the system's certificate store")

    def _delivered_pins(self) -> list[str]:
        """The fingerprints the last policy delivered, which the daemon trusts too."""
        try:
            pins = load_state(self.paths.state_file).facts.get("pins", [])
        except (AgentError, OSError):
            return []
        return [str(p) for p in pins] if isinstance(pins, list) else []

    def token(self) -> Check:
        args = self.found.args
        assert args is not None
        # No device_guid: a dry run, which the authority answers and does not record.
        report: dict[str, Any] = {
            "os": this_os(),
            "device_name": socket.gethostname()[:255],
            "agent_version": __version__,
        }
        try:
            with self.probes.client(args, self._delivered_pins(), self.timeout) as client:
                policy = Policy.from_document(client.fetch_policy(args.token, report))
        except ContactError as exc:
            detail = f"not accepted: {exc.message} (code {exc.code})"
            return Check("", FAIL, detail, token_fix(exc.code))
        self.found.policy = policy
        return Check(
            "",
            OK,
            f"accepted: organization {policy.org!r} ({policy.auth}), {policy.registration} "
            "registration; nothing was recorded (a dry run)",
        )

    def clock(self) -> Check:
        seen, seen_at = self.found.seen, self.found.seen_at
        if seen is None or seen_at is None:
            return Check("", SKIP, "not tried: the TLS check failed")
        if seen.date is None:
            why = seen.problem or "the answer had no Date header"
            return Check("", FAIL, f"cannot read the authority's time: {why}", CLOCK_FIX)
        return clock_check(seen.date, seen_at)

    def detection(self) -> Check:
        policy = self.found.policy
        assert policy is not None
        if policy.detection is None:
            return Check(
                "",
                FAIL,
                f"the policy has no detection script for {this_os()}",
                detection_fix("no_detection_script"),
            )
        folders = (self.paths.conf, self.paths.state, self.paths.log, self.paths.run)
        sandbox = SandboxSettings(  # as the daemon runs it
            account=self.config.detection_user,
            require_strong=bool(policy.settings.get("require_strong_sandbox")),
            hidden=tuple(str(folder) for folder in folders),
        )
        timeout = self.config.setting("detection_timeout_seconds", policy.settings)
        try:
            script = DetectionScript.from_policy(policy.detection)
            chosen = self.probes.plan(sandbox)
            result = self.probes.detect(script, timeout_s=timeout, sandbox=sandbox)
        except DetectionError as exc:
            return Check("", FAIL, f"{exc.message} (code {exc.code})", detection_fix(exc.code))
        how = (
            f"{script.filename} under {chosen.isolation.value} as {chosen.account.name}, "
            f"exit {result.run.exit_code}, {result.run.duration_s:.2f} s"
        )
        if result.username is None:
            return Check("", FAIL, f"no user detected ({how})", detection_fix("no_user_detected"))
        return Check("", OK, f"user {result.username}, home {result.user_home} ({how})")

    def disk(self) -> Check:
        folder = self.paths.state
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # before the first `run`, the disk it will be made on
        try:
            free = self.probes.free_bytes(folder)
        except OSError as exc:
            return Check("", FAIL, f"cannot measure free space of {folder}: {_why(exc)}", DISK_FIX)
        return disk_check(free, self.paths.state)


def clock_check(date_header: str, local: dt.datetime) -> Check:
    """How far this device's clock is from the authority's Date; FAIL beyond the tolerance."""
    try:
        server = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return Check(
            "clock", FAIL, f"the authority's Date {date_header!r} is unreadable", CLOCK_FIX
        )
    if server.tzinfo is None:
        server = server.replace(tzinfo=dt.UTC)
    skew = (local - server).total_seconds()
    # Date has whole seconds: a second off is the header's rounding, not the clock.
    if abs(skew) < 2:
        return Check("clock", OK, f"the device's clock agrees with the authority's ({date_header})")
    device, authority = "the device's clock", "the authority's"
    ahead, behind = (device, authority) if skew > 0 else ("the authority's clock", "the device's")
    detail = f"{ahead} is {duration(abs(skew))} ahead of {behind}"
    if abs(skew) > CLOCK_TOLERANCE_S:
        allowed = duration(CLOCK_TOLERANCE_S)
        return Check("clock", FAIL, f"{detail}; at most {allowed} is allowed", CLOCK_FIX)
    return Check("clock", OK, detail)


def disk_check(free: int, folder: Path) -> Check:
    """Free space for the state folder; FAIL under MIN_FREE_BYTES."""
    detail = f"{megabytes(free)} free for {folder}"
    if free < MIN_FREE_BYTES:
        needed = megabytes(MIN_FREE_BYTES)
        return Check("disk space", FAIL, f"{detail}; at least {needed} is needed", DISK_FIX)
    return Check("disk space", OK, detail)


def duration(seconds: float) -> str:
    """`7 min 12 s`, `3 h 5 min`, `2 d 4 h`: the two largest units."""
    whole = round(seconds)
    units = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]
    parts: list[str] = []
    for unit, size in units:
        if whole >= size or (unit == "s" and not parts):
            parts.append(f"{whole // size} {unit}")
            whole %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def megabytes(count: int) -> str:
    return f"{count / 1e9:,.1f} GB" if count >= 10**10 else f"{count / 1e6:,.0f} MB"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


__all__ = [
    "CLOCK_TOLERANCE_S",
    "FAIL",
    "MIN_FREE_BYTES",
    "OK",
    "SKIP",
    "Check",
    "Found",
    "Preflight",
    "Probes",
    "clock_check",
    "disk_check",
    "duration",
    "megabytes",
]
