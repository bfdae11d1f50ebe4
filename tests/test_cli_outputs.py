"""What the command line says around a run (issue 22's review): train's and eval's intervals with a note below 5
seeds, `eval RUN/checkpoint/N`, `eval --render` on a path it cannot write (refused before evaluating), `plot` on an
ULTRA run, `ultra --render` given a file, a .gif name or a folder holding an earlier run's GIFs, and a flag and its
alias that disagree."""

from __future__ import annotations

import json

import pytest

from jaxmod.cli import main

pytestmark = pytest.mark.timeout(300)
TINY = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-seed CartPole run of 6 updates with checkpoints after updates 3 and 6."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--env", "CartPole-v1", "--seeds", "2", "--total-steps", str(6 * 64), "--chunks", "2",
                 "--checkpoint-every", "1", "--quiet", "--out", str(out), *TINY]) == 0
    return out


def test_train_prints_iqm_with_a_note_for_two_seeds(tmp_path, capsys):
    assert main(["train", "--env", "CartPole-v1", "--seeds", "2", "--total-steps", "128", "--quiet",
                 "--out", str(tmp_path / "t"), *TINY]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the console's width
    assert "PPO on CartPole-v1, training return at the last update over 2 seeds" in out
    assert "final return IQM [95% CI]" in out and "n=2 seeds: interval not meaningful" in out
    assert "+-" not in out


def test_eval_takes_one_updates_checkpoint_and_notes_two_seeds(trained, capsys):
    assert main(["eval", str(trained / "checkpoint" / "3"), "--episodes", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "CartPole-v1 (update 3): 4 episodes per seed" in out
    assert "over seeds' means; n=2 seeds: interval not meaningful" in out and "n=4 episodes" in out
    assert main(["eval", str(trained), "--episodes", "2"]) == 0
    assert "(update 6)" in capsys.readouterr().out  # the run folder: its newest update


def test_eval_render_to_an_unwritable_path_is_refused_before_evaluating(trained, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for path in ("/proc/x.gif", str(tmp_path / "file" / "x.gif")):
        assert main(["eval", str(trained), "--episodes", "2", "--render", path]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and "cannot write in" in captured.err and len(captured.err.splitlines()) == 1
    assert not (tmp_path / "ok.gif").exists()
    assert main(["eval", str(trained), "--episodes", "2", "--render", str(tmp_path / "ok.gif")]) == 0
    assert (tmp_path / "ok.gif").read_bytes()[:6] == b"GIF89a"


def test_plot_on_an_ultra_run_names_its_plot(tmp_path, capsys):
    run = tmp_path / "u"
    run.mkdir()
    (run / "ultra.json").write_text(json.dumps({}))
    assert main(["plot", str(run)]) == 2
    assert f"its plot is {run / 'ultra.png'}" in capsys.readouterr().err


@pytest.mark.parametrize("flags,says", [
    (["--env", "CartPole-v1", "--env-id", "Acrobot-v1"], "--env CartPole-v1 and its alias --env-id Acrobot-v1"),
    (["--total-steps", "2e3", "--total-timesteps", "1e3"], "--total-steps 2e3 and its alias --total-timesteps 1e3"),
])
def test_a_flag_and_its_alias_that_disagree_are_refused(flags, says, tmp_path, capsys):
    assert main(["train", *flags, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and not (tmp_path / "a").exists()


def test_a_flag_and_its_alias_that_agree_are_fine():
    from jaxmod.cli import _train_config, build_parser

    argv = ["train", "--total-steps", "2e3", "--total-timesteps", "2000", "--env", "Acrobot-v1", "--env-id",
            "Acrobot-v1"]
    config = _train_config(build_parser(argv).parse_args(argv), argv)
    assert (config.ppo.total_timesteps, config.ppo.env_id) == (2000, "Acrobot-v1")


def test_ultra_render_takes_a_fresh_folder(tmp_path, capsys):
    """A file, a name ending in .gif, or a folder with an earlier run's GIFs: one line, before anything runs; with
    --overwrite the earlier GIFs go (UltraRun, as the CLI builds it), so the folder never mixes two runs."""
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    (tmp_path / "cp.gif").write_bytes(b"GIF89a")
    old = tmp_path / "renders"
    old.mkdir()
    (old / "pretrained.gif").write_bytes(b"GIF89a")
    (old / "RA.gif").write_bytes(b"GIF89a")
    (old / "notes.txt").write_text("mine")
    for render, says in ((tmp_path / "cp.gif", "is a file"), (tmp_path / "new.gif", "names a GIF file"),
                         (old, "already holds GIFs of a run (RA.gif, pretrained.gif)")):
        assert main(["ultra", "--out", str(tmp_path / "run"), "--render", str(render)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
        assert not (tmp_path / "run").exists() and not (tmp_path / "new.gif").exists()
    UltraRun(UltraConfig.flat(env_id="CartPole-v1", seeds=1), tmp_path / "run", render_dir=old, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == ["notes.txt"]
