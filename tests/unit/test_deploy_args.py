"""The agent reads installer arguments in every form SCCM, Intune, Jamf and shells hand it."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.deploy_args import (
    KNOWN_KEYS,
    DeployArgs,
    parse_cp_args,
    parse_properties,
    read_properties_file,
    save,
)
from agent.errors import DeployArgsError, UsageError

URL = "https://host:4285"
TOKEN = "0fb12341-246b-448d-b07f-c6573ad5ad02"
SHA1 = "7746278a457e64737094c44eeb2bbc32357ece44"
SHA256 = "00112233445566778899aabbccddeeff" * 2
# Verbatim from the vendor's msiexec example, placeholder port included.
VENDOR_CP_ARGS = (
    "DEPLOYMENT_URL=https://host:4285&DEPLOYMENT_POLICY_TOKEN=0fb12341-246b-448d-b07f-c6573ad5ad02"
    "&SSL_WHITELIST=7746278a457e64737094c44eeb2bbc32357ece44&PROXY_URL=http://host:port/file.pac"
)


def cp(**values: str | None) -> str:
    """A CP_ARGS string: the required keys, changed, removed (None) or added by `values`."""
    pairs: dict[str, str | None] = {"DEPLOYMENT_URL": URL, "DEPLOYMENT_POLICY_TOKEN": TOKEN}
    pairs.update(values)
    return "&".join(f"{k}={v}" for k, v in pairs.items() if v is not None)


def colons(hex_digits: str) -> str:
    return ":".join(hex_digits[i : i + 2] for i in range(0, len(hex_digits), 2))


def refusal(text: str) -> DeployArgsError:
    with pytest.raises(DeployArgsError) as caught:
        parse_cp_args(text)
    return caught.value


# The vendor's own examples


def test_vendor_cp_args_with_placeholder_port_is_refused_naming_proxy_url() -> None:
    error = refusal(VENDOR_CP_ARGS)
    assert error.key == "PROXY_URL"
    assert "PROXY_URL" in str(error)
    assert "'port' is not a number" in str(error)


def test_vendor_cp_args_with_a_real_port_is_accepted_with_the_pac_warning() -> None:
    args = parse_cp_args(VENDOR_CP_ARGS.replace("host:port", "host:3128"))
    assert args.deployment_url == URL
    assert args.token == TOKEN
    assert args.ssl_whitelist == (SHA1,)
    assert args.proxy_url == "http://host:3128/file.pac"
    assert (args.silent, args.cloaked) == (True, False)
    assert len(args.warnings) == 1
    assert args.warnings[0].startswith("PROXY_URL 'http://host:3128/file.pac' is a PAC file")
    assert args.warnings[0].endswith("does not evaluate yet; connecting directly.")


def test_the_msiexec_fragment_pasted_with_its_cp_args_prefix_and_quotes_is_accepted() -> None:
    assert parse_cp_args(f'CP_ARGS="{cp()}"') == DeployArgs(URL, TOKEN)


@pytest.mark.parametrize(
    "text",
    [
        f"  {cp()}\n",
        f'"{cp()}"',
        f"'{cp()}'",
        f"cp_args={cp()}",
        f"CP_ARGS='{cp()}'",
        f"\ufeff{cp()}",
        f"&&{cp()}&&&",
        cp().replace("&", "& "),
        cp().replace("DEPLOYMENT_URL", "deployment_url").replace("TOKEN", "Token"),
        f"DEPLOYMENT_URL = {URL} &DEPLOYMENT_POLICY_TOKEN= {TOKEN}",
        f"DEPLOYMENT_URL=\"{URL}\"&DEPLOYMENT_POLICY_TOKEN='{TOKEN}'",
    ],
)
def test_cp_args_tolerate_what_admins_paste(text: str) -> None:
    assert parse_cp_args(text) == DeployArgs(URL, TOKEN)


def test_pac_url_keeps_every_equals_sign_and_question_mark() -> None:
    args = parse_cp_args(cp(PROXY_URL="http://wpad.corp:80/proxy.pac?site=a=b"))
    assert args.proxy_url == "http://wpad.corp:80/proxy.pac?site=a=b"


# deploy.properties as Jamf and Munki write it

JAMF_PROPERTIES = (
    "\ufeff# Written by the Jamf policy 'Holdfast deploy'\r\n"
    "\r\n"
    f"DEPLOYMENT_URL = {URL}\r\n"
    "! a Java-style comment\r\n"
    f"  DEPLOYMENT_POLICY_TOKEN={TOKEN}  \r\n"
    "   \r\n"
    "CP_SILENT=false\r\n"
    "DEVICE_CLOAKED = TRUE\r\n"
    f"SSL_WHITELIST={SHA1.upper()}\r\n"
)


def test_jamf_deploy_properties_with_comments_blank_lines_crlf_and_bom_is_accepted() -> None:
    args = parse_properties(JAMF_PROPERTIES)
    assert args == DeployArgs(URL, TOKEN, (SHA1,), silent=False, cloaked=True)
    assert args.warnings == ()


def test_deploy_properties_with_old_mac_line_ends_is_accepted() -> None:
    assert parse_properties(JAMF_PROPERTIES.replace("\r\n", "\r")) == parse_properties(
        JAMF_PROPERTIES
    )


def test_both_forms_of_the_same_arguments_are_equal() -> None:
    text = cp(SSL_WHITELIST=SHA1, CP_SILENT="false", DEVICE_CLOAKED="true")
    assert parse_cp_args(text) == parse_properties(JAMF_PROPERTIES)


# Values, normalised


def test_fingerprints_in_any_case_with_colons_sha1_and_sha256_mixed_are_normalised() -> None:
    given_list = f"{colons(SHA1).upper()}, {SHA256.upper()} ,{colons(SHA256)},{SHA1}"
    assert parse_cp_args(cp(SSL_WHITELIST=given_list)).ssl_whitelist == (SHA1, SHA256)


def test_fingerprint_copied_from_the_windows_certificate_dialog_is_accepted() -> None:
    # Groups of two digits, and the invisible mark the dialog puts in front.
    copied = "\u200e" + " ".join(SHA1[i : i + 2] for i in range(0, 40, 2))
    assert parse_cp_args(cp(SSL_WHITELIST=copied)).ssl_whitelist == (SHA1,)


def test_empty_ssl_whitelist_means_no_pins() -> None:
    assert parse_cp_args(cp(SSL_WHITELIST="")).ssl_whitelist == ()


@pytest.mark.parametrize(
    ("given_url", "normal"),
    [
        ("HTTPS://Backup.Example.COM:4285/", "https://backup.example.com:4285"),
        ("https://host", "https://host"),
        ("https://host:04285", "https://host:4285"),
        ("https://10.0.0.5:4285", "https://10.0.0.5:4285"),
        ("https://[2001:DB8:0:0::1]:4285", "https://[2001:db8::1]:4285"),
        ("https://bäckup.example.com", "https://xn--bckup-gra.example.com"),
    ],
)
def test_deployment_url_is_normalised(given_url: str, normal: str) -> None:
    assert parse_cp_args(cp(DEPLOYMENT_URL=given_url)).deployment_url == normal


@pytest.mark.parametrize("spelling", [TOKEN.upper(), f"{{{TOKEN}}}", f"{{{TOKEN.upper()}}}"])
def test_token_in_upper_case_or_braces_is_normalised(spelling: str) -> None:
    assert parse_cp_args(cp(DEPLOYMENT_POLICY_TOKEN=spelling)).token == TOKEN


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("0", False),
    ],
)
def test_booleans_accept_true_false_yes_no_one_zero(text: str, value: bool) -> None:
    args = parse_cp_args(cp(CP_SILENT=text, DEVICE_CLOAKED=text))
    assert (args.silent, args.cloaked) == (value, value)


def test_silent_and_visible_by_default() -> None:
    args = parse_cp_args(cp(CP_SILENT="", DEVICE_CLOAKED=""))
    assert (args.silent, args.cloaked) == (True, False)


def test_a_key_repeated_with_the_same_value_is_accepted() -> None:
    assert parse_cp_args(f"{cp()}&deployment_url={URL}") == DeployArgs(URL, TOKEN)


def test_unknown_keys_are_warned_about_once_by_name_never_by_value() -> None:
    args = parse_cp_args(f"{cp()}&Backup_Set=hunter2&BACKUP_SET=hunter3&FOO")
    assert args == DeployArgs(URL, TOKEN)
    assert len(args.warnings) == 2
    assert "'BACKUP_SET'" in args.warnings[0]
    assert "'FOO'" in args.warnings[1]
    assert not any("hunter" in w for w in args.warnings)


# Refusals: each names its key, none shows the token

REFUSALS = [
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": None}, "required"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": ""}, "required"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "http://host:4285"}, "only https:// is accepted"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "ftp://host"}, "only https://"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "host:4285"}, "not a URL"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://"}, "no host"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://:4285"}, "no host"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://host:0"}, "port"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://host:65536"}, "port"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://host:4_285"}, "port"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://admin:pw@host"}, "user name or password"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://host:4285/console"}, "path"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://host?x=1"}, "query"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://host/#top"}, "fragment"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://[2001:db8::1"}, r"'\[' without '\]'"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://[nope]:4285"}, "not an IPv6 address"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://2001:db8::1"}, "brackets"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://ho st"}, "space"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://-host-.example.com"}, "not a valid host"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://256.0.0.1"}, "not an IPv4 address"),
    ("DEPLOYMENT_URL", {"DEPLOYMENT_URL": "https://h\x00ost"}, "control character"),
    ("DEPLOYMENT_POLICY_TOKEN", {"DEPLOYMENT_POLICY_TOKEN": None}, "required"),
    ("DEPLOYMENT_POLICY_TOKEN", {"DEPLOYMENT_POLICY_TOKEN": ""}, "required"),
    ("DEPLOYMENT_POLICY_TOKEN", {"DEPLOYMENT_POLICY_TOKEN": TOKEN[:-1]}, "not a UUID"),
    ("DEPLOYMENT_POLICY_TOKEN", {"DEPLOYMENT_POLICY_TOKEN": TOKEN.replace("-", "")}, "UUID"),
    ("DEPLOYMENT_POLICY_TOKEN", {"DEPLOYMENT_POLICY_TOKEN": f"{{{TOKEN}"}, "not a UUID"),
    ("DEPLOYMENT_POLICY_TOKEN", {"DEPLOYMENT_POLICY_TOKEN": f"{TOKEN}\x1b"}, "control"),
    ("SSL_WHITELIST", {"SSL_WHITELIST": ",,"}, "lists no fingerprint"),
    ("SSL_WHITELIST", {"SSL_WHITELIST": f"{SHA1},abc"}, "'abc' is not a SHA-1"),
    ("SSL_WHITELIST", {"SSL_WHITELIST": SHA1 + "0"}, "SHA-256"),
    ("SSL_WHITELIST", {"SSL_WHITELIST": SHA1[:-1] + "g"}, "fingerprint"),
    ("SSL_WHITELIST", {"SSL_WHITELIST": f"{SHA1}\t{SHA256}"}, "control character"),
    ("PROXY_URL", {"PROXY_URL": "socks5://proxy:1080"}, "only http:// and https://"),
    ("PROXY_URL", {"PROXY_URL": "proxy:3128"}, "not a URL"),
    ("PROXY_URL", {"PROXY_URL": "http://:3128"}, "no host"),
    ("PROXY_URL", {"PROXY_URL": "http://proxy:99999"}, "port"),
    ("PROXY_URL", {"PROXY_URL": "http://proxy:3128/squid"}, "path"),
    ("PROXY_URL", {"PROXY_URL": "http://proxy:3128/?site=a"}, "query"),
    ("PROXY_URL", {"PROXY_URL": "http://proxy/file.pac#x"}, "fragment"),
    ("PROXY_URL", {"PROXY_URL": "http://me:pw@proxy:3128"}, "user name or password"),
    ("CP_SILENT", {"CP_SILENT": "maybe"}, "'maybe' is not true or false"),
    ("DEVICE_CLOAKED", {"DEVICE_CLOAKED": "2"}, "not true or false"),
    ("DEVICE_CLOAKED", {"DEVICE_CLOAKED": "tr\x00ue"}, "control character"),
]


@pytest.mark.parametrize(("key", "values", "problem"), REFUSALS)
def test_refusal_names_its_key_and_the_problem(
    key: str, values: dict[str, str | None], problem: str
) -> None:
    error = refusal(cp(**values))
    assert error.key == key
    assert str(error).startswith(f"installer argument {key}: ")
    assert error.exit_code == 2
    assert re.search(problem, str(error))


@pytest.mark.parametrize("values", [values for _, values, _ in REFUSALS])
def test_refusal_never_shows_the_token(values: dict[str, str | None]) -> None:
    message = str(refusal(cp(**values))).lower()
    assert TOKEN.replace("-", "")[:8] not in message.replace("-", "")


def test_http_deployment_url_is_refused_saying_only_https_is_accepted() -> None:
    error = refusal(cp(DEPLOYMENT_URL="http://host:4285"))
    assert "only https:// is accepted" in str(error)


def test_a_key_repeated_with_another_value_is_refused_naming_it() -> None:
    error = refusal(f"{cp()}&ssl_whitelist={SHA1}&SSL_WHITELIST={SHA256}")
    assert error.key == "SSL_WHITELIST"
    assert "twice" in str(error)
    assert SHA1 not in str(error)


@pytest.mark.parametrize(
    "text",
    [
        f"{cp()}&CP_SILENT=&CP_SILENT=false",  # an MDM template's empty key, then the value
        f"CP_SILENT=&{cp()}&CP_SILENT=false",
        f"{cp()}&CP_SILENT=false&CP_SILENT=",  # and the other way round
    ],
)
def test_an_empty_value_beside_a_real_one_is_no_conflict(text: str) -> None:
    # An empty value counts as an absent key (contract, installer arguments).
    assert parse_cp_args(text).silent is False


def test_two_different_tokens_are_refused_without_showing_either() -> None:
    other = "11111111-2222-4333-8444-555555555555"
    error = refusal(f"{cp()}&DEPLOYMENT_POLICY_TOKEN={other}")
    assert error.key == "DEPLOYMENT_POLICY_TOKEN"
    assert TOKEN not in str(error)
    assert other not in str(error)


@pytest.mark.parametrize(
    "values",
    [
        {"DEPLOYMENT_URL": TOKEN},
        {"DEPLOYMENT_URL": f"https://host:{TOKEN}"},
        {"DEPLOYMENT_URL": f"https://[{TOKEN}]"},
        {"SSL_WHITELIST": TOKEN.upper()},
        {"PROXY_URL": f"http://proxy:3128/{TOKEN}"},
        {"CP_SILENT": f"{{{TOKEN}}}"},
        {"DEVICE_CLOAKED": TOKEN},
    ],
)
def test_token_pasted_into_another_key_is_not_shown_in_the_refusal(
    values: dict[str, str],
) -> None:
    assert TOKEN not in str(refusal(cp(**values))).lower()


def test_a_secret_that_is_not_a_uuid_is_never_shown() -> None:
    secret = "hunter2-not-a-uuid"
    for values in (
        {"DEPLOYMENT_POLICY_TOKEN": secret},
        {"DEPLOYMENT_POLICY_TOKEN": secret, "DEPLOYMENT_URL": secret},
        {"DEPLOYMENT_POLICY_TOKEN": secret.upper(), "DEPLOYMENT_URL": f"https://h:{secret}"},
    ):
        assert secret not in str(refusal(cp(**values))).lower()


def test_a_token_given_as_an_unknown_key_is_not_shown_in_the_warning() -> None:
    args = parse_cp_args(f"{cp()}&{TOKEN.upper()}")
    assert len(args.warnings) == 1
    assert TOKEN not in args.warnings[0].lower()


# The token stays out of repr, str and logs


def test_repr_and_str_show_the_token_tag_not_the_token() -> None:
    args = parse_cp_args(cp(SSL_WHITELIST=SHA1))
    tag = hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    assert args.token_tag() == tag
    for shown in (repr(args), str(args), f"{args}", f"{args!r}", repr([args])):
        assert TOKEN not in shown
        assert tag in shown
        assert URL in shown


def test_different_tokens_have_different_tags() -> None:
    other = DeployArgs(URL, "11111111-2222-4333-8444-555555555555")
    assert DeployArgs(URL, TOKEN).token_tag() != other.token_tag()


# deploy.properties written back


def test_to_properties_round_trips_every_key() -> None:
    args = parse_cp_args(
        cp(SSL_WHITELIST=f"{SHA1},{SHA256}", PROXY_URL="http://p:8080/x.pac?a=b", CP_SILENT="0")
    )
    text = args.to_properties()
    assert f"DEPLOYMENT_POLICY_TOKEN={TOKEN}\n" in text
    assert "CP_SILENT=false\n" in text
    assert "DEVICE_CLOAKED=false\n" in text
    again = parse_properties(text)
    assert again == args
    assert again.warnings == args.warnings  # only the PAC warning, not the comment lines


def test_warnings_do_not_make_arguments_unequal() -> None:
    assert parse_cp_args(f"{cp()}&EXTRA=1") == parse_cp_args(cp())


PORTS = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
HOSTS = st.sampled_from(
    ["host", "backup.example.com", "10.0.0.5", "[2001:db8::1]", "xn--bckup-gra.example.com"]
)
PINS = st.lists(
    st.one_of(st.binary(min_size=20, max_size=20), st.binary(min_size=32, max_size=32)).map(
        bytes.hex
    ),
    unique=True,
    max_size=3,
).map(tuple)
PROXIES = st.one_of(
    st.none(),
    st.builds(lambda host, port: f"http://{host}{port}", HOSTS, PORTS),
    st.just("https://wpad.corp/proxy.pac?a=b=c"),
)
ACCEPTED = st.builds(
    DeployArgs,
    deployment_url=st.builds(lambda host, port: f"https://{host}{port}", HOSTS, PORTS),
    token=st.uuids().map(str),
    ssl_whitelist=PINS,
    proxy_url=PROXIES,
    silent=st.booleans(),
    cloaked=st.booleans(),
)


@given(ACCEPTED)
def test_any_accepted_arguments_round_trip_through_deploy_properties(args: DeployArgs) -> None:
    assert parse_properties(args.to_properties()) == args


# Any input: accepted or refused, never a crash

KEYS = st.sampled_from([*KNOWN_KEYS, *(k.lower() for k in KNOWN_KEYS), "FOO", "", "CP_ARGS"])
VALUES = st.one_of(
    st.sampled_from(
        [URL, TOKEN, SHA1, "true", "0", "", "http://p:1/a.pac?x=y", "https://[::1]:", "{", '"']
    ),
    st.text(alphabet="htps:/[]{}.,=&?#@'\"0aF \t\r\n\x00-", max_size=20),
)
SOUP = st.lists(st.one_of(st.tuples(KEYS, VALUES).map("=".join), VALUES, KEYS), max_size=8)


def accepted_or_refused(parse: object, text: str) -> None:
    assert callable(parse)
    try:
        result = parse(text)
    except UsageError as exc:
        assert TOKEN not in str(exc).lower()
        return
    assert isinstance(result, DeployArgs)
    assert not any(TOKEN in w.lower() for w in result.warnings)
    assert parse_properties(result.to_properties()) == result


@given(st.text())
def test_any_text_is_accepted_or_refused_by_both_parsers(text: str) -> None:
    accepted_or_refused(parse_cp_args, text)
    accepted_or_refused(parse_properties, text)


@given(SOUP)
def test_any_soup_of_keys_and_values_is_accepted_or_refused(parts: list[str]) -> None:
    accepted_or_refused(parse_cp_args, "&".join(parts))
    accepted_or_refused(parse_properties, "\n".join(parts))


# Files


def test_save_writes_mode_0600_leaves_no_temp_file_and_reads_back(tmp_path: Path) -> None:
    args = parse_cp_args(cp(SSL_WHITELIST=SHA1, DEVICE_CLOAKED="yes"))
    path = tmp_path / "conf" / "deploy.properties"
    save(args, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["deploy.properties"]
    assert read_properties_file(path) == args


def test_save_replaces_an_earlier_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.properties"
    save(DeployArgs("https://old", TOKEN), path)
    save(DeployArgs(URL, TOKEN), path)
    assert read_properties_file(path).deployment_url == URL


def test_missing_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "deploy.properties"
    with pytest.raises(UsageError, match="nowhere") as caught:
        read_properties_file(path)
    assert caught.value.exit_code == 2


def test_a_folder_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=str(tmp_path)):
        read_properties_file(tmp_path)


def test_a_file_not_in_utf8_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "deploy.properties"
    path.write_bytes(cp().encode("utf-16"))
    with pytest.raises(UsageError, match=r"deploy\.properties is not UTF-8"):
        read_properties_file(path)


def test_a_refusal_from_a_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.properties"
    path.write_text(f"DEPLOYMENT_URL=http://host\nDEPLOYMENT_POLICY_TOKEN={TOKEN}\n")
    with pytest.raises(DeployArgsError) as caught:
        read_properties_file(path)
    assert caught.value.key == "DEPLOYMENT_URL"
    assert str(path) in str(caught.value)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("proxy", "connects_through"),
    [
        ("http://proxy.example.com:3128", "http://proxy.example.com:3128"),
        ("http://proxy.example.com:8080/proxy.pac", None),
        ("https://wpad.example.com/wpad.dat", None),
        ("http://proxy.example.com:8080/proxy.pac?site=2", None),
    ],
)
def test_a_pac_file_is_not_used_as_a_proxy(proxy: str, connects_through: str | None) -> None:
    args = parse_cp_args(
        "DEPLOYMENT_URL=https://h:4285&DEPLOYMENT_POLICY_TOKEN=0fb12341-246b-448d-b07f-c6573ad5ad02"
        f"&PROXY_URL={proxy}"
    )
    assert args.connection_proxy == connects_through
