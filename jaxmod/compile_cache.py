"""JAX's persistent compilation cache, with entries that fail to load removed (and so written again), and an
unusable cache folder reported in one line instead of a traceback.

How jax 0.10.2 uses the cache (`jax/_src/compiler.py`, `compilation_cache.py`, `lru_cache.py`): before compiling,
`compilation_cache.get_executable_and_time` reads `<dir>/<key>-cache` (`LRUCache.get`), decompresses it and asks the
backend to deserialize the executable; if any of that raises (junk, a truncated file, a folder or an unreadable file
in the entry's place), jax warns ("Error reading persistent compilation cache entry"), compiles, and, only when the
compile took at least `jax_persistent_cache_min_compile_time_secs`, calls `LRUCache.put`, which returns without
writing when the file exists. So a bad entry is never replaced, and every later run warns and compiles that program
again.

`enable(path)` (jaxmod's choice):
- checks the folder first: one that is a file, lies under a file or cannot be written is one `warn` line naming it
  and the run goes on without the cache (the cache only saves time);
- turns the cache on and wraps jax's cache object in `ReplacingCache`, and wraps jax's read of an entry so that an
  entry that fails to read or load, whatever the reason, is removed at once (one log line). The program is then
  compiled; a slow one is written again by jax (the next run loads it), a fast one (under `MIN_COMPILE_TIME_S`) is
  not cached at all, as if its entry had never been there: no bad entry outlives the run that met it.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
from jax._src import compilation_cache
from jax._src.compilation_cache_interface import CacheInterface

MIN_COMPILE_TIME_S = 0.5  # programs that compile faster than this are not cached (jaxmod's choice)
CACHE_SUFFIX = "-cache"  # jax's LRUCache names an entry <key>-cache

log = logging.getLogger("jaxmod.compile_cache")


class ReplacingCache(CacheInterface):
    """jax's cache (`base`) whose bad entries can be dropped (`drop`); a key served this process and then stored
    again (its entry did not load) has its old file removed before the store. `replaced`: the files removed."""

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

    def drop(self, key: str) -> None:
        """Remove the entry of `key` (a file, or whatever stands in its place), logging one line."""
        path = Path(str(self._base._path)) / f"{key}{CACHE_SUFFIX}"
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return
        except OSError as err:
            log.warning("the compile-cache entry %s failed to load and cannot be removed (%s)", path, err.strerror)
            return
        self.replaced.append(path)
        log.warning("removed the compile-cache entry %s, which failed to load (the program is compiled and stored "
                    "again)", path)

    def put(self, key: str, value: bytes) -> None:
        if key in self.served:  # served, yet compiled again: the entry did not load
            self.drop(key)
            self.served.discard(key)
        self._base.put(key, value)

    def clear(self) -> None:
        self._base.clear()


def _dropping_bad_entries(read: Callable) -> Callable:
    """jax's `get_executable_and_time`, dropping the entry when reading, decompressing or loading it raises (jax then
    warns and compiles as before)."""

    @functools.wraps(read)
    def get_executable_and_time(cache_key, *args, **kwargs):
        try:
            return read(cache_key, *args, **kwargs)
        except Exception:
            cache = compilation_cache._cache
            if isinstance(cache, ReplacingCache):
                cache.drop(cache_key)
            raise

    get_executable_and_time.jaxmod_drops_bad_entries = True  # type: ignore[attr-defined]
    return get_executable_and_time


def unusable(path: str | Path) -> str | None:
    """Why the folder `path` cannot hold the cache (a file, under a file, not writable), or None when it can (it is
    created if missing)."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            return "is a file, not a folder"
        parent = path
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            return f"lies under the file {str(parent)!r}"
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(dir=path, prefix=".jaxmod-probe-").cleanup()  # root passes os.access: try it
    except OSError as err:
        return f"cannot be written ({err.strerror or type(err).__name__})"
    return None


def enable(path: str | Path, min_compile_time_s: float = MIN_COMPILE_TIME_S, name: str | None = None,
           warn: Callable[[str], None] | None = None) -> ReplacingCache | None:
    """Cache compiled programs in `path` (programs compiling in under `min_compile_time_s` seconds are not stored);
    returns the cache (None where jax keeps none). A folder that cannot hold the cache (`unusable`) is one line to
    `warn` (default: this module's logger) naming it (as `name`, e.g. the environment variable that set it) and
    leaves the cache off. jax initializes its cache once per process: a later call with another `path` keeps the
    first."""
    why = unusable(path)
    if why is not None:
        (warn or log.warning)(f"{name or 'the compile cache folder'} {str(path)!r} {why}: running without the "
                              "compile cache (every program is compiled)")
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    compilation_cache._initialize_cache()
    cache = compilation_cache._cache
    if cache is not None and not isinstance(cache, ReplacingCache):
        cache = compilation_cache._cache = ReplacingCache(cache)
    read = compilation_cache.get_executable_and_time
    if not getattr(read, "jaxmod_drops_bad_entries", False):
        compilation_cache.get_executable_and_time = _dropping_bad_entries(read)
    return cache
