"""`make demo`: the whole deployment flow on an embedded default, as an administrator runs it.

Each step runs the real command (shown with a `$`) against a fresh temporary folder and a
free loopback port: the authority over HTTPS with a self-signed certificate, then the real
agent with the policy's installer arguments, until it is registered. A console administrator
is made too; `--serve` leaves both running until Ctrl-C and prints the console's address and
that administrator's sign-in, for exploring the web console (docs/console.md).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from agent.pinning import pinned_context

DEMO_USER = "demo.user@example.com"
CONSOLE_ADMIN = "demo-admin"
FIXED_USER_SCRIPT = (
    Path(__file__).resolve().parent.parent / "authority/detection_scripts/linux/fixed_user.sh"
)


def step(title: str) -> None:
    print(f"\n== {title}")


def show(command: str, *args: str) -> None:
    print(f"$ {command} " + " ".join(shlex.quote(a) for a in args))


def run(module: str, *args: str, quiet: bool = False, stdin: str | None = None) -> str:
    show("holdfast-authority" if module == "authority" else "holdfast", *args)
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        check=False,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )
    if result.returncode != 0:
        sys.exit(f"demo failed: the command exited {result.returncode}: {result.stderr.strip()}")
    if not quiet:
        print("  " + result.stdout.rstrip().replace("\n", "\n  "))
    return result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_serving(url: str, pin: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit("demo failed: the server exited during start-up")
        try:
            httpx.get(f"{url}/api/v1/health", verify=pinned_context([pin]), timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    sys.exit("demo failed: the server did not answer within 30 s")


def make_demo_user(root: Path) -> tuple[Path, Path]:
    """A sample home folder, and the shipped fixed_user script set to report it.

    A demo machine has no one logged in, which is what fixed_user.sh is for: an
    administrator edits its two lines at the top, as done here.
    """
    home = root / "home" / "demo"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "report.txt").write_text("Quarterly report\n")
    (home / ".cache").mkdir()
    root.chmod(0o755)  # the script runs as an unprivileged account: let it reach the home
    text = FIXED_USER_SCRIPT.read_text()
    text = re.sub(r"(?m)^FIXED_USERNAME=.*$", f'FIXED_USERNAME="{DEMO_USER}"', text, count=1)
    text = re.sub(r"(?m)^FIXED_USER_HOME=.*$", f'FIXED_USER_HOME="{home}"', text, count=1)
    script = root / "fixed_user.sh"
    script.write_text(text)
    return home, script


def wait_for_backup(agent_home: Path, agent: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            sys.exit(f"demo failed: the agent exited ({agent.returncode})")
        status = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--json", "--home", str(agent_home)],
            capture_output=True,
            text=True,
            check=False,
        )
        if status.returncode == 0 and json.loads(status.stdout)["last_backup"]:
            return
        time.sleep(0.3)
    sys.exit("demo failed: the agent did not commit its first backup within 120 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:  # noqa: PLR0915  # a script that tells a story, one step after another
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep running until Ctrl-C")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="holdfast-demo-") as tmp:
        root = Path(tmp)
        data, agent_home = root / "authority", root / "agent"
        port = free_port()
        d = ["--data", str(data)]
        home, script = make_demo_user(root)

        step("An administrator sets up the authority (SQLite, self-signed certificate)")
        run("authority", "init", *d, "--host", "127.0.0.1", "--port", str(port))
        step("...creates an organization (local authentication) and its silent policy")
        run("authority", "org", "create", "Demo", "--auth", "local", *d)
        run("authority", "policy", "create", "--org", "Demo", "--script", f"linux={script}", *d)
        view: dict[str, Any] = json.loads(
            run("authority", "policy", "show", "--org", "Demo", "--json", *d, quiet=True)
        )
        install = view["install_args"]
        print("  installer arguments, ready to paste:")
        print(f"    msiexec:  {install['msiexec']}")
        print(f"    Linux:    {install['linux']}")
        print("    deploy.properties (Jamf, Munki):")
        print("      " + install["deploy_properties"].rstrip().replace("\n", "\n      "))

        step("...and a console administrator (the password twice on stdin, never echoed)")
        password = secrets.token_urlsafe(12)
        admin_args = ["admin", "create", CONSOLE_ADMIN, "--role", "deploy", *d]
        run("authority", *admin_args, stdin=f"{password}\n{password}\n")

        step("...and starts the server (HTTPS only)")
        url, pin = view["deployment_url"], view["tls_pins"][0]["sha1"]
        serve_args = ["serve", *d, "--host", "127.0.0.1", "--port", str(port)]
        show("holdfast-authority", *serve_args)
        server = subprocess.Popen(
            [sys.executable, "-m", "authority", *serve_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        agent: subprocess.Popen[bytes] | None = None
        try:
            wait_until_serving(url, pin, server)
            print(f"  serving {url}; its certificate's SHA-1 {pin} is the SSL_WHITELIST")
            print(f"  the web console is {url}/ (sign in as {CONSOLE_ADMIN})")

            step("The MDM tool installs the agent with the policy's arguments")
            agent_args = ["run", "--home", str(agent_home), "--deploy-args", install["cp_args"]]
            show("holdfast", *agent_args)
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", *agent_args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for_backup(agent_home, agent)
            print("  the agent saved its arguments, re-executed itself without them (the token")
            print("  is not in the process list), found the policy, ran the detection script")
            print("  in its sandbox, registered silently and committed its first backup:")
            run("agent", "status", "--home", str(agent_home))
            print("  from its log:")
            for line in (agent_home / "log" / "agent.log").read_text().splitlines():
                print(f"    {line}")

            step("A user restores a file from the backup")
            restored = root / "restored"
            run(
                "agent",
                "restore",
                "--home",
                str(agent_home),
                "--to",
                str(restored),
                "Documents/report.txt",
            )
            original = home / "Documents" / "report.txt"
            copy = restored / "Documents" / "report.txt"
            if copy.read_bytes() != original.read_bytes():
                sys.exit("demo failed: the restored file differs from the original")
            print(f"  {copy} is identical to {original}")

            step("What the administrator sees")
            run("authority", "device", "list", *d)
            run("authority", "user", "list", *d)
            if options.serve:
                sha256 = view["tls_pins"][0]["sha256"].upper()
                fingerprint = ":".join(sha256[i : i + 2] for i in range(0, len(sha256), 2))
                print(
                    f"\nThe authority ({url}, data {data}) and the agent (home {agent_home}) keep "
                    f"running.\nTry: holdfast status --home {agent_home}\n"
                    f"\nThe web console: {url}/\n"
                    f"  name:     {CONSOLE_ADMIN}\n"
                    f"  password: {password}\n"
                    "Your browser will warn that the certificate is self-signed: accept it if its "
                    f"SHA-256 fingerprint is\n  {fingerprint}\n"
                    "\nCtrl-C stops both.",
                    flush=True,
                )
                wanted = {signal.SIGINT, signal.SIGTERM}
                signal.pthread_sigmask(signal.SIG_BLOCK, wanted)  # delivered to sigwait only
                signal.sigwait(wanted)
        except KeyboardInterrupt:
            pass
        finally:
            if agent is not None:
                stop(agent)
            stop(server)
        step("Stopped the agent and the server. The demo is complete.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
