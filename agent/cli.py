"""`holdfast`: argument parsing and exit codes.

The agent's lifecycle commands arrive with the lifecycle issue; until then the command
says what it is and which version, so packaging and scripts can already call it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from agent import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="holdfast", description="Holdfast endpoint backup agent.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


__all__ = ["build_parser", "main"]
