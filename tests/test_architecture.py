"""The package rules of the design (`../shared/design.md`), read from every import in `jaxmod/`.

- `ppo/` and `envs/` know no refinement method: they import no `advice/`, `baselines/`, `llm/`, `ultra/`, and no
  method's name appears in `ppo/`;
- `llm/` is host-side I/O: it never imports jax (nor flax, optax, chex, brax, gymnax);
- no two packages of `jaxmod` import each other (top-level modules count as packages of their own).
Imports inside functions count: a lazy import is still a dependency."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "jaxmod"
DEVICE_LIBS = {"jax", "jaxlib", "flax", "optax", "chex", "brax", "gymnax", "orbax"}


def _unit(module: str) -> str | None:
    """The package (or top-level module) of a `jaxmod.x.y` module name: `x`."""
    parts = module.split(".")
    return parts[1] if parts[0] == "jaxmod" and len(parts) > 1 else None


def _imports() -> list[tuple[str, str, str]]:
    """(file, unit of the file, imported module) for every import statement in the package."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        module = ".".join(rel.with_suffix("").parts)
        unit = _unit(module.removesuffix(".__init__"))
        if unit is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out.extend((str(rel), unit, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.level:  # relative: resolve against the file's package
                    base = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")
                    out.append((str(rel), unit, ".".join(base + [node.module])))
                else:
                    out.append((str(rel), unit, node.module))
    return out


IMPORTS = _imports()


def test_the_walk_sees_the_package():
    units = {u for _, u, _ in IMPORTS}
    assert {"ppo", "envs", "advice", "baselines", "llm", "ultra"} <= units
    assert len(IMPORTS) > 150


@pytest.mark.parametrize("unit", ["ppo", "envs"])
def test_learner_and_envs_know_no_method(unit):
    bad = [(f, m) for f, u, m in IMPORTS if u == unit and _unit(m) in {"advice", "baselines", "llm", "ultra",
                                                                        "methods", "checkpoint", "cli"}]
    assert not bad, f"{unit}/ imports {bad}"


def test_ppo_names_no_method():
    words = re.compile(r"\b(ULTRA|RICE|JSRL|StateMask|RND|critical state|advisor|LLM)\b")
    hits = [(str(p.relative_to(ROOT)), m.group(0)) for p in (ROOT / "ppo").rglob("*.py")
            for m in words.finditer(p.read_text(encoding="utf-8"))]
    assert not hits, hits


def _module_of(file: str) -> str:
    return ".".join(Path(file).with_suffix("").parts).removesuffix(".__init__")


def test_llm_never_imports_jax():
    """Nothing `llm/` imports, directly or through other jaxmod modules (e.g. the describers' text layer), is a
    device library."""
    by_module: dict[str, set[str]] = {}
    for f, _, m in IMPORTS:
        by_module.setdefault(_module_of(f), set()).add(m)
    seen, todo, bad = set(), [m for m in by_module if _unit(m) == "llm"], []
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for imp in by_module.get(mod, ()):
            if imp.split(".")[0] in DEVICE_LIBS:
                bad.append((mod, imp))
            elif imp.startswith("jaxmod") and imp not in ("jaxmod",):
                todo.append(imp)
    assert "jaxmod.llm.client" in seen and not bad, f"llm/ reaches device libraries: {bad}"


def test_no_two_packages_import_each_other():
    edges = {(u, _unit(m)) for _, u, m in IMPORTS if _unit(m) not in (None, u)}
    both = sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})
    assert not both, f"two-way package dependencies: {both}"


def test_public_names_are_exported():
    import jaxmod

    for name in ("Advice", "AdviceBook", "ModulationConfig", "evaluate", "make_train", "PPOConfig", "chain",
                 "Modulator"):
        assert getattr(jaxmod, name) is not None


def test_every_text_file_is_read_and_written_as_utf8():
    """`open`, `Path.read_text` and `Path.write_text` in jaxmod always name their encoding: a non-UTF-8 locale
    must not break an answer such as "θ ≈ 0.1 rad → push right" (binary modes need none)."""
    missing = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name not in ("open", "read_text", "write_text"):
                continue
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
            if name == "open" and any("b" in str(m) for m in modes):
                continue
            if not any(k.arg == "encoding" for k in node.keywords):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not missing, missing


MAX_FUNCTION_LINES = 60  # small functions with one job each (the design's style rule), docstring included


def test_every_function_is_at_most_sixty_lines():
    """No function or method in `jaxmod/` is longer than `MAX_FUNCTION_LINES` lines, from its `def` to its last
    line (nested functions count inside their parent too)."""
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into functions of one job each:\n" + "\n".join(long)


def _calls(node: ast.AST) -> set[str]:
    """The dotted names called anywhere inside `node` (`jax.lax.scan`, `env.step`, ...), nested functions included."""
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            out.add(ast.unparse(sub.func))
    return out


def test_one_env_step_loop():
    """Training, evaluation, episode collection and the mask net step envs through one loop: the only function in
    `jaxmod/` that both scans (`lax.scan`) and steps something (`*.step(...)`) is `ppo/rollout.py`'s
    `generate_unroll` (a wrapper env's own `step`, e.g. the mask net's keep/blind env, scans nothing)."""
    loops = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                calls = _calls(node)
                if any(c.endswith("lax.scan") for c in calls) and any(c.endswith(".step") for c in calls):
                    loops.append(f"{path.relative_to(ROOT.parent)}:{node.name}")
    assert loops == ["jaxmod/ppo/rollout.py:generate_unroll"], loops
