#!/usr/bin/env python3
"""How many legs one bridge process holds in real time: a step test over ``bench/load.py``.

Raises the number of two-leg calls step by step until the upstream lag's 99th percentile
passes ``--max-p99-ms`` (250 ms), a chunk is dropped, or a call does not complete, and prints
the largest number of legs that held.

    python bench/capacity.py                      # callbridge, 100 calls more each step
    python bench/capacity.py --bridge forwarder --start 50 --step 50
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import run  # the sibling script, found once its folder is on the path


def held(result: dict[str, Any], max_p99_ms: float) -> tuple[bool, str]:
    lag = result["upstream_lag_ms"]
    done, total = str(result["calls_completed"]).split("/")
    if done != total:
        return False, f"{done}/{total} calls completed"
    if result["chunks_dropped"]:
        return False, f"{result['chunks_dropped']} chunks dropped"
    if lag["p99"] is None or lag["p99"] > max_p99_ms:
        return False, f"p99 lag {lag['p99']} ms"
    return True, f"p99 lag {lag['p99']} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bridge", choices=("callbridge", "forwarder"), default="callbridge")
    parser.add_argument("--start", type=int, default=100, help="calls in the first step")
    parser.add_argument("--step", type=int, default=100, help="calls added per step")
    parser.add_argument("--max-calls", type=int, default=1500)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per call, per step")
    parser.add_argument("--max-p99-ms", type=float, default=250.0)
    parser.add_argument("--final-every-s", type=float, default=5.0)
    parser.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--workers", type=int, default=1, help="callbridge serve --workers N")
    parser.add_argument("--cluster", action="store_true", help="cluster mode with one process")
    parser.add_argument("--no-pin", action="store_true", help="share the cores with the "
                        "generator (as --workers does)")
    args = parser.parse_args()
    best = 0
    calls = args.start
    while calls <= args.max_calls:
        step = argparse.Namespace(
            calls=calls, seconds=args.seconds, bridge=args.bridge, chunk_ms=100,
            final_every_s=args.final_every_s, ramp_s=5.0, event_loop=args.event_loop,
            json=False, workers=args.workers, cluster=args.cluster, no_pin=args.no_pin)
        result = asyncio.run(run(step))
        ok, why = held(result, args.max_p99_ms)
        print(f"{result['legs']:5d} legs: {'held' if ok else 'FELL BEHIND'} ({why}; "
              f"{result['cpu_ms_per_leg_second']} ms CPU per leg-second, "
              f"{result['bridge_cpu_share']} of a core; generator late p99 "
              f"{result['generator_late_ms']['p99']} ms)", flush=True)
        if not ok:
            break
        best = int(result["legs"])
        calls += args.step
    what = f"{args.workers} workers of" if args.workers > 1 else "one"
    print(f"largest load held by {what} {args.bridge} process: {best} legs")


if __name__ == "__main__":
    main()
