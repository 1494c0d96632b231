"""`python -m gatewayd` is the same as the `gatewayd` command."""

from gatewayd.cli import main

raise SystemExit(main())
