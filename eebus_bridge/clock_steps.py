"""Wall-clock steps: knowing when the published timestamps went wrong (issue 13.3).

Deadlines are monotonic, but the ExternalLimits EVerest gets carry wall-clock timestamps
(spec/everest.md): the schedule's first entry at "now" and, for a timed limit, a second entry at
its end. Charger boards often boot with a wrong clock that NTP steps minutes or years later;
after such a step EVerest would hold a limit that starts in the future or ends at the wrong time.
The lpc task therefore remembers the offset between the wall and the monotonic clock that its
last publication used, and re-publishes the same limits (the same monotonic end) with the
corrected clock when that offset moved by more than STEP_THRESHOLD_S.

When to compare, without polling: the offset only moves when the wall clock is *set* (settimeofday,
clock_settime, an NTP step, a resume from suspend). Slewing (adjtime, NTP's normal mode) changes
the rate of the monotonic clock exactly as it changes the wall clock's, so it never moves the
offset. On Linux the kernel reports every set to a `timerfd` on CLOCK_REALTIME armed with
TFD_TIMER_CANCEL_ON_SET: a read then fails with ECANCELED. `KernelClockChanges` waits on that fd
with Trio's I/O wait, so an idle bridge spends no CPU on this at all; the timer's own expiry
(once a day) only re-arms it. Where no timerfd is available (not Linux, or a sandbox that
forbids it), `PeriodicClockCheck` compares every FALLBACK_CHECK_S instead: one clock read per
10 s, a cost too small to measure.

A comparison also runs right after every (re-)arming, so that a step between a wake-up and
the re-arming is not lost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import time
from typing import Protocol

import trio

log = logging.getLogger("eebus_bridge.lpc")

STEP_THRESHOLD_S = 2.0  # a larger move of wall - monotonic is a step (issue 13.3)
FALLBACK_CHECK_S = 10.0
KERNEL_TIMER_HORIZON_S = 86400.0

_CLOCK_REALTIME = 0
_TFD_TIMER_ABSTIME = 1
_TFD_TIMER_CANCEL_ON_SET = 2


class ClockChanges(Protocol):
    """Something to wait on until the wall clock may have been set."""

    async def wait(self) -> None: ...

    def close(self) -> None: ...


class PeriodicClockCheck:
    """The fallback: 'maybe' every `interval_s` seconds."""

    def __init__(self, interval_s: float = FALLBACK_CHECK_S) -> None:
        self.interval_s = interval_s

    async def wait(self) -> None:
        await trio.sleep(self.interval_s)

    def close(self) -> None:
        pass


class _Timespec(ctypes.Structure):
    # `long` for time_t is the ABI of glibc's plain timerfd_settime symbol on 32- and 64-bit.
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class KernelClockChanges:
    """Linux: a CLOCK_REALTIME timerfd with TFD_TIMER_CANCEL_ON_SET (see the module docstring)."""

    def __init__(self, fd: int, libc: ctypes.CDLL, horizon_s: float) -> None:
        self._fd = fd
        self._libc = libc
        self._horizon_s = horizon_s
        self._arm()

    @classmethod
    def open(cls, horizon_s: float = KERNEL_TIMER_HORIZON_S) -> KernelClockChanges | None:
        """The kernel's notifications, or None where this system has none."""
        name = ctypes.util.find_library("c")
        if name is None or not hasattr(os, "O_CLOEXEC"):
            return None
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            create = libc.timerfd_create
        except (OSError, AttributeError):
            return None
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        create.restype = ctypes.c_int
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        ]
        libc.timerfd_settime.restype = ctypes.c_int
        fd = create(_CLOCK_REALTIME, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        try:
            return cls(fd, libc, horizon_s)
        except OSError:
            os.close(fd)
            return None

    def _arm(self) -> None:
        expiry = time.time() + self._horizon_s
        spec = _Itimerspec()
        spec.it_value.tv_sec = int(expiry)
        spec.it_value.tv_nsec = int((expiry % 1) * 1e9)
        flags = _TFD_TIMER_ABSTIME | _TFD_TIMER_CANCEL_ON_SET
        if self._libc.timerfd_settime(self._fd, flags, ctypes.byref(spec), None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"timerfd_settime: {os.strerror(code)}")

    async def wait(self) -> None:
        """Return after the clock was set (or the timer's horizon passed), re-armed."""
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                os.read(self._fd, 8)  # the timer expired: re-arm, nothing was set
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.ECANCELED:
                    raise
            self._arm()
            return

    def close(self) -> None:
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1


def open_clock_changes() -> ClockChanges:
    """The kernel's notifications where available, else the periodic check."""
    kernel = KernelClockChanges.open()
    if kernel is not None:
        return kernel
    log.info(
        "no kernel notification of wall-clock changes here: checking every %g s instead",
        FALLBACK_CHECK_S,
    )
    return PeriodicClockCheck()
