"""`holdfast doctor`: a preflight of everything a deployment needs, one line per check.

The checks are agent.doctor_checks' (what each looks at, and what it depends on), their
fixes agent.doctor_fixes'. This module runs them and prints the report: a check whose
prerequisite did not pass is SKIP, and a SKIP is not a pass, so the command exits 0 only
when every check is OK. The token is never printed.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import replace
from typing import TextIO

from agent import logs
from agent.config import load as load_config
from agent.doctor_checks import FAIL, OK, SKIP, Check, Preflight, Probes
from agent.paths import AgentPaths

_NAME_WIDTH = 20


def run_doctor(
    paths: AgentPaths, deploy_args: str | None = None, *, probes: Probes | None = None
) -> list[Check]:
    """Every check, in order. A bad agent.yaml is a UsageError, as it is for `run`."""
    preflight = Preflight(paths, load_config(paths.agent_yaml), probes or Probes())
    checks = preflight.run(deploy_args)
    args = preflight.found.args
    if args is None:
        return checks
    # Nothing above prints the token; this keeps an echo of it (a script's output, an
    # authority's message) out of the report too.
    token = re.compile(re.escape(args.token), re.IGNORECASE)
    hidden = "<token not shown>"
    return [
        replace(
            c,
            detail=token.sub(hidden, c.detail),
            fix=token.sub(hidden, c.fix) if c.fix else None,
        )
        for c in checks
    ]


def format_checks(checks: list[Check]) -> str:
    """The report: one line per check, an indented `fix:` under a FAIL, then a summary."""
    lines: list[str] = []
    for check in checks:
        lines.append(f"{check.status:<5} {check.name:<{_NAME_WIDTH}} {check.detail}")
        if check.status == FAIL and check.fix:
            lines.append(f"{'':<5} {'':<{_NAME_WIDTH}} fix: {check.fix}")
    counts = {status: sum(c.status == status for c in checks) for status in (OK, FAIL, SKIP)}
    tally = f"{counts[OK]} OK, {counts[FAIL]} FAIL, {counts[SKIP]} SKIP"
    if counts[OK] == len(checks):
        lines.append(f"{tally}: ready to deploy.")
    else:
        lines.append(f"{tally}: not ready; fix the first FAIL, then run `holdfast doctor` again.")
    return "\n".join(lines) + "\n"


def doctor_command(
    paths: AgentPaths,
    deploy_args: str | None,
    out: TextIO = sys.stdout,
    *,
    probes: Probes | None = None,
) -> int:
    """`holdfast doctor`: prints the report; 0 only when every check is OK, else 1."""
    # The agent's own log lines (the sandbox announcing its layer) are not the report.
    logger = logging.getLogger(logs.LOGGER)
    quiet = logging.NullHandler()
    logger.addHandler(quiet)
    try:
        checks = run_doctor(paths, deploy_args, probes=probes)
    finally:
        logger.removeHandler(quiet)
    out.write(format_checks(checks))
    out.flush()
    return 0 if all(c.status == OK for c in checks) else 1


__all__ = ["Check", "Probes", "doctor_command", "format_checks", "run_doctor"]
