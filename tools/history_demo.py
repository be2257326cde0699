"""Fill a history file with a plausible week of §14a control, to try `eebus-bridge report`.

    python -m tools.history_demo FILE [--days 7] [--end 2026-11-29T12:00Z]

Every evening the grid operator's control box dims the charger to 4.2 kW for two to three hours
(a timed limit that expires), once a week it asks for 6 kW then 3 kW, one night its heartbeat
is lost for 40 minutes (Failsafe), one write is invalid (denied), and the sidecar restarts once.
The records go through the real HistoryStore, so the file is exactly what a bridge would write.
Used for the README screenshot (docs/report.png).
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from eebus_bridge.activity import Activity, ActivityKind
from eebus_bridge.history import HistoryStore
from eebus_bridge.history.listing import parse_moment

CONTROL_BOX = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"
FAILSAFE_W = 4200.0


class _Week:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.records: list[Activity] = []
        self.version = 0
        self.state = "Init"

    def add(self, kind: ActivityKind, when: datetime, **fields: Any) -> None:
        self.records.append(Activity(kind, when, fields))

    def publish(self, when: datetime, state: str, limit_W: float | None, **extra: Any) -> None:
        self.version += 1
        self.add(
            "publication",
            when,
            version=self.version,
            state=state,
            limit_W=limit_W,
            end_time=extra.get("end_time"),
            latency_s=extra.get("latency_s"),
        )
        delay = timedelta(milliseconds=self.rng.uniform(3, 25))
        self.add(
            "delivery", when + delay, sink="everest-api", version=self.version, ok=True, error=None
        )

    def change(
        self, when: datetime, new: str, rule: str, limit_W: float | None, **extra: Any
    ) -> None:
        self.add("state", when, old=self.state, new=new, rule=rule)
        self.state = new
        self.publish(when, new, limit_W, **extra)

    def write(self, when: datetime, value: float, *, active: bool = True, hours: float = 0) -> bool:
        approved = value >= 0
        self.add(
            "write",
            when,
            ski=CONTROL_BOX,
            msg_counter=len(self.records),
            value_W=value,
            active=active,
            duration_s=hours * 3600 or None,
            approved=approved,
            reason="" if approved else "LPC-001: Active Power Consumption Limit must be >= 0 W",
        )
        return approved


def demo_week(end: datetime, days: int, seed: int = 14) -> list[Activity]:
    rng = random.Random(seed)
    start = (end - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    week = _Week(rng)
    week.add("bridge", start, event="start")
    week.publish(start, "Init", FAILSAFE_W)
    week.add("connection", start + timedelta(seconds=2), event="up", endpoint="localhost:50051")
    first = start + timedelta(seconds=7)
    week.add("eg", first, event="active", ski=CONTROL_BOX)
    week.write(first, 32000.0, active=False)
    week.change(first, "Unlimited/controlled", "LPC-902/905", None, latency_s=0.004)
    for day in range(days):
        evening = start.replace(hour=0) + timedelta(days=day, hours=17, minutes=rng.randrange(60))
        if evening <= first:
            continue
        latency = round(rng.uniform(0.002, 0.009), 4)
        if day == 3:  # the odd day: a stricter limit, a faulty write, then Failsafe at night
            week.write(evening, 6000.0)
            week.change(evening, "Limited", "LPC-910", 6000.0, latency_s=latency)
            later = evening + timedelta(hours=1, minutes=10)
            week.write(later, 3000.0)
            week.publish(later, "Limited", 3000.0, latency_s=latency)
            week.write(later + timedelta(minutes=20), -300.0)
            back = later + timedelta(hours=1, minutes=5)
            week.write(back, 32000.0, active=False)
            week.change(back, "Unlimited/controlled", "LPC-908/909", None, latency_s=latency)
            night = back + timedelta(hours=6, minutes=12)
            week.add("eg", night, event="heartbeat_lost", ski=CONTROL_BOX)
            week.change(night, "Failsafe", "LPC-912", FAILSAFE_W)
            returned = night + timedelta(minutes=38)
            week.add("eg", returned, event="heartbeat_back", ski=CONTROL_BOX)
            recovered = returned + timedelta(minutes=2)
            week.change(recovered, "Unlimited/autonomous", "LPC-921", None)
            week.add("eg", recovered, event="released", ski=CONTROL_BOX)
            continue
        hours = rng.choice((2.0, 2.5, 3.0))
        end_time = evening + timedelta(hours=hours)
        week.write(evening, 4200.0, hours=hours)
        rule = "LPC-910" if week.state == "Unlimited/controlled" else "LPC-918..920"
        week.change(
            evening, "Limited", rule, 4200.0, end_time=end_time.isoformat(), latency_s=latency
        )
        week.change(end_time, "Unlimited/controlled", "LPC-908/909", None)
        if day == 5:
            crash = end_time + timedelta(hours=3, minutes=41)
            reason = "SidecarExited: eebus_grpc_api exited with status 2"
            week.add("sidecar", crash, event="exit", pid=4242, reason=reason)
            week.add("connection", crash, event="lost", reason=reason)
            week.add("sidecar", crash, event="restart", delay_s=5.0, reason=reason)
            week.add("sidecar", crash + timedelta(seconds=5), event="start", pid=4311)
            week.add(
                "connection", crash + timedelta(seconds=6), event="up", endpoint="localhost:50051"
            )
    return [r for r in week.records if r.time < end]


async def _write(path: Path, records: list[Activity]) -> None:
    store = HistoryStore(path, retention_days=400)
    for record in records:
        store.observe(record)
    await store.aclose()  # writes everything queued in one transaction
    if store.last_error is not None:
        raise SystemExit(f"cannot write {path}: {store.last_error}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("file", type=Path)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--end", default="now", help="end of the week (default: now)")
    args = parser.parse_args(argv)
    records = demo_week(parse_moment(args.end, datetime.now(UTC)), args.days)
    trio.run(_write, args.file, records)
    print(f"wrote {len(records)} records to {args.file}")


if __name__ == "__main__":
    main()
