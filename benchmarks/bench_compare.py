"""Two checkouts of ovseg on the same benchmark, interleaved, and the ratio of their speeds.

    python benchmarks/bench_compare.py OLD_TREE NEW_TREE [--rounds 3] [--key e2e_fps ...] \\
        -- [bench_segment.py arguments, e.g. --clip ovseg-tiny --frames 90 --rounds 1]

Each round runs ``benchmarks/bench_segment.py`` of OLD_TREE, then of NEW_TREE (each in its
own process, importing its own ``ovseg_cli``), reads each ``--key`` (repeatable) from the
JSON line each prints last and takes the ratio NEW / OLD within the round: this machine's
speed drifts by tens of percent over minutes, within a round far less. The last line is
JSON: {KEY: {"old": median, "new": median, "speedup": median of the rounds' ratios}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run(tree: Path, args: list[str]) -> dict:
    """One run of ``tree``'s bench_segment.py, its last line as JSON."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # its own ovseg_cli, not the installed one
    proc = subprocess.run(
        [sys.executable, str(tree / "benchmarks" / "bench_segment.py"), *args],
        cwd=tree, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{tree}: bench_segment.py failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    """Interleave the two trees' runs and print the speedup."""
    argv = sys.argv[1:]
    bench = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--key", action="append", help="a number of the JSON line (e2e_fps)")
    args = parser.parse_args(own)
    keys = args.key or ["e2e_fps"]
    rows = []
    for r in range(args.rounds):
        old, new = run(args.old.resolve(), bench), run(args.new.resolve(), bench)
        rows.append((old, new))
        print(f"round {r + 1}: " + ", ".join(
            f"{k} old {old[k]:.3f} new {new[k]:.3f} ({new[k] / old[k]:.3f}x)" for k in keys
        ), flush=True)  # fmt: skip
    print(json.dumps({
        k: {"old": round(statistics.median(o[k] for o, _ in rows), 3),
            "new": round(statistics.median(n[k] for _, n in rows), 3),
            "speedup": round(statistics.median(n[k] / o[k] for o, n in rows), 3)}
        for k in keys
    }))  # fmt: skip


if __name__ == "__main__":
    main()
