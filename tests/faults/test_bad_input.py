"""Hostile or broken input at the agent's and the authority's doors, generated.

- the policy document: Policy.from_document (and what the daemon does with it next) raises
  nothing but `policy_invalid`;
- the authority's answers: any status, headers and body make an AuthorityClient call return
  or raise TransientError / PermanentError, never another exception;
- a detection script's output: parse_output returns a user or raises DetectionError;
- the state file: load_state returns a State or raises StateError;
- the authority's own API, from its OpenAPI document (schemathesis, in-process): no 500
  ever, no 503 without Retry-After, and no unexpected error behind a 503.

Every run is the same run (derandomized, no example database) and bounded.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from agent.config import AgentConfig
from agent.detection import DetectionScript, parse_output
from agent.errors import DetectionError, PermanentError, TransientError
from agent.lifecycle import State
from agent.policy import Policy
from agent.state import StateError, load_state
from agent.transport import MAX_RETRY_AFTER, AuthorityClient
from authority.admin import Admin, init_data
from authority.app import create_app
from authority.datadir import DataDir

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# What JSON decodes to (Python's json also reads NaN and Infinity, and integers of any size).
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)

# The policy document (docs/contract.md, "Policy document"): a valid one to start from.
SHA256 = "ab" * 32
VALID_POLICY: dict[str, Any] = {
    "version": 1,
    "org": {"name": "Eng", "auth": "local"},
    "registration": "silent",
    "detection": {
        "os": "linux",
        "filename": "detect.sh",
        "interpreter": ["/bin/sh"],
        "script": "echo AGENT_USERNAME=ann@example.com\n",
        "sha256": SHA256,
    },
    "settings": {"backup_interval_seconds": 900, "retry_jitter": 0.1},
    "tls_pins": [{"sha1": "cd" * 20, "sha256": SHA256}],
}


def _replace_in(base: dict[str, Any], key: str) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with `key` replaced by any JSON value, or removed."""
    return st.one_of(
        json_values.map(lambda value: {**base, key: value}),
        st.just({k: v for k, v in base.items() if k != key}),
    )


def _nested(key: str) -> st.SearchStrategy[dict[str, Any]]:
    """VALID_POLICY with one field of its object `key` broken."""
    inner: dict[str, Any] = VALID_POLICY[key]
    return st.sampled_from(sorted(inner)).flatmap(
        lambda field: _replace_in(inner, field).map(lambda broken: {**VALID_POLICY, key: broken})
    )


policy_documents = st.one_of(
    st.dictionaries(st.text(max_size=10), json_values),
    st.sampled_from(sorted(VALID_POLICY)).flatmap(lambda key: _replace_in(VALID_POLICY, key)),
    _nested("org"),
    _nested("detection"),
    _nested("settings"),
    st.dictionaries(
        st.sampled_from(
            ["backup_interval_seconds", "policy_retry_seconds", "registration_retry_seconds"]
        ),
        json_values,
    ).map(lambda s: {**VALID_POLICY, "settings": s}),
    st.lists(json_values, max_size=3).map(lambda pins: {**VALID_POLICY, "tls_pins": pins}),
)


@SETTINGS
@given(document=policy_documents)
def test_a_policy_document_is_a_policy_or_policy_invalid(document: dict[str, Any]) -> None:
    try:
        policy = Policy.from_document(document)
    except PermanentError as exc:
        assert exc.code == "policy_invalid"
        return
    # What the daemon does with a policy next: its timings, and its detection script.
    timings = AgentConfig().timings(policy.settings)
    assert all(math.isfinite(v) for v in (timings.backup_interval, timings.policy_retry))
    if policy.detection is not None:
        try:
            DetectionScript.from_policy(policy.detection)
        except DetectionError as exc:
            assert exc.code == "policy_invalid"


# The authority's answers, through the real client over an in-memory transport.

CALLS: dict[str, Callable[[AuthorityClient], object]] = {
    "health": lambda c: c.health(),
    "deploy/policy": lambda c: c.fetch_policy("token", {"os": "linux"}),
    "deploy/register": lambda c: c.register("token", {"device_guid": "x"}),
    "device/policy": lambda c: c.device_policy("credential", {"os": "linux"}),
    "chunks/missing": lambda c: c.missing_chunks("credential", ["ab" * 32]),
    "packs": lambda c: c.put_pack("credential", "ab" * 32, [b"pack"], "index"),
    "chunks/get": lambda c: c.get_blob("credential", "ab" * 32),
    "chunks/fetch": lambda c: c.get_blobs("credential", ["ab" * 32]),
    "snapshots/commit": lambda c: c.commit_snapshot("credential", {"manifest_id": "x"}),
    "snapshots/list": lambda c: c.list_snapshots("credential"),
    "key/put": lambda c: c.put_key("credential", "a2V5"),
    "key/get": lambda c: c.get_key("credential"),
}

header_values = st.one_of(
    st.sampled_from(
        [
            b"1",
            b"60",
            b"99999999999999999999999",
            b"Wed, 21 Oct 2015 07:28:00 GMT",
            b"Wed, 21 Oct 2015 07:28:00 -0000",
            b"Fri, 31 Dec 9999 23:59:59 GMT",
            b"application/json",
            b"application/json; charset=utf-16",
            b"gzip",
            b"br",
            b"deflate",
        ]
    ),
    # Bytes a server or a proxy can put in a header line: anything but CR, LF and NUL.
    st.binary(max_size=30).map(lambda b: bytes(c for c in b if c not in b"\r\n\0")),
)
headers = st.lists(
    st.tuples(
        st.sampled_from([b"Retry-After", b"Content-Type", b"Content-Encoding", b"X-Other"]),
        header_values,
    ),
    max_size=3,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps({"error": v}).encode()),
    st.builds(
        lambda code, message: json.dumps({"error": {"code": code, "message": message}}).encode(),
        json_values,
        json_values,
    ),
)


class Answer:
    """What the in-memory authority answers next (set by each example)."""

    status = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body = b""


@pytest.fixture(scope="module")
def client() -> Iterator[AuthorityClient]:
    def handler(request: httpx.Request) -> httpx.Response:
        # A stream, as from the network: the client reads (and decodes) it itself.
        stream = httpx.ByteStream(Answer.body)
        return httpx.Response(Answer.status, headers=Answer.headers, stream=stream)

    with AuthorityClient("https://authority.test", transport=httpx.MockTransport(handler)) as built:
        yield built


@SETTINGS
@given(
    call=st.sampled_from(sorted(CALLS)),
    status=st.integers(min_value=100, max_value=599),
    answer_headers=headers,
    body=bodies,
)
def test_any_answer_of_the_authority_is_a_result_or_a_typed_error(
    client: AuthorityClient,
    call: str,
    status: int,
    answer_headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    Answer.status, Answer.headers, Answer.body = status, tuple(answer_headers), body
    try:
        CALLS[call](client)
    except TransientError as exc:
        # The lifecycle adds Retry-After to a time: it must be a number a date can take.
        assert exc.retry_after is None or 0 <= exc.retry_after <= MAX_RETRY_AFTER
    except PermanentError:
        pass


# A detection script's output.

KEYS = ["AGENT_USERNAME", "AGENT_USER_HOME", "C42_USERNAME", "C42_USER_HOME", "OTHER"]
output_lines = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda key, pad, value: f"{pad}{key}{pad}={value}",
        st.sampled_from(KEYS),
        st.sampled_from(["", " ", "\t", "\ufeff"]),
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(["/home/ann", "C:\\Users\\ann", "\\\\server\\share\\ann", "ann"]),
        ),
    ),
)
outputs = st.one_of(
    st.text(),
    st.lists(output_lines, max_size=6).flatmap(
        lambda lines: st.sampled_from(["\n", "\r\n", "\r"]).map(lambda sep: sep.join(lines))
    ),
)


@SETTINGS
@given(stdout=outputs)
def test_any_detection_output_is_a_user_none_or_a_detection_error(stdout: str) -> None:
    try:
        username, home = parse_output(stdout)
    except DetectionError as exc:
        assert exc.code in ("incomplete_output", "invalid_username", "invalid_home")
        return
    assert (username is None) == (home is None)
    assert username is None or (isinstance(username, str) and isinstance(home, str))


# The lifecycle's state file, as a damaged or hand-edited one may read.

state_bodies = st.one_of(
    st.dictionaries(st.text(max_size=12), json_values).map(lambda b: {**b, "version": 1}),
    st.dictionaries(
        st.sampled_from(
            [
                "phase",
                "step",
                "since",
                "next_attempt_at",
                "attempts",
                "last_backup",
                "facts",
                "resume_phase",
                "username",
                "user_home",
            ]
        ),
        json_values | st.sampled_from(["backing_up", "idle", "2024-01-01T00:00:00"]),
    ).map(lambda b: {**b, "version": 1}),
)


@pytest.fixture(scope="module")
def state_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@SETTINGS
@given(body=state_bodies | json_values, raw=st.none() | st.binary(max_size=64))
def test_any_state_file_is_a_state_or_a_state_error(
    state_folder: Path, body: Any, raw: bytes | None
) -> None:
    path = state_folder / "state.json"
    path.write_bytes(raw if raw is not None else json.dumps(body).encode())
    try:
        state = load_state(path)
    except StateError:
        return
    assert isinstance(state, State)
    assert isinstance(state.attempts, int) and isinstance(state.facts, dict)


# The authority's API, from its own OpenAPI document, in-process.


DEVICE_GUID = "11111111-2222-3333-4444-555555555555"


def asgi_request(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://authority") as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(send())


@pytest.fixture(scope="module")
def authority_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The authority's ASGI app over a data folder with an organization, its policy, and
    one registered device: the token, the credential and the admin key to reach past auth."""
    data = DataDir(tmp_path_factory.mktemp("schemathesis") / "authority")
    init_data(data, "127.0.0.1", 4285)
    with Admin(data) as admin:
        admin.org_create("Eng", "local", None, None)
        admin.policy_create("Eng", False, [])
        token = str(admin.policy_show("Eng")["token"])
    app = create_app(data)
    registered = asgi_request(
        app,
        "POST",
        "/api/v1/deploy/register",
        headers={"X-Deployment-Token": token},
        json={
            "device_guid": DEVICE_GUID,
            "hardware_id": "ab" * 32,
            "os": "linux",
            "username": "ann@example.com",
            "user_home": "/home/ann",
        },
    )
    assert registered.status_code == 200, registered.text
    app.state.fuzz_headers = {
        "X-Deployment-Token": token,
        "Authorization": f"Bearer {registered.json()['credential']}",
    }
    app.state.admin_headers = {"Authorization": f"Bearer {data.admin_key.read_text().strip()}"}
    try:
        yield app
    finally:
        app.state.db.close()


def assert_never_a_server_error(case: Any, response: Any) -> None:
    status = response.status_code
    where = f"{case.method} {case.formatted_path}"
    assert status < 500 or status == 503, f"{where}: HTTP {status}: {response.text[:300]}"
    if status == 503:
        retry_after = {k.lower(): v for k, v in response.headers.items()}.get("retry-after")
        assert retry_after, f"{where}: 503 without Retry-After: {response.text[:300]}"
        code = response.json()["error"]["code"]
        assert code != "internal_error", f"{where}: an unexpected error: {response.text[:300]}"


API_EXAMPLES = 40  # per operation: 14 operations, well under a minute in all


def test_the_authority_api_never_answers_a_server_error(authority_app: Any) -> None:
    """Every operation of the OpenAPI document, with generated valid and invalid input, as
    sent (mostly refused at the door) and with real credentials (reaching the handlers)."""
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", authority_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:
        real = (
            authority_app.state.admin_headers
            if "/admin/" in operation.path
            else authority_app.state.fuzz_headers
        )
        cases = st.one_of(
            [
                operation.as_strategy(mode, headers=fixed)
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                for fixed in (None, real)
            ]
        )

        @settings(
            max_examples=API_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases)
        def fuzz(case: Any) -> None:
            assert_never_a_server_error(case, case.call())

        fuzz()
