"""CLI polish: `jaxmod --version`, every flag of every subcommand with help that shows its default, and the
field's usual flag names (`--env-id`, `--total-timesteps`) accepted as aliases."""

from __future__ import annotations

import argparse
import importlib.metadata

import pytest

import jaxmod
from jaxmod.cli import _train_config, _ultra_config, build_parser, main

pytestmark = pytest.mark.timeout(120)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    try:
        expected = importlib.metadata.version("jaxmod")
    except importlib.metadata.PackageNotFoundError:
        expected = jaxmod.__version__
    assert capsys.readouterr().out.strip() == f"jaxmod {expected}"


@pytest.mark.parametrize("argv", [[], ["--env", "Pendulum-v1"]])
def test_every_flag_has_help_and_shows_its_default(argv):
    parser = build_parser(argv)
    subs = _subparsers(parser)
    assert set(subs) == {"train", "ultra", "eval", "plot", "serve-advisor"}
    missing, checked = [], 0
    for name, sub in [("jaxmod", parser), *subs.items()]:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            checked += 1
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or not action.help.strip():
                missing.append(f"{flag}: no help")
            elif action.option_strings and "default: " not in action.help:
                missing.append(f"{flag}: no default in {action.help!r}")
    assert checked > 100 and not missing, missing


def test_env_id_and_total_timesteps_are_aliases():
    argv = ["train", "--env-id", "Acrobot-v1", "--total-timesteps", "2e4"]
    args = build_parser(argv).parse_args(argv)
    assert args.env == "Acrobot-v1" and args.total_timesteps == 20_000
    config = _train_config(args, argv)
    assert config.ppo.env_id == "Acrobot-v1" and config.ppo.total_timesteps == 20_000
    argv = ["ultra", "--env-id=Pendulum-v1"]
    args = build_parser(argv).parse_args(argv)
    assert _ultra_config(args, argv).env_id == "Pendulum-v1"
    # the defaults shown are --env-id's preset, as for --env
    help_text = build_parser(["train", "--env-id", "Pendulum-v1"])._subparsers._group_actions[0].choices[
        "train"].format_help()
    assert "the preset for Pendulum-v1" in help_text


def test_env_id_alias_reaches_the_env_check(tmp_path, capsys):
    assert main(["train", "--env-id", "CartPol-v1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxmod: error: unknown env id 'CartPol-v1'")


def test_ultra_help_says_which_phase_each_ppo_knob_affects(capsys):
    """`jaxmod ultra --help`: --lr and --anneal-lr act on pretraining only (refinement runs at --refine-lr, constant),
    and say so; the other PPO flags act on both phases, as the group's title says. The notes are the fields the
    refinement config changes (`UltraConfig.refine_config`), so a new override without a note fails here."""
    import dataclasses

    from jaxmod.ultra.config import PRETRAIN_ONLY, UltraConfig

    with pytest.raises(SystemExit) as stop:
        main(["ultra", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--lr X learning rate (Adam); on ultra: pretraining only (refinement: --refine-lr)" in text
    assert ("--anneal-lr, --no-anneal-lr linear decay of lr to 0 over training; on ultra: pretraining only "
            "(refinement's rate is constant: --refine-lr)") in text
    assert "on ultra for pretraining and refinement unless a flag says otherwise" in text
    assert text.count("on ultra: pretraining only") == len(PRETRAIN_ONLY)
    cfg = UltraConfig()
    pre, refine = cfg.ppo_config(cfg.refine_steps), cfg.refine_config()
    changed = {f.name for f in dataclasses.fields(pre) if getattr(pre, f.name) != getattr(refine, f.name)}
    assert changed - {"total_timesteps"} == set(PRETRAIN_ONLY), changed
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "on ultra" not in capsys.readouterr().out
