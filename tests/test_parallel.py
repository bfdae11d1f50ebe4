"""Seeds sharded over 4 emulated CPU devices learn exactly as on one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(400)

SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np
    from jaxmod.parallel import MultiSeed, seed_keys, seed_mesh
    from tests.conftest import TINY
    assert jax.device_count() == 4, jax.devices()
    keys = seed_keys(0, 4)
    sharded = MultiSeed(TINY, 4)
    assert sharded.sharding is not None
    s_state, s_metrics = sharded.train(keys)
    shards = {d.id for d in s_state.params["actor"]["Dense_0"]["kernel"].sharding.device_set}
    single = MultiSeed(TINY, 4, mesh=seed_mesh(jax.devices()[:1]))
    assert single.sharding is None
    u_state, u_metrics = single.train(keys)
    diff = max(float(np.max(np.abs(np.asarray(s_metrics[k]) - np.asarray(u_metrics[k])))) for k in s_metrics)
    same = all(np.array_equal(np.asarray(s_metrics[k]), np.asarray(u_metrics[k])) for k in s_metrics)
    print(json.dumps({"devices": len(shards), "max_diff": diff, "bit_identical": same,
                      "ret_sharded": np.asarray(s_metrics["episode_return"])[:, -1].tolist(),
                      "ret_single": np.asarray(u_metrics["episode_return"])[:, -1].tolist()}))
""")


def test_sharded_equals_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    assert result["max_diff"] < 1e-3, result
    assert result["ret_sharded"] == pytest.approx(result["ret_single"], rel=1e-4)
