"""serve-advisor under a burst: N concurrent connections at once, each one full chat request (an identification
question for the scripted advisor), then N connections that send half a request and stop.

Reports answered/reset/other per burst, wall time, and the server's resident memory (before, peak, after) from
/proc, for the server `jaxmod ultra` runs (`ServerProcess("scripted")`, its own process).

    python benchmarks/advisor_burst.py --connections 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from jaxmod.llm.prompts import EpisodeView, identify_messages
from jaxmod.llm.server import ServerLimits, ServerProcess

CARD = "Environment: CartPole-v1\nGoal: balance\nActions (discrete): 0 = push_left, 1 = push_right"
TABLE = "Episode 0: 30 steps\nt | cart_position[m] cart_velocity[m/s] pole_angle[rad] pole_angular_velocity[rad/s] " \
        "| action | reward\n" + "\n".join(f"{t} | +0.010 -0.020 {0.005 * t:+.3f} {0.02 * t:+.3f} | push_left | +1"
                                         for t in range(30))


def rss_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:", "Threads:")):
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0])
    return fields


async def full_request(host: str, port: int, payload: bytes) -> str:
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        await writer.drain()
        data = await reader.read()
        writer.close()
    except ConnectionResetError:
        return "reset"
    except OSError as err:
        return f"error:{type(err).__name__}"
    if data.startswith(b"HTTP/1.1 200") and b'"critical_steps' in data:
        return "answered"
    return f"status:{data[9:12].decode(errors='replace') or 'none'}"


async def half_request(host: str, port: int, hold_s: float) -> str:
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Len")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), hold_s)
        writer.close()
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "still_open"
    except OSError as err:
        return f"error:{type(err).__name__}"
    return "closed_408" if data.startswith(b"HTTP/1.1 408") else "closed"


def tally(results: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[r] = out.get(r, 0) + 1
    return out


async def burst(host: str, port: int, pid: int, n: int) -> dict:
    payload = json.dumps({"model": "jaxmod-scripted", "messages": identify_messages(EpisodeView(0, 30, CARD, TABLE),
                                                                                      3)}).encode()
    before = rss_kb(pid)
    t0 = time.perf_counter()
    full = await asyncio.gather(*(full_request(host, port, payload) for _ in range(n)))
    full_wall = time.perf_counter() - t0
    after_full = rss_kb(pid)
    hold = ServerLimits().header_timeout_s + 5.0
    t0 = time.perf_counter()
    half_tasks = [asyncio.ensure_future(half_request(host, port, hold)) for _ in range(n)]
    await asyncio.sleep(1.0)
    during_half = rss_kb(pid)
    half = await asyncio.gather(*half_tasks)
    half_wall = time.perf_counter() - t0
    after = rss_kb(pid)
    return {"connections": n, "full": tally(full), "full_wall_s": round(full_wall, 2),
            "half": tally(half), "half_released_after_s": round(half_wall, 2),
            "server_rss_kb": {"before": before["VmRSS"], "after_full_burst": after_full["VmRSS"],
                              "during_half_burst": during_half["VmRSS"], "after": after["VmRSS"],
                              "peak": after["VmHWM"]},
            "server_threads": {"before": before["Threads"], "during_half_burst": during_half["Threads"],
                               "after": after["Threads"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--json", default="benchmarks/results/advisor_burst.json")
    args = ap.parse_args()
    with ServerProcess("scripted") as server:
        host, port = server.url.split("//")[1].split("/")[0].rsplit(":", 1)
        row = asyncio.run(burst(host, int(port), server.pid, args.connections))
    print(json.dumps(row, indent=2))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
