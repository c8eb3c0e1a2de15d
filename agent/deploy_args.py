"""Installer arguments (CONTRACT.md section 2): read, checked, normalised and persisted.

The same keys arrive three ways: the `&`-joined msiexec `CP_ARGS` string (also given to
`holdfast run --deploy-args` and Linux `install.sh -d`), and a `deploy.properties` file as
Jamf and Munki write it. Both parsers feed one validation, so a value accepted in one form is
accepted in the other and normalised the same way.

The policy token is a secret. No error message, warning or repr built here contains it:
anything that looks like a UUID, or holds the token's value, is left out of messages, and a
DeployArgs shows `token_tag()` in place of the token.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import DeployArgsError, UsageError
from agent.pinning import normalise_fingerprint
from agent.state import write_atomic

DEPLOYMENT_URL = "DEPLOYMENT_URL"
DEPLOYMENT_POLICY_TOKEN = "DEPLOYMENT_POLICY_TOKEN"  # noqa: S105 (the key's name)
SSL_WHITELIST = "SSL_WHITELIST"
PROXY_URL = "PROXY_URL"
CP_SILENT = "CP_SILENT"
DEVICE_CLOAKED = "DEVICE_CLOAKED"
# Also the order deploy.properties is written in.
KNOWN_KEYS = (
    DEPLOYMENT_URL,
    DEPLOYMENT_POLICY_TOKEN,
    SSL_WHITELIST,
    PROXY_URL,
    CP_SILENT,
    DEVICE_CLOAKED,
)

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_LINE_END = re.compile(r"\r\n|\r|\n")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
# The Windows certificate dialog puts an invisible mark before a copied thumbprint.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200e\u200f\ufeff"))
_HIDDEN = "<not shown: it looks like a token>"


@dataclass(frozen=True, repr=False)
class DeployArgs:
    """Installer arguments as accepted: validated and normalised."""

    deployment_url: str
    token: str
    ssl_whitelist: tuple[str, ...] = ()
    proxy_url: str | None = None
    silent: bool = True
    cloaked: bool = False
    # How the arguments were given, not what they say: arguments that configure the agent the
    # same way compare equal, so "did the deployment change?" is a plain ==.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def connection_proxy(self) -> str | None:
        """The proxy to connect through: none for a PAC file, which is not evaluated yet."""
        if self.proxy_url is None:
            return None
        # An accepted proxy is reduced to scheme://host:port; only a PAC URL keeps a path.
        after_scheme = self.proxy_url.partition("://")[2]
        return None if "/" in after_scheme else self.proxy_url

    def token_tag(self) -> str:
        """Tells tokens apart in logs and status output without revealing them."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:8]

    def to_properties(self) -> str:
        """The deploy.properties text of every accepted key, as `parse_properties` reads it."""
        lines = [
            "# Holdfast installer arguments. This file holds the policy token:",
            "# keep it readable by the service account only.",
            f"{DEPLOYMENT_URL}={self.deployment_url}",
            f"{DEPLOYMENT_POLICY_TOKEN}={self.token}",
        ]
        if self.ssl_whitelist:
            lines.append(f"{SSL_WHITELIST}={','.join(self.ssl_whitelist)}")
        if self.proxy_url is not None:
            lines.append(f"{PROXY_URL}={self.proxy_url}")
        lines.append(f"{CP_SILENT}={'true' if self.silent else 'false'}")
        lines.append(f"{DEVICE_CLOAKED}={'true' if self.cloaked else 'false'}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        # A DeployArgs logged or printed by accident must not leak the token.
        return (
            f"DeployArgs(deployment_url={self.deployment_url!r}, token=<tag {self.token_tag()}>, "
            f"ssl_whitelist={self.ssl_whitelist!r}, proxy_url={self.proxy_url!r}, "
            f"silent={self.silent!r}, cloaked={self.cloaked!r}, warnings={self.warnings!r})"
        )


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str  # lowercase; an IPv6 address in brackets
    port: str  # "" when absent, else digits without leading zeros
    rest: str  # path, query and fragment as given

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port else "")


class _Checker:
    """The validation both input forms share; knows the token's spellings to keep them out."""

    def __init__(self, secrets: list[str], where: str) -> None:
        self.secrets = [s.lower() for s in secrets if s]
        self.where = where

    def show(self, fragment: str) -> str:
        """`fragment` quoted for a message, or a placeholder when it may be or hold the token."""
        folded = fragment.lower()
        if _UUID.search(fragment) or any(s in folded for s in self.secrets):
            return _HIDDEN
        if len(fragment) > 80:
            fragment = fragment[:77] + "..."
        # repr: escapes anything unprintable, so a message stays one line in the log.
        return repr(fragment)

    def refuse(self, key: str, problem: str) -> DeployArgsError:
        return DeployArgsError(key, problem + self.where)

    def scheme(self, key: str, value: str, example: str) -> tuple[str, str]:
        """The URL's scheme, lowercase, and what follows its `://`."""
        if any(c.isspace() for c in value):
            raise self.refuse(key, "contains a space; a URL has none")
        scheme, sep, rest = value.partition("://")
        scheme = scheme.lower()
        if not sep or not _SCHEME.fullmatch(scheme):
            raise self.refuse(key, f"{self.show(value)} is not a URL like {example}")
        return scheme, rest

    def authority(self, key: str, scheme: str, rest: str) -> _Url:
        """The host and port after `scheme://`, checked, and the rest of the URL."""
        cut = re.match(r"[^/?#]*", rest)
        netloc = cut.group() if cut else ""
        tail = rest[len(netloc) :]
        if "@" in netloc:
            # Not shown: what precedes '@' is a user name and maybe a password.
            raise self.refuse(key, "holds a user name or password (before '@'), not accepted")
        if netloc.startswith("["):
            literal, bracket, after = netloc[1:].partition("]")
            if not bracket:
                raise self.refuse(key, "has a '[' without ']' around its IPv6 address")
            host = self.ipv6(key, literal)
            if after and not after.startswith(":"):
                raise self.refuse(key, f"has {self.show(after)} after its IPv6 address")
            port = after[1:]
        else:
            name, _, port = netloc.partition(":")
            if ":" in port:
                raise self.refuse(key, "has an IPv6 address, which must be in brackets: [::1]")
            host = self.hostname(key, name)
        return _Url(scheme, host, self.port(key, port), tail)

    def ipv6(self, key: str, literal: str) -> str:
        try:
            address = ipaddress.IPv6Address(literal)
        except ValueError:
            raise self.refuse(key, f"{self.show(literal)} is not an IPv6 address") from None
        if address.scope_id is not None:
            raise self.refuse(key, "has an IPv6 zone (%...), which a server address cannot use")
        return f"[{address.compressed}]"

    def hostname(self, key: str, name: str) -> str:
        if not name:
            raise self.refuse(key, "has no host name")
        if not name.isascii():
            # The DNS and the server's certificate know the name in its xn-- form.
            try:
                name = name.encode("idna").decode("ascii")
            except UnicodeError:
                raise self.refuse(key, f"host {self.show(name)} is not a valid name") from None
        host = name.lower()
        labels = host.split(".")
        if all(label.isdigit() for label in labels):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise self.refuse(key, f"{self.show(host)} is not an IPv4 address") from None
        elif len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise self.refuse(key, f"host {self.show(host)} is not a valid host name")
        return host

    def port(self, key: str, text: str) -> str:
        if not text:
            return ""  # "https://host:" is the default port, as RFC 3986 reads it
        if not (len(text) <= 5 and text.isascii() and text.isdigit()) or not (
            1 <= int(text) <= 65535
        ):
            raise self.refuse(key, f"port {self.show(text)} is not a number from 1 to 65535")
        return str(int(text))

    def deployment_url(self, value: str) -> str:
        key = DEPLOYMENT_URL
        scheme, rest = self.scheme(key, value, "https://host:4285")
        if scheme == "http":
            raise self.refuse(
                key, "uses http://; only https:// is accepted, so the token never travels in clear"
            )
        if scheme != "https":
            raise self.refuse(key, "only https:// is accepted, as in https://host:4285")
        url = self.authority(key, scheme, rest)
        if url.rest not in ("", "/"):
            raise self.refuse(
                key, "has a path, query or fragment; give only https://host:port of the server"
            )
        return url.origin

    def token(self, value: str) -> str:
        # Braces: Windows tools (PowerShell's [guid], the registry) write a GUID as {...}.
        inner = value[1:-1] if value.startswith("{") and value.endswith("}") else value
        if not _UUID.fullmatch(inner):
            raise self.refuse(
                DEPLOYMENT_POLICY_TOKEN,
                "is not a UUID (8-4-4-4-12 hex digits, as `holdfast-authority policy show` "
                "prints it); the value is not shown as it may still be a secret",
            )
        return inner.lower()

    def whitelist(self, value: str) -> tuple[str, ...]:
        pins: list[str] = []
        for entry in value.split(","):
            # Spaces inside too: certificate dialogs show a thumbprint in groups of two digits.
            digits = "".join(entry.translate(_INVISIBLE).split())
            if not digits:
                continue
            try:
                pin = normalise_fingerprint(digits)
            except ValueError:
                raise self.refuse(
                    SSL_WHITELIST,
                    f"{self.show(entry.strip())} is not a SHA-1 (40 hex digits) or "
                    "SHA-256 (64 hex digits) fingerprint",
                ) from None
            if pin not in pins:
                pins.append(pin)
        if not pins:
            raise self.refuse(
                SSL_WHITELIST, "lists no fingerprint; give one or more, or leave the key out"
            )
        return tuple(pins)

    def proxy(self, value: str) -> tuple[str, bool]:
        """The proxy URL, normalised, and whether it is a PAC file rather than a proxy."""
        key = PROXY_URL
        scheme, rest = self.scheme(key, value, "http://host:port")
        if scheme not in ("http", "https"):
            raise self.refuse(key, "only http:// and https:// proxies are accepted")
        url = self.authority(key, scheme, rest)
        if "#" in url.rest:
            raise self.refuse(key, "has a fragment (#...); a proxy URL has none")
        path = url.rest.partition("?")[0].lower()
        # wpad.dat is the name WPAD gives the same PAC file.
        if path.endswith(".pac") or path.rpartition("/")[2] == "wpad.dat":
            return url.origin + url.rest, True
        if url.rest not in ("", "/"):
            raise self.refuse(
                key, "has a path or query; a proxy is http://host:port, a path only names a .pac"
            )
        return url.origin, False

    def boolean(self, key: str, value: str) -> bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise self.refuse(key, f"{self.show(value)} is not true or false (yes/no, 1/0 also do)")


def _accept(pairs: list[tuple[str, str]], where: str = "") -> DeployArgs:
    """DeployArgs from (KEY, value) pairs, keys upper case and values stripped, in given order."""
    check = _Checker([v for k, v in pairs if k == DEPLOYMENT_POLICY_TOKEN], where)
    given: dict[str, str] = {}
    warnings: list[str] = []
    for key, value in pairs:
        if key not in KNOWN_KEYS:
            # An unknown key is never a failure (the contract), and its value is never shown.
            sentence = (
                f"Installer argument {check.show(key)} is not one this agent knows; it was ignored."
            )
            if sentence not in warnings:
                warnings.append(sentence)
            continue
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise check.refuse(key, "contains a control character (a line break, tab or NUL)")
        if not value:
            # An empty value counts as an absent key (MDM templates leave unused keys
            # empty): it neither conflicts with a value given elsewhere nor overrides it.
            given.setdefault(key, value)
            continue
        if given.get(key, "") not in ("", value):
            raise check.refuse(key, "is given twice with different values; give it once")
        given[key] = value

    url = given.get(DEPLOYMENT_URL, "")
    if not url:
        raise check.refuse(DEPLOYMENT_URL, "is required: https://host:port of the server")
    token = given.get(DEPLOYMENT_POLICY_TOKEN, "")
    if not token:
        raise check.refuse(DEPLOYMENT_POLICY_TOKEN, "is required: the deployment policy's token")
    deployment_url = check.deployment_url(url)
    token = check.token(token)
    # An empty value means the key is absent: MDM templates leave unused keys empty.
    whitelist = given.get(SSL_WHITELIST, "")
    pins = check.whitelist(whitelist) if whitelist else ()
    proxy_text = given.get(PROXY_URL, "")
    proxy, is_pac = check.proxy(proxy_text) if proxy_text else (None, False)
    if is_pac:
        warnings.append(
            f"{PROXY_URL} {check.show(proxy_text)} is a PAC file, which this agent does not "
            "evaluate yet; connecting directly."
        )
    silent = given.get(CP_SILENT, "")
    cloaked = given.get(DEVICE_CLOAKED, "")
    return DeployArgs(
        deployment_url=deployment_url,
        token=token,
        ssl_whitelist=pins,
        proxy_url=proxy,
        silent=check.boolean(CP_SILENT, silent) if silent else True,
        cloaked=check.boolean(DEVICE_CLOAKED, cloaked) if cloaked else False,
        warnings=tuple(warnings),
    )


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1].strip()
    return text


def _pair(text: str) -> tuple[str, str]:
    # On the first '=' only: a PAC URL's query may hold more.
    key, _, value = text.partition("=")
    return key.strip().upper(), _unquote(value.strip())


def parse_cp_args(text: str) -> DeployArgs:
    """Installer arguments from the `&`-joined CP_ARGS string, as admins paste it."""
    previous = None
    while text != previous:
        # Each pass peels one wrapper: `"CP_ARGS='...'"`, a BOM, spaces, in any nesting.
        previous = text
        text = _unquote(text.strip().removeprefix("\ufeff").strip())
        if text[:8].upper() == "CP_ARGS=":
            text = text[8:]
    return _accept([_pair(chunk) for chunk in text.split("&") if chunk.strip()])


def _properties_pairs(text: str) -> list[tuple[str, str]]:
    """The KEY=VALUE lines of a deploy.properties text (no Java escapes or continuations)."""
    pairs = []
    for raw in _LINE_END.split(text.removeprefix("\ufeff")):
        line = raw.strip()
        if line and line[0] not in "#!":
            pairs.append(_pair(line))
    return pairs


def parse_properties(text: str) -> DeployArgs:
    """Installer arguments from a deploy.properties text, as Jamf and Munki write it."""
    return _accept(_properties_pairs(text))


def read_properties_file(path: Path) -> DeployArgs:
    """Installer arguments from a deploy.properties file; a refusal names the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start} is not)") from None
    return _accept(_properties_pairs(text), where=f" (in {path})")


def save(args: DeployArgs, path: Path) -> None:
    """Persist `args` as deploy.properties, all at once, readable by the service account only."""
    write_atomic(path, args.to_properties().encode("utf-8"), mode=0o600)


__all__ = [
    "KNOWN_KEYS",
    "DeployArgs",
    "parse_cp_args",
    "parse_properties",
    "read_properties_file",
    "save",
]
