"""Fixtures that start the real authority over TLS on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.authority_process import Authority, admin, admin_json, free_port, initialise


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    """An initialised, running authority with organization `Demo` (local) and its policy."""
    data = tmp_path / "authority"
    port = free_port()
    initialise(data, port)
    home = tmp_path / "home" / "jdoe"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "notes.txt").write_text("notes\n")
    for folder in (tmp_path, tmp_path / "home", home):
        folder.chmod(0o755)  # detection runs as an unprivileged account
    script = tmp_path / "detect_user.sh"
    script.write_text(f"echo AGENT_USERNAME=jdoe@example.com\necho AGENT_USER_HOME={home}\n")
    admin(data, "org", "create", "Demo", "--auth", "local")
    admin(data, "policy", "create", "--org", "Demo", "--script", f"linux={script}")
    server = Authority(data=data, port=port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def token(authority: Authority) -> str:
    value: str = admin_json(authority.data, "policy", "show", "--org", "Demo")["token"]
    return value
