"""Keep Python's cyclic garbage collector off the heap built before refinement.

By refinement time the process holds ~300k long-lived objects (jax, flax, compiled programs, caches). The
advisor's host work (HTTP, prompts, answers) allocates fast enough to trigger full collections, and each one
rescans that whole heap: 0.13-0.18 s of CPU with the GIL held (one per MountainCar refinement with advice, on a
2-core CPU), taken from the device's threads. Freezing the heap (`gc.freeze`) moves those objects to a generation
the collector never scans; new objects are collected as usual.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze every object alive now for the duration of the block; unfreeze afterwards unless the
    caller had frozen objects already (their choice is kept)."""
    already = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not already:
            gc.unfreeze()
