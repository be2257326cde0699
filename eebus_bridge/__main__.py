"""`python -m eebus_bridge` is the `eebus-bridge` command."""

from eebus_bridge.cli import main

raise SystemExit(main())
