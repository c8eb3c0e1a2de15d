"""The agent's state folder damaged or full, each case a real `holdfast run` and authority.

A damaged file (state.json, identity, credential, files.cache) is set aside, logged, and the
agent goes on from what it can still trust: the authority keeps exactly one device for the
machine. A full state folder (a 1 MiB tmpfs, mounted in a private mount namespace) makes
failed `disk_full` attempts, never a crash or a half-written file, and the agent carries on
by itself once there is room again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.backup.cache import FilesCache
from agent.backup.scanner import FileStat
from agent.daemon import failure_of
from agent.identity import load_or_create
from tests.faults.conftest import FaultTally, cp_args
from tests.faults.invariants import (
    assert_restores_exactly,
    device_guid,
    wait_started,
    wait_state,
)
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin_json

Damage = Callable[[Path], None]


def truncate(path: Path) -> None:
    """What a crash on a filesystem without ordered writes leaves: the first half."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt(path: Path) -> None:
    """Bytes overwritten in the middle (bad sectors, a stray write): not even UTF-8."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = b"\xff\xfe\x00\x9c\xff\xfe\x00\x9c"
    path.write_bytes(bytes(data))


def overwrite(path: Path) -> None:
    """A file replaced by garbage from its first byte (its header gone too)."""
    path.write_bytes(b"\xff\xfe\x00garbage\x9c" * 64)


def devices(authority: Authority) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = admin_json(authority.data, "device", "list")
    return found


def backed_up_once(agent: Agent, authority: Authority) -> tuple[str, str]:
    """Install, wait for the first committed backup, stop: the GUID and the snapshot ID."""
    agent.start("--deploy-args", cp_args(authority))
    state = wait_state(agent, lambda s: s.last_backup is not None, "a first backup")
    assert agent.stop() == 0
    assert state.last_backup is not None
    return device_guid(agent), str(state.last_backup["snapshot_id"])


def restart_until_backed_up(agent: Agent, previous_snapshot: str) -> None:
    """Start the daemon again and wait for a snapshot newer than `previous_snapshot`."""
    starts = agent.log().count("STARTED holdfast") + 1
    agent.start()
    wait_started(agent, starts)  # damaged files are dealt with before this line
    wait_state(
        agent,
        lambda s: s.last_backup is not None and s.last_backup["snapshot_id"] != previous_snapshot,
        "a backup after the restart",
    )


def aside(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.damaged-*"))


def assert_no_traceback(agent: Agent) -> None:
    assert "Traceback" not in agent.output() + agent.log()


def assert_one_device(authority: Authority, guid: str) -> None:
    """What an administrator checks in `device list`: this machine once, registered."""
    found = devices(authority)
    assert [d["guid"] for d in found] == [guid], found
    assert found[0]["registered"] is True


@pytest.mark.parametrize("damage", [truncate, corrupt], ids=["truncated", "corrupted"])
def test_a_damaged_state_json_is_set_aside_and_the_device_registers_again_as_itself(
    authority: Authority, agent: Agent, faults: FaultTally, damage: Damage
) -> None:
    with faults.round() as fault:
        guid, snapshot = backed_up_once(agent, authority)
        state_file = agent.home / "state" / "state.json"
        damage(state_file)
        damaged = state_file.read_bytes()
        fault.inject()

        restart_until_backed_up(agent, snapshot)

        [kept] = aside(state_file.parent, "state.json")
        assert kept.read_bytes() == damaged  # kept as it was, for support
        line = next(x for x in agent.log().splitlines() if "state.json is damaged" in x)
        assert " WARNING HF1103 " in line
        assert f"moved it to {kept.name}; the agent starts over from its first phase" in line
        assert device_guid(agent) == guid
        resumed = agent.log().rsplit("STARTED holdfast", 1)[1]
        assert f"registering device {guid}" in resumed
        assert_one_device(authority, guid)
        assert_no_traceback(agent)


@pytest.mark.parametrize("damage", [truncate, overwrite], ids=["truncated", "overwritten"])
def test_a_damaged_identity_is_restored_from_its_copy_and_keeps_its_guid(
    authority: Authority, agent: Agent, faults: FaultTally, damage: Damage
) -> None:
    with faults.round() as fault:
        guid, snapshot = backed_up_once(agent, authority)
        identity = agent.home / "state" / "identity"
        assert (agent.home / "state" / "identity.backup").read_bytes() == identity.read_bytes()
        damage(identity)
        fault.inject()

        restart_until_backed_up(agent, snapshot)

        [kept] = aside(identity.parent, "identity")
        log = agent.log()
        assert f"device identity {guid} restored from identity.backup" in log
        assert f"moved to {kept.name}" in log
        assert device_guid(agent) == guid
        resumed = log.rsplit("STARTED holdfast", 1)[1]
        assert "registering device" not in resumed  # the credential was never in doubt
        assert_one_device(authority, guid)
        assert_no_traceback(agent)


def test_an_identity_damaged_with_its_copy_makes_a_new_device_and_says_so(
    authority: Authority, agent: Agent, faults: FaultTally
) -> None:
    with faults.round() as fault:
        old_guid, snapshot = backed_up_once(agent, authority)
        truncate(agent.home / "state" / "identity")
        overwrite(agent.home / "state" / "identity.backup")
        fault.inject(2)

        restart_until_backed_up(agent, snapshot)

        new_guid = device_guid(agent)
        assert new_guid != old_guid
        assert (
            f"made a new device identity {new_guid}: the identity file was damaged and no copy "
            "of it could be read; this machine registers as a new device" in agent.log()
        )
        # The one case with two records: the administrator deletes the old one.
        assert sorted(d["guid"] for d in devices(authority)) == sorted([old_guid, new_guid])
        assert_no_traceback(agent)


def test_a_corrupted_credential_is_set_aside_and_the_device_registers_again(
    authority: Authority, agent: Agent, faults: FaultTally
) -> None:
    with faults.round() as fault:
        guid, snapshot = backed_up_once(agent, authority)
        credential = agent.home / "state" / "credential"
        old = credential.read_text().strip()
        overwrite(credential)
        fault.inject()

        restart_until_backed_up(agent, snapshot)

        [kept] = aside(credential.parent, "credential")
        assert kept.stat().st_mode & 0o077 == 0  # it may still hold a secret
        assert (
            f"credential is damaged (not a device credential): moved it to {kept.name}; "
            "the device registers again with its GUID" in agent.log()
        )
        assert credential.read_text().strip() not in ("", old)
        assert_one_device(authority, guid)
        assert_no_traceback(agent)


def test_a_truncated_credential_is_refused_by_the_authority_and_replaced(
    authority: Authority, agent: Agent, faults: FaultTally
) -> None:
    with faults.round() as fault:
        guid, snapshot = backed_up_once(agent, authority)
        credential = agent.home / "state" / "credential"
        truncate(credential)  # still a well-formed token: only the authority can tell
        fault.inject()

        restart_until_backed_up(agent, snapshot)

        resumed = agent.log().rsplit("STARTED holdfast", 1)[1]
        assert "HF4104" in resumed and "the authority refused the device credential" in resumed
        assert f"registering device {guid}" in resumed
        assert_one_device(authority, guid)
        assert_no_traceback(agent)


@pytest.mark.parametrize("damage", [truncate, overwrite], ids=["truncated", "overwritten"])
def test_a_damaged_files_cache_is_set_aside_and_rebuilt_without_a_wrong_snapshot(
    authority: Authority, agent: Agent, home: Path, faults: FaultTally, damage: Damage
) -> None:
    with faults.round() as fault:
        _guid, snapshot = backed_up_once(agent, authority)
        cache = agent.home / "state" / "files.cache"
        damage(cache)
        fault.inject()

        restart_until_backed_up(agent, snapshot)

        assert (cache.parent / "files.cache.damaged").exists()
        assert "files cache" in agent.log() and "moved" in agent.log()
        assert_restores_exactly(agent, home, agent.home.parent / "restored")
        assert_no_traceback(agent)


def test_an_identity_moved_away_comes_back_from_its_copy_and_a_clones_copy_does_not(
    tmp_path: Path,
) -> None:
    identity = tmp_path / "identity"
    now = dt.datetime.now(dt.UTC)
    made, reason = load_or_create(identity, "this-machine", now)
    assert reason == "first start"
    identity.unlink()  # lost: a disk error, a careless cleanup
    assert load_or_create(identity, "this-machine", now) == (made, None)
    truncate(identity)  # a cloned disk whose identity is damaged too
    cloned, reason = load_or_create(identity, "another-machine", now)
    assert cloned.guid != made.guid
    assert reason is not None and "a cloned disk image" in reason


# Found by the scenarios above, which stop the daemon right after it saved its state: a
# SIGTERM landing while the loop's thread held its wake-up Event's lock (inside wait() or
# clear()) made the handler's Event.set() wait for that lock forever, and the daemon hung.

HOLDING_THE_WAKE_LOCK = """
import os, signal, sys
from pathlib import Path
from agent.daemon import Daemon
from agent.paths import AgentPaths

daemon = Daemon(AgentPaths.under(Path(sys.argv[1])))
restore = daemon._catch_signals()
with daemon.wake._cond:  # where the loop is, inside wake.wait() or wake.clear()
    os.kill(os.getpid(), signal.SIGTERM)
    assert daemon.stopping  # the handler ran, and returned
assert daemon.wake.wait(10) and daemon.backup_cancel.is_set()
restore()
"""


def test_a_sigterm_while_the_loop_holds_its_wake_lock_still_stops_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HOLDING_THE_WAKE_LOCK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# The files cache on a full disk, without root: SQLite's own page limit makes it answer
# exactly as a full disk does ("database or disk is full").


class _TinyCache(FilesCache):
    def _connect(self) -> sqlite3.Connection:
        db = super()._connect()
        db.execute("PRAGMA max_page_count = 8")
        return db


def test_a_full_disk_under_the_files_cache_is_the_disk_full_failed_attempt(
    tmp_path: Path,
) -> None:
    cache = _TinyCache(tmp_path)
    stat = FileStat(size=1, mtime_ns=1, ctime_ns=1, inode=1)
    with pytest.raises(OSError, match="No space left") as raised:
        cache.record((f"file-{n:05d}-{'x' * 200}", stat, ["ab" * 32]) for n in range(2000))
    cache.close()  # closing after the failure is harmless
    assert raised.value.errno == errno.ENOSPC
    failed = failure_of(raised.value)
    assert failed.code == "disk_full"
    assert failed.message.startswith(f"the agent's disk is full ({tmp_path / 'files.cache'})")
    FilesCache(tmp_path).close()  # the cache itself is whole: it opens again


# The state folder on a full disk, for real.

TMPFS_SIZE = "1m"


def start_on_tmpfs(agent: Agent, args: str) -> Path:
    """Start `holdfast run` in a mount namespace of its own, its state folder a 1 MiB
    tmpfs; the state folder as this process can see it (through /proc/PID/root)."""
    state = agent.home / "state"
    state.mkdir(parents=True)
    mount = f'mount -t tmpfs -o size={TMPFS_SIZE},mode=0755 tmpfs "$1" && shift && exec "$@"'
    command = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        mount,
        "sh",
        str(state),
        *agent.command("run", "--deploy-args", args),
    ]
    with (agent.home / "agent.out").open("ab") as out:
        # exec all the way down: the process is the daemon, and SIGTERM reaches it.
        agent.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return Path(f"/proc/{agent.process.pid}/root") / state.relative_to("/")


def wait_for(agent: Agent, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert agent.process is not None
        if agent.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"agent did not reach {what} (exit {agent.process.poll()})\n--- agent.log ---\n"
                f"{agent.log()}\n--- agent.out ---\n{agent.output()}"
            )
        time.sleep(0.05)


def saved(state_folder: Path) -> dict[str, Any]:
    """state.json as the daemon left it; {} while it does not exist yet."""
    with contextlib.suppress(FileNotFoundError):
        body: dict[str, Any] = json.loads((state_folder / "state.json").read_bytes())
        return body
    return {}


def fill(folder: Path) -> Path:
    """Write a file until the disk refuses one more byte."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        for block in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            with contextlib.suppress(OSError):
                while True:
                    f.write(block)
    return filler


def test_a_full_state_folder_fails_attempts_cleanly_keeps_the_state_and_recovers(
    authority: Authority, agent: Agent, faults: FaultTally, private_mounts: None
) -> None:
    with faults.round() as fault:
        state = start_on_tmpfs(agent, cp_args(authority))
        wait_for(agent, lambda: bool(saved(state).get("last_backup")), "a first backup")
        last_good = (state / "state.json").read_bytes()
        filler = fill(state)
        fault.inject()

        full = "attempt failed: the agent's disk is full ("
        wait_for(agent, lambda: agent.log().count(full) >= 2, "two disk_full attempts")

        log = agent.log()
        assert " WARNING HF1104 [backing_up] " + full in log
        assert "files.cache): No space left on device; next attempt at " in log
        assert "code=disk_full" in log
        assert "cannot save the state: the agent's disk is full (" in log
        assert "disk is full" in (agent.home / "log" / "history.log").read_text()
        assert (state / "state.json").read_bytes() == last_good  # never half-written
        assert not [p.name for p in state.iterdir() if p.name.endswith(".tmp")]
        assert agent.process is not None and agent.process.poll() is None
        assert log.count("STARTED holdfast") == 1  # no crash, so no restart loop
        assert_no_traceback(agent)

        filler.unlink()
        before = json.loads(last_good)["last_backup"]["snapshot_id"]
        wait_for(
            agent,
            lambda: (saved(state).get("last_backup") or {}).get("snapshot_id") != before,
            "a backup once there is room",
        )
        assert "the state is saved again" in agent.log()
        assert "HF0103" in agent.log()  # recovered after N failed attempts
        assert saved(state)["last_error"] is None
        assert agent.stop() == 0
        assert_no_traceback(agent)
