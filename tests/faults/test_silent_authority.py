"""An authority that goes silent in the middle of a backup: the connections stay open and
nothing comes back (a laptop that changed networks, a server frozen or cut off without a
reset). Packs on their way wait out the pack timeout (120 s); a stop must not wait with
them: neither a user's stop, nor the service manager's SIGTERM (systemd kills after 90 s).
Nothing is lost: the next run completes the backup."""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.faults.conftest import FaultTally, cp_args
from tests.faults.invariants import assert_restores_exactly, read_state, wait_state
from tests.faults.proxy import FaultProxy, Hang
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority

# Far under the pack timeout (120 s) the fix removes the wait for; over a loaded CI
# machine's slowest stop.
STOP_WITHIN = 20.0
# More than a check-in, a key escrow and a chunk query send on one connection; less than a
# pack of the large files below.
SILENT_AFTER = 1_000_000


def test_a_stop_during_uploads_to_a_silent_authority_is_prompt_and_loses_nothing(
    authority: Authority, home: Path, tmp_path: Path, faults: FaultTally, seed: int
) -> None:
    videos = home / "Videos"
    videos.mkdir(mode=0o755)
    rng = random.Random(seed)
    for n in range(3):  # incompressible: each pack of them is megabytes on the wire
        (videos / f"clip-{n}.mp4").write_bytes(rng.randbytes(3 * 1024 * 1024))
    proxy = FaultProxy(authority.port, lambda _number: Hang(SILENT_AFTER))
    proxy.start()
    agent = Agent(home=tmp_path / "agent")
    agent.configure(request_timeout_seconds=5)
    try:
        with faults.round() as injected:
            agent.start("--deploy-args", cp_args(authority, url=proxy.url))
            deadline = time.monotonic() + 90
            while not proxy.applied:
                assert time.monotonic() < deadline, f"no upload went silent\n{agent.log()}"
                time.sleep(0.05)
            injected.inject(len(proxy.applied))

            asked = time.monotonic()
            assert agent.cli("stop").returncode == 0
            wait_state(agent, lambda s: s.phase == "stopped", "stopped", timeout=STOP_WITHIN)
            assert time.monotonic() - asked < STOP_WITHIN
            assert read_state(agent).last_backup is None  # no snapshot of a broken run

            asked = time.monotonic()
            assert agent.stop() == 0  # SIGTERM, with uploads still hanging
            assert time.monotonic() - asked < STOP_WITHIN

            proxy.plan = lambda _number: None  # the network is back
            agent.start()
            deadline = time.monotonic() + 30
            while agent.cli("start").returncode != 0:  # until its control channel listens
                assert time.monotonic() < deadline, agent.log()
                time.sleep(0.2)
            wait_state(agent, lambda s: s.last_backup is not None, "a backup", timeout=90)
            assert_restores_exactly(agent, home, tmp_path / "restored")
            assert "Traceback" not in agent.log() + agent.output()
    finally:
        agent.stop()
        proxy.stop()
