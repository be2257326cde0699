"""Start-up objects out of the garbage collector's full passes.

A long-running process of ours (the bridge, the EVerest module, the HEMS simulator, the
benchmark's minimal client) builds most of its objects while it starts: modules, classes,
functions, the configuration. They live as long as the process, yet every full (generation 2)
pass of the collector scans them all: 15-33 ms each on the benchmark machine, a pause that
delays whatever event or answer is in flight. `gc.freeze()` moves them to the permanent
generation, which full passes skip; everything built later is collected as before.
"""

from __future__ import annotations

import gc


def freeze_start_up() -> None:
    """Call once start-up is done: collect what it left as garbage, freeze the rest."""
    gc.collect()
    gc.freeze()
