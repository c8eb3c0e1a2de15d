"""Installer arguments in every form administrators paste into SCCM, Intune, Jamf or a shell."""

from __future__ import annotations

import shlex
import uuid

from hypothesis import given
from hypothesis import strategies as st

from authority.install_args import MSI_NAME, InstallArgs

URL = "https://backup.example.com:4285"
TOKEN = "6f1c2a9e-3b7d-4e2f-9a41-0c5d8e7b1f23"
SHA1_CURRENT = "a" * 40
SHA1_NEXT = "0123456789abcdef0123456789abcdef01234567"


def parse_properties(text: str) -> dict[str, str]:
    """Read a deploy.properties file the way Jamf/Munki scripts write it."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"line {line!r} is not KEY=VALUE"
            out[key] = value
    return out


def test_cp_args_has_the_exact_code42_format() -> None:
    args = InstallArgs(URL, TOKEN, (SHA1_CURRENT,))
    assert args.cp_args == (
        f"DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN={TOKEN}&SSL_WHITELIST={SHA1_CURRENT}"
    )


def test_several_pins_are_comma_joined_current_first() -> None:
    args = InstallArgs(URL, TOKEN, (SHA1_CURRENT, SHA1_NEXT))
    assert args.cp_args.endswith(f"&SSL_WHITELIST={SHA1_CURRENT},{SHA1_NEXT}")


def test_without_pins_there_is_no_ssl_whitelist_at_all() -> None:
    args = InstallArgs(URL, TOKEN, ())
    assert args.cp_args == f"DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN={TOKEN}"
    assert "SSL_WHITELIST" not in args.msiexec
    assert "SSL_WHITELIST" not in args.deploy_properties
    assert "SSL_WHITELIST" not in args.linux


def test_msiexec_line_quotes_cp_args_and_installs_silently() -> None:
    args = InstallArgs(URL, TOKEN, (SHA1_CURRENT,))
    line = args.msiexec
    assert line.startswith(f"msiexec /i {MSI_NAME} ")
    assert f'CP_ARGS="{args.cp_args}"' in line
    assert "CP_SILENT=true" in line
    assert "DEVICE_CLOAKED=false" in line
    assert "/qn" in line.split()


def test_deploy_properties_parse_back_to_the_same_values() -> None:
    args = InstallArgs(URL, TOKEN, (SHA1_CURRENT, SHA1_NEXT))
    assert parse_properties(args.deploy_properties) == {
        "DEPLOYMENT_URL": URL,
        "DEPLOYMENT_POLICY_TOKEN": TOKEN,
        "SSL_WHITELIST": f"{SHA1_CURRENT},{SHA1_NEXT}",
        "CP_SILENT": "true",
        "DEVICE_CLOAKED": "false",
    }


def test_deploy_properties_is_one_key_value_a_line_ending_in_a_newline() -> None:
    text = InstallArgs(URL, TOKEN, (SHA1_CURRENT,)).deploy_properties
    assert text.endswith("\n")
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5
    assert all(line.count("=") >= 1 and "&" not in line for line in lines)


def test_linux_line_single_quotes_the_arguments_for_the_shell() -> None:
    args = InstallArgs(URL, TOKEN, (SHA1_CURRENT,))
    assert f"--deploy-args '{args.cp_args}'" in args.linux
    # What the shell hands the installer is the cp_args string, `&` and all.
    assert shlex.split(args.linux) == [
        "sudo",
        "holdfast",
        "install",
        "--deploy-args",
        args.cp_args,
    ]


def test_as_dict_has_the_four_documented_forms() -> None:
    args = InstallArgs(URL, TOKEN, (SHA1_CURRENT,))
    assert args.as_dict() == {
        "cp_args": args.cp_args,
        "msiexec": args.msiexec,
        "deploy_properties": args.deploy_properties,
        "linux": args.linux,
    }


def test_the_token_appears_exactly_once_in_each_form() -> None:
    for text in InstallArgs(URL, TOKEN, (SHA1_CURRENT,)).as_dict().values():
        assert text.count(TOKEN) == 1


hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,15}){0,3}", fullmatch=True)
ipv4 = st.ip_addresses(v=4).map(str)
sha1s = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)


@given(
    host=st.one_of(hostnames, ipv4),
    port=st.integers(min_value=1, max_value=65535),
    token=st.uuids(),
    pins=st.lists(sha1s, max_size=3),
)
def test_cp_args_splits_back_into_the_inputs(
    host: str, port: int, token: uuid.UUID, pins: list[str]
) -> None:
    url = f"https://{host}:{port}"
    args = InstallArgs(url, str(token), tuple(pins))
    parsed = dict(part.split("=", 1) for part in args.cp_args.split("&"))
    expected = {"DEPLOYMENT_URL": url, "DEPLOYMENT_POLICY_TOKEN": str(token)}
    if pins:
        expected["SSL_WHITELIST"] = ",".join(pins)
    assert parsed == expected
    assert parse_properties(args.deploy_properties) == {
        **expected,
        "CP_SILENT": "true",
        "DEVICE_CLOAKED": "false",
    }
