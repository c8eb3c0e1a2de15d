"""Backups for real: the agent's daemon backs the home up to the authority, and restores it."""

from __future__ import annotations

import filecmp
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin, admin_json


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A small home: text, a 3 MB random file, a duplicate, unicode and spaces, a link."""
    root = tmp_path / "ann"
    (root / "Documents" / "deep" / "er").mkdir(parents=True)
    (root / "Documents" / "notes.txt").write_text("meeting notes\n" * 100)
    (root / "Documents" / "deep" / "er" / "é ü space.txt").write_text("unicode\n")
    (root / "big.bin").write_bytes(os.urandom(3_000_000))
    (root / "copy of big.bin").write_bytes((root / "big.bin").read_bytes())
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("Documents/notes.txt")
    (root / ".cache").mkdir()
    (root / ".cache" / "junk").write_text("excluded by the policy\n")
    os.chmod(root / "Documents" / "notes.txt", 0o600)
    for path in (tmp_path, root):
        path.chmod(0o755)  # detection runs as an unprivileged account
    return root


@pytest.fixture
def agent(tmp_path: Path, authority: Authority, home: Path) -> Iterator[Agent]:
    script = tmp_path / "detect.sh"
    script.write_text(f"echo AGENT_USERNAME=ann@example.com\necho AGENT_USER_HOME={home}\n")
    admin(authority.data, "org", "create", "Backups", "--auth", "local")
    admin(authority.data, "policy", "create", "--org", "Backups", "--script", f"linux={script}")
    running = Agent(home=tmp_path / "agent")
    running.configure(backup_interval_seconds=3600)
    cp_args = admin_json(authority.data, "policy", "show", "--org", "Backups")["install_args"]
    running.start("--deploy-args", cp_args["cp_args"])
    try:
        yield running
    finally:
        running.stop()


def test_the_first_backup_runs_after_registration_and_restores_byte_for_byte(
    agent: Agent, home: Path, tmp_path: Path
) -> None:
    status = agent.wait_for(lambda s: s["last_backup"] is not None, what="the first backup")
    assert status["last_backup"]["files"] == 5  # .cache is excluded by the default policy
    target = tmp_path / "restored"
    restored = agent.cli("restore", "--to", str(target))
    assert restored.returncode == 0, restored.stderr
    assert not (target / ".cache").exists()
    comparison = filecmp.dircmp(home, target, ignore=[".cache"])
    assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
    assert filecmp.cmp(home / "big.bin", target / "big.bin", shallow=False)
    assert os.readlink(target / "link") == "Documents/notes.txt"
    assert (target / "Documents" / "notes.txt").stat().st_mode & 0o777 == 0o600
    source_mtime = (home / "Documents" / "notes.txt").stat().st_mtime_ns
    assert (target / "Documents" / "notes.txt").stat().st_mtime_ns == source_mtime


def test_backup_now_waits_for_the_new_snapshot_and_snapshots_lists_it(
    agent: Agent, home: Path
) -> None:
    first = agent.wait_for(lambda s: s["last_backup"] is not None, what="the first backup")
    (home / "Documents" / "new.txt").write_text("written after the first backup\n")
    result = agent.cli("backup-now")
    assert result.returncode == 0, result.stderr
    assert "Backup complete" in result.stdout
    listed = agent.cli("snapshots", "--json")
    snapshots = __import__("json").loads(listed.stdout)
    assert len(snapshots) == 2
    assert snapshots[0]["snapshot_id"] == first["last_backup"]["snapshot_id"]
    assert snapshots[-1]["files"] == 6
    assert "Completed backup" in agent.log()


def test_restore_refuses_to_overwrite_without_overwrite(agent: Agent, tmp_path: Path) -> None:
    agent.wait_for(lambda s: s["last_backup"] is not None, what="the first backup")
    target = tmp_path / "restored"
    (target / "Documents").mkdir(parents=True)
    (target / "Documents" / "notes.txt").write_text("mine, keep it\n")
    result = agent.cli("restore", "--to", str(target), "Documents/notes.txt")
    assert "left alone" in result.stdout
    assert (target / "Documents" / "notes.txt").read_text() == "mine, keep it\n"
    again = agent.cli("restore", "--to", str(target), "--overwrite", "Documents/notes.txt")
    assert again.returncode == 0, again.stderr
    assert (target / "Documents" / "notes.txt").read_text() == "meeting notes\n" * 100


def test_an_interrupted_backup_leaves_no_snapshot_and_the_next_one_completes(
    authority: Authority, agent: Agent, home: Path
) -> None:
    agent.wait_for(lambda s: s["last_backup"] is not None, what="the first backup")
    for n in range(3):
        (home / f"fresh-{n}.bin").write_bytes(os.urandom(40_000_000))
    access = authority.data / "log" / "access.log"
    before = access.read_text().count("PUT /api/v1/device/packs/")
    holdfast_run = subprocess.Popen(
        agent.command("backup-now"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while access.read_text().count("PUT /api/v1/device/packs/") == before:
        assert time.monotonic() < deadline, "no pack upload started"
        time.sleep(0.01)
    agent.kill9()  # mid-upload: some packs stored, no snapshot committed yet
    snapshots_after_kill = len(admin_json(authority.data, "device", "list"))
    holdfast_run.wait(timeout=60)
    assert snapshots_after_kill == 1
    assert agent.status()["last_backup"]["files"] == 5  # the interrupted run committed nothing
    agent.start()
    agent.wait_phase("backing_up")
    result = agent.cli("backup-now")
    assert result.returncode == 0, result.stderr
    final = agent.status()["last_backup"]
    assert final["files"] == 8
    # What arrived before the kill was not sent again.
    resumed = agent.log().rsplit("STARTED", 1)[1]
    sent = [
        int(line.rsplit(", ", 1)[1].split()[0])
        for line in resumed.splitlines()
        if "Completed backup" in line
    ]
    assert sent and sent[0] < 120_000_000


def test_a_target_that_cannot_be_made_is_one_sentence_not_a_traceback(
    agent: Agent, tmp_path: Path
) -> None:
    agent.wait_for(lambda s: s["last_backup"] is not None, what="the first backup")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    result = agent.cli("restore", "--to", str(blocker / "restored"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("holdfast: ") and result.stderr.count("\n") == 1


def test_a_restore_onto_a_full_disk_stops_with_one_sentence_and_leaves_no_temporary_file(
    agent: Agent, tmp_path: Path, private_mounts: None
) -> None:
    agent.wait_for(lambda s: s["last_backup"] is not None, what="the first backup")
    target = tmp_path / "small"
    target.mkdir()
    # A 1 MiB tmpfs in a mount namespace of its own (the home holds 6 MB); what is left in
    # it is counted before the namespace, and the tmpfs with it, goes.
    script = (
        'mount -t tmpfs -o size=1m tmpfs "$1" || exit 99; target=$1; shift; "$@"; code=$?; '
        "echo temporaries: $(find \"$target\" -name '*.holdfast-restore' | wc -l); exit $code"
    )
    result = subprocess.run(
        [
            *("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(target)),
            *agent.command("restore", "--to", str(target)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr
    assert "temporaries: 0" in result.stdout


def test_snapshots_for_a_user_who_cannot_read_the_credential_is_exit_4_saying_why(
    agent: Agent,
) -> None:
    agent.wait_for(lambda s: s["last_backup"] is not None, what="the first backup")
    nobody = pwd.getpwnam("nobody")
    code = (
        "import os, sys\n"
        # Imported first: this interpreter's files need not be readable by nobody.
        "from agent.cli import main\n"
        "import agent.backup.commands, agent.device, agent.transport\n"
        f"os.setgroups([]); os.setgid({nobody.pw_gid}); os.setuid({nobody.pw_uid})\n"
        f"sys.exit(main(['snapshots', '--home', {str(agent.home)!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 4, result.stderr
    assert "only an administrator can read this device's" in result.stderr
    assert "Traceback" not in result.stderr
