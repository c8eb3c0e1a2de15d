"""`make package`: the agent as a one-folder executable, and the .deb that installs it.

    PyInstaller (packaging/pyinstaller/holdfast.spec) ─▶ dist/holdfast/holdfast
        ─▶ checked: `holdfast --version`; measured: size, start-up (best of 3)
        ─▶ staged under build/deb/ as the .deb lays it out ─▶ dpkg-deb ─▶ dist/holdfast_*.deb

What the .deb installs (packaging/debian/ holds its control template and maintainer scripts):
    /opt/holdfast/                              the one-folder executable
    /usr/bin/holdfast                           a symbolic link to /opt/holdfast/holdfast
    /lib/systemd/system/holdfast-agent.service  agent/units/, as shipped (runs /usr/bin/holdfast)
    /etc/xdg/autostart/holdfast-tray.desktop    agent/units/, plus TryExec (a conffile)
    /usr/share/doc/holdfast/copyright

Run it with the virtualenv's Python, where the `package` extra is installed (`make package`
does both). It needs dpkg-deb and objdump (binutils) on PATH.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "packaging" / "pyinstaller" / "holdfast.spec"
DEBIAN = ROOT / "packaging" / "debian"
UNITS = ROOT / "agent" / "units"
DIST = ROOT / "dist"
WORK = ROOT / "build"
BUNDLE = DIST / "holdfast"
EXECUTABLE = BUNDLE / "holdfast"
INSTALL_DIR = "opt/holdfast"
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
STARTUP_RUNS = 3
MB = 1_000_000
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
_GLIBC = re.compile(r"\bGLIBC_(\d+(?:\.\d+)+)\b")


class BuildError(Exception):
    """A step of the build failed; its message says which and why."""


def version() -> str:
    """agent/__init__.py's __version__, read without importing the agent."""
    tree = ast.parse((ROOT / "agent" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise BuildError("agent/__init__.py sets no __version__ string")


def run(argv: list[str], what: str) -> str:
    """Run a build tool; its output, or BuildError naming `what` with the tool's last lines."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BuildError(f"{what}: could not run {argv[0]}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        said = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise BuildError(f"{what} failed with exit code {done.returncode}:\n{said}")
    return done.stdout


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise BuildError(
            f"{', '.join(missing)} not found on PATH; on Debian/Ubuntu: "
            "apt-get install dpkg-dev binutils"
        )


def freeze() -> None:
    """PyInstaller, from the spec, into dist/holdfast/."""
    run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--distpath",
            str(DIST),
            "--workpath",
            str(WORK / "pyinstaller"),
            str(SPEC),
        ],
        "PyInstaller",
    )


def startup_ms(expected: str) -> float:
    """The best of a few `holdfast --version` runs, in milliseconds; checks what it prints."""
    best = float("inf")
    for _ in range(STARTUP_RUNS):
        started = time.perf_counter()
        said = run([str(EXECUTABLE), "--version"], "the frozen `holdfast --version`").strip()
        best = min(best, (time.perf_counter() - started) * 1000)
        if said != expected:
            raise BuildError(f"the frozen holdfast says {said!r}, not {expected!r}")
    return best


def tree_bytes(folder: Path) -> int:
    """The size of the files under `folder`, symbolic links not followed."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def glibc_needed(folder: Path) -> str:
    """The newest GLIBC_x.y symbol version any executable or library of `folder` needs."""
    elves = [
        str(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.read_bytes()[:4] == b"\x7fELF"
    ]
    found = _GLIBC.findall(run(["objdump", "-T", *elves], "objdump"))
    if not found:
        raise BuildError("objdump found no GLIBC symbol versions in the bundle")
    newest = max(tuple(int(n) for n in v.split(".")) for v in found)
    return ".".join(map(str, newest))


def autostart_text() -> str:
    """The tray's autostart, with TryExec: after `dpkg -r` the conffile stays, inert."""
    text = (UNITS / "holdfast-tray.desktop").read_text(encoding="utf-8")
    if not re.search(r"^Exec=", text, re.MULTILINE):
        raise BuildError("agent/units/holdfast-tray.desktop has no Exec line")
    return re.sub(r"^(Exec=.*)$", r"TryExec=/usr/bin/holdfast\n\1", text, count=1, flags=re.M)


def stage(root: Path) -> None:
    """Lay the package's files out under `root` as they install, modes normalised."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(BUNDLE, root / INSTALL_DIR, symlinks=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "holdfast").symlink_to(f"/{INSTALL_DIR}/holdfast")
    unit = root / "lib" / "systemd" / "system" / "holdfast-agent.service"
    unit.parent.mkdir(parents=True)
    shutil.copyfile(UNITS / "holdfast-agent.service", unit)
    autostart = root / "etc" / "xdg" / "autostart" / "holdfast-tray.desktop"
    autostart.parent.mkdir(parents=True)
    autostart.write_text(autostart_text(), encoding="utf-8")
    doc = root / "usr" / "share" / "doc" / "holdfast"
    doc.mkdir(parents=True)
    shutil.copyfile(DEBIAN / "copyright", doc / "copyright")
    # Whatever the umask: folders and programs 0755, other files 0644 (owner: root, by
    # dpkg-deb --root-owner-group).
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o111
        path.chmod(0o755 if executable else 0o644)


def control(root: Path, package_version: str, architecture: str) -> None:
    """DEBIAN/: control from its template, the maintainer scripts, conffiles, md5sums."""
    meta = root / "DEBIAN"
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    md5sums = "".join(
        f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n"  # noqa: S324  # dpkg's format
        for p in files
    )
    kib = sum(-(-p.stat().st_size // 1024) for p in files) + sum(
        1 for p in root.rglob("*") if p.is_dir() or p.is_symlink()
    )
    meta.mkdir()
    fields = {
        "@VERSION@": package_version,
        "@ARCHITECTURE@": architecture,
        "@INSTALLED_SIZE@": str(kib),
        "@GLIBC@": glibc_needed(root / INSTALL_DIR),
    }
    text = (DEBIAN / "control.in").read_text(encoding="utf-8")
    for placeholder, value in fields.items():
        text = text.replace(placeholder, value)
    if _PLACEHOLDER.search(text):
        raise BuildError("packaging/debian/control.in has a placeholder build.py does not fill")
    (meta / "control").write_text(text, encoding="utf-8")
    (meta / "md5sums").write_text(md5sums, encoding="utf-8")
    shutil.copyfile(DEBIAN / "conffiles", meta / "conffiles")
    for name in MAINTAINER_SCRIPTS:
        shutil.copyfile(DEBIAN / name, meta / name)
        (meta / name).chmod(0o755)
    for path in (meta / "control", meta / "md5sums", meta / "conffiles"):
        path.chmod(0o644)
    meta.chmod(0o755)


def build_deb(package_version: str) -> Path:
    architecture = run(["dpkg", "--print-architecture"], "dpkg").strip()
    name = f"holdfast_{package_version}_{architecture}"
    root = WORK / "deb" / name
    stage(root)
    control(root, package_version, architecture)
    deb = DIST / f"{name}.deb"
    run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], "dpkg-deb")
    return deb


def main() -> int:
    started = time.perf_counter()
    try:
        require_tools("dpkg-deb", "dpkg", "objdump")
        package_version = version()
        print(f"Freezing holdfast {package_version} with PyInstaller into {BUNDLE} ...")
        freeze()
        best = startup_ms(f"holdfast {package_version}")
        print(f"{EXECUTABLE.relative_to(ROOT)}: {tree_bytes(BUNDLE) / MB:.1f} MB (one folder)")
        print(f"start-up (holdfast --version, best of {STARTUP_RUNS}): {best:.0f} ms")
        deb = build_deb(package_version)
    except BuildError as exc:
        print(f"make package: {exc}", file=sys.stderr)
        return 1
    print(f"{deb.relative_to(ROOT)}: {deb.stat().st_size / MB:.1f} MB")
    print(f"built in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
