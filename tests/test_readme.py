"""Every command in the README and docs/ is checked: each `jaxmod ...` line of a ```bash block parses with the product's
own parser (and `train` / `ultra` lines build their config, as the command would, before anything compiles); the
README's `jaxmod` lines also RUN, in README order, as written with budget flags appended (see `SHRINK`; `SLOW` names
the lines left to `make test-slow`, and why; the LLM-server line runs against jaxmod's own server: `HTTP_LINE`); each
`python benchmarks/...` line names a script that exists and whose parser accepts the line's flags (run with
`--help` appended: argparse checks the flags given before it, then prints the help and exits 0). The README's
Python example runs end to end at a tiny budget (slow: it compiles four programs).

Nothing here may tell users to install `jaxmod` by name: that name on the package registry is another project's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jaxmod import cli
from jaxmod.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MANUALS = [README, *DOCS]


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _commands(path: Path, program: tuple[str, ...]) -> list[list[str]]:
    """The argv of every command in `path`'s bash blocks that starts with `program` (comments dropped; a line may
    chain commands with &&)."""
    out = []
    for block in _blocks(path, "bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                if part.split()[:1] != [program[0]]:
                    continue
                argv = shlex.split(part, comments=True)
                if tuple(argv[:len(program)]) == program:
                    out.append(argv[len(program):])
    return out


def _jaxmod_lines() -> list[tuple[str, list[str]]]:
    return [(f"{p.relative_to(ROOT)}: jaxmod {' '.join(a)}", a) for p in MANUALS for a in _commands(p, ("jaxmod",))]


def _benchmark_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for p in MANUALS:
        for argv in _commands(p, ("python",)):
            if argv and argv[0].startswith("benchmarks/"):
                lines.append((f"{p.relative_to(ROOT)}: python {' '.join(argv)}", argv))
            elif argv[:2] and argv[0] == "-m" and argv[1].startswith("benchmarks."):
                lines.append((f"{p.relative_to(ROOT)}: python {' '.join(argv)}",
                              [argv[1].replace(".", "/") + ".py", *argv[2:]]))
    return lines


def test_the_manuals_have_commands_and_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail into docs/"
    readme_cmds = {a[0] for a in _commands(README, ("jaxmod",))}
    assert {"train", "eval", "plot", "ultra", "serve-advisor"} <= readme_cmds
    assert _commands(README, ("python",)), "the README names no benchmark command"
    assert {"make demo", "make test"} <= {" ".join(shlex.split(ln, comments=True))
                                          for b in _blocks(README, "bash")[:1] for ln in b.splitlines()}


def _with_config_file(argv: list[str], tmp_path: Path) -> list[str]:
    """A placeholder `--config runs/X/config.json` replaced by a real config file of the same command."""
    if "--config" not in argv:
        return argv
    from jaxmod.ultra.config import UltraConfig

    command = argv[0]
    data = UltraConfig().to_dict() if command == "ultra" else TrainConfig().to_dict()
    path = tmp_path / f"{command}-config.json"
    path.write_text(json.dumps({**data, "command": command}), encoding="utf-8")
    i = argv.index("--config")
    return [*argv[:i + 1], str(path), *argv[i + 2:]]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where,argv", _jaxmod_lines(), ids=[w for w, _ in _jaxmod_lines()])
def test_jaxmod_command_parses(where, argv, tmp_path, monkeypatch):
    for var in ("ADVISOR_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    argv = cli._negative_values(_with_config_file(argv, tmp_path))
    try:
        args = cli.build_parser(argv).parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"{where}: the parser refused it (exit {err.code})")
    if args.command == "train":
        cli._train_config(args, argv)
    elif args.command == "ultra" and not args.replay:
        cli._ultra_config(args, argv)


DRIVER = """
import contextlib, io, json, os, runpy, sys
script, lines = sys.argv[1], json.loads(sys.argv[2])
sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python benchmarks/X.py` has it (not the cwd)
codes = []
for args in lines:
    sys.argv = [script, *args, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
        codes.append(["returned without --help exiting", ""])
    except SystemExit as err:
        codes.append([err.code or 0, out.getvalue()[:200]])
print(json.dumps(codes))
"""


def _by_script() -> dict[str, list[tuple[str, list[str]]]]:
    scripts: dict[str, list[tuple[str, list[str]]]] = {}
    for where, argv in _benchmark_lines():
        scripts.setdefault(argv[0], []).append((where, argv[1:]))
    return scripts


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", sorted(_by_script()))
def test_benchmark_commands_exist_and_accept_their_flags(script):
    """One process per script (jax imports once): each documented line's flags, then --help (exit 0, a usage)."""
    lines = _by_script()[script]
    assert (ROOT / script).is_file(), f"{lines[0][0]}: no {script}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user runs it: the repository not on the path
    run = subprocess.run([sys.executable, "-c", DRIVER, script, json.dumps([a for _, a in lines])], cwd=ROOT,
                         capture_output=True, text=True, timeout=110, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    codes = json.loads(run.stdout.strip().splitlines()[-1])
    for (where, _), (code, out) in zip(lines, codes, strict=True):
        assert code == 0 and "usage:" in out, f"{where}: exit {code}\n{run.stderr[-2000:]}"


NAMED_INSTALL = re.compile(r"""pip3?\s+install\s+(?:-\S+\s+)*["']?jaxmod(?:\[[^\]]*\])?["']?(?!\s*@)(?:\s|$|[`"'])""")


def test_nothing_tells_users_to_install_jaxmod_by_name():
    assert NAMED_INSTALL.search("pip install jaxmod") and NAMED_INSTALL.search("pip install -U 'jaxmod[dev]'")
    assert not NAMED_INSTALL.search('pip install "jaxmod @ git+https://example.org/x"')
    texts = [*MANUALS, *(ROOT / "jaxmod").rglob("*.py"), ROOT / "Makefile"]
    offenders = [str(p.relative_to(ROOT)) for p in texts if NAMED_INSTALL.search(p.read_text(encoding="utf-8"))]
    assert not offenders, f"these tell users to `pip install jaxmod` by name (another project's): {offenders}"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but - and _ dropped, spaces as -."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_doc_links_resolve():
    for page in MANUALS:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)]*))?\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            dest = page.parent / target if target else page
            assert dest.exists(), f"{page.relative_to(ROOT)} links to missing {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{page.relative_to(ROOT)} links to {target}#{anchor}: no such heading"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readme_python_example_runs():
    (code,) = [b for b in _blocks(README, "python") if "jaxmod.make_train" in b]
    small = code.replace("total_timesteps=100_000", "total_timesteps=2_048").replace(
        "jax.random.split(jax.random.PRNGKey(0), 8)", "jax.random.split(jax.random.PRNGKey(0), 2)")
    assert small != code, "the README's example changed: update the budget this test shrinks"
    ns: dict = {}
    exec(compile(small, "README.md", "exec"), ns)  # noqa: S102 - the README's own code
    assert ns["refined"].state.params is not None


# --------------------------------------------------------------------------- the README's commands, run
# Each `jaxmod ...` line of the README runs as written (same argv, in README order, relative paths in a fresh
# folder), with budget flags appended after it (argparse: the last value of a flag wins), so only sizes shrink:
# steps, envs, rollout and evaluation sizes, and for ultra one compiled program for the advised methods
# (--share-programs methods: the same numbers up to rounding, a third of the compiling). Lines that continue a run
# (--resume, --replay) and lines without a budget (eval, plot, serve-advisor) get nothing appended.
SHRINK_PPO = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]
SHRINK = {
    "train": ["--total-steps", "768", "--chunks", "4", *SHRINK_PPO, "--quiet"],
    "ultra": ["--pretrain-steps", "512", "--refine-steps", "512", "--chunks", "2", "--collect-envs", "4",
              "--collect-steps", "32", "--eval-envs", "2", "--eval-steps", "32", "--episodes-per-round", "2",
              "--mask-steps", "256", "--share-programs", "methods", *SHRINK_PPO, "--quiet"],
}
# The README's line for an LLM server (vLLM serving Qwen2.5-7B-Instruct at 127.0.0.1:8000): run against jaxmod's
# own server under that model's name (`serve-advisor --model`), see test_readme_http_advisor_line_runs
HTTP_LINE = "--advisor http://127.0.0.1:8000/v1"
# `make test-slow` only: a brax compile (~1 min); the 135M LLM answering on CPU (minutes); further ULTRA runs
# (1-2 CPU minutes each on a 2-core CPU) that the default suite's budget leaves out
SLOW = ("train --env brax/hopper", "--advisor smollm2", "--out runs/cp-baselines", "--out runs/noisy",
        "--out runs/control", "--out runs/hopper-ultra")
STRONG = "train --env CartPole-v1 --out runs/strong"  # the teacher `runs/strong` the control line references


def _readme_lines(command: str) -> list[str]:
    return [" ".join(a) for a in _commands(README, ("jaxmod",)) if a[0] == command]


def _shrunk(argv: list[str]) -> list[str]:
    if argv[0] in SHRINK and not {"--resume", "--replay"} & set(argv):
        return [*argv, *SHRINK[argv[0]]]
    return argv


def _run_readme_line(line: str) -> None:
    argv = shlex.split(line)
    code = cli.main(_shrunk(argv))
    assert code == 0, f"README: jaxmod {line}: exit {code}"


def _is(line: str, keys) -> bool:
    return any(key in line for key in keys)


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    """A fresh folder for the README's relative paths (runs/...), no advisor server in the environment, a
    compile cache of its own (programs of the same shapes compile once across the lines)."""
    for var in ("ADVISOR_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JAXMOD_CACHE_DIR", str(tmp_path / "xla-cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.timeout(400)
def test_readme_train_eval_plot_commands_run(readme_folder):
    """`train` (a fresh run, then --max-chunks 3 and --resume), `eval` (with --render) and `plot`, as the README
    shows them, in its order; what each says it writes is there."""
    lines = [ln for c in ("train", "eval", "plot") for ln in _readme_lines(c) if not _is(ln, SLOW)]
    assert len(lines) >= 6
    for line in lines:
        _run_readme_line(line)
    assert (readme_folder / "runs/cartpole/tb").is_dir() and (readme_folder / "runs/cartpole/curve.png").is_file()
    assert (readme_folder / "episode.gif").read_bytes()[:6] == b"GIF89a"
    from jaxmod.reporting import read_metrics

    assert read_metrics(readme_folder / "runs/long/metrics.jsonl")["episode_return"].shape[0] == 12  # resumed to the end


@pytest.mark.timeout(600)
def test_readme_ultra_commands_run(readme_folder):
    """The `jaxmod ultra` lines of the README but `HTTP_LINE` and those in `SLOW`, in its order: a run, --config and
    --replay of it; the replay gives the run's numbers again."""
    import json

    lines = [ln for ln in _readme_lines("ultra") if HTTP_LINE not in ln and not _is(ln, SLOW)]
    assert [ln.split("--out ")[-1] for ln in lines] == ["runs/cp", "runs/cp-again", "runs/cp-replay"]
    for line in lines:
        _run_readme_line(line)
    first = json.loads((readme_folder / "runs/cp/ultra.json").read_text())
    again = json.loads((readme_folder / "runs/cp-replay/ultra.json").read_text())
    assert {"PPO", "A", "R", "RA"} <= set(first) and again["RA"]["eval_returns"] == first["RA"]["eval_returns"]
    assert json.loads((readme_folder / "runs/cp-again/config.json").read_text())["seeds"] == 5  # cp's, as asked


@pytest.mark.timeout(120)
def test_readme_serve_advisor_command_runs():
    """The README's `serve-advisor` line serves an OpenAI-compatible API (on a free port appended to the line: a
    test must not take a fixed port), and answers /v1/models."""
    import socket
    import time
    import urllib.request

    (line,) = _readme_lines("serve-advisor")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "jaxmod", *shlex.split(line), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, answer = time.monotonic() + 100, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
                    answer = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.5)
        assert answer is not None and answer["data"], proc.stdout.read() if proc.poll() is not None else "no answer"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.timeout(600)
def test_readme_http_advisor_line_runs(readme_folder):
    """The README's LLM-server line (`HTTP_LINE`: vLLM serving Qwen2.5-7B-Instruct) runs as written against
    `jaxmod serve-advisor --backend scripted --model <the line's model>` standing in for the LLM: the preflight
    finds the model the line names, every question goes over HTTP, and the transcript shows the server's answers
    under that name. Only the URL's port changes: the server takes a free port (`--port 0`, bound by the server
    itself, so no other process can take it between a probe and the bind), as 8000 (vLLM's default, also
    llama-cpp-python's and many dev servers') may be taken on the test machine, maybe by a real server whose
    answers this test must not read."""
    import re as _re

    (line,) = [ln for ln in _readme_lines("ultra") if HTTP_LINE in ln]
    model = shlex.split(line)[shlex.split(line).index("--model") + 1]
    proc = subprocess.Popen([sys.executable, "-m", "jaxmod", "serve-advisor", "--backend", "scripted", "--model",
                             model, "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        first = proc.stdout.readline()  # "serving the scripted advisor (model M) at URL -- Ctrl-C to stop"
        found = _re.search(r"\(model (\S+)\) at (http://127\.0\.0\.1:\d+/v1) ", first)
        assert found and found.group(1) == model, first + (proc.stdout.read() if proc.poll() is not None else "")
        _run_readme_line(line.replace(HTTP_LINE, f"--advisor {found.group(2)}"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = readme_folder / "runs/qwen"
    results = json.loads((out / "ultra.json").read_text())
    assert {"PPO", "A", "R", "RA"} <= set(results)
    answers = [json.loads(ln) for ln in (out / "transcript.jsonl").read_text().splitlines() if ln.strip()]
    served = [a for a in answers if a.get("model")]
    assert served and {a["model"] for a in served} == {model}, {a.get("model") for a in answers}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("key", SLOW)
def test_readme_slow_commands_run(key, readme_folder):
    """A README line `make test-slow` runs (see `SLOW`); the control line's teacher `runs/strong` is a train run
    made first, as `STRONG` with the budget appended (the README does not show how it was made); the brax teacher
    line's `runs/hopper` is the README's brax train line, run first."""
    (line,) = [ln for c in ("train", "ultra") for ln in _readme_lines(c) if key in ln]
    if "runs/strong" in line:
        _run_readme_line(STRONG)
    if "teacher:runs/hopper/checkpoint" in line:  # the brax teacher is the README's own brax train run
        (teacher,) = [ln for ln in _readme_lines("train") if "--out runs/hopper" in ln]
        _run_readme_line(teacher)
    _run_readme_line(line)
