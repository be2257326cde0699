"""`python -m tools.hems_simulator ...`: the simulator's command line (see cli.py)."""

from tools.hems_simulator.cli import main

raise SystemExit(main())
