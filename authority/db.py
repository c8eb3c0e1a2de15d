"""The authority's tables (SQLAlchemy 2) and the engine over the data folder's SQLite file.

Everything goes through SQLAlchemy so that PostgreSQL later is a URL, not a rewrite.
SQLite runs in WAL mode with a busy timeout, so admin commands and `serve` share the file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

SCHEMA_VERSION = 1
SQLITE_POOL_SIZE = 40


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """SQLite forgets time zones; every stored time is UTC, so say so when reading back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """One row a key: the schema version, so a later release can migrate."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    auth: Mapped[str] = mapped_column(String(16))  # local | ldap | sso
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"), default=None)
    # Directory settings for `auth == "ldap"`; the password stays in its file, never here.
    ldap: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deactivated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)

    parent: Mapped[Organization | None] = relationship(remote_side=[id])
    policy: Mapped[Policy | None] = relationship(back_populates="org", uselist=False)


class Policy(Base):
    """An organization's one deployment policy."""

    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), unique=True)
    token: Mapped[str] = mapped_column(String(36), unique=True)
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    org: Mapped[Organization] = relationship(back_populates="policy")
    scripts: Mapped[list[DetectionScript]] = relationship(
        back_populates="policy", cascade="all, delete-orphan", order_by="DetectionScript.os"
    )


class DetectionScript(Base):
    __tablename__ = "detection_scripts"
    __table_args__ = (UniqueConstraint("policy_id", "os"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    os: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(255))
    interpreter: Mapped[list[str]] = mapped_column(JSON)
    content: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))

    policy: Mapped[Policy] = relationship(back_populates="scripts")


class RetiredToken(Base):
    """A token that once worked, so an agent still using it learns why it no longer does."""

    __tablename__ = "retired_tokens"
    token: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_name: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(32))  # token_rotated | policy_deleted
    retired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("org_id", "username"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    username: Mapped[str] = mapped_column(String(256))
    display_name: Mapped[str | None] = mapped_column(String(256), default=None)
    email: Mapped[str | None] = mapped_column(String(256), default=None)
    password_hash: Mapped[str | None] = mapped_column(String(256), default=None)
    # True while the password was generated at registration and never shown to anyone.
    password_hidden: Mapped[bool] = mapped_column(Boolean, default=True)
    # SSO: a device registered with a username no SSO user had, so this user was made for it.
    # Nobody can sign in as it, or restore its devices, until the mapping is fixed.
    needs_mapping: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    org: Mapped[Organization] = relationship()


class Device(Base):
    """A device the authority has heard of: reported (pending) or registered."""

    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    os: Mapped[str] = mapped_column(String(16), default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    user_home: Mapped[str | None] = mapped_column(String(4096), default=None)
    # A digest of the machine's identity (machine-id, hardware serial) the agent sends, so a
    # GUID copied onto other hardware (a cloned golden image) is told apart from a retry.
    hardware_id: Mapped[str | None] = mapped_column(String(128), default=None)
    credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    registered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    phase: Mapped[str | None] = mapped_column(String(32), default=None)
    last_error: Mapped[str | None] = mapped_column(String(1024), default=None)
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    org: Mapped[Organization] = relationship()
    user: Mapped[User | None] = relationship()


class RegistrationAttempt(Base):
    """One call of deploy/register and how it ended: why an installed device is not registered.

    Written in its own transaction, so a refused registration, whose own transaction rolled
    back, is recorded all the same. No foreign keys: a refusal can name a GUID the authority
    has never seen, and the record must outlive what it names.
    """

    __tablename__ = "registration_attempts"
    __table_args__ = (Index("ix_registration_attempts_device", "device_guid", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    device_guid: Mapped[str] = mapped_column(String(64))
    org_name: Mapped[str] = mapped_column(String(128), index=True)
    username: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(64))  # `registered...` or the error code
    message: Mapped[str] = mapped_column(String(1024))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets the pragmas that let the CLI and the server share it."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 10},
            # As many kept connections as the server has worker threads (anyio's default,
            # 40): with the default 5 a busy server opened and closed a connection, and
            # ran its pragmas, for most requests.
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=10,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def create_schema(engine: Engine) -> None:
    """Create what is missing: new tables, and new columns of existing tables.

    A data folder made by an earlier release gains the tables and columns added since, so
    an upgrade needs no manual step. Only additions happen here; a change that is not an
    addition needs a real migration.
    """
    Base.metadata.create_all(engine)
    existing = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    conn.execute(text(_add_column(table.name, column, engine)))
    with Session(engine) as s, s.begin():
        s.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))


def _add_column(table: str, column: Any, engine: Engine) -> str:
    ddl = f"ALTER TABLE {table} ADD COLUMN {column.name} {column.type.compile(engine.dialect)}"
    default = (
        column.default.arg if column.default is not None and column.default.is_scalar else None
    )
    if isinstance(default, bool):
        return f"{ddl} NOT NULL DEFAULT {int(default)}"
    if isinstance(default, int | float):
        return f"{ddl} NOT NULL DEFAULT {default}"
    if isinstance(default, str):
        return f"{ddl} NOT NULL DEFAULT '{default.replace(chr(39), chr(39) * 2)}'"
    return ddl


class Database:
    """Sessions over one engine; `transaction()` commits on success and rolls back on error."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


__all__ = [
    "SCHEMA_VERSION",
    "Base",
    "Database",
    "DetectionScript",
    "Device",
    "Organization",
    "Policy",
    "RegistrationAttempt",
    "RetiredToken",
    "User",
    "create_schema",
    "make_engine",
    "utcnow",
]


# Appended after the rest: the sign-in lockout's table (authority/sign_in.py).


class SignInFailures(Base):
    """Recent failed sign-ins of one username in one organization, for the lockout.

    Kept whether or not such a user exists, so the answer tells nobody which names do; the
    username is casefolded, so `Alice` and `alice` share one count.
    """

    __tablename__ = "sign_in_failures"
    __table_args__ = (UniqueConstraint("org_id", "username"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    username: Mapped[str] = mapped_column(String(256))
    # ISO-8601 times of the failures still inside the counting window, oldest first.
    failed_at: Mapped[list[str]] = mapped_column(JSON, default=list)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


__all__ += ["SignInFailures"]


# Appended after the rest: the backup store's index and records (authority/storage.py,
# authority/api/backup_routes.py). An archive is a device's GUID: no foreign key, so the
# store's index stays usable by a backend that keeps packs elsewhere (S3).


class StoredPack(Base):
    """A pack written to an archive: its size is what the archive occupies."""

    __tablename__ = "packs"
    __table_args__ = (UniqueConstraint("archive", "pack_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive: Mapped[str] = mapped_column(String(64))
    pack_id: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    stored_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StoredChunk(Base):
    """Where one blob of an archive lives: its pack and byte range there.

    Unique by (archive, chunk_id): a blob uploaded again in another pack keeps its first
    location, so a lookup never has two answers.
    """

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("archive", "chunk_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive: Mapped[str] = mapped_column(String(64))
    chunk_id: Mapped[str] = mapped_column(String(64))
    pack_id: Mapped[str] = mapped_column(String(64))
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(BigInteger)


class Snapshot(Base):
    """One completed backup of a device: its manifest blob and what it counted.

    Unique by (device, manifest): the manifest carries its creation time, so the same
    manifest committed twice is a retried commit, answered with the first snapshot.
    """

    __tablename__ = "snapshots"
    __table_args__ = (
        UniqueConstraint("device_id", "manifest_id"),
        Index("ix_snapshots_device", "device_id", "created_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    snapshot_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    manifest_id: Mapped[str] = mapped_column(String(64))
    file_count: Mapped[int] = mapped_column("files", BigInteger)
    byte_count: Mapped[int] = mapped_column("bytes", BigInteger)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeviceKey(Base):
    """A device's escrowed backup master key (base64), so an administrator can restore."""

    __tablename__ = "device_keys"
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(256))
    escrowed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


__all__ += ["DeviceKey", "Snapshot", "StoredChunk", "StoredPack"]


# Appended after the rest: the web console's administrators and their sessions
# (authority/console/accounts.py).


class AdminAccount(Base):
    """A console administrator: a name, a role, an scrypt password hash and its lockout."""

    __tablename__ = "admin_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # The casefolded name, unique: `Alice` and `alice` are one account.
    name_key: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # deploy | read-only
    password_hash: Mapped[str] = mapped_column(String(256))
    # Failed sign-ins in a row; reaching the limit sets `locked_until` and starts again at 0.
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_sign_in_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class ConsoleSession(Base):
    """A signed-in browser: the SHA-256 of its cookie (never the cookie) and its CSRF token."""

    __tablename__ = "console_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("admin_accounts.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


__all__ += ["AdminAccount", "ConsoleSession"]
