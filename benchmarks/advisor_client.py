"""Advisor client throughput and overhead against local servers (run as separate processes).

For each concurrency level: requests/s, mean latency, and the client's own CPU time per request
(building the request, httpx, parsing, validation), which is the overhead jaxmod adds on the host.

    python benchmarks/advisor_client.py                   # scripted server, concurrency 1..64
    python benchmarks/advisor_client.py --smollm2         # also the real SmolLM2 server (needs jaxmod[local-llm])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from jaxmod.llm import Advisor, ClientSettings, EpisodeView, HTTPBackend, LLMClient
from jaxmod.llm.server import ServerProcess

CARD = "Environment: CartPole-v1\nGoal: balance\nActions (discrete): 0 = push_left, 1 = push_right"
TABLE = "Episode 0: 30 steps\nt | cart_position[m] cart_velocity[m/s] pole_angle[rad] pole_angular_velocity[rad/s] " \
        "| action | reward\n" + "\n".join(f"{t} | +0.010 -0.020 {0.005 * t:+.3f} {0.02 * t:+.3f} | push_left | +1"
                                         for t in range(30))


async def run_level(url: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    views = [EpisodeView(i, 30, CARD, TABLE) for i in range(requests)]
    settings = ClientSettings(base_url=url, concurrency=concurrency, max_tokens=max_tokens, timeout_s=120)
    async with LLMClient(settings) as client:
        adv = Advisor(HTTPBackend(client), concurrency=concurrency, deadline_s=None)
        await adv.identify(views[: min(4, requests)])  # warm connections
        adv.stats.__init__()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await adv.identify(views)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"concurrency": concurrency, "requests": requests, "req_per_s": requests / wall,
            "mean_latency_ms": 1e3 * adv.stats.latency_s / max(1, adv.stats.questions),
            "client_cpu_ms_per_request": 1e3 * cpu / requests, "valid": adv.stats.valid,
            "invalid": adv.stats.invalid, "failed": adv.stats.failed}


def bench(backend: str, levels: list[int], requests: int, max_tokens: int) -> list[dict]:
    rows = []
    with ServerProcess(backend) as server:  # its own process, as `jaxmod ultra` runs it
        for c in levels:
            row = {"backend": backend, **asyncio.run(run_level(server.url, c, requests, max_tokens))}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--smollm2", action="store_true", help="also benchmark the SmolLM2 server")
    ap.add_argument("--json", default="benchmarks/results/advisor_client.json")
    args = ap.parse_args()
    rows = bench("scripted", [1, 4, 16, 64], args.requests, 256)
    if args.smollm2:
        rows += bench("smollm2", [1, 2, 4], 8, 96)
    print(f"{'backend':10s} {'conc':>5s} {'req/s':>9s} {'latency ms':>11s} {'client CPU ms/req':>18s} valid/invalid/failed")
    for r in rows:
        print(f"{r['backend']:10s} {r['concurrency']:5d} {r['req_per_s']:9.1f} {r['mean_latency_ms']:11.1f} "
              f"{r['client_cpu_ms_per_request']:18.3f} {r['valid']}/{r['invalid']}/{r['failed']}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
