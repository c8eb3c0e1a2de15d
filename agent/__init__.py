"""Holdfast's endpoint agent: deploys itself from a policy, registers, backs the user's home up."""

import sys

# httpx imports its command-line client (click, rich, pygments: 2-6 MB resident for months
# in the daemon) whenever they are installed; the agent never runs it, and the shipped
# executable leaves it out (packaging/pyinstaller/holdfast.spec). A None entry makes that
# optional import fail here too, as httpx allows; typeshed does not know None entries.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
__all__ = ["__version__"]
