"""The jsonl sink: one JSON line per publication, to a file or stdout.

For demos, CI suites and audits: a line holds the publication time, the LPC state and the exact
ExternalLimits object EVerest would get. Each line is flushed at once so a reader tailing the
file (or a test) sees it immediately.

Writes go through Trio's async file wrapper, i.e. a worker thread: a slow disk or a stdout pipe
nobody drains then stalls only this sink, never the Trio loop (publications are rare, so the
thread hop costs nothing that matters).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

import trio

from eebus_bridge.activity import ActivityFeed, record_delivery
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import JsonlOutput
from eebus_bridge.lpc import format_timestamp
from eebus_bridge.publication import LatestValue, Publication

logger = logging.getLogger(__name__)


def jsonl_line(publication: Publication) -> str:
    """The line written for one publication, without the newline."""
    record: dict[str, Any] = {
        "time": format_timestamp(publication.time),
        "state": publication.state,
        "external_limits": publication.external_limits,
    }
    return json.dumps(record, allow_nan=False)


class JsonlSink:
    def __init__(
        self,
        output: JsonlOutput,
        *,
        backoff: BackoffPolicy | None = None,
        activity: ActivityFeed | None = None,
    ) -> None:
        self.output = output
        self.activity = activity if activity is not None else ActivityFeed()
        self.name = f"jsonl[{output.path if output.path is not None else 'stdout'}]"
        self._backoff_policy = backoff

    async def run(self, latest: LatestValue[Publication]) -> None:
        backoff = Backoff(self._backoff_policy)
        written_version = 0
        while True:
            version = 0
            try:
                stream = await trio.to_thread.run_sync(self._open)
                try:
                    backoff.connected()
                    self.activity.record("sink", sink=self.name, event="connected")
                    while True:
                        # wait_newer(0) returns the current value at once, so a (re)opened
                        # file starts with the limits in force.
                        version, publication = await latest.wait_newer(written_version)
                        line = jsonl_line(publication) + "\n"
                        await trio.to_thread.run_sync(_write_and_flush, stream, line)
                        written_version = version
                        record_delivery(self.activity, self.name, version, None)
                finally:
                    if stream is not sys.stdout:
                        stream.close()
            except OSError as exc:
                # A full disk, a vanished directory or a closed stdout: keep trying, the rest
                # of the bridge must not stop over its record of limits.
                delay = backoff.next_delay()
                logger.error("%s: cannot write: %s; retrying in %.1f s", self.name, exc, delay)
                if version:
                    record_delivery(self.activity, self.name, version, str(exc))
                self.activity.record("sink", sink=self.name, event="disconnected", reason=str(exc))
                written_version = 0
                await trio.sleep(delay)

    def _open(self) -> TextIO:
        if self.output.path is None:
            return sys.stdout
        return self.output.path.open("a", encoding="utf-8")


def _write_and_flush(stream: TextIO, line: str) -> None:
    stream.write(line)
    stream.flush()
