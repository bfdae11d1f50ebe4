"""The persistent compile cache: an entry that fails to load is replaced, and the next run loads it; a fast
program's bad entry is removed; an unusable cache folder is one warning line and a run without the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

# one process = one run: jax reads the persistent cache once per program and process
RUN = """
import json, os, jax, jax.numpy as jnp
from jaxmod.cli import _enable_compile_cache
from jax._src import compilation_cache
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
_enable_compile_cache()  # the product's path ($JAXMOD_CACHE_DIR)
# 0: cache this tiny program too; a huge value: a program too fast to be cached
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["MIN_S"]))
f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x) * 3.0) @ x)
print(json.dumps({"value": float(f(jnp.arange(64.0))),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "writes": events.count("/jax/compilation_cache/cache_misses"),
                  "replaced": [str(p) for p in getattr(compilation_cache._cache, "replaced", [])]}))
"""


def _run(cache: Path, min_s: float = 0.0) -> tuple[dict, str]:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "JAXMOD_CACHE_DIR": str(cache), "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu",
           "MIN_S": str(min_s)}
    proc = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, env=env, timeout=200)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_a_junk_cache_entry_is_replaced_and_then_loaded(tmp_path):
    cache = tmp_path / "xla"
    first, _ = _run(cache)
    assert first["hits"] == 0 and first["writes"] >= 1
    entries = sorted(cache.glob("*-cache"))
    assert entries
    for e in entries:
        e.write_bytes(b"junk, not an executable")
    second, err = _run(cache)  # every entry fails to load: compiled again, and the junk replaced
    assert "Error reading persistent compilation cache entry" in err
    assert second["hits"] == 0 and sorted(second["replaced"]) == [str(e) for e in entries]
    assert all(e.read_bytes() != b"junk, not an executable" for e in entries)
    third, err = _run(cache)  # the replaced entries load
    assert third["hits"] >= 1 and third["writes"] == 0 and third["replaced"] == []
    assert "Error reading" not in err
    assert first["value"] == second["value"] == third["value"]


def test_an_unreadable_entry_is_replaced_and_a_fast_programs_bad_entry_removed(tmp_path):
    """An entry that cannot be read at all (a folder in its place: root reads every file) is replaced like junk;
    the bad entry of a program too fast to be cached is removed, so no later run meets it again."""
    cache = tmp_path / "xla"
    first, _ = _run(cache)
    entries = sorted(cache.glob("*-cache"))
    assert first["writes"] >= 1 and entries
    for e in entries:
        e.unlink()
        (e / "inside").mkdir(parents=True)
    second, err = _run(cache)
    assert "IsADirectoryError" in err and sorted(second["replaced"]) == [str(e) for e in entries]
    assert all(e.is_file() for e in entries)
    third, err = _run(cache)
    assert third["hits"] >= 1 and third["writes"] == 0 and "Error reading" not in err
    for e in entries:
        e.write_bytes(e.read_bytes()[:40])  # truncated
    fast = 1e9  # now every program counts as too fast to store: jax never calls put for them
    fourth, err = _run(cache, fast)
    assert "Error reading persistent compilation cache entry" in err and fourth["writes"] == 0
    assert sorted(fourth["replaced"]) == [str(e) for e in entries] and not any(e.exists() for e in entries)
    fifth, err = _run(cache, fast)
    assert "Error reading" not in err and fifth["hits"] == 0 and fifth["replaced"] == []
    assert first["value"] == second["value"] == third["value"] == fourth["value"] == fifth["value"]


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "not-writable"])
def test_an_unusable_cache_folder_is_one_warning_and_a_run_without_the_cache(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    cache = {"a-file": tmp_path / "afile", "under-a-file": tmp_path / "afile" / "sub",
             "not-writable": Path("/proc/jaxmod-cache")}[where]
    before = sorted(tmp_path.rglob("*"))
    run, err = _run(cache)
    lines = [line for line in err.splitlines() if "jaxmod" in line]
    assert len(lines) == 1 and lines[0].startswith(f"jaxmod: warning: JAXMOD_CACHE_DIR {str(cache)!r} "), err
    assert "running without the compile cache" in lines[0] and "Traceback" not in err
    assert run["hits"] == run["writes"] == 0 and sorted(tmp_path.rglob("*")) == before
