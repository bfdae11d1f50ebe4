"""The persistent compile cache: an entry that fails to load is replaced, and the next run loads it."""

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
import json, jax, jax.numpy as jnp
from jaxmod.cli import _enable_compile_cache
from jax._src import compilation_cache
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
_enable_compile_cache()  # the product's path ($JAXMOD_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache this tiny program too
f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x) * 3.0) @ x)
print(json.dumps({"value": float(f(jnp.arange(64.0))),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "writes": events.count("/jax/compilation_cache/cache_misses"),
                  "replaced": [str(p) for p in compilation_cache._cache.replaced]}))
"""


def _run(cache: Path) -> tuple[dict, str]:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "JAXMOD_CACHE_DIR": str(cache), "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
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
