"""`python -m authority` is `holdfast-authority`."""

from authority.cli import main

raise SystemExit(main())
