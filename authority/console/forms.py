"""What the console's forms hold, read into the values the shared operations take.

No rule is checked here that the shared code checks: a form's fields become an LdapSettings,
a ScriptFile or KEY=VALUE lines, and authority/orgs.py, scripts.py and settings.py decide.
What is here is only what a form adds: fields left empty, a browser's line endings, the
wording of the CLI's option names in messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from starlette.datastructures import UploadFile

from authority.console.access import Posted
from authority.errors import InvalidInput
from authority.orgs import DEFAULT_LDAP_FILTER, LdapSecrets, LdapSettings
from authority.scripts import (
    MAX_SCRIPT_BYTES,
    OPERATING_SYSTEMS,
    ScriptFile,
    script_from_bytes,
    script_from_text,
)

SHIPPED_SCRIPTS = Path(__file__).parent.parent / "detection_scripts"
OS_LABELS = {"linux": "Linux", "macos": "macOS", "windows": "Windows"}

# The shared code's messages name the CLI's options; the console's forms name fields.
_FIELD_WORDS = (
    ("--ldap-* options", "LDAP settings"),
    ("--ldap-bind-password-file", "the bind password"),
    ("--ldap-ca-file", "the CA certificates"),
    ("--ldap-bind-dn", "the bind DN"),
    ("--ldap-base-dn", "the base DN"),
    ("--ldap-user-filter", "the user filter"),
    ("--ldap-starttls", "StartTLS"),
    ("--ldap-url", "the LDAP URL"),
    ("--auth ldap", "LDAP authentication"),
    ("--auth", "authentication"),
)


def in_form_words(message: str) -> str:
    """A shared message as the console's form names things."""
    for option, words in _FIELD_WORDS:
        message = message.replace(option, words)
    return message[:1].upper() + message[1:]


# Organizations


@dataclass(frozen=True)
class OrgForm:
    """The organization form as entered; the bind password is never sent back to the page."""

    name: str = ""
    auth: str = "local"
    parent: str = ""
    ldap_url: str = ""
    ldap_base_dn: str = ""
    ldap_bind_dn: str = ""
    ldap_user_filter: str = DEFAULT_LDAP_FILTER
    ldap_starttls: bool = False
    ldap_ca_pem: str = ""
    ldap_bind_password: str = field(default="", repr=False)

    @classmethod
    def read(cls, form: Posted) -> OrgForm:
        return cls(
            name=form.text("name"),
            auth=form.text("auth"),
            parent=form.text("parent").strip(),
            ldap_url=form.text("ldap_url").strip(),
            ldap_base_dn=form.text("ldap_base_dn").strip(),
            ldap_bind_dn=form.text("ldap_bind_dn").strip(),
            ldap_user_filter=form.text("ldap_user_filter").strip(),
            ldap_starttls=form.checked("ldap_starttls"),
            ldap_ca_pem=form.text("ldap_ca_pem").strip(),
            ldap_bind_password=form.text("ldap_bind_password"),
        )

    def without_secrets(self) -> OrgForm:
        """What the page may show again: everything but the bind password."""
        return replace(self, ldap_bind_password="")

    def any_ldap(self) -> bool:
        """Whether any LDAP field was filled in (the default filter is not an entry)."""
        return bool(
            self.ldap_url
            or self.ldap_base_dn
            or self.ldap_bind_dn
            or self.ldap_bind_password
            or self.ldap_starttls
            or self.ldap_ca_pem
            or self.ldap_user_filter not in ("", DEFAULT_LDAP_FILTER)
        )

    def ldap(self) -> LdapSettings:
        return LdapSettings(
            url=self.ldap_url,
            base_dn=self.ldap_base_dn,
            bind_dn=self.ldap_bind_dn or None,
            user_filter=self.ldap_user_filter or DEFAULT_LDAP_FILTER,
            starttls=self.ldap_starttls,
        )

    def ldap_for_create(self) -> LdapSettings | None:
        """The settings `org create` gets: none when no LDAP field was filled in."""
        return self.ldap() if self.any_ldap() else None

    def secrets(self) -> LdapSecrets:
        if self.ldap_bind_password and not self.ldap_bind_dn:
            raise InvalidInput("a bind password needs a bind DN (the account it is for)")
        return LdapSecrets(
            bind_password=self.ldap_bind_password or None, ca_pem=self.ldap_ca_pem or None
        )


# Detection scripts


def shipped_scripts() -> dict[str, list[str]]:
    """The scripts the authority ships (authority/detection_scripts/), by OS."""
    return {
        os_name: sorted(
            p.name
            for p in (SHIPPED_SCRIPTS / os_name).iterdir()
            if p.is_file() and p.suffix in (".sh", ".ps1", ".bat", ".cmd")
        )
        for os_name in OPERATING_SYSTEMS
    }


def shipped_text(os_name: str, name: str) -> str:
    if name not in shipped_scripts().get(os_name, []):
        raise InvalidInput(f"no shipped {OS_LABELS.get(os_name, os_name)} script named {name!r}")
    return (SHIPPED_SCRIPTS / os_name / name).read_bytes().decode("utf-8-sig")


def editor_text(os_name: str, text: str) -> str:
    """The editor's text with the line endings the script runs with.

    Browsers send a textarea's lines ended by CRLF, which bash reads as part of each
    command; Windows scripts keep CRLF, as the shipped ones have it.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", "\r\n") if os_name == "windows" else text


@dataclass
class ScriptEntry:
    """One OS's part of the policy form: the shipped script chosen, the editor, an upload."""

    os: str
    shipped: str = ""
    text: str = ""
    filename: str = ""
    upload: UploadFile | None = None

    @property
    def label(self) -> str:
        return OS_LABELS[self.os]

    def load_shipped(self) -> None:
        """Put the chosen shipped script in the editor, as its file holds it."""
        if not self.shipped:
            raise InvalidInput(f"choose a shipped {self.label} script to load")
        self.text = shipped_text(self.os, self.shipped)
        self.filename = self.shipped

    def uploaded(self) -> bytes | None:
        if self.upload is None or not self.upload.filename:
            return None
        # One byte past the limit is enough for the shared check to refuse it.
        return self.upload.file.read(MAX_SCRIPT_BYTES + 1)

    def take_upload(self) -> ScriptFile | None:
        """The uploaded file as a script, now in the editor too; None without an upload.

        Should the form come back (another field's error, a script loaded), nothing
        uploaded is lost: a browser never fills a file input again.
        """
        raw = self.uploaded()
        if raw is None:
            return None
        assert self.upload is not None and self.upload.filename
        # Browsers send a bare name; some older ones sent the whole client-side path.
        name = self.upload.filename.replace("\\", "/").rsplit("/", 1)[-1]
        script = script_from_bytes(
            self.os, name, raw, where=f"The uploaded {self.label} script {name}"
        )
        self.filename, self.text, self.upload = script.filename, script.content, None
        return script

    def script(self) -> ScriptFile | None:
        """The script to store: an upload wins over the editor; None when both are empty."""
        uploaded = self.take_upload()
        if uploaded is not None:
            return uploaded
        if not self.text.strip():
            return None
        name = self.filename.strip()
        if not name:
            raise InvalidInput(
                f"give the {self.label} script a file name (Windows runs a script by its "
                "suffix: .ps1, .bat or .cmd)"
            )
        return script_from_text(
            self.os, name, editor_text(self.os, self.text), where=f"The {self.label} script {name}"
        )


def script_entries(form: Posted | None) -> list[ScriptEntry]:
    entries = []
    for os_name in OPERATING_SYSTEMS:
        if form is None:
            entries.append(ScriptEntry(os_name))
            continue
        upload = form.form.get(f"upload_{os_name}")
        entries.append(
            ScriptEntry(
                os=os_name,
                shipped=form.text(f"shipped_{os_name}"),
                text=form.text(f"script_{os_name}"),
                filename=form.text(f"filename_{os_name}"),
                upload=upload if isinstance(upload, UploadFile) else None,
            )
        )
    return entries


def settings_lines(text: str) -> list[str]:
    """KEY=VALUE lines as `policy set` takes them as words; blank lines are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


__all__ = [
    "OS_LABELS",
    "OrgForm",
    "ScriptEntry",
    "editor_text",
    "in_form_words",
    "script_entries",
    "settings_lines",
    "shipped_scripts",
    "shipped_text",
]
