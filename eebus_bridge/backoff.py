"""Retry delays: exponential, capped, jittered, reset once healthy.

Used by every sink and by the supervisor's restarts of the sidecar connection. A bridge runs
unattended for years next to a broker, RpcApi server or sidecar that restarts now and then.
Retrying at once would hammer a peer that is still coming up; retrying on a fixed slow tick
would leave EVerest without limits for longer than needed. So the first retry comes quickly,
later ones back off to a cap, and a connection that stayed up for a while counts as a fresh
start. Jitter keeps several sinks (or bridges) from reconnecting in lockstep.
"""

from __future__ import annotations

import random

import attrs
import trio


@attrs.frozen
class BackoffPolicy:
    """Delay parameters; tests shorten them, production uses the defaults."""

    initial_s: float = 0.5
    maximum_s: float = 30.0
    healthy_s: float = 30.0  # a connection up at least this long resets the delay
    jitter: float = 0.2  # +-20 % of each delay


class Backoff:
    """The delay state of one reconnecting loop (uses Trio's clock, so MockClock works)."""

    def __init__(
        self, policy: BackoffPolicy | None = None, *, rng: random.Random | None = None
    ) -> None:
        self.policy = policy if policy is not None else BackoffPolicy()
        self._random = rng if rng is not None else random.Random()
        self._delay_s: float | None = None
        self._up_since: float | None = None

    def connected(self) -> None:
        """Record that a connection just came up (call when it is usable, not when dialling)."""
        self._up_since = trio.current_time()

    def reset(self) -> None:
        """Forget earlier failures: the next delay is the initial one."""
        self._delay_s = None
        self._up_since = None

    def next_delay(self) -> float:
        """The delay before the next attempt; call once per failure."""
        policy = self.policy
        if self._up_since is not None:
            if trio.current_time() - self._up_since >= policy.healthy_s:
                self._delay_s = None
            self._up_since = None
        if self._delay_s is None:
            self._delay_s = policy.initial_s
        else:
            self._delay_s = min(self._delay_s * 2.0, policy.maximum_s)
        spread = self._delay_s * policy.jitter
        # Jitter never takes a delay past the maximum (at the cap it only shortens it).
        jittered = self._delay_s + self._random.uniform(-spread, spread)
        return max(0.0, min(jittered, policy.maximum_s))
