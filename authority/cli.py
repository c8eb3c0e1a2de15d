"""`holdfast-authority`: argument parsing, output and exit codes, nothing else.

Exit codes: 0 success; 2 bad usage or input; 4 refused; 1 any other failure.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from authority import __version__
from authority.admin import Admin, init_data
from authority.console.accounts import (
    ROLES,
    check_new_name,
    create_account,
    delete_account,
    find_account,
    list_accounts,
    set_password,
    unlock,
)
from authority.datadir import DEFAULT_PORT, ENV_DATA, DataDir
from authority.db import utcnow
from authority.errors import AuthorityError, InvalidInput
from authority.orgs import AUTH_METHODS, DEFAULT_LDAP_FILTER, LdapSettings
from authority.user_admin import user_create
from authority.views import (
    format_admin_accounts,
    format_attempts,
    format_devices,
    format_orgs,
    format_tls,
    format_users,
    print_policy,
)

Handler = Callable[[Admin, argparse.Namespace], None]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def _emit(args: argparse.Namespace, value: Any, text: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(value, indent=2))
    else:
        print(text(value))


# Handlers: one per command, each a thin call into authority.admin.


def _serve(admin: Admin, args: argparse.Namespace) -> None:
    from authority.serve import serve  # uvicorn is only needed here

    port = args.port or admin.config.port
    serve(
        admin.data,
        args.host,
        port,
        args.max_concurrency,
        args.retry_after,
        workers=args.workers,
        threads=args.threads,
    )


def _absolute(text: str) -> str:
    # Stored for `serve`, which may run from another folder than this command.
    return os.path.abspath(text)


def _org_create(admin: Admin, args: argparse.Namespace) -> None:
    ldap = None
    ldap_options = (
        args.ldap_url,
        args.ldap_base_dn,
        args.ldap_bind_dn,
        args.ldap_bind_password_file,
        args.ldap_user_filter,
        args.ldap_starttls,
        args.ldap_ca_file,
    )
    if any(ldap_options):
        if args.auth != "ldap":
            raise InvalidInput(f"--ldap-* options apply to --auth ldap only, not {args.auth}")
        if not args.ldap_url or not args.ldap_base_dn:
            raise InvalidInput("LDAP settings need both --ldap-url and --ldap-base-dn")
        ldap = LdapSettings(
            url=args.ldap_url,
            base_dn=args.ldap_base_dn,
            bind_dn=args.ldap_bind_dn,
            bind_password_file=args.ldap_bind_password_file,
            user_filter=args.ldap_user_filter or DEFAULT_LDAP_FILTER,
            starttls=args.ldap_starttls,
            ca_file=args.ldap_ca_file,
        )
    print(admin.org_create(args.name, args.auth, args.parent, ldap))


# Console administrators (authority/console/accounts.py)


def _read_new_password(name: str) -> str:
    """A new password, typed twice: without echo on a terminal, else two lines of stdin.

    Nothing is written until both are read and equal, so a mistyped or missing one leaves
    everything as it was.
    """
    stream = sys.stdin
    if stream is not None and stream.isatty():
        try:
            first = getpass.getpass(f"Password for {name}: ")
            second = getpass.getpass("Again: ")
        except EOFError:
            raise InvalidInput("no password was typed; nothing was changed") from None
    else:
        lines = [stream.readline(), stream.readline()] if stream is not None else ["", ""]
        if not all(lines):
            raise InvalidInput(
                "expected the password twice, as two lines on standard input; nothing was changed"
            )
        first, second = (line.removesuffix("\n").removesuffix("\r") for line in lines)
    if not first:
        raise InvalidInput("the password is empty; nothing was changed")
    if first != second:
        raise InvalidInput("the two passwords differ; nothing was changed")
    return first


def _admin_create(admin: Admin, args: argparse.Namespace) -> None:
    with admin.db.transaction() as s:
        check_new_name(s, args.name)  # before asking for a password that could not be used
    password = _read_new_password(args.name)
    with admin.db.transaction() as s:
        account = create_account(s, args.name, password, args.role, now=utcnow())
        name, role = account.name, account.role
    print(
        f"Created console administrator {name!r} ({role} role). "
        f"Sign in at {admin.config.deployment_url}/"
    )


def _admin_password(admin: Admin, args: argparse.Namespace) -> None:
    with admin.db.transaction() as s:
        name = find_account(s, args.name).name
    password = _read_new_password(name)
    with admin.db.transaction() as s:
        set_password(s, name, password)
    print(f"Changed the password of console administrator {name!r}; its sessions were ended.")


def _admin_list(admin: Admin, args: argparse.Namespace) -> None:
    with admin.db.transaction() as s:
        accounts = list_accounts(s, now=utcnow())
    _emit(args, accounts, format_admin_accounts)


def _admin_unlock(admin: Admin, args: argparse.Namespace) -> None:
    with admin.db.transaction() as s:
        name = find_account(s, args.name).name
        unlock(s, name)
    print(f"Unlocked console administrator {name!r}: it can sign in again.")


def _admin_delete(admin: Admin, args: argparse.Namespace) -> None:
    with admin.db.transaction() as s:
        name = find_account(s, args.name).name
        delete_account(s, name)
    print(f"Deleted console administrator {name!r}; its sessions were ended.")


HANDLERS: dict[str, Handler] = {
    "serve": _serve,
    "tls renew": lambda adm, a: print(adm.tls_renew()),
    "tls activate": lambda adm, a: print(adm.tls_activate()),
    "tls show": lambda adm, a: _emit(a, adm.tls_show(), format_tls),
    "org create": _org_create,
    "org list": lambda adm, a: _emit(a, adm.org_list(), format_orgs),
    "org deactivate": lambda adm, a: print(adm.org_deactivate(a.name)),
    "policy create": lambda adm, a: print(adm.policy_create(a.org, a.manual, a.script)),
    "policy set": lambda adm, a: print(adm.policy_set(a.org, a.assignments)),
    "policy show": lambda adm, a: _emit(a, adm.policy_show(a.org), print_policy),
    "policy rotate-token": lambda adm, a: print(adm.policy_rotate(a.org)),
    "policy delete": lambda adm, a: print(adm.policy_delete(a.org)),
    "user list": lambda adm, a: _emit(a, adm.user_list(a.org), format_users),
    "user reset-password": lambda adm, a: print(adm.user_reset_password(a.name, a.org)),
    "user create": lambda adm, a: print(user_create(adm, a.name, a.org)),
    "device list": lambda adm, a: _emit(a, adm.device_list(a.org, a.pending), format_devices),
    "device attempts": lambda adm, a: _emit(
        a, adm.device_attempts(a.org, a.device, a.limit), format_attempts
    ),
    "admin create": _admin_create,
    "admin list": _admin_list,
    "admin password": _admin_password,
    "admin unlock": _admin_unlock,
    "admin delete": _admin_delete,
}


class _Builder:
    """Adds subcommands with the shared --data (and --json) options."""

    def __init__(self) -> None:
        self.common = argparse.ArgumentParser(add_help=False)
        # SUPPRESS: a --data given before the command is not overwritten by this default.
        self.common.add_argument(
            "--data",
            metavar="DIR",
            default=argparse.SUPPRESS,
            help=f"the authority's data folder (default: ${ENV_DATA})",
        )
        self.as_json = argparse.ArgumentParser(add_help=False)
        self.as_json.add_argument("--json", action="store_true", help="print JSON instead of text")

    def add(
        self, group: Any, name: str, command: str, help_text: str, json_out: bool = False
    ) -> argparse.ArgumentParser:
        parents = [self.common, self.as_json] if json_out else [self.common]
        parser: argparse.ArgumentParser = group.add_parser(name, parents=parents, help=help_text)
        parser.set_defaults(command_key=command)
        return parser


def _add_server_commands(b: _Builder, sub: Any) -> None:
    p = b.add(sub, "init", "init", "create a data folder, database and certificate")
    p.add_argument("--host", help="host name agents use (default: this machine's)")
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port agents use (default {DEFAULT_PORT})"
    )
    p = b.add(sub, "serve", "serve", "serve HTTPS: the agent API")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    p.add_argument("--port", type=_port, help="port to listen on (default: the one chosen at init)")
    p.add_argument(
        "--max-concurrency", type=_positive, default=256, help="requests in flight before 503"
    )
    p.add_argument("--retry-after", type=_positive, default=60, help="Retry-After seconds on 503")
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="serving processes (default 1; each takes its share of --max-concurrency)",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=8,
        help="request threads per serving process (default 8; more only take turns)",
    )
    tls = sub.add_parser("tls", help="certificate rollover").add_subparsers(
        required=True, metavar="ACTION"
    )
    b.add(tls, "renew", "tls renew", "stage a next certificate, delivered to agents as a pin")
    b.add(tls, "activate", "tls activate", "switch to the staged certificate")
    b.add(tls, "show", "tls show", "the current and staged certificates", json_out=True)


def _add_org_commands(b: _Builder, sub: Any) -> None:
    org = sub.add_parser("org", help="organizations").add_subparsers(
        required=True, metavar="ACTION"
    )
    p = b.add(org, "create", "org create", "create an organization")
    p.add_argument("name")
    p.add_argument("--auth", required=True, choices=AUTH_METHODS)
    p.add_argument(
        "--parent", metavar="NAME", help="parent organization (policies are not inherited)"
    )
    p.add_argument("--ldap-url", help="ldap://host[:port] or ldaps://host[:port]")
    p.add_argument("--ldap-base-dn", help="where users are searched (the whole subtree)")
    p.add_argument("--ldap-bind-dn", help="the account the authority searches as")
    p.add_argument("--ldap-bind-password-file", type=_absolute, help="a file holding its password")
    p.add_argument(
        "--ldap-user-filter",
        help=f"{{username}} is replaced by the escaped username (default: {DEFAULT_LDAP_FILTER})",
    )
    p.add_argument(
        "--ldap-starttls",
        action="store_true",
        help="upgrade an ldap:// connection with StartTLS (ldaps:// is TLS already)",
    )
    p.add_argument(
        "--ldap-ca-file",
        type=_absolute,
        metavar="PEM",
        help="CA certificates for the directory's TLS (default: the system's)",
    )
    b.add(org, "list", "org list", "list organizations", json_out=True)
    p = b.add(org, "deactivate", "org deactivate", "deactivate an organization (its policy stops)")
    p.add_argument("name")


def _add_policy_commands(b: _Builder, sub: Any) -> None:
    pol = sub.add_parser("policy", help="deployment policies").add_subparsers(
        required=True, metavar="ACTION"
    )
    p = b.add(pol, "create", "policy create", "create an organization's deployment policy")
    p.add_argument("--org", required=True)
    p.add_argument(
        "--manual", action="store_true", help="users sign in themselves (default: silent)"
    )
    p.add_argument(
        "--script",
        action="append",
        default=[],
        metavar="OS=PATH",
        help="detection script for linux, macos or windows",
    )
    p = b.add(pol, "set", "policy set", "change policy settings")
    p.add_argument("--org", required=True)
    p.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    p = b.add(pol, "show", "policy show", "the policy and its installer arguments", json_out=True)
    p.add_argument("--org", required=True)
    p = b.add(
        pol, "rotate-token", "policy rotate-token", "a new token; the old one stops working at once"
    )
    p.add_argument("--org", required=True)
    p = b.add(pol, "delete", "policy delete", "delete the policy (its token stops working)")
    p.add_argument("--org", required=True)


def _add_people_commands(b: _Builder, sub: Any) -> None:
    usr = sub.add_parser("user", help="users").add_subparsers(required=True, metavar="ACTION")
    p = b.add(usr, "list", "user list", "list users", json_out=True)
    p.add_argument("--org")
    p = b.add(usr, "create", "user create", "create a local user and print its password once")
    p.add_argument("name")
    p.add_argument("--org", required=True)
    p = b.add(usr, "reset-password", "user reset-password", "set and print a new password")
    p.add_argument("name")
    p.add_argument("--org")
    dev = sub.add_parser("device", help="devices").add_subparsers(required=True, metavar="ACTION")
    p = b.add(dev, "list", "device list", "list devices", json_out=True)
    p.add_argument("--org")
    p.add_argument("--pending", action="store_true", help="only devices not registered yet")
    p = b.add(
        dev, "attempts", "device attempts", "registration attempts, newest first", json_out=True
    )
    p.add_argument("--org")
    p.add_argument("--device", metavar="GUID")
    p.add_argument("--limit", type=_positive, default=50, help="at most N (default 50)")


def _add_console_commands(b: _Builder, sub: Any) -> None:
    adm = sub.add_parser("admin", help="web console administrators").add_subparsers(
        required=True, metavar="ACTION"
    )
    p = b.add(adm, "create", "admin create", "create an administrator; the password is asked twice")
    p.add_argument("name")
    p.add_argument(
        "--role",
        choices=ROLES,
        default="deploy",
        help="deploy (changes anything; the default) or read-only (sees everything)",
    )
    b.add(adm, "list", "admin list", "list administrators", json_out=True)
    p = b.add(adm, "password", "admin password", "a new password, asked twice; ends its sessions")
    p.add_argument("name")
    p = b.add(adm, "unlock", "admin unlock", "end the lockout after failed sign-ins")
    p.add_argument("name")
    p = b.add(adm, "delete", "admin delete", "delete an administrator and end its sessions")
    p.add_argument("name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="holdfast-authority", description="Holdfast's reference authority server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--data", metavar="DIR", help=f"the data folder (default: ${ENV_DATA})")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    builder = _Builder()
    _add_server_commands(builder, sub)
    _add_org_commands(builder, sub)
    _add_policy_commands(builder, sub)
    _add_people_commands(builder, sub)
    _add_console_commands(builder, sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        data = DataDir.resolve(args.data)
        if args.command_key == "init":
            print(init_data(data, args.host or socket.getfqdn(), args.port))
        else:
            with Admin(data) as admin:
                HANDLERS[args.command_key](admin, args)
    except AuthorityError as exc:
        print(f"holdfast-authority: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `... | head` closed our output: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # the last line of defence: one sentence, never a traceback
        print(
            f"holdfast-authority: unexpected error ({type(exc).__name__}): {exc}", file=sys.stderr
        )
        return 1
    return 0


__all__ = ["build_parser", "main"]
