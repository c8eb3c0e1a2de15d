"""Administrator operations over a data folder: what the CLI (and later the console) calls.

Each operation runs in one transaction: it changes everything it says, or nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import select

from authority.attempts import attempt_summary, device_rows, list_attempts
from authority.datadir import DataDir, ServerConfig, write_atomic
from authority.db import Database, Device, create_schema
from authority.directory import Directory
from authority.errors import InvalidInput
from authority.orgs import (
    LdapSecrets,
    LdapSettings,
    create_org,
    deactivate_org,
    list_orgs,
    org_summary,
)
from authority.policies import (
    admin_view,
    create_policy,
    delete_policy,
    find_policy,
    rotate_token,
    set_settings,
)
from authority.scripts import ScriptFile, load_script
from authority.tls import CertificateStore
from authority.users import devices_by_user, list_users, reset_password, user_summary
from authority.views import json_value

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


def check_host(host: str) -> str:
    """The host name or IP address agents will use; a port belongs in --port."""
    candidate = host.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    labels = candidate.rstrip(".").split(".")
    if not candidate or len(candidate) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidInput(
            f"--host {host!r} is not a host name or IP address "
            "(ASCII letters, digits, hyphens and dots; give the port with --port)"
        )
    return candidate.rstrip(".").lower()


def init_data(data: DataDir, host: str, port: int) -> str:
    """Create the data folder; refuses an initialised one (a new certificate would break pins)."""
    if data.is_initialised():
        raise InvalidInput(
            f"{data.root} is already initialised; nothing was changed "
            "(use `tls renew` to replace the certificate)"
        )
    host = check_host(host)
    data.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    data.root.chmod(0o700)
    db = Database(data.database_url)
    try:
        create_schema(db.engine)
    finally:
        db.close()
    data.database.chmod(0o600)  # it holds policy tokens
    fingerprints = CertificateStore(data).create_current(host)
    write_atomic(data.admin_key, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600)
    config = ServerConfig(host=host, port=port)
    # Written last: its presence is what marks the folder initialised.
    data.write_config(config)
    return "\n".join(
        [
            f"Initialised authority data folder {data.root}",
            f"  deployment URL:      {config.deployment_url}",
            f"  certificate SHA-1:   {fingerprints.sha1}",
            f"  certificate SHA-256: {fingerprints.sha256}",
            f"  certificate expires: {fingerprints.not_after:%Y-%m-%d}",
            f"  admin API key:       {data.admin_key}",
            f"Next: holdfast-authority org create NAME --auth local --data {data.root}",
        ]
    )


class Admin:
    """The administrator's operations over one initialised data folder."""

    def __init__(self, data: DataDir, db: Database | None = None) -> None:
        """`db`: the server's own database (the console), left open by close(); by default
        the operations open one over the data folder and close it with themselves."""
        data.require_initialised()
        self.data = data
        self.certs = CertificateStore(data)
        self._owns_db = db is None
        if db is not None:
            self.__dict__["db"] = db  # what the cached property would hold

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_db and "db" in self.__dict__:
            self.db.close()

    @cached_property
    def config(self) -> ServerConfig:
        return self.data.read_config()

    @cached_property
    def db(self) -> Database:
        db = Database(self.data.database_url)
        create_schema(db.engine)  # a data folder from an earlier release gains what is new
        return db

    # TLS

    def tls_renew(self) -> str:
        fp = self.certs.renew(self.config.host)
        return "\n".join(
            [
                "Staged a next certificate; policies now deliver its fingerprints to agents.",
                f"  next SHA-1:   {fp.sha1}",
                f"  next SHA-256: {fp.sha256}",
                "When agents have checked in, switch with `holdfast-authority tls activate`.",
            ]
        )

    def tls_activate(self) -> str:
        fp = self.certs.activate()
        return "\n".join(
            [
                "The staged certificate is now current;",
                "a running server presents it to new connections within seconds.",
                f"  SHA-1:   {fp.sha1}",
                f"  SHA-256: {fp.sha256}",
            ]
        )

    def tls_show(self) -> list[dict[str, str]]:
        return self.certs.pins()

    # Organizations

    def org_create(
        self,
        name: str,
        auth: str,
        parent: str | None,
        ldap: LdapSettings | None,
        ldap_secrets: LdapSecrets | None = None,
    ) -> str:
        """`ldap_secrets`: the bind password and CA certificates as text (the console),
        which the authority keeps in DATA/ldap/ and names in the settings as the CLI's files."""
        if ldap is None or ldap_secrets is None:
            with self.db.transaction() as s:
                org = create_org(s, name, auth, parent=parent, ldap=ldap)
                return f"Created organization {org.name!r} ({org.auth} authentication)"
        with self._staged_ldap(ldap, ldap_secrets) as staged, self.db.transaction() as s:
            org = create_org(s, name, auth, parent=parent, ldap=staged)
            # Every rule passed: the staged files take their lasting names.
            org.ldap = self._keep_ldap_files(org.name, staged).as_dict()
            return f"Created organization {org.name!r} ({org.auth} authentication)"

    def org_test_ldap(self, ldap: LdapSettings, ldap_secrets: LdapSecrets) -> str:
        """Bind and search once with these settings, before any organization has them."""
        with self._staged_ldap(ldap, ldap_secrets) as staged:
            staged.validate()
            return Directory(staged.as_dict(), for_administrator=True).check_connection()

    @contextmanager
    def _staged_ldap(self, ldap: LdapSettings, given: LdapSecrets) -> Iterator[LdapSettings]:
        """`ldap` with the secrets written to files of a private temporary folder."""
        folder = self.data.root / "ldap"
        folder.mkdir(mode=0o700, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".staged-") as tmp:
            files: dict[str, Any] = {}
            if given.bind_password:
                path = Path(tmp) / "bind.password"
                write_atomic(path, given.bind_password.encode("utf-8"), mode=0o600)
                files["bind_password_file"] = str(path)
            if given.ca_pem and given.ca_pem.strip():
                path = Path(tmp) / "ca.pem"
                write_atomic(path, given.ca_pem.encode("utf-8"), mode=0o600)
                files["ca_file"] = str(path)
            try:
                yield dataclasses.replace(ldap, **files)
            except InvalidInput as exc:
                # A staged file's name means nothing to whoever pasted its content.
                message = exc.message
                for path_text in files.values():
                    message = message.replace(f" {path_text}", " (pasted)")
                raise InvalidInput(message, code=exc.code) from None

    def _keep_ldap_files(self, org_name: str, staged: LdapSettings) -> LdapSettings:
        folder = self.data.root / "ldap"
        # Readable, and unique by the exact name (names may hold any printable character).
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", org_name)[:48].strip("._") or "org"
        stem = f"{slug}-{hashlib.sha256(org_name.encode()).hexdigest()[:8]}"
        kept: dict[str, Any] = {}
        for key, suffix in (("bind_password_file", ".password"), ("ca_file", ".ca.pem")):
            staged_path = getattr(staged, key)
            if staged_path and Path(staged_path).parent.parent == folder:
                final = folder / f"{stem}{suffix}"
                os.replace(staged_path, final)
                kept[key] = str(final)
        return dataclasses.replace(staged, **kept)

    def org_list(self) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            return [org_summary(o) for o in list_orgs(s)]

    def org_deactivate(self, name: str) -> str:
        with self.db.transaction() as s:
            org = deactivate_org(s, name)
            devices = s.scalar(select(Device.id).where(Device.org_id == org.id).limit(1))
            note = " Its devices can no longer fetch the policy." if devices else ""
            return (
                f"Deactivated organization {name!r}: its deployment policy stops working; "
                f"agents installed with its token keep retrying.{note}"
            )

    # Policies

    def policy_create(self, org: str, manual: bool, script_specs: list[str]) -> str:
        scripts = [
            load_script(spec) for spec in script_specs
        ]  # every file checked before any write
        return self.policy_create_with(org, manual, scripts)

    def policy_create_with(self, org: str, manual: bool, scripts: list[ScriptFile]) -> str:
        """`policy_create` with scripts already read and checked (the console's editor)."""
        with self.db.transaction() as s:
            policy = create_policy(s, org, manual=manual, scripts=scripts)
            token = policy.token
        return (
            f"Created the deployment policy of organization {org!r} "
            f"({'manual' if manual else 'silent'} registration).\n"
            f"  token: {token}\n"
            f"Installer arguments: holdfast-authority policy show --org {_quote(org)}"
        )

    def policy_set(self, org: str, assignments: list[str]) -> str:
        with self.db.transaction() as s:
            policy = set_settings(s, org, assignments)
            changed = sorted({a.partition("=")[0].strip() for a in assignments})
            values = ", ".join(f"{k}={json_value(policy.settings[k])}" for k in changed)
        return f"Updated the policy of organization {org!r}: {values}"

    def policy_show(self, org: str) -> dict[str, Any]:
        with self.db.transaction() as s:
            return admin_view(find_policy(s, org), self.config.deployment_url, self.certs.pins())

    def policy_rotate(self, org: str) -> str:
        with self.db.transaction() as s:
            token = rotate_token(s, org).token
        return (
            f"New token for the policy of organization {org!r}: {token}\n"
            "The old token stopped working: installs not yet registered with it will keep "
            "retrying until redeployed. Registered devices are not affected."
        )

    def policy_delete(self, org: str) -> str:
        with self.db.transaction() as s:
            delete_policy(s, org)
        return (
            f"Deleted the deployment policy of organization {org!r}: its token no longer works. "
            "Registered devices keep backing up with default settings."
        )

    # Users and devices

    def user_list(self, org: str | None) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            devices = devices_by_user(s)
            return [user_summary(s, u, devices) for u in list_users(s, org)]

    def user_reset_password(self, name: str, org: str | None) -> str:
        who, password = self.user_new_password(name, org)
        return f"New password for {who}: {password}\nIt is shown only now; pass it on securely."

    def user_new_password(self, name: str, org: str | None) -> tuple[str, str]:
        """Reset the user's password: (who, in words; the new password, to show once)."""
        with self.db.transaction() as s:
            user, password = reset_password(s, name, org)
            return f"{user.username} ({user.org.name})", password

    def device_list(self, org: str | None, pending: bool) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            return device_rows(s, org, pending)

    def device_attempts(
        self, org: str | None, device: str | None, limit: int
    ) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            return [
                attempt_summary(a) for a in list_attempts(s, org=org, device=device, limit=limit)
            ]


def _quote(text: str) -> str:
    return text if text.replace("-", "").replace("_", "").isalnum() else f"'{text}'"


__all__ = ["Admin", "init_data"]
