"""A fixed corpus of ULTRA questions for the scripted advisor, built from seeded synthetic episodes (numpy only).

`python tests/scripted_corpus.py` records `tests/data/scripted_answers.json`: for every question, a digest of its
messages and the scripted advisor's answer text. It was recorded from the text bridge before describers parsed
their own rows (commit 0e8a851's scripted parser); `tests/test_describers.py` rebuilds the questions and checks
that their text and the scripted answers are still exactly these.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "scripted_answers.json"

# env id -> (observation shape, number of actions or action dimensions, discrete)
ENVS = {
    "CartPole-v1": ((4,), 2, True),
    "MountainCar-v0": ((2,), 3, True),
    "Acrobot-v1": ((6,), 3, True),
    "Breakout-MinAtar": ((10, 10, 4), 3, True),
    "Pendulum-v1": ((3,), 1, False),
    "jaxmod/Pong": ((8,), 3, True),
    "jaxmod/Pong-OnePoint": ((8,), 3, True),
    "jaxmod/Pong-OnePoint:pixels": ((40, 40, 4), 3, True),
}
LENGTHS = (7, 60, 400)  # a short episode, a medium one, one windowed to the prompt budget
CONTEXT_STEPS = 12


def _obs(env: str, shape: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """Observations in each env's own ranges, so every heuristic branch is taken somewhere."""
    if env == "CartPole-v1":
        return (rng.normal(size=(n, 4)) * [1.0, 1.0, 0.1, 1.0]).astype(np.float32)
    if env == "MountainCar-v0":
        return np.stack([rng.uniform(-1.2, 0.6, n), rng.uniform(-0.07, 0.07, n)], 1).astype(np.float32)
    if env == "Acrobot-v1":
        t1, t2 = rng.uniform(-np.pi, np.pi, n), rng.uniform(-np.pi, np.pi, n)
        return np.stack([np.cos(t1), np.sin(t1), np.cos(t2), np.sin(t2), rng.normal(0, 3, n), rng.normal(0, 6, n)],
                        1).astype(np.float32)
    if env == "Pendulum-v1":
        th = rng.uniform(-np.pi, np.pi, n)
        return np.stack([np.cos(th), np.sin(th), rng.uniform(-8, 8, n)], 1).astype(np.float32)
    if len(shape) == 3:  # object images: one or two cells per channel, some channels empty
        img = np.zeros((n, *shape), np.float32)
        for t in range(n):
            for c in range(shape[-1]):
                if rng.random() < 0.85:
                    r, col = rng.integers(0, shape[0]), rng.integers(0, shape[1])
                    img[t, r, col, c] = 1.0
                    if rng.random() < 0.3:
                        img[t, r, min(col + 1, shape[1] - 1), c] = 1.0
        return img
    vec = rng.uniform(-1, 1, (n, 8)).astype(np.float32)  # Pong's scaled vector
    vec[:, 6:] = rng.integers(0, 3, (n, 2)) / 21.0
    return vec.astype(np.float32)


def questions():
    """(env, kind, messages) for every question of the corpus, in a fixed order."""
    from jaxmod.envs import describer_for
    from jaxmod.llm.prompts import EpisodeView, StateQuery, advice_messages, identify_messages

    rng = np.random.default_rng(1234)
    for env, (shape, n_act, discrete) in ENVS.items():
        env_id = env.split(":")[0]
        d = describer_for(env_id, shape, n_act)
        for uid, n in enumerate(LENGTHS):
            obs = _obs(env, shape, n, rng)
            acts = rng.integers(0, n_act, n) if discrete else rng.uniform(-2, 2, (n, n_act)).astype(np.float32)
            rews = np.round(rng.normal(0, 1, n), 2).astype(np.float32) if env_id == "Pendulum-v1" else \
                rng.choice([-1.0, 0.0, 1.0], n, p=[0.05, 0.9, 0.05]).astype(np.float32)
            rows = d.rows(obs, acts, rews)
            table, _ = d.render_episode(obs, acts, rews, episode_id=uid, ended_by="termination", rows=rows)
            for k in (1, 3):
                yield env, "identify", identify_messages(EpisodeView(uid, n, d.card.text(), table), k)
            for step in sorted({0, n // 3, n // 2, n - 2, n - 1}):
                lo = max(0, step - CONTEXT_STEPS + 1)
                ctx, _ = d.render_episode(obs[lo:step + 1], acts[lo:step + 1], rews[lo:step + 1],
                                          title=f"Episode {uid}, steps {lo}-{step} (of {n}); ended by termination "
                                                f"with return {float(np.sum(rews)):+.2f}.", rows=rows[lo:step + 1])
                low, high = ((), ()) if discrete else ((-2.0,) * n_act, (2.0,) * n_act)
                query = StateQuery(uid, step, d.card.text(), ctx, d.state_text(obs[step]), d.action_text(acts[step]),
                                   discrete, n_act if discrete else 0, low, high)
                yield env, "advise", advice_messages(query)


def digest(messages) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def answers() -> list[dict]:
    from jaxmod.llm.scripted import ScriptedBackend

    backend = ScriptedBackend()
    return [{"env": env, "kind": kind, "messages": digest(msgs), "answer": backend.answer(msgs)}
            for env, kind, msgs in questions()]


def main() -> int:
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(answers(), indent=0) + "\n")
    print(DATA)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
