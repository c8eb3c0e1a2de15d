"""A real OpenLDAP `slapd` for tests: its own cn=config and mdb database in a temporary folder.

Nothing of the machine's own LDAP setup is used: the configuration is built with
`slapadd -n0` from the Debian packages' module and schema files, the server listens on free
loopback ports only, and it runs in the foreground as a child process of the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ldap3 import NONE, Connection, Server
from ldap3.core.exceptions import LDAPException

from tests.conftest import require_tool
from tests.integration.authority_process import free_port

BASE_DN = "dc=example,dc=com"
PEOPLE_DN = f"ou=people,{BASE_DN}"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "directory-admin-secret"
MODULE_PATH = "/usr/lib/ldap"
SCHEMA_PATH = "/etc/ldap/schema"
STARTUP_SECONDS = 15


def slapd_binary() -> str | None:
    found = shutil.which("slapd") or shutil.which("slapd", path="/usr/sbin:/usr/local/sbin")
    return found or ("/usr/sbin/slapd" if os.path.exists("/usr/sbin/slapd") else None)


def require_slapd() -> str:
    binary = slapd_binary()
    require_tool(binary is not None, "slapd is not installed (Debian packages slapd, ldap-utils)")
    assert binary is not None
    return binary


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key (PEM), for ldaps:// and StartTLS."""

    cert: Path
    key: Path


def _config_ldif(root: Path, tls: TlsFiles | None) -> str:
    schemas = "\n".join(
        f"include: file://{SCHEMA_PATH}/{name}.ldif\n"
        for name in ("core", "cosine", "nis", "inetorgperson")
    )
    tls_lines = (
        f"olcTLSCertificateFile: {tls.cert}\nolcTLSCertificateKeyFile: {tls.key}\n" if tls else ""
    )
    return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {root}/slapd.pid
{tls_lines}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_PATH}
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {root}/db
olcSuffix: {BASE_DN}
olcRootDN: {ADMIN_DN}
olcRootPW: {ADMIN_PASSWORD}
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by * read
"""


@dataclass
class Slapd:
    """One directory: `start()`/`stop()` keep its data and ports, for down-then-up cases."""

    root: Path
    tls: TlsFiles | None = None
    port: int = field(default_factory=free_port)
    ldaps_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def configure(self) -> None:
        (self.root / "slapd.d").mkdir(parents=True)
        (self.root / "db").mkdir()
        config = self.root / "config.ldif"
        config.write_text(_config_ldif(self.root, self.tls))
        slapadd = str(Path(require_slapd()).with_name("slapadd"))
        subprocess.run(
            [slapadd, "-n0", "-F", str(self.root / "slapd.d"), "-l", str(config)],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        urls = self.url + "/" + (f" {self.ldaps_url}/" if self.tls else "")
        with (self.root / "slapd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [require_slapd(), "-h", urls, "-F", str(self.root / "slapd.d"), "-d", "none"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"slapd exited: {(self.root / 'slapd.log').read_text()}")
            if self._answers():
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"slapd did not start: {(self.root / 'slapd.log').read_text()}")

    def _answers(self) -> bool:
        conn = Connection(Server(self.url, get_info=NONE, connect_timeout=1), receive_timeout=1)
        try:
            return bool(conn.bind())
        except LDAPException:
            return False
        finally:
            conn.unbind()
            if conn.socket is not None:  # ldap3 keeps the socket of a failed open
                conn.socket.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def admin(self) -> Connection:
        server = Server(self.url, get_info=NONE, connect_timeout=5)
        return Connection(server, ADMIN_DN, ADMIN_PASSWORD, auto_bind=True, raise_exceptions=True)

    def seed(self) -> None:
        conn = self.admin()
        try:
            conn.add(
                BASE_DN,
                ["top", "dcObject", "organization"],
                {"dc": "example", "o": "Example"},
            )
            conn.add(PEOPLE_DN, ["top", "organizationalUnit"], {"ou": "people"})
        finally:
            conn.unbind()

    def add_user(
        self,
        uid: str,
        *,
        display_name: str | None = None,
        mail: str | None = None,
        password: str | None = None,
        disabled: bool = False,
    ) -> str:
        """Add `uid` under ou=people; `disabled` sets shadowExpire to 1970-01-02 (expired)."""
        dn = f"uid={uid},{PEOPLE_DN}"
        classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
        attributes: dict[str, str | int] = {"uid": uid, "cn": display_name or uid, "sn": uid}
        if display_name:
            attributes["displayName"] = display_name
        if mail:
            attributes["mail"] = mail
        if password:
            attributes["userPassword"] = password
        if disabled:
            classes.append("shadowAccount")
            attributes["shadowExpire"] = 1
        conn = self.admin()
        try:
            conn.add(dn, classes, attributes)
        finally:
            conn.unbind()
        return dn

    def delete_user(self, uid: str) -> None:
        conn = self.admin()
        try:
            conn.delete(f"uid={uid},{PEOPLE_DN}")
        finally:
            conn.unbind()


def start_slapd(root: Path, *, tls: TlsFiles | None = None) -> Slapd:
    """A configured, running, seeded directory (base and ou=people, no users yet)."""
    require_slapd()
    directory = Slapd(root=root, tls=tls)
    directory.configure()
    directory.start()
    try:
        directory.seed()
    except BaseException:
        directory.stop()
        raise
    return directory


__all__ = [
    "ADMIN_DN",
    "ADMIN_PASSWORD",
    "BASE_DN",
    "PEOPLE_DN",
    "Slapd",
    "TlsFiles",
    "require_slapd",
    "slapd_binary",
    "start_slapd",
]
