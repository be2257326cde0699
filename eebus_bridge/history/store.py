"""The durable history: every `Activity` of the feed in one SQLite file.

Why SQLite (stdlib `sqlite3`) in WAL mode: one file that a crash cannot break (a killed writer
leaves at worst an unfinished transaction that SQLite rolls back at the next open), readers
(`eebus-bridge history`, the status page) that never block the writer, and indexes for "what
happened between A and B".

Writing stays off the event path: `HistoryStore.observe` only appends to a list; `run` (a Trio
task) wakes when something arrived, waits `batch_s` (0.5 s) so that a burst becomes one
transaction, and commits the batch in a worker thread. So a crash loses at most the last
second, and no approval or publication ever waits for the disk.

Choices where the issue is silent (written down here, as design.md asks):

- Schema: one table `activity(id, time_ms, kind, fields)`; `fields` is the activity's JSON
  object. New activity fields need no migration; `PRAGMA user_version` carries the schema
  version (a file from a newer bridge is refused, not altered).
- `synchronous = FULL`: a batch that was committed also survives a power cut. It costs one
  fsync per batch, and batches only happen when something happened (never on an idle tick).
- Failures (full disk, read-only file or folder, a file that is not a database) never reach the
  bridge: the batch stays queued (at most `MAX_PENDING` records, the oldest dropped first), the
  store logs one error per minute and tries again with the next batch or after `RETRY_S`.
- Retention deletes rows older than `retention_days` at start and then every hour.
- Another process holding the file's write lock (a backup, a long query) is waited for 1 s per
  attempt; at shutdown the last write gives up after `CLOSE_S`, so a locked file or a hung disk
  never stretches the bridge's 2 s shutdown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, cast

import trio

from eebus_bridge.activity import Activity, ActivityKind

log = logging.getLogger("eebus_bridge.history")

SCHEMA_VERSION: Final = 1
BATCH_S: Final = 0.5  # gather a burst into one transaction; keeps crash loss under 1 s
RETRY_S: Final = 5.0  # after a failed write, try again this soon even without new records
ERROR_LOG_INTERVAL_S: Final = 60.0  # one error line per minute while writing fails
PRUNE_INTERVAL_S: Final = 3600.0
BUSY_TIMEOUT_S: Final = 1.0  # wait this long for another process's lock on the file
CLOSE_S: Final = 0.8  # the last write at shutdown may take this long
MAX_PENDING: Final = 10_000  # records kept in memory while the file cannot be written (~5 MB)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS activity (
    id      INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,   -- UTC, milliseconds since the Unix epoch
    kind    TEXT    NOT NULL,   -- an ActivityKind
    fields  TEXT    NOT NULL    -- the activity's fields as a JSON object
);
CREATE INDEX IF NOT EXISTS activity_by_time ON activity (time_ms);
CREATE INDEX IF NOT EXISTS activity_by_kind_time ON activity (kind, time_ms);
"""

Connect = Callable[[Path], sqlite3.Connection]


class HistoryFileError(Exception):
    """The history file exists but cannot be used (newer schema, not a database)."""


def to_ms(moment: datetime) -> int:
    """UTC milliseconds since the epoch; a naive datetime counts as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp() * 1000)


def from_ms(time_ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=time_ms)


def _json_default(value: Any) -> Any:
    """Fields are meant to be JSON-friendly; anything else (a datetime, an enum) as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    enum_value = getattr(value, "value", None)
    if isinstance(enum_value, str | int | float):
        return enum_value
    return str(value)


_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)


def _encode_fields(fields: dict[str, Any]) -> str:
    return _ENCODER.encode(fields)


def connect_for_writing(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are explicit (BEGIN ... COMMIT) below.
    connection = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        _prepare(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _prepare(connection: sqlite3.Connection) -> None:
    """WAL, FULL sync, and the schema (created, or checked when the file already has one)."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise HistoryFileError(
            f"written by a newer eebus-bridge (schema {version}, this one knows {SCHEMA_VERSION})"
        )
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")
    connection.execute("PRAGMA synchronous = FULL")
    if version < SCHEMA_VERSION:
        connection.execute("BEGIN IMMEDIATE")
        try:
            _create_schema(connection)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.rollback()
            raise


def _create_schema(connection: sqlite3.Connection) -> None:
    # executescript() would COMMIT first; run the statements one by one inside our transaction.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            connection.execute(statement)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class HistoryStore:
    """The history writer. Subscribe `observe` to the ActivityFeed and run `run` as a task.

    `connect` opens (and prepares) the file; tests pass one that fails like a full disk.
    """

    def __init__(
        self,
        path: Path,
        retention_days: float,
        *,
        batch_s: float = BATCH_S,
        connect: Connect = connect_for_writing,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.path = path
        self.retention_days = retention_days
        self.batch_s = batch_s
        self._connect = connect
        self._max_pending = max_pending
        self._pending: list[Activity] = []
        self._arrived = trio.Event()
        self._connection: sqlite3.Connection | None = None
        self._last_error_logged: float | None = None
        self._failing_since: float | None = None
        self.written = 0  # rows committed since start, for status and tests
        self.dropped = 0  # rows lost because the file could not be written for too long
        self.failures = 0  # failed write attempts
        self.last_error: str | None = None  # None while writing works
        self.prunes = 0  # completed retention passes
        self.pruned = 0  # rows the retention passes deleted

    # ------------------------------------------------------------------ the event path

    def observe(self, activity: Activity) -> None:
        """ActivityFeed observer: only queues it (the worker thread encodes and writes), so it
        never blocks and never touches the disk.

        Called in the Trio thread (the runtime records there), before or while `run` runs.
        """
        self._pending.append(activity)
        if len(self._pending) > self._max_pending:
            self._drop_oldest()
        self._arrived.set()

    # ------------------------------------------------------------------ the writer task

    async def run(self) -> None:
        """Flush batches in a worker thread; prune hourly; never raises for file trouble.

        Call `aclose` after it ended: it writes what came in meanwhile (the bridge's "stop").
        """
        next_prune = trio.current_time()  # retention runs at start too
        while True:
            retry_at = math.inf if self._failing_since is None else trio.current_time() + RETRY_S
            with trio.move_on_at(min(next_prune, retry_at)):
                await self._arrived.wait()
                await trio.sleep(self.batch_s)  # let a burst gather into one transaction
            prune = trio.current_time() >= next_prune
            await self._flush(prune=prune)
            if prune:
                next_prune = trio.current_time() + PRUNE_INTERVAL_S

    async def aclose(self) -> None:
        """Write what is queued and close the file; shielded, and at most CLOSE_S even when
        the file is locked or the disk hangs (the bridge's shutdown budget is 2 s)."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_S):
                await self._flush(prune=False)
            await self._close()

    async def _flush(self, *, prune: bool) -> None:
        self._arrived = trio.Event()
        batch = self._pending
        self._pending = []
        if not batch and not prune:
            return
        cutoff_ms = to_ms(datetime.now(UTC) - timedelta(days=self.retention_days))
        # The worker thread owns the connection while it writes; it comes back on success.
        connection, self._connection = self._connection, None
        try:
            self._connection, deleted = await trio.to_thread.run_sync(
                self._write,
                connection,
                batch,
                cutoff_ms if prune else None,
                abandon_on_cancel=True,
            )
        except (sqlite3.Error, OSError, HistoryFileError) as exc:
            self._pending[:0] = batch  # keep them, oldest first, for the next attempt
            self._drop_oldest()
            self._failed(exc)
            return
        # Cancelled (shutdown while the disk is stuck): the thread finishes or not on its own,
        # with its connection and the batch; re-queueing it could write it twice.
        self.written += len(batch)
        if prune:
            self.prunes += 1
            self.pruned += deleted
        if self._failing_since is not None:
            log.warning(
                "history: writing to %s works again (%d failed attempts)",
                self.path,
                self.failures,
            )
        self._failing_since = None
        self.last_error = None

    def _write(
        self,
        connection: sqlite3.Connection | None,
        batch: Sequence[Activity],
        prune_before_ms: int | None,
    ) -> tuple[sqlite3.Connection, int]:
        """In a worker thread: one transaction for the batch and the retention delete. Returns
        the connection (opened here when None) and the number of rows deleted; on failure the
        connection is closed, so the next attempt opens the file afresh."""
        rows = [(to_ms(a.time), a.kind, _encode_fields(a.fields)) for a in batch]
        if connection is None:
            connection = self._connect(self.path)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(
                "INSERT INTO activity (time_ms, kind, fields) VALUES (?, ?, ?)", rows
            )
            deleted = 0
            if prune_before_ms is not None:
                deleted = connection.execute(
                    "DELETE FROM activity WHERE time_ms < ?", (prune_before_ms,)
                ).rowcount
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if connection.in_transaction:
                    connection.rollback()
                connection.close()
            raise
        return connection, deleted

    def _drop_oldest(self) -> None:
        overflow = len(self._pending) - self._max_pending
        if overflow > 0:
            del self._pending[:overflow]
            self.dropped += overflow

    def _failed(self, exc: BaseException) -> None:
        now = trio.current_time()
        self.failures += 1
        self.last_error = _describe_error(exc)
        if self._failing_since is None:
            self._failing_since = now
        if self._last_error_logged is None or now - self._last_error_logged >= ERROR_LOG_INTERVAL_S:
            self._last_error_logged = now
            log.error(
                "history: cannot write %s: %s; %d record(s) waiting, %d dropped; "
                "the bridge keeps running and retries",
                self.path,
                self.last_error,
                len(self._pending),
                self.dropped,
            )

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
                await trio.to_thread.run_sync(connection.close)


# ---------------------------------------------------------------------- reading


def _open_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)


def read_history(
    path: Path,
    since: datetime,
    until: datetime | None = None,
    kinds: Collection[str] | None = None,
    *,
    context: bool = False,
) -> list[Activity]:
    """The activities with since <= time < until (until None = to the end), oldest first.

    Synchronous (callers run it in a thread); opens the file read-only, so it never blocks or
    alters the writer. A missing file gives []. With `context`, the last "bridge", "state" and
    "publication" records before `since` come first, so that a chart or a period table knows
    what was in force at `since` (nothing, when the bridge had stopped). Raises
    HistoryFileError for a file that is not a usable history.
    """
    if not path.exists():
        return []
    since_ms = to_ms(since)
    until_ms = None if until is None else to_ms(until)
    try:
        connection = _open_read_only(path)
    except sqlite3.Error as exc:
        raise HistoryFileError(f"{path}: {exc}") from None
    try:
        if connection.execute("PRAGMA user_version").fetchone()[0] == 0:
            return []  # created but never written: no schema yet
        rows: list[tuple[int, str, str]] = []
        if context:
            for kind in ("bridge", "state", "publication"):
                if kinds is None or kind in kinds:
                    rows += connection.execute(
                        "SELECT time_ms, kind, fields FROM activity "
                        "WHERE kind = ? AND time_ms < ? ORDER BY time_ms DESC, id DESC LIMIT 1",
                        (kind, since_ms),
                    ).fetchall()
            rows.sort(key=lambda row: row[0])
        query = "SELECT time_ms, kind, fields FROM activity WHERE time_ms >= ?"
        parameters: list[Any] = [since_ms]
        if until_ms is not None:
            query += " AND time_ms < ?"
            parameters.append(until_ms)
        if kinds is not None:
            wanted = sorted(set(kinds))
            query += f" AND kind IN ({', '.join('?' for _ in wanted)})"
            parameters += wanted
        rows += connection.execute(query + " ORDER BY time_ms, id", parameters).fetchall()
    except sqlite3.Error as exc:
        raise HistoryFileError(f"{path}: {exc}") from None
    finally:
        connection.close()
    return [
        Activity(kind=cast(ActivityKind, kind), time=from_ms(time_ms), fields=json.loads(fields))
        for time_ms, kind, fields in rows
    ]
