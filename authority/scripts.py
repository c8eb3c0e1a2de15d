"""Detection scripts as the administrator hands them over: read, checked, described.

The interpreter comes from the script's `#!` line. Without one, Linux and macOS scripts
run with /bin/bash (the vendor's published scripts have no `#!` and use bash syntax), and
Windows scripts by their extension: `.ps1` with PowerShell, `.bat`/`.cmd` with cmd.exe.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from authority.errors import InvalidInput

OPERATING_SYSTEMS = ("linux", "macos", "windows")
MAX_SCRIPT_BYTES = 256 * 1024

_WINDOWS_BY_SUFFIX = {
    ".ps1": [
        "powershell.exe",
        "-NoLogo",
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-File",
    ],
    ".bat": ["cmd.exe", "/d", "/q", "/c"],
    ".cmd": ["cmd.exe", "/d", "/q", "/c"],
}


@dataclass(frozen=True)
class ScriptFile:
    """One validated detection script, ready to store in a policy."""

    os: str
    filename: str
    interpreter: list[str]
    content: str
    sha256: str


def parse_os(name: str) -> str:
    os_name = name.strip().lower()
    if os_name not in OPERATING_SYSTEMS:
        raise InvalidInput(f"unknown OS {name!r}: use one of {', '.join(OPERATING_SYSTEMS)}")
    return os_name


def interpreter_for(os_name: str, filename: str, content: str) -> list[str]:
    first = content.splitlines()[0] if content else ""
    if first.startswith("#!"):
        try:
            argv = shlex.split(first[2:].strip())
        except ValueError as exc:
            raise InvalidInput(f"{filename}: the #! line cannot be read ({exc})") from None
        if not argv:
            raise InvalidInput(f"{filename}: the #! line names no interpreter")
        return argv
    if os_name in ("linux", "macos"):
        return ["/bin/bash"]
    suffix = Path(filename).suffix.lower()
    if suffix not in _WINDOWS_BY_SUFFIX:
        raise InvalidInput(
            f"{filename}: a Windows detection script must end in .ps1, .bat or .cmd "
            "(that is how the agent knows its interpreter)"
        )
    return list(_WINDOWS_BY_SUFFIX[suffix])


def load_script(spec: str) -> ScriptFile:
    """Read `OS=PATH` as given to `policy create --script`, refusing what cannot run."""
    os_part, sep, path_part = spec.partition("=")
    if not sep or not path_part:
        raise InvalidInput(f"--script {spec!r}: expected OS=PATH, e.g. linux=detect_user.sh")
    os_name = parse_os(os_part)
    path = Path(path_part).expanduser()
    if not path.is_file():
        raise InvalidInput(f"--script {os_name}: {path} does not exist or is not a file")
    where = f"--script {os_name}: {path}"
    return script_from_bytes(os_name, path.name, path.read_bytes(), where=where)


def script_from_bytes(os_name: str, filename: str, raw: bytes, *, where: str) -> ScriptFile:
    """A script handed over as bytes (a file read, an upload), refusing what cannot run.

    `where` opens each message: how the administrator named the script (`--script linux:
    PATH` on the command line, the form's field in the console).
    """
    os_name = parse_os(os_name)
    check_filename(filename)
    if len(raw) > MAX_SCRIPT_BYTES:
        raise InvalidInput(f"{where} is larger than {MAX_SCRIPT_BYTES} bytes")
    if b"\0" in raw:
        raise InvalidInput(f"{where} is not a text file (it contains NUL bytes)")
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{where} is not UTF-8 text ({exc.reason})") from None
    if not content.strip():
        raise InvalidInput(f"{where} is empty")
    return ScriptFile(
        os=os_name,
        filename=filename,
        interpreter=interpreter_for(os_name, filename, content),
        content=content,
        sha256=hashlib.sha256(content.encode("utf-8")).hexdigest(),
    )


def script_from_text(os_name: str, filename: str, content: str, *, where: str) -> ScriptFile:
    """A script typed or pasted as text (the console's editor); the same checks as a file."""
    return script_from_bytes(os_name, filename, content.encode("utf-8"), where=where)


def check_filename(filename: str) -> str:
    """A plain file name: the agent writes the script under it; Windows runs it by its suffix."""
    if (
        not filename
        or len(filename) > 255
        or filename in (".", "..")
        or any(c in filename for c in "/\\\0")
        or not filename.isprintable()
    ):
        raise InvalidInput(
            f"script file name {filename[:80]!r}: 1-255 printable characters, no / or \\"
        )
    return filename


__all__ = [
    "MAX_SCRIPT_BYTES",
    "OPERATING_SYSTEMS",
    "ScriptFile",
    "check_filename",
    "interpreter_for",
    "load_script",
    "parse_os",
    "script_from_bytes",
    "script_from_text",
]
