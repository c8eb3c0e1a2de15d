"""`holdfast diagnose`: a support bundle (a zip) of the agent's logs, state and settings,
without its secrets.

What goes in is an allow-list: the files of `log/`, `state.json` and `identity` from
`state/`, `conf/agent.yaml`, `conf/deploy.properties` with its token replaced, and the
bundle's own reports (status, versions, doctor, a listing of the agent's folders, what was
left out). The device credential, the backup key and the files cache never go in, whatever
else appears in `state/` later. Every text member is then scrubbed twice: of the secrets this
device is known to hold (read from their files), and of anything that looks like a token,
bearer credential or password, in case a secret slipped into a line some other way.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import platform
import re
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TextIO

from agent import __version__, logs
from agent.backup.keys import KEY_FILE
from agent.deploy_args import DEPLOYMENT_POLICY_TOKEN, parse_properties
from agent.errors import AgentError, UsageError
from agent.paths import AgentPaths
from agent.state import fsync_folder
from agent.status import collect

BUNDLE_MODE = 0o600
# The state files that go in; anything else in state/ stays out (credential, key, cache...).
STATE_FILES = ("state.json", "identity")
PACKAGES = ("httpx", "cryptography", "zstandard", "psutil", "PyYAML", "fastcdc", "blake3")
# A log is at most 10 MiB; something bigger in log/ is not ours and only its end is kept.
MAX_MEMBER_BYTES = 32 * 1024 * 1024

_LINE_END = re.compile(r"\r\n|\r|\n")
_UUID = r"\{?[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\}?"
# Shapes of secrets, for what the known values miss: a token, CP_ARGS, an Authorization
# header, a credential, a password or a backup key written out by something else.
_PATTERNS = (
    re.compile(r"(DEPLOYMENT_POLICY_TOKEN\s*(?:=|%3D|:)\s*)(\"[^\"]*\"|'[^']*'|[^\s&\"']+)", re.I),
    re.compile(rf"(token\W{{0,5}}){_UUID}", re.I),
    re.compile(r"(bearer\s+)[A-Za-z0-9._~+/-]+=*", re.I),
    re.compile(r"(credential\W{0,5})[A-Za-z0-9_-]{20,}", re.I),
    re.compile(r"(passw(?:or)?d\s*[=:]\s*)\S+", re.I),
    re.compile(r"(\"key\"\s*:\s*\")[A-Za-z0-9+/_-]{40,}={0,2}"),
)


class Scrubber:
    """Removes this device's secrets, and anything shaped like one, from a member's text."""

    def __init__(self) -> None:
        self.known = logs.Redactor()

    def add_token(self, value: str) -> None:
        value = value.strip().strip("{}")
        for spelling in (value, value.lower(), value.upper()):
            self.known.add(spelling)

    def add_key(self, text: str) -> None:
        """The backup key as stored (base64), and its bytes in the other usual spellings."""
        self.known.add(text)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return
        for spelling in (
            raw.hex(),
            raw.hex().upper(),
            base64.b64encode(raw).decode("ascii"),
            base64.urlsafe_b64encode(raw).decode("ascii"),
        ):
            self.known.add(spelling)
            self.known.add(spelling.rstrip("="))

    def scrub(self, text: str) -> str:
        # The process-wide redactor too: whatever the agent registered (a password) is out.
        text = logs.redactor.scrub(self.known.scrub(text))
        for pattern in _PATTERNS:
            text = pattern.sub(rf"\g<1>{logs.REDACTED}", text)
        return text


class _Unreadable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _read(path: Path, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """A regular file's bytes (its last `limit`), never through a link, never a FIFO."""
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise _Unreadable("a symbolic link, not followed")
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable("not a regular file")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        with os.fdopen(os.open(path, flags | getattr(os, "O_BINARY", 0)), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                handle.seek(size - limit)
            return handle.read(limit)
    except FileNotFoundError:
        raise _Unreadable("not present") from None
    except PermissionError:
        raise _Unreadable(
            "permission denied (run `sudo holdfast diagnose` for a complete bundle)"
        ) from None
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from None


def redacted_properties(text: str, scrubber: Scrubber) -> str:
    """deploy.properties as written, every token value replaced (and learnt by `scrubber`)."""
    # Split as agent.deploy_args splits it (LF, CRLF or CR, a BOM); a token an administrator
    # commented out is still a token, so comment lines are looked at too.
    lines = _LINE_END.split(text.removeprefix("\ufeff"))
    for index, line in enumerate(lines):
        body = line.strip().lstrip("#!").strip()
        key, sep, value = body.partition("=")
        if sep and key.strip().upper() == DEPLOYMENT_POLICY_TOKEN:
            scrubber.add_token(value.strip().strip("\"'"))
            comment = "# " if body != line.strip() else ""
            lines[index] = f"{comment}{DEPLOYMENT_POLICY_TOKEN}={logs.REDACTED}"
    try:
        args = parse_properties(text)
        scrubber.add_token(args.token)
        verdict = f"# holdfast diagnose: accepted, token tag {args.token_tag()}"
    except UsageError as exc:
        verdict = f"# holdfast diagnose: this file is refused: {exc.message}"
    return "\n".join([verdict, *lines]).rstrip("\n") + "\n"


def _learn_secrets(paths: AgentPaths, scrubber: Scrubber, missing: dict[str, str]) -> str | None:
    """Teach `scrubber` the token, credential and backup key; the redacted properties text."""
    properties = None
    try:
        text = _read(paths.deploy_properties).decode("utf-8", "surrogateescape")
        properties = redacted_properties(text, scrubber)
    except _Unreadable as exc:
        missing["conf/deploy.properties"] = exc.reason
    try:
        scrubber.known.add(_read(paths.credential).decode("utf-8", "replace").strip())
    except _Unreadable as exc:
        if exc.reason != "not present":
            missing["state/credential (read only to redact it)"] = exc.reason
    try:
        raw = _read(paths.state / KEY_FILE).decode("utf-8", "replace")
    except _Unreadable as exc:
        if exc.reason != "not present":
            missing[f"state/{KEY_FILE} (read only to redact it)"] = exc.reason
    else:
        try:
            body = json.loads(raw)
            key = body.get("key") if isinstance(body, dict) else None
        except ValueError:
            key = None
        scrubber.add_key(str(key) if key else raw.strip())
    return properties


def versions_text() -> str:
    """The agent, Python, OS and library versions, from package metadata (no imports)."""
    lines = [
        f"holdfast {__version__}",
        f"python {sys.version.split()[0]} ({sys.executable})",
        f"platform {platform.platform()} ({platform.machine()})",
        f"host {platform.node()}",
        f"run by uid {os.getuid() if hasattr(os, 'getuid') else '-'}",
        f"bundle made at {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
    ]
    for package in PACKAGES:
        try:
            lines.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{package} not installed")
    return "\n".join(lines) + "\n"


def listing_text(paths: AgentPaths) -> str:
    """Every file of the agent's folders with mode, size and time: names, never contents."""
    lines = []
    for folder in (paths.conf, paths.state, paths.log, paths.run):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            lines.append(f"{folder}: {exc.strerror or exc}")
            continue
        lines.append(f"{folder}:")
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                lines.append(f"  {entry.name}: {exc.strerror or exc}")
                continue
            moment = dt.datetime.fromtimestamp(info.st_mtime).astimezone()
            lines.append(
                f"  {stat.filemode(info.st_mode)} uid {info.st_uid} {info.st_size:>10} "
                f"{moment.isoformat(timespec='seconds')} {entry.name}"
            )
    return "\n".join(lines) + "\n"


def _doctor_text(doctor: Callable[[], str] | None) -> str:
    if doctor is None:
        return "holdfast doctor was not run for this bundle.\n"
    try:
        return doctor()
    except AgentError as exc:
        return f"holdfast doctor could not finish: {exc.message}\n"
    except Exception as exc:  # a broken check must not cost support the rest of the bundle
        return f"holdfast doctor failed: {type(exc).__name__}: {exc}\n"


class _Writer:
    """Adds scrubbed members to an open zip and remembers their names."""

    def __init__(
        self, archive: zipfile.ZipFile, scrubber: Scrubber, missing: dict[str, str]
    ) -> None:
        self.archive = archive
        self.scrubber = scrubber
        self.names: list[str] = []
        self.missing = missing  # member name -> why it is not in the bundle

    def text(self, name: str, text: str) -> None:
        info = zipfile.ZipInfo(name, dt.datetime.now().timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (stat.S_IFREG | BUNDLE_MODE) << 16
        data = self.scrubber.scrub(text).encode("utf-8", "surrogateescape")
        self.archive.writestr(info, data)
        self.names.append(name)

    def file(self, name: str, path: Path) -> None:
        try:
            data = _read(path)
        except _Unreadable as exc:
            self.missing[name] = exc.reason
            return
        if len(data) == MAX_MEMBER_BYTES:
            self.missing[name] = f"only its last {MAX_MEMBER_BYTES // 2**20} MiB are included"
        self.text(name, data.decode("utf-8", "surrogateescape"))


def _write_members(
    writer: _Writer,
    paths: AgentPaths,
    doctor: Callable[[], str] | None,
    properties: str | None,
    log_names: list[str],
) -> None:
    missing = writer.missing
    writer.text("versions.txt", versions_text())
    try:
        status = json.dumps(collect(paths), indent=2, default=str) + "\n"
        writer.text("status.json", status)
    except (AgentError, OSError) as exc:
        missing["status.json"] = getattr(exc, "message", None) or str(exc)
    writer.text("doctor.txt", _doctor_text(doctor))
    writer.file("conf/agent.yaml", paths.agent_yaml)
    if properties is not None:
        writer.text("conf/deploy.properties", properties)
    for name in STATE_FILES:
        writer.file(f"state/{name}", paths.state / name)
    for name in log_names:
        writer.file(f"log/{name}", paths.log / name)
    writer.text("files.txt", listing_text(paths))
    report = [
        "Never in a bundle: the device credential, the backup key, the files cache and",
        "anything else in state/ but state.json and identity (files.txt lists them all).",
        "",
        "Left out, and why:" if missing else "Every file the bundle takes was read.",
        *(f"{name}: {reason}" for name, reason in missing.items()),
    ]
    writer.text("missing.txt", "\n".join(report) + "\n")


def _check_output(output: Path, force: bool) -> None:
    if not output.parent.is_dir():
        raise UsageError(
            f"the folder {output.parent} for --output does not exist; create it or choose another"
        )
    if output.is_dir():
        raise UsageError(f"{output} is a folder; give a file name such as holdfast-support.zip")
    if output.exists() and not force:
        raise UsageError(f"{output} already exists; choose another name or add --force")


def _log_names(paths: AgentPaths, output: Path, missing: dict[str, str]) -> list[str]:
    """The files of log/, listed before the bundle's temporary file may appear there."""
    try:
        names = sorted(entry.name for entry in os.scandir(paths.log))
    except OSError as exc:
        missing["log/"] = "not present" if isinstance(exc, FileNotFoundError) else str(exc)
        return []
    # A bundle written into log/ with --force does not swallow the previous one.
    return [name for name in names if paths.log / name != output]


def _build(
    paths: AgentPaths, output: Path, doctor: Callable[[], str] | None, force: bool
) -> tuple[list[str], dict[str, str]]:
    output = output.absolute()
    _check_output(output, force)
    scrubber = Scrubber()
    missing: dict[str, str] = {}
    properties = _learn_secrets(paths, scrubber, missing)
    log_names = _log_names(paths, output, missing)
    try:
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    except PermissionError:
        raise AgentError(f"cannot write in {output.parent}: permission denied") from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, BUNDLE_MODE)
        with os.fdopen(fd, "w+b") as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
                writer = _Writer(archive, scrubber, missing)
                _write_members(writer, paths, doctor, properties, log_names)
            handle.flush()
            os.fsync(handle.fileno())
        _check_output(output, force)  # another process may have made it meanwhile
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(output.parent)
    return writer.names, missing


def build_bundle(
    paths: AgentPaths,
    output: Path,
    *,
    doctor: Callable[[], str] | None = None,
    force: bool = False,
) -> list[str]:
    """Write the support bundle to `output` (0600, all at once); the names of its members."""
    return _build(paths, output, doctor, force)[0]


def _size(count: int) -> str:
    if count < 1000:
        return f"{count} bytes"
    if count < 1_000_000:
        return f"{count / 1000:.1f} KB"
    return f"{count / 1_000_000:.1f} MB"


def diagnose_command(
    paths: AgentPaths,
    output: Path,
    doctor: Callable[[], str] | None = None,
    out: TextIO = sys.stdout,
    *,
    force: bool = False,
) -> int:
    """Write the support bundle and say where it is, how big, and what it holds."""
    names, missing = _build(paths, output, doctor, force)
    where = output.absolute()
    size = _size(where.stat().st_size)
    print(f"Support bundle written to {where} ({size}, {len(names)} files).", file=out)
    print(
        "It contains user names, host names and file paths from this device, but no token, "
        "credential, backup key or password.",
        file=out,
    )
    if any(reason.startswith("permission denied") for reason in missing.values()):
        print(
            "Some files could not be read (see missing.txt inside); run "
            "`sudo holdfast diagnose` for a complete bundle.",
            file=out,
        )
    return 0


__all__ = ["Scrubber", "build_bundle", "diagnose_command", "redacted_properties"]
