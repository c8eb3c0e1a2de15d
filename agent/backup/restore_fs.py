"""The restore target: a folder that no write escapes, whatever the manifest says.

Every entry is reached one path component at a time from the target, never following a
link: on POSIX through open folder handles (`openat` with O_NOFOLLOW | O_DIRECTORY), so a
link swapped in by someone else mid-restore cannot redirect a write either; elsewhere by
checking each component is a real folder (no link, no junction) just before use. Files
are written to a temporary name beside their final one, then renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from agent.errors import EntryExists, EntryRefused

_AT = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
# Linux says ELOOP for a link opened with O_NOFOLLOW, FreeBSD EMLINK, all ENOTDIR for a file.
_NOT_A_FOLDER = {errno.ELOOP, errno.ENOTDIR, errno.EMLINK}
_REPARSE_POINT = 0x400  # FILE_ATTRIBUTE_REPARSE_POINT: links and junctions on Windows


class _Dir:
    """One folder inside the target: its path, and an open handle where the OS has *at()."""

    def __init__(self, path: str, fd: int | None) -> None:
        self.path = path
        self.fd = fd

    def name(self, child: str) -> str:
        """How to name `child` in calls that take `dir_fd=self.fd`."""
        return child if self.fd is not None else os.path.join(self.path, child)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _kind(folder: _Dir, child: str) -> str | None:
    """What is at `child` (without following a link): file, dir, symlink, other, or None."""
    try:
        st = os.stat(folder.name(child), dir_fd=folder.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode) or getattr(st, "st_file_attributes", 0) & _REPARSE_POINT:
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def _temp_name(final: str) -> str:
    # Short enough for a 255-byte name limit whatever the final name's length.
    return f".{final[:64]}.{secrets.token_hex(4)}.holdfast-restore"


class Destination:
    """The folder a restore writes into (`--to`); `close` when done."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        fd = os.open(self.root, _DIR_FLAGS) if _AT else None
        self._root = _Dir(str(self.root), fd)
        # The last folder `_parent` walked to, kept open: a snapshot lists a folder's files
        # together, and walking six levels of openat() for each of them was a third of a
        # restore's system time. The handle is the folder checked on the way in, so a
        # folder swapped for a link meanwhile is still not written through.
        self._last: tuple[tuple[str, ...], _Dir] | None = None

    def close(self) -> None:
        self._forget_last()
        self._root.close()

    def _forget_last(self) -> None:
        if self._last is not None:
            self._last[1].close()
            self._last = None

    def _enter(self, folder: _Dir, child: str, shown: str) -> _Dir:
        """The subfolder `child` of `folder`; EntryRefused unless it is a real folder."""
        refusal = EntryRefused(f"{shown}: {child!r} on its way is not a folder (a link?)")
        if folder.fd is not None:
            try:
                return _Dir(
                    os.path.join(folder.path, child), os.open(child, _DIR_FLAGS, dir_fd=folder.fd)
                )
            except OSError as exc:
                if exc.errno in _NOT_A_FOLDER:
                    raise refusal from None
                raise
        path = os.path.join(folder.path, child)
        kind = _kind(folder, child)
        if kind is None:
            raise FileNotFoundError(errno.ENOENT, "no such folder", path)
        if kind != "dir":
            raise refusal
        return _Dir(path, None)

    def _parent(self, parts: list[str], *, create: bool) -> _Dir | None:
        """The folder that holds `parts[-1]`, made on the way when `create`; None if absent."""
        key = tuple(parts[:-1])
        if self._last is not None and self._last[0] == key:
            last = self._last[1]
            return _Dir(last.path, os.dup(last.fd) if last.fd is not None else None)
        shown = "/".join(parts)
        folder = _Dir(self._root.path, os.dup(self._root.fd) if self._root.fd is not None else None)
        try:
            for child in parts[:-1]:
                try:
                    inner = self._enter(folder, child, shown)
                except FileNotFoundError:
                    if not create:
                        folder.close()
                        return None
                    # Private until the restore applies the manifest's mode, last.
                    os.mkdir(folder.name(child), 0o700, dir_fd=folder.fd)
                    inner = self._enter(folder, child, shown)
                folder.close()
                folder = inner
        except BaseException:
            folder.close()
            raise
        if folder.fd is not None:
            self._forget_last()
            self._last = (key, _Dir(folder.path, os.dup(folder.fd)))
        return folder

    def kind(self, parts: list[str]) -> str | None:
        """What is at the entry's place now (None: nothing, or a parent is missing)."""
        folder = self._parent(parts, create=False)
        if folder is None:
            return None
        try:
            return _kind(folder, parts[-1])
        finally:
            folder.close()

    def make_dir(self, parts: list[str], *, overwrite: bool) -> bool:
        """Make the folder; True when made, False when a folder was there already."""
        folder = self._parent(parts, create=True)
        assert folder is not None
        try:
            os.mkdir(folder.name(parts[-1]), 0o700, dir_fd=folder.fd)
            return True
        except FileExistsError:
            kind = _kind(folder, parts[-1])
            if kind == "dir":
                return False
            if not overwrite:
                raise EntryExists(f"{'/'.join(parts)}: already there") from None
            raise EntryRefused(f"{'/'.join(parts)}: a {kind} is where a folder goes") from None
        finally:
            folder.close()

    def write_file(
        self, parts: list[str], data: Iterable[bytes], mode: int, mtime_ns: int, *, overwrite: bool
    ) -> int:
        """Write a file from its chunks, in place only once complete; the bytes written.

        An exception from `data` (a corrupt chunk) leaves nothing behind at the entry's
        place: the temporary file goes, an existing file stays as it was.
        """
        folder = self._parent(parts, create=True)
        assert folder is not None
        final = parts[-1]
        temp = _temp_name(final)
        try:
            self._check_place(folder, parts, overwrite, allow="file")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY
            fd = os.open(folder.name(temp), flags, 0o600, dir_fd=folder.fd)
            written = 0
            try:
                with open(fd, "wb") as out:
                    for block in data:
                        out.write(block)
                        written += len(block)
                    out.flush()
                    if folder.fd is not None:
                        os.fchmod(out.fileno(), mode)
                        os.utime(out.fileno(), ns=(mtime_ns, mtime_ns))
                if folder.fd is None:
                    os.chmod(folder.name(temp), mode)
                    os.utime(folder.name(temp), ns=(mtime_ns, mtime_ns))
                self._check_place(folder, parts, overwrite, allow="file")
                os.replace(
                    folder.name(temp),
                    folder.name(final),
                    src_dir_fd=folder.fd,
                    dst_dir_fd=folder.fd,
                )
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder.name(temp), dir_fd=folder.fd)
                raise
            return written
        finally:
            folder.close()

    def make_symlink(
        self, parts: list[str], target: str, mtime_ns: int, *, overwrite: bool
    ) -> None:
        """Make the link as it was (its target is not checked: nothing is written through it)."""
        folder = self._parent(parts, create=True)
        assert folder is not None
        temp = _temp_name(parts[-1])
        try:
            self._check_place(folder, parts, overwrite, allow="symlink")
            os.symlink(target, folder.name(temp), dir_fd=folder.fd)
            try:
                if os.utime in os.supports_follow_symlinks:
                    os.utime(
                        folder.name(temp),
                        ns=(mtime_ns, mtime_ns),
                        dir_fd=folder.fd,
                        follow_symlinks=False,
                    )
                os.replace(
                    folder.name(temp),
                    folder.name(parts[-1]),
                    src_dir_fd=folder.fd,
                    dst_dir_fd=folder.fd,
                )
            except BaseException:
                os.unlink(folder.name(temp), dir_fd=folder.fd)
                raise
        finally:
            folder.close()

    def set_dir_meta(self, parts: list[str], mode: int, mtime_ns: int) -> None:
        """Give a folder its mode and mtime: after its contents, which would change both."""
        folder = self._parent(parts, create=False)
        if folder is None:
            return
        try:
            inner = self._enter(folder, parts[-1], "/".join(parts))
        finally:
            folder.close()
        try:
            if inner.fd is not None:
                os.fchmod(inner.fd, mode)
                os.utime(inner.fd, ns=(mtime_ns, mtime_ns))
            else:
                os.chmod(inner.path, mode)
                os.utime(inner.path, ns=(mtime_ns, mtime_ns))
        finally:
            inner.close()

    def _check_place(self, folder: _Dir, parts: list[str], overwrite: bool, allow: str) -> None:
        kind = _kind(folder, parts[-1])
        if kind is None:
            return
        if not overwrite:
            raise EntryExists(f"{'/'.join(parts)}: already there")
        if kind not in ("file", "symlink"):
            # A folder is never replaced by a file or a link: that would delete what it holds.
            raise EntryRefused(f"{'/'.join(parts)}: a {kind} is where a {allow} goes")


__all__ = ["Destination"]
