"""`holdfast`: argument parsing and exit codes, nothing else.

Exit codes (CONTRACT.md section 5): 0 success; 2 bad usage or input; 3 the daemon is needed
and not running; 4 refused; 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.errors import AgentError
from agent.frozen import is_frozen, original_environment, self_command
from agent.paths import ENV_HOME, AgentPaths

if TYPE_CHECKING:
    from agent.deploy_args import DeployArgs


def _line_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"{count} is negative; give 0 or more")
    return count


def build_parser() -> argparse.ArgumentParser:
    home = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --home given before the command is not overwritten by this default.
    home.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"keep every file of the agent under DIR (default: ${ENV_HOME}, else the system's)",
    )
    parser = argparse.ArgumentParser(prog="holdfast", description="Holdfast endpoint backup agent.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--home", metavar="DIR", help="keep every file of the agent under DIR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[home], help="the daemon, in the foreground")
    given = run.add_mutually_exclusive_group()
    given.add_argument("--deploy-args", metavar="S", help="installer arguments, the CP_ARGS string")
    given.add_argument(
        "--deploy-file", metavar="P", help="installer arguments, a deploy.properties"
    )

    status = sub.add_parser("status", parents=[home], help="where the agent stands")
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sub.add_parser("stop", parents=[home], help="stop backups until `holdfast start`")
    sub.add_parser("start", parents=[home], help="resume where the agent was stopped")
    sub.add_parser("tray", parents=[home], help="the tray icon (status, Stop, Start, ...)")
    sub.add_parser("login-dialog", parents=[home])  # no help: hidden, the tray starts it
    sub.add_parser("service", parents=[home])  # no help: hidden, the Windows SCM starts it
    login = sub.add_parser("login", parents=[home], help="sign in: manual registration")
    login.add_argument(
        "--username", metavar="NAME", help="who signs in (default: the user detected here)"
    )
    sub.add_parser("backup-now", parents=[home], help="back up now and wait for the snapshot")
    snaps = sub.add_parser("snapshots", parents=[home], help="this device's snapshots")
    snaps.add_argument("--json", action="store_true", help="a JSON array, newest last")
    rest = sub.add_parser("restore", parents=[home], help="restore from a snapshot")
    rest.add_argument("--to", required=True, metavar="DIR", help="where the home's contents land")
    rest.add_argument("--snapshot", metavar="ID", help="default: the newest")
    rest.add_argument("--overwrite", action="store_true", help="replace existing files")
    rest.add_argument("paths", nargs="*", metavar="PATH", help="only these (relative to home)")
    logs = sub.add_parser("logs", parents=[home], help="print the agent log")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until Ctrl-C")
    logs.add_argument(
        "-n", "--lines", type=_line_count, default=50, metavar="N", help="default: 50"
    )
    logs.add_argument(
        "--file",
        choices=("agent", "history", "detection"),
        default="agent",
        help="which log of the log folder (default: agent)",
    )
    diagnose = sub.add_parser("diagnose", parents=[home], help="a redacted support bundle")
    diagnose.add_argument("--output", required=True, metavar="FILE.zip", help="where to write it")
    diagnose.add_argument("--force", action="store_true", help="replace an existing FILE.zip")
    doctor = sub.add_parser(
        "doctor", parents=[home], help="preflight: DNS, TCP, TLS pin, token, clock, detection"
    )
    doctor.add_argument(
        "--deploy-args", metavar="S", help="check these installer arguments, not deploy.properties"
    )
    install = sub.add_parser("install", help="install and start the system service")
    install.add_argument("--deploy-args", required=True, metavar="S", help="the CP_ARGS string")
    # No help: hidden, the .deb's postinst runs it (packaging/debian/postinst).
    saved = sub.add_parser("save-deploy-args", parents=[home])
    given = saved.add_mutually_exclusive_group(required=True)
    given.add_argument("--deploy-args", metavar="S", help="the CP_ARGS string; - reads stdin")
    given.add_argument("--deploy-file", metavar="P", help="a deploy.properties")
    uninstall = sub.add_parser("uninstall", help="stop and remove the system service")
    uninstall.add_argument(
        "--purge", action="store_true", help="also remove settings, identity, state and logs"
    )
    return parser


def _control(command: str, paths: AgentPaths) -> int:
    from agent.control import call

    result = call(paths.run, command)
    if command == "stop":
        print(f"Stopped ({result.get('stopped_by')}); nothing runs until `holdfast start`.")
    else:
        print(f"Started; the agent is in phase {result.get('phase')}.")
    return 0


def _this_command() -> str | None:
    """The absolute path of the running `holdfast`, for the service to run the same one."""
    if is_frozen():
        return sys.executable
    found = shutil.which("holdfast")
    return str(Path(found).resolve()) if found else None


def _service(args: argparse.Namespace) -> int:
    from agent.service import install, uninstall

    if args.command == "install":
        lines = install(args.deploy_args, executable=_this_command())
    else:
        lines = uninstall(purge=args.purge)
    for line in lines:
        print(line)
    return 0


def _reexec_without_args(argv: Sequence[str]) -> None:
    """Start again without --deploy-args/--deploy-file, so the token leaves the process list."""
    kept: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in ("--deploy-args", "--deploy-file"):
            skip = True
            continue
        if word.startswith(("--deploy-args=", "--deploy-file=")):
            continue
        kept.append(word)
    command = [*self_command(), *kept]
    sys.stdout.flush()
    sys.stderr.flush()
    # The environment this process started with: frozen, the bootloader sets it up again.
    os.execve(command[0], command, original_environment())  # noqa: S606  # ourselves


def _given_args(args: argparse.Namespace) -> DeployArgs:
    """The installer arguments of --deploy-args (`-`: from stdin) or --deploy-file, checked."""
    from agent.deploy_args import parse_cp_args, read_properties_file

    if args.deploy_file is not None:
        return read_properties_file(Path(args.deploy_file))
    # From stdin, the token is in no process's command line, not even briefly.
    text: str = sys.stdin.read() if args.deploy_args == "-" else args.deploy_args
    return parse_cp_args(text)


def _save_deploy_args(args: argparse.Namespace, paths: AgentPaths) -> int:
    from agent.service import save_installer_arguments

    for line in save_installer_arguments(_given_args(args), paths):
        print(line)
    return 0


def _run(args: argparse.Namespace, paths: AgentPaths, argv: Sequence[str]) -> int:
    if args.deploy_args is not None or args.deploy_file is not None:
        from agent.deploy_args import save

        given = _given_args(args)
        paths.ensure()
        save(given, paths.deploy_properties)
        if given.warnings:
            # Only the known keys are saved, so say what was left out now, where support
            # staff will look, before the arguments are gone from the command line.
            from agent import logs

            logger = logs.setup(paths.agent_log)
            for warning in given.warnings:
                logger.warning("installer arguments: %s", warning)
                print(f"holdfast: warning: {warning}", file=sys.stderr)
            logs.close()
        _reexec_without_args(argv)
    from agent.daemon import Daemon

    code = Daemon(paths).run()
    _exit_without_stranded_uploads(code)
    return code


def _exit_without_stranded_uploads(code: int) -> None:
    """Exit now if a stopped backup left uploads blocked on a dead connection.

    Python joins such threads before it exits, and a connection that an authority which
    vanished never closes holds one for the pack timeout (120 s), past the service
    manager's patience (systemd's is 90 s): it would kill the agent. Everything is saved
    and logged by now, and the threads' work is moot (the next run sends it again).
    """
    uploader = sys.modules.get("agent.backup.uploader")
    if uploader is None:  # no backup ran: nothing to strand (and nothing heavy to import)
        return
    import logging
    import threading

    prefix: str = uploader.UPLOAD_THREAD
    if any(t.name.startswith(prefix) and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _status(args: argparse.Namespace, paths: AgentPaths) -> int:
    from agent.status import collect, render

    report = collect(paths)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _tray(paths: AgentPaths) -> int:
    from agent.tray import main as tray_main

    return tray_main(paths)


def _login(args: argparse.Namespace, paths: AgentPaths) -> int:
    from agent.login import login

    return login(paths, args.username)


def _login_dialog(paths: AgentPaths) -> int:
    from agent.login_dialog import show

    return show(paths)


def _windows_service(paths: AgentPaths) -> int:
    from agent.service_windows_host import main as service_main

    return service_main(paths)


def _backup_command(args: argparse.Namespace, paths: AgentPaths) -> int:
    from agent.backup import commands

    if args.command == "backup-now":
        return commands.backup_now(paths)
    if args.command == "snapshots":
        return commands.snapshots(paths, args.json)
    return commands.restore_command(
        paths, Path(args.to), args.snapshot, args.overwrite, list(args.paths)
    )


def _logs(args: argparse.Namespace, paths: AgentPaths) -> int:
    from agent.logview import logs_command

    return logs_command(paths, args.lines, args.follow, args.file, out=sys.stdout)


def _diagnose(args: argparse.Namespace, paths: AgentPaths) -> int:
    from agent.diagnose import diagnose_command
    from agent.doctor import format_checks, run_doctor

    # The bundle carries the preflight too: support sees what the device saw, at once.
    return diagnose_command(
        paths,
        Path(args.output),
        doctor=lambda: format_checks(run_doctor(paths)),
        out=sys.stdout,
        force=args.force,
    )


def _doctor(args: argparse.Namespace, paths: AgentPaths) -> int:
    from agent.doctor import doctor_command

    return doctor_command(paths, args.deploy_args, out=sys.stdout)


def _dispatch(args: argparse.Namespace, paths: AgentPaths, words: list[str]) -> int:
    handlers: dict[str, Callable[[], int]] = {
        "run": lambda: _run(args, paths, words),
        "status": lambda: _status(args, paths),
        "stop": lambda: _control("stop", paths),
        "start": lambda: _control("start", paths),
        "tray": lambda: _tray(paths),
        "backup-now": lambda: _backup_command(args, paths),
        "snapshots": lambda: _backup_command(args, paths),
        "restore": lambda: _backup_command(args, paths),
        "login-dialog": lambda: _login_dialog(paths),
        "service": lambda: _windows_service(paths),
        "login": lambda: _login(args, paths),
        "logs": lambda: _logs(args, paths),
        "diagnose": lambda: _diagnose(args, paths),
        "install": lambda: _service(args),
        "save-deploy-args": lambda: _save_deploy_args(args, paths),
        "uninstall": lambda: _service(args),
        "doctor": lambda: _doctor(args, paths),
    }
    return handlers[args.command]()


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    try:
        return _dispatch(args, AgentPaths.resolve(args.home), words)
    except AgentError as exc:
        print(f"holdfast: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a full disk, a read-only target: one sentence, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"holdfast: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


__all__ = ["build_parser", "main"]
