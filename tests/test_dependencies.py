"""Dependencies: brax is the optional `brax` extra (the core imports and runs without it, a `brax/` id then fails
with one line naming the extra), chex is a test-only dependency, constraints.txt pins what the Makefile installs,
and brax's known import noise is hidden while every other warning still shows.

brax's absence is simulated in a subprocess (`sys.modules['brax'] = None`, which makes `import brax` fail as if it
were not installed); a real install without it is `python -m venv /tmp/v && /tmp/v/bin/pip install .`."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)


WITHOUT_BRAX = "import sys\nsys.modules['brax'] = None\n"


def test_the_core_imports_and_builds_envs_without_brax_and_a_brax_id_says_which_extra(tmp_path):
    done = _run(WITHOUT_BRAX + f"""
import jaxmod, jaxmod.cli, jaxmod.checkpoint, jaxmod.ultra.pipeline, jaxmod.envs.brax_backend
from jaxmod.envs import list_env_ids, make, make_core
assert make("CartPole-v1", num_envs=2).obs_shape == (4,)
assert "CartPole-v1" in list_env_ids() and not any(i.startswith("brax/") for i in list_env_ids())
assert jaxmod.default_config("brax/hopper").num_envs == 2048  # presets need no brax
code = jaxmod.cli.main(["train", "--env", "brax/hopper", "--out", {str(tmp_path / "run")!r}])
assert code == 2, code
assert "brax" not in sys.modules or sys.modules["brax"] is None
""")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jaxmod: error: brax envs need the brax extra") and "pip install -e '.[brax]'" in lines[0]
    assert not re.search(r"pip install +jaxmod\b", lines[0])  # that registry name is another project's
    assert not (tmp_path / "run").exists()


def test_brax_is_an_extra_chex_is_for_tests_and_the_makefile_installs_the_extras_pinned():
    core = {Requirement(r).name for r in PYPROJECT["dependencies"]}
    extras = {k: {Requirement(r).name for r in v} for k, v in PYPROJECT["optional-dependencies"].items()}
    assert "brax" not in core and extras["brax"] == {"brax"}
    assert "chex" not in core and "chex" in extras["dev"]
    imported = set()
    for path in (ROOT / "jaxmod").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {(a.name.split(".")[0], path.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add((node.module.split(".")[0], path.name))
    assert not {f for m, f in imported if m == "chex"}, "jaxmod imports chex: it would need to be a core dependency"
    assert {f for m, f in imported if m == "brax"} == {"brax_backend.py"}  # one lazy door to brax

    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", line
            pins[req.name.lower().replace("_", "-")] = req
    wanted = core | extras["dev"] | extras["brax"] | extras["local-llm"]
    assert {n.lower() for n in wanted} <= set(pins), "every direct dependency is pinned"
    for name in wanted:  # each pin satisfies pyproject's own bounds
        for spec in (Requirement(r) for group in [PYPROJECT["dependencies"], *PYPROJECT["optional-dependencies"].values()]
                     for r in group):
            if spec.name == name:
                assert spec.specifier.contains(next(iter(pins[name.lower()].specifier)).version), (spec, pins[name])
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install -q -c constraints.txt -e '.[dev,brax]'" in make
    assert "pip install -q -c constraints.txt -e '.[dev,brax,local-llm]'" in make  # the extra itself, same set
    assert "-c constraints.txt" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_brax_import_and_env_build_are_quiet_but_other_output_still_shows():
    pytest.importorskip("brax")
    done = _run("""
import warnings
warnings.simplefilter("default")  # show every warning, as python -W default would
from jaxmod.envs.brax_backend import brax_envs
env = brax_envs().get_environment("inverted_pendulum", backend="positional")
warnings.warn("an unrelated warning", UserWarning)
print("built", env.observation_size)
""")
    assert done.returncode == 0, done.stderr
    assert "Failed to import" not in done.stdout + done.stderr and "Brax System" not in done.stderr
    assert "JAXopt" not in done.stderr
    assert "an unrelated warning" in done.stderr and "built 4" in done.stdout


def test_mujocos_warning_about_brax_model_files_is_dropped_and_others_still_show():
    """brax/halfcheetah's model uses MuJoCo's deprecated `settotalmass`: MuJoCo's compiler warned on every build
    (seen in the cpu-mujoco run's stderr). It is dropped while brax builds the env; another MuJoCo warning still
    prints, and the handler a user had set is back afterwards."""
    pytest.importorskip("brax")
    done = _run("""
import mujoco
from jaxmod.envs import make
from jaxmod.envs.brax_backend import _quiet_model_compile
make("brax/halfcheetah", num_envs=2)
with _quiet_model_compile():
    mujoco.MjModel.from_xml_string('<mujoco><compiler settotalmass="1"/><worldbody><body><joint/>'
                                   '<geom size=".1"/></body></worldbody></mujoco>')
    mujoco.get_mju_user_warning()("an unrelated mujoco warning")  # what MuJoCo calls with any other warning
print("handler restored", mujoco.get_mju_user_warning() is None)
""")
    assert done.returncode == 0, done.stderr
    assert "settotalmass" not in done.stdout + done.stderr
    assert "an unrelated mujoco warning" in done.stderr and "handler restored True" in done.stdout
