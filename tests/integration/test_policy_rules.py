"""What administrators do to a live deployment: rotate, deactivate, delete, renew certificates."""

from __future__ import annotations

import hashlib
import ssl
import time
import uuid

import httpx

from tests.integration.authority_process import Authority, admin, admin_json


def _fetch(client: httpx.Client, token: str) -> httpx.Response:
    return client.post(
        "/api/v1/deploy/policy", headers={"X-Deployment-Token": token}, json={"os": "linux"}
    )


def _registered_credential(client: httpx.Client, token: str) -> str:
    response = client.post(
        "/api/v1/deploy/register",
        headers={"X-Deployment-Token": token},
        json={
            "device_guid": str(uuid.uuid4()),
            "os": "linux",
            "username": "jdoe@example.com",
            "user_home": "/home/jdoe",
        },
    )
    assert response.status_code == 200, response.text
    credential: str = response.json()["credential"]
    return credential


def _as_device(client: httpx.Client, credential: str) -> httpx.Response:
    return client.post(
        "/api/v1/device/policy",
        headers={"Authorization": f"Bearer {credential}"},
        json={"os": "linux", "phase": "backing_up"},
    )


def test_rotating_the_token_disables_the_old_one_at_once_but_not_registered_devices(
    authority: Authority, token: str
) -> None:
    with authority.client() as client:
        credential = _registered_credential(client, token)
        admin(authority.data, "policy", "rotate-token", "--org", "Demo")
        new_token = admin_json(authority.data, "policy", "show", "--org", "Demo")["token"]
        old = _fetch(client, token)
        new = _fetch(client, new_token)
        device = _as_device(client, credential)
    assert new_token != token
    assert old.status_code == 404
    assert old.json()["error"]["code"] == "token_rotated"
    assert "Demo" in old.json()["error"]["message"]
    assert new.status_code == 200
    assert device.status_code == 200


def test_deactivating_the_organization_stops_its_policy_and_its_devices(
    authority: Authority, token: str
) -> None:
    with authority.client() as client:
        credential = _registered_credential(client, token)
        admin(authority.data, "org", "deactivate", "Demo")
        by_token = _fetch(client, token)
        by_device = _as_device(client, credential)
    for response in (by_token, by_device):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "org_deactivated"
    assert admin_json(authority.data, "org", "list")[0]["active"] is False


def test_deleting_the_policy_fails_new_installs_and_leaves_devices_on_defaults(
    authority: Authority, token: str
) -> None:
    admin(authority.data, "policy", "set", "--org", "Demo", "backup_interval_seconds=3600")
    with authority.client() as client:
        credential = _registered_credential(client, token)
        admin(authority.data, "policy", "delete", "--org", "Demo")
        by_token = _fetch(client, token)
        by_device = _as_device(client, credential)
    assert by_token.status_code == 410
    assert by_token.json()["error"]["code"] == "policy_deleted"
    assert by_device.status_code == 200
    assert by_device.json()["settings"]["backup_interval_seconds"] == 900
    assert by_device.json()["detection"] is None


def test_a_renewed_certificate_reaches_agents_as_a_pin_then_is_served_after_activate(
    authority: Authority, token: str
) -> None:
    old_pin = authority.pins()[0]
    admin(authority.data, "tls", "renew")
    staged = admin_json(authority.data, "tls", "show")
    next_pin = next(p["sha1"] for p in staged if p["role"] == "next")
    with authority.client([old_pin]) as client:
        delivered = [p["sha1"] for p in _fetch(client, token).json()["tls_pins"]]
    assert delivered == [old_pin, next_pin]
    cp_args = admin_json(authority.data, "policy", "show", "--org", "Demo")["install_args"][
        "cp_args"
    ]
    assert f"SSL_WHITELIST={old_pin},{next_pin}" in cp_args

    admin(authority.data, "tls", "activate")
    deadline = time.monotonic() + 15
    presented = old_pin
    while presented != next_pin and time.monotonic() < deadline:
        pem = ssl.get_server_certificate(("127.0.0.1", authority.port))
        presented = hashlib.sha1(ssl.PEM_cert_to_DER_cert(pem), usedforsecurity=False).hexdigest()
        time.sleep(0.2)
    assert presented == next_pin, "the running server did not switch to the activated certificate"
    # An agent that picked up both pins before the switch goes on working after it.
    with authority.client([old_pin, next_pin]) as client:
        assert _fetch(client, token).status_code == 200


def test_the_token_and_credentials_never_reach_the_server_logs(
    authority: Authority, token: str
) -> None:
    with authority.client() as client:
        credential = _registered_credential(client, token)
        _as_device(client, credential)
        _fetch(client, token)
        _fetch(client, str(uuid.uuid4()))
        client.post("/api/v1/deploy/policy", headers={"X-Deployment-Token": token}, content=b"{")
    logs = [authority.data / "log" / "access.log", authority.data / "log" / "authority.log"]
    text = "".join(path.read_text() for path in logs) + (authority.data / "serve.out").read_text()
    assert "/api/v1/deploy/register" in text  # the access log did record the requests
    assert token not in text
    assert credential not in text
