"""A fake of everestpy's `everest.framework`, written from spec/everest.md.

everestpy is a C++ extension that ships only with an EVerest build (it is not on PyPI), so the
module's tests run against this fake instead. It is deliberately strict: it does what the spec
says the real one does and refuses what the spec says is wrong, so a module that works here
uses the real API the documented way. Like the real package, `everest` is a namespace package
(there is no everest/__init__.py).

Environment, as the manager sets it: EV_MODULE, EV_PREFIX and EV_LOG_CONF_FILE are required.
The fake's own settings:
- FAKE_EVEREST_SETUP_FILE  what the "manager" built from config.yaml and the manifest (JSON
                           from fake_everest_manager.setup_to_json; required)
- FAKE_EVEREST_RECORD       a JSONL file; every framework call is appended with its time
- FAKE_EVEREST_READY_DELAY_S  seconds from init_done until on_ready (other modules starting)
- FAKE_EVEREST_COMMAND_DELAY_S  how long the callee takes to answer each command
- FAKE_EVEREST_COMMAND_FAILURES  the first N commands fail with RuntimeError (callee errors)

Rules it enforces (a violation is recorded as "violation" and raises RuntimeError):
say_hello before init_done; init_done once; call_command only after on_ready fired, only on a
connection say_hello gave out, and only with a valid command and arguments for the connected
interface (for external_energy_limits: `set_external_limits` with exactly {"value":
ExternalLimits}, all three schedule arrays present, see fake_everest_manager).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fake_everest_manager as manager

_record_lock = threading.Lock()


def _record(event: str, **fields: Any) -> None:
    path = os.environ.get("FAKE_EVEREST_RECORD")
    line = json.dumps({"time": time.time(), "event": event, **fields}, default=str)
    with _record_lock:
        if path:
            with open(path, "a", encoding="utf-8") as file:
                file.write(line + "\n")


def _violation(message: str) -> RuntimeError:
    _record("violation", message=message)
    print(f"[fake everest] VIOLATION: {message}", file=sys.stderr, flush=True)
    return RuntimeError(message)


class _Log:
    """everestpy's `log`: one function per severity, each taking one string."""

    def _write(self, level: str, message: object) -> None:
        if not isinstance(message, str):
            raise _violation(f"log.{level} takes a str, got {type(message).__name__}")
        _record("log", level=level, message=message)
        print(f"[fake everest] {level.upper()} {message}", file=sys.stderr, flush=True)

    def debug(self, message: str) -> None:
        self._write("debug", message)

    def info(self, message: str) -> None:
        self._write("info", message)

    def warning(self, message: str) -> None:
        self._write("warning", message)

    def error(self, message: str) -> None:
        self._write("error", message)

    def critical(self, message: str) -> None:
        self._write("critical", message)

    def update_process_name(self, name: str) -> None:
        _record("update_process_name", name=name)


log = _Log()


class RuntimeSession:
    """Needs EV_MODULE and EV_LOG_CONF_FILE (and EV_PREFIX); loads what the manager knows."""

    def __init__(self) -> None:
        required = ("EV_MODULE", "EV_PREFIX", "EV_LOG_CONF_FILE")
        missing = [name for name in required if not os.environ.get(name)]
        if missing:
            raise _violation(f"RuntimeSession: {', '.join(missing)} not set")
        if not Path(os.environ["EV_LOG_CONF_FILE"]).is_file():
            raise _violation("RuntimeSession: EV_LOG_CONF_FILE is not a file")
        setup = Path(os.environ["FAKE_EVEREST_SETUP_FILE"]).read_text(encoding="utf-8")
        self._setup = manager.setup_from_json(setup)
        if self._setup.module_id != os.environ["EV_MODULE"]:
            raise _violation(f"EV_MODULE is not {self._setup.module_id!r}")
        _record("session", module_id=self._setup.module_id)


class Connection:
    """A requirement's connection, as say_hello hands it out."""

    def __init__(self, data: manager.ConnectionData) -> None:
        self.module_id = data.module_id
        self.implementation_id = data.implementation_id
        self._interface = data.interface


class Module:
    def __init__(self, session: RuntimeSession) -> None:
        if not isinstance(session, RuntimeSession):
            raise _violation("Module() takes a RuntimeSession")
        setup = session._setup
        self._setup = setup
        self._connections = {
            name: [Connection(item) for item in items] for name, items in setup.connections.items()
        }
        self._hello = False
        self._init_done = False
        self._ready = threading.Event()
        self._failures_left = int(os.environ.get("FAKE_EVEREST_COMMAND_FAILURES", "0"))
        self._failures_lock = threading.Lock()
        self.info = SimpleNamespace(
            id=setup.module_id,
            paths=SimpleNamespace(etc=str(setup.etc_dir), libexec=str(setup.module_dir)),
        )
        self.fulfillments: dict[str, Any] = {}  # never filled, as in the real one

    def say_hello(self) -> SimpleNamespace:
        self._hello = True
        _record("say_hello", module_config=self._setup.module_config)
        for warning in self._setup.warnings:
            print(f"[fake everest] manager warning: {warning}", file=sys.stderr, flush=True)
        return SimpleNamespace(
            configs=SimpleNamespace(module=dict(self._setup.module_config), implementations={}),
            connections={name: list(items) for name, items in self._connections.items()},
        )

    def init_done(self, on_ready: Any = None) -> None:
        if not self._hello:
            raise _violation("init_done before say_hello")
        if self._init_done:
            raise _violation("init_done called twice")
        self._init_done = True
        _record("init_done")
        delay = float(os.environ.get("FAKE_EVEREST_READY_DELAY_S", "0.2"))

        def everyone_ready() -> None:  # a framework thread, like the real callbacks
            time.sleep(delay)
            self._ready.set()
            _record("ready")
            if on_ready is not None:
                on_ready()

        threading.Thread(target=everyone_ready, name="fake-everest-ready", daemon=True).start()

    def call_command(self, connection: Any, command: str, args: Any) -> Any:
        if not self._ready.is_set():
            raise _violation(f"call_command({command!r}) before the ready callback")
        if not any(connection is c for items in self._connections.values() for c in items):
            raise _violation(f"call_command on a connection say_hello did not give: {connection!r}")
        problems = manager.command_problems(connection._interface, command, args)
        if problems:
            raise _violation("; ".join(problems))
        _record("call_started", module_id=connection.module_id, command=command, args=args)
        time.sleep(float(os.environ.get("FAKE_EVEREST_COMMAND_DELAY_S", "0")))
        with self._failures_lock:
            fail = self._failures_left > 0
            self._failures_left -= 1 if fail else 0
        if fail:
            _record("call_failed", command=command)
            raise RuntimeError(f"fake callee {connection.module_id}: {command} failed")
        _record("call_command", module_id=connection.module_id, command=command, args=args)
        return None

    def implement_command(self, *args: Any) -> None:
        _record("implement_command", args=[str(a) for a in args])

    def publish_variable(self, *args: Any) -> None:
        _record("publish_variable", args=[str(a) for a in args])

    def subscribe_variable(self, *args: Any) -> None:
        _record("subscribe_variable", args=[str(a) for a in args])
