"""`make demo`: the deployment flow on an embedded default, as an administrator runs it.

Each step runs the real command (shown with a `$`), against a fresh data folder and a
free loopback port, then the real server over HTTPS is checked the way agents will check
it. `--serve` leaves the server running for exploration until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from agent.pinning import pinned_context

ROOT = Path(__file__).resolve().parent.parent
LINUX_SCRIPT = ROOT / "detection_scripts" / "linux" / "detect_console_user.sh"


def step(title: str) -> None:
    print(f"\n== {title}")


def run(*args: str, quiet: bool = False) -> str:
    print("$ holdfast-authority " + " ".join(shlex.quote(a) for a in args))
    result = subprocess.run(
        [sys.executable, "-m", "authority", *args], capture_output=True, text=True, check=False
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


def check_like_an_agent(url: str, pin: str, token: str) -> None:
    step("An agent's first contact, over TLS pinned by SSL_WHITELIST")
    try:
        httpx.get(f"{url}/api/v1/health", verify=pinned_context(["00" * 20]), timeout=5)
        sys.exit("demo failed: a wrong pin was accepted")
    except httpx.ConnectError as exc:
        reason = exc.args[0] if exc.args else exc
        print(f"  with a wrong pin the handshake is refused before any request is sent:\n    {reason}")
    guid = str(uuid.uuid4())
    with httpx.Client(base_url=url, verify=pinned_context([pin]), timeout=10) as client:
        policy = client.post(
            "/api/v1/deploy/policy",
            headers={"X-Deployment-Token": token},
            json={
                "os": "linux",
                "device_guid": guid,
                "device_name": "demo-laptop",
                "phase": "awaiting_registration",
            },
        ).json()
        detection = policy["detection"]
        print(
            f"  policy found: organization {policy['org']['name']!r}, "
            f"{policy['registration']} registration, detection script {detection['filename']} "
            f"(sha256 {detection['sha256'][:16]}...), retry every "
            f"{policy['settings']['policy_retry_seconds']} s until found"
        )
        registered = client.post(
            "/api/v1/deploy/register",
            headers={"X-Deployment-Token": token},
            json={
                "os": "linux",
                "device_guid": guid,
                "device_name": "demo-laptop",
                "username": "jdoe@example.com",
                "user_home": "/home/jdoe",
            },
        ).json()
        print(
            f"  registered device {registered['device_guid']} to {registered['username']} "
            "(it authenticates with its own credential from now on)"
        )
        wrong = client.post(
            "/api/v1/deploy/policy",
            headers={"X-Deployment-Token": str(uuid.uuid4())},
            json={"os": "linux"},
        )
        print(
            f"  an unknown token is answered {wrong.status_code} {wrong.json()['error']['code']}: "
            f"{wrong.json()['error']['message']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep the server running until Ctrl-C")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="holdfast-demo-") as tmp:
        data = Path(tmp) / "authority"
        port = free_port()
        d = ["--data", str(data)]
        step("An administrator sets up the authority (SQLite, self-signed certificate)")
        run("init", *d, "--host", "127.0.0.1", "--port", str(port))
        step("...creates an organization and its deployment policy")
        run("org", "create", "Demo", "--auth", "local", *d)
        run("policy", "create", "--org", "Demo", "--script", f"linux={LINUX_SCRIPT}", *d)
        view: dict[str, Any] = json.loads(
            run("policy", "show", "--org", "Demo", "--json", *d, quiet=True)
        )
        args_text = view["install_args"]
        print("  installer arguments, ready to paste:")
        print(f"    CP_ARGS:  {args_text['cp_args']}")
        print(f"    msiexec:  {args_text['msiexec']}")
        print(f"    Linux:    {args_text['linux']}")
        print("    deploy.properties (Jamf, Munki):")
        print("      " + args_text["deploy_properties"].rstrip().replace("\n", "\n      "))

        step("...and starts the server (HTTPS only)")
        print(f"$ holdfast-authority serve --data {data} --host 127.0.0.1 --port {port}")
        url = view["deployment_url"]
        pin = view["tls_pins"][0]["sha1"]
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "authority",
                "serve",
                *d,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_serving(url, pin, server)
            print(f"  serving {url}; its certificate's SHA-1 {pin} is the policy's SSL_WHITELIST")
            check_like_an_agent(url, pin, view["token"])
            step("What the administrator sees")
            run("device", "list", *d)
            run("user", "list", *d)
            if args.serve:
                print(
                    f"\nThe authority keeps running at {url} (data folder {data}). "
                    f"Try: holdfast-authority device list --data {data}\nCtrl-C stops it."
                )
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            pass
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)
        step("Stopped the server. The demo is complete.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
