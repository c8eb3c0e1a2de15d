"""The agent-facing API over real TLS: policy fetch, registration, device check-in."""

from __future__ import annotations

import hashlib
import ssl
import uuid

import httpx
import pytest

from tests.integration.authority_process import Authority, admin, admin_json


def _register(
    client: httpx.Client, token: str, guid: str, username: str = "jdoe@example.com"
) -> httpx.Response:
    return client.post(
        "/api/v1/deploy/register",
        headers={"X-Deployment-Token": token},
        json={
            "device_guid": guid,
            "device_name": "laptop-17",
            "os": "linux",
            "agent_version": "0.1.0",
            "username": username,
            "user_home": "/home/jdoe",
        },
    )


def test_ssl_whitelist_of_policy_show_is_the_sha1_of_the_served_certificate(
    authority: Authority,
) -> None:
    pem = ssl.get_server_certificate(("127.0.0.1", authority.port))
    presented = hashlib.sha1(ssl.PEM_cert_to_DER_cert(pem), usedforsecurity=False).hexdigest()
    view = admin_json(authority.data, "policy", "show", "--org", "Demo")
    cp_args = dict(pair.split("=", 1) for pair in view["install_args"]["cp_args"].split("&"))
    assert cp_args["SSL_WHITELIST"] == presented
    assert cp_args["DEPLOYMENT_URL"] == authority.url
    with authority.client([cp_args["SSL_WHITELIST"]]) as client:
        assert client.get("/api/v1/health").json()["status"] == "ok"


def test_a_wrong_pin_fails_the_handshake_before_the_token_is_sent(
    authority: Authority, token: str
) -> None:
    with (
        authority.client(["00" * 20]) as client,
        pytest.raises(httpx.ConnectError, match="SSL_WHITELIST"),
    ):
        client.post(
            "/api/v1/deploy/policy", headers={"X-Deployment-Token": token}, json={"os": "linux"}
        )
    assert "/api/v1/deploy/policy" not in (authority.data / "log" / "access.log").read_text()


def test_policy_fetch_delivers_script_settings_and_pins_and_records_the_device(
    authority: Authority, token: str
) -> None:
    guid = str(uuid.uuid4())
    with authority.client() as client:
        response = client.post(
            "/api/v1/deploy/policy",
            headers={"X-Deployment-Token": token},
            json={
                "os": "linux",
                "device_guid": guid,
                "device_name": "laptop-17",
                "phase": "awaiting_registration",
                "last_error": "detection script printed no username",
            },
        )
    assert response.status_code == 200
    policy = response.json()
    assert policy["org"] == {"name": "Demo", "auth": "local"}
    assert policy["registration"] == "silent"
    assert policy["detection"]["interpreter"] == ["/bin/bash"]
    script = policy["detection"]["script"]
    assert policy["detection"]["sha256"] == hashlib.sha256(script.encode()).hexdigest()
    assert policy["settings"]["policy_retry_seconds"] == 300
    assert policy["settings"]["registration_retry_seconds"] == 3600
    assert [p["role"] for p in policy["tls_pins"]] == ["current"]

    pending = admin_json(authority.data, "device", "list", "--pending")
    assert [(d["guid"], d["phase"], d["last_error"]) for d in pending] == [
        (guid, "awaiting_registration", "detection script printed no username")
    ]


def test_policy_for_an_os_without_a_script_has_no_detection(
    authority: Authority, token: str
) -> None:
    with authority.client() as client:
        policy = client.post(
            "/api/v1/deploy/policy", headers={"X-Deployment-Token": token}, json={"os": "windows"}
        ).json()
    assert policy["detection"] is None


def test_policy_settings_changed_by_the_admin_reach_the_agent(
    authority: Authority, token: str
) -> None:
    admin(
        authority.data,
        "policy",
        "set",
        "--org",
        "Demo",
        "policy_retry_seconds=60",
        "exclude=*.iso,Downloads/",
    )
    with authority.client() as client:
        settings = client.post(
            "/api/v1/deploy/policy", headers={"X-Deployment-Token": token}, json={"os": "linux"}
        ).json()["settings"]
    assert settings["policy_retry_seconds"] == 60
    assert settings["exclude"] == ["*.iso", "Downloads/"]


def test_registration_is_idempotent_by_guid_and_replaces_the_credential(
    authority: Authority, token: str
) -> None:
    guid = str(uuid.uuid4())
    with authority.client() as client:
        first = _register(client, token, guid)
        second = _register(client, token, guid)
        assert first.status_code == second.status_code == 200
        assert first.json()["already_registered"] is False
        assert second.json()["already_registered"] is True
        assert second.json()["user_created"] is False
        old = client.post(
            "/api/v1/device/policy",
            headers={"Authorization": f"Bearer {first.json()['credential']}"},
            json={"os": "linux", "phase": "backing_up"},
        )
        new = client.post(
            "/api/v1/device/policy",
            headers={"Authorization": f"Bearer {second.json()['credential']}"},
            json={"os": "linux", "phase": "backing_up"},
        )
    assert old.status_code == 401
    assert old.json()["error"]["code"] == "credential_invalid"
    assert new.status_code == 200
    devices = admin_json(authority.data, "device", "list")
    assert [(d["guid"], d["username"], d["registered"]) for d in devices] == [
        (guid, "jdoe@example.com", True)
    ]
    users = admin_json(authority.data, "user", "list")
    assert [(u["username"], u["can_sign_in"]) for u in users] == [("jdoe@example.com", False)]


def test_a_local_organization_refuses_a_username_that_is_not_an_email(
    authority: Authority, token: str
) -> None:
    with authority.client() as client:
        response = _register(client, token, str(uuid.uuid4()), username="jdoe")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "username_not_email"
    assert admin_json(authority.data, "device", "list", "--pending") == []


def test_an_ldap_directory_that_cannot_be_reached_is_a_503_with_retry_after(
    authority: Authority,
) -> None:
    admin(
        authority.data,
        "org",
        "create",
        "Dir",
        "--auth",
        "ldap",
        "--ldap-url",
        "ldap://127.0.0.1:1",
        "--ldap-base-dn",
        "dc=example,dc=com",
    )
    admin(authority.data, "policy", "create", "--org", "Dir")
    dir_token = admin_json(authority.data, "policy", "show", "--org", "Dir")["token"]
    with authority.client() as client:
        response = _register(client, dir_token, str(uuid.uuid4()), username="jdoe")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    assert response.json()["error"]["code"] == "directory_unavailable"
    assert "the directory of organization 'Dir'" in response.json()["error"]["message"]


def test_a_manual_policy_refuses_silent_registration(authority: Authority) -> None:
    admin(authority.data, "org", "create", "Manual", "--auth", "local")
    admin(authority.data, "policy", "create", "--org", "Manual", "--manual")
    manual_token = admin_json(authority.data, "policy", "show", "--org", "Manual")["token"]
    with authority.client() as client:
        policy = client.post(
            "/api/v1/deploy/policy",
            headers={"X-Deployment-Token": manual_token},
            json={"os": "linux"},
        ).json()
        response = _register(client, manual_token, str(uuid.uuid4()))
    assert policy["registration"] == "manual"
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "sign_in_required"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "token_missing"),
        ({"X-Deployment-Token": "not-a-uuid"}, "token_malformed"),
        ({"X-Deployment-Token": str(uuid.uuid4())}, "token_unknown"),
    ],
)
def test_bad_tokens_get_distinct_codes(
    authority: Authority, headers: dict[str, str], code: str
) -> None:
    with authority.client() as client:
        response = client.post("/api/v1/deploy/policy", headers=headers, json={"os": "linux"})
    assert response.status_code in (401, 404)
    assert response.json()["error"]["code"] == code
    assert response.headers["X-Request-ID"] == response.json()["request_id"]


def test_malformed_bodies_are_4xx_with_a_message_naming_the_field(
    authority: Authority, token: str
) -> None:
    with authority.client() as client:
        garbage = client.post(
            "/api/v1/deploy/policy", headers={"X-Deployment-Token": token}, content=b"\xff{not json"
        )
        bad_os = client.post(
            "/api/v1/deploy/policy", headers={"X-Deployment-Token": token}, json={"os": "beos"}
        )
        bad_guid = _register(client, token, "laptop")
    assert garbage.status_code == 422
    assert bad_os.status_code == 422 and "os" in bad_os.json()["error"]["message"]
    assert bad_guid.status_code == 422 and bad_guid.json()["error"]["code"] == "invalid_device_guid"


def test_the_openapi_document_describes_the_agent_endpoints(authority: Authority) -> None:
    with authority.client() as client:
        paths = client.get("/api/openapi.json").json()["paths"]
    assert {"/api/v1/deploy/policy", "/api/v1/deploy/register", "/api/v1/device/policy"} <= set(
        paths
    )


def test_the_admin_api_lists_devices_with_the_admin_key_only(
    authority: Authority, token: str
) -> None:
    key = (authority.data / "admin.key").read_text().strip()
    with authority.client() as client:
        _register(client, token, str(uuid.uuid4()))
        refused = client.get("/api/v1/admin/devices", headers={"Authorization": "Bearer wrong"})
        listed = client.get("/api/v1/admin/devices", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    assert [d["username"] for d in listed.json()] == ["jdoe@example.com"]


def test_a_registered_guid_arriving_from_other_hardware_is_refused_as_cloned(
    authority: Authority, token: str
) -> None:
    guid = str(uuid.uuid4())
    body = {"device_guid": guid, "os": "linux", "username": "jdoe@example.com", "user_home": "/h"}
    with authority.client() as client:

        def register_from(hardware: str) -> httpx.Response:
            return client.post(
                "/api/v1/deploy/register",
                headers={"X-Deployment-Token": token},
                json={**body, "hardware_id": hardware},
            )

        original = register_from("a" * 64)
        clone = register_from("b" * 64)
        retry = register_from("a" * 64)
    assert original.status_code == 200
    assert clone.status_code == 409
    assert clone.json()["error"]["code"] == "device_cloned"
    assert retry.status_code == 200 and retry.json()["already_registered"] is True
