"""Shared fixtures: the HEMS simulator (in-process and as a subprocess).

Broker, RpcApi and bridge helpers live in tests/_broker.py, tests/_fake_rpcapi.py and
tests/_bridge_fixtures.py and are imported where used.
"""

pytest_plugins = ["tests._sim_fixtures"]
