"""JAX's persistent compilation cache, with entries that fail to load replaced.

How jax 0.10.2 uses the cache (`jax/_src/compiler.py`, `compilation_cache.py`, `lru_cache.py`): before compiling, it
reads `<dir>/<key>-cache` (`LRUCache.get`), decompresses it and asks the backend to deserialize the executable; if any
of that raises, it warns ("Error reading persistent compilation cache entry"), compiles, and calls `LRUCache.put`,
which returns without writing when the file exists. So a junk or corrupted entry is never replaced, and every later
run compiles that program again.

`enable(path)` turns the cache on and wraps jax's cache object in `ReplacingCache` (jaxmod's choice): jax asks to
store a key it was just served only when the served entry failed to load (a loaded one is not compiled again), so
`put` then removes the bad file first and the fresh executable is written; the next run loads it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
from jax._src import compilation_cache
from jax._src.compilation_cache_interface import CacheInterface

MIN_COMPILE_TIME_S = 0.5  # programs that compile faster than this are not cached (jaxmod's choice)
CACHE_SUFFIX = "-cache"  # jax's LRUCache names an entry <key>-cache

log = logging.getLogger("jaxmod.compile_cache")


class ReplacingCache(CacheInterface):
    """jax's cache (`base`), whose entries that were served but failed to load are replaced by the next `put`.
    `served`: keys read this process; `replaced`: the files replaced."""

    def __init__(self, base: CacheInterface) -> None:
        self._base = base
        self.served: set[str] = set()
        self.replaced: list[Path] = []

    @property
    def _path(self):  # pyrefly: ignore[bad-override]
        return self._base._path

    @_path.setter
    def _path(self, value) -> None:
        self._base._path = value

    def get(self, key: str) -> bytes | None:
        value = self._base.get(key)
        if value is not None:
            self.served.add(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if key in self.served:  # served, yet compiled again: the entry did not load
            path = Path(str(self._base._path)) / f"{key}{CACHE_SUFFIX}"
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            else:
                self.replaced.append(path)
                log.warning("replaced the compile-cache entry %s, which failed to load", path)
            self.served.discard(key)
        self._base.put(key, value)

    def clear(self) -> None:
        self._base.clear()


def enable(path: str | Path, min_compile_time_s: float = MIN_COMPILE_TIME_S) -> ReplacingCache | None:
    """Cache compiled programs in `path` (programs compiling in under `min_compile_time_s` seconds are not stored);
    returns the cache (None where jax keeps none). jax initializes its cache once per process: a later call with
    another `path` keeps the first."""
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    compilation_cache._initialize_cache()
    cache = compilation_cache._cache
    if cache is not None and not isinstance(cache, ReplacingCache):
        cache = compilation_cache._cache = ReplacingCache(cache)
    return cache
