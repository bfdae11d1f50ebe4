"""How often does the outcome guard act on advice worth nothing, and how often on a small harm?

Drives `jaxmod.ultra.guard.OutcomeGuard` itself (its window, interval and levels) with synthetic guard evaluations:
per run, S seeds with agent returns ~ N(100, 20); each chunk fine-tuning's and the advised method's evaluations add
independent N(0, `--noise`) to them, the advised method's shifted by `--shift` (0: advice worth nothing). Prints, per
seed count and shift, the share of runs in which the guard acted within `--chunks` chunks and at which chunk it
first did. Independent per-chunk noise makes the chunks' looks less alike than real training's, so the rates are an
upper bound for a given noise. Runs on the CPU in a few seconds.

    python benchmarks/guard_null_sim.py --runs 300
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxmod.ultra.guard import GUARD_EVALUATIONS, FineTuningRecord, OutcomeGuard


class _Given:
    """A program whose evaluations are given in advance (the guard's only use of its program)."""

    def __init__(self, returns: list[np.ndarray]) -> None:
        self.returns = list(returns)

    def evaluate_on(self, state, keys):
        return self.returns.pop(0)


def first_act(rng: np.random.Generator, seeds: int, chunks: int, shift: float, noise: float) -> int | None:
    """The chunk the guard first acted on in one synthetic run, or None."""
    base = rng.normal(100.0, 20.0, seeds)
    reference = FineTuningRecord(None, None, guard_returns=[base + rng.normal(0, noise, seeds) for _ in range(chunks)])
    advised = [base + shift + rng.normal(0, noise, seeds) for _ in range(chunks)]
    guard = OutcomeGuard(_Given([a for a in advised for _ in range(GUARD_EVALUATIONS)]),
                         np.zeros((seeds, 2), np.uint32), reference, chunks)
    for chunk in range(1, chunks + 1):
        guard.after_chunk(chunk, None)
        if guard.tripped:
            return chunk
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--noise", type=float, default=10.0, help="per-chunk evaluation noise (std)")
    ap.add_argument("--seeds", default="5,10")
    ap.add_argument("--shifts", default="0,-10", help="advised minus fine-tuning, in return units")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for seeds in (int(s) for s in args.seeds.split(",")):
        for shift in (float(s) for s in args.shifts.split(",")):
            firsts = [first_act(rng, seeds, args.chunks, shift, args.noise) for _ in range(args.runs)]
            acted = [c for c in firsts if c is not None]
            print(f"{seeds} seeds, shift {shift:+g}: acted in {len(acted) / args.runs:.1%} of {args.runs} runs; "
                  f"first chunk counts {np.bincount(acted, minlength=args.chunks + 1)[1:].tolist()}")


if __name__ == "__main__":
    main()
