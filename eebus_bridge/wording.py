"""How the bridge words what it did, for log lines people read (issue 13.5).

Text log lines are plain sentences that say everything once (`write 2 from <ski> approved:
100 W for 1 h 2 min 3 s`), never placeholders such as `-`. The same facts go to
`--log-format json` as structured fields (logs.py); text output shows only the sentence.
"""

from __future__ import annotations

import math

from eebus_bridge.lpc import Answer, SidecarLimit, StateChanged

UNKNOWN_SKI = "an unknown EG"  # "" = source unknown (a re-read after a reconnect, not an event)


def format_duration(seconds: float) -> str:
    """`1 h 2 min 3 s`, `45 s`, `0.25 s`, `2 h`; zero parts left out, milliseconds kept."""
    if not math.isfinite(seconds):
        return f"{seconds} s"
    sign = "-" if seconds < 0 else ""
    millis = round(abs(seconds) * 1000)
    whole, fraction = divmod(millis, 1000)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} min")
    if secs or fraction or not parts:
        parts.append(f"{secs}.{fraction:03d}".rstrip("0").rstrip(".") + " s")
    return sign + " ".join(parts)


def describe_limit(limit: SidecarLimit) -> str:
    """A written LoadLimit: `100 W for 1 h 2 min 3 s`, `100 W with no end`, `limit off`."""
    if not limit.is_active:
        return f"limit off ({limit.value:g} W inactive)"
    if limit.duration_s == 0:
        return f"{limit.value:g} W with no end"
    if limit.duration_s < 0:
        return f"{limit.value:g} W already expired {format_duration(-limit.duration_s)} ago"
    return f"{limit.value:g} W for {format_duration(limit.duration_s)}"


def describe_answer(answer: Answer, ski: str, limit: SidecarLimit | None) -> str:
    """`write 2 from <ski> approved: 100 W for 1 h 2 min 3 s`, or `... denied: ... (reason)`."""
    source = ski or UNKNOWN_SKI
    verdict = "approved" if answer.approve else "denied"
    what = "" if limit is None else f": {describe_limit(limit)}"
    reason = f" ({answer.reason})" if answer.reason else ""
    return f"write {answer.msg_counter} from {source} {verdict}{what}{reason}"


def describe_state_change(change: StateChanged) -> str:
    """`state Init -> Limited (LPC-904)`."""
    return f"state {change.old.value} -> {change.new.value} ({change.rule})"
