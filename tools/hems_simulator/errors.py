"""Exception groups from nurseries, unwrapped where the caller expects plain exceptions.

The context managers here (open_hems_simulator, open_simulator_process) run nurseries and
trio-asyncio loops around the caller's block; each of them wraps whatever escapes in an
ExceptionGroup. A test that expects `trio.TooSlowError` from its own block should get exactly
that, so a group holding one exception (possibly nested) is replaced by that exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def lone_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The single leaf exception of a chain of one-member groups, else None."""
    current: BaseException = group
    while isinstance(current, BaseExceptionGroup):
        if len(current.exceptions) != 1:
            return None
        current = current.exceptions[0]
    return current


@contextmanager
def unwrapped_exception_groups() -> Iterator[None]:
    try:
        yield
    except BaseExceptionGroup as group:
        single = lone_exception(group)
        if single is None:
            raise
        raise single from None
