"""`python -m agent` is `holdfast`."""

from agent.cli import main

raise SystemExit(main())
