"""What an agent that waits keeps in memory (benchmarks/soak.py measures it): the daemon
loads the backup engine and the detection sandbox when it first needs them, not at start,
and never httpx's command-line client."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_by_the_daemon(modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` importing agent.daemon loads, in a fresh interpreter (this test
    process has imported everything already)."""
    probe = (
        "import json, sys; import agent.daemon; "
        f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    names: list[str] = json.loads(found.stdout)
    return names


def test_an_agent_waiting_for_its_policy_has_not_loaded_the_backup_engine_or_the_sandbox() -> None:
    # Each is megabytes resident, for months, in an agent that waits for its policy.
    engine = ("agent.backup.engine", "cryptography", "blake3", "fastcdc", "sqlite3", "tenacity")
    assert loaded_by_the_daemon((*engine, "agent.detection", "agent.sandbox")) == []


def test_the_daemon_does_not_load_the_httpx_command_line_client() -> None:
    # Installed in this venv (rich by memray, click by uvicorn), 2-6 MB the agent never uses.
    assert loaded_by_the_daemon(("click", "rich", "pygments")) == []
