#!/usr/bin/env python3
"""How many legs one bridge process holds in real time: a step test over ``bench/load.py``.

Raises the number of two-leg calls step by step until the upstream lag's 99th percentile
passes ``--max-p99-ms`` (250 ms), a chunk is dropped, or a call does not complete, and prints
the largest number of legs that held. ``--engine`` picks callbridge's engine and its
emulator's sink, as in ``load.py``.

``--then-forwarder`` runs the per-frame forwarder (``bench/forwarder.py``, against the
Telnyx sink: it speaks nothing else) through the same step test right after, on the same
machine, from ``--forwarder-start`` by ``--forwarder-step`` calls, and prints both largest
loads held and their ratio.

    python bench/capacity.py                      # callbridge, 100 calls more each step
    python bench/capacity.py --engine deepgram --start 200 --step 50
    python bench/capacity.py --bridge forwarder --start 50 --step 50
    python bench/capacity.py --start 300 --then-forwarder --forwarder-start 50
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the sibling script, found once its folder is on the path
from load import build_parser, run


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


def step_test(args: argparse.Namespace, bridge: str, engine: str, start: int,
              step: int) -> int:
    """Steps of ``load.run`` from ``start`` calls by ``step`` until one falls behind; the
    legs of the largest step that held (0 if the first did not)."""
    best = 0
    calls = start
    while calls <= args.max_calls:
        options = [
            "--calls", str(calls), "--seconds", str(args.seconds), "--bridge", bridge,
            "--engine", engine, "--final-every-s", str(args.final_every_s),
            "--event-loop", args.event_loop]
        if bridge == "callbridge":  # the forwarder is one plain process
            options += ["--workers", str(args.workers)] + (["--cluster"] if args.cluster else [])
        options += ["--no-pin"] if args.no_pin else []
        result = asyncio.run(run(build_parser().parse_args(options)))
        ok, why = held(result, args.max_p99_ms)
        print(f"{result['legs']:5d} legs: {'held' if ok else 'FELL BEHIND'} ({why}; "
              f"{result['cpu_ms_per_leg_second']} ms CPU per leg-second, "
              f"{result['bridge_cpu_share']} of a core; generator late p99 "
              f"{result['generator_late_ms']['p99']} ms)", flush=True)
        if not ok:
            break
        best = int(result["legs"])
        calls += step
    else:
        print(f"(every step up to --max-calls {args.max_calls} held: a lower bound)")
    what = f"{args.workers} workers of" if args.workers > 1 and bridge == "callbridge" \
        else "one"
    name = f"{bridge} ({engine} engine)" if bridge == "callbridge" else bridge
    print(f"largest load held by {what} {name} process: {best} legs", flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bridge", choices=("callbridge", "forwarder"), default="callbridge")
    parser.add_argument("--engine", choices=("telnyx", "deepgram", "assemblyai"),
                        default="telnyx", help="callbridge's engine (the forwarder: telnyx)")
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
    parser.add_argument("--then-forwarder", action="store_true",
                        help="then the same step test for bench/forwarder.py; print both "
                        "and their ratio")
    parser.add_argument("--forwarder-start", type=int, default=50,
                        help="calls in the forwarder's first step")
    parser.add_argument("--forwarder-step", type=int, default=50,
                        help="calls added per forwarder step")
    args = parser.parse_args()
    if args.bridge == "forwarder" and (args.engine != "telnyx" or args.then_forwarder):
        parser.error("the forwarder speaks Telnyx only; --then-forwarder follows callbridge")
    best = step_test(args, args.bridge, args.engine, args.start, args.step)
    if not args.then_forwarder:
        return
    forwarder = step_test(args, "forwarder", "telnyx", args.forwarder_start,
                          args.forwarder_step)
    ratio = f"{best / forwarder:.2f}" if forwarder else "n/a (the forwarder held no step)"
    print(f"callbridge ({args.engine} engine) {best} legs, forwarder {forwarder} legs: "
          f"ratio {ratio}")


if __name__ == "__main__":
    main()
