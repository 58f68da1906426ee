"""How long a client command takes to start, against a bare interpreter in the same run.

Usage: python bench/bench_startup.py [--runs 40]

Every CI job pays PerfIt's start at least once. Each form runs `token gen` (a command that
sends nothing: the start alone), with -S (no site-packages, as a CI job that copied the file
has) and no PYTHONDONTWRITEBYTECODE, and is timed as the median of RUNS, interleaved with the
baseline, `python -S -c pass`. Target (issue 13): at most 8x the bare interpreter.

  python -S -m perfit       the module, its byte code cached in __pycache__ after the first run
  python -S perfit.pyz      the zipapp of `perfit bundle`, which carries its byte code
  python -S perfit.py       the file run as a script: Python compiles a script at every run,
                            never caching it, so this form pays the compile every time
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = 8.0


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    py = os.path.realpath(sys.executable)  # not a shim script: the interpreter itself
    with tempfile.TemporaryDirectory() as tmp:
        pyz = os.path.join(tmp, "perfit.pyz")
        subprocess.run([py, "perfit.py", "bundle", "-o", pyz], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        forms = {
            "python -S -c pass (baseline)": [py, "-S", "-c", "pass"],
            "python -S -m perfit token gen": [py, "-S", "-m", "perfit", "token", "gen"],
            "python -S perfit.pyz token gen": [py, "-S", pyz, "token", "gen"],
            "python -S perfit.py token gen": [py, "-S", "perfit.py", "token", "gen"],
        }
        for cmd in forms.values():
            timed(cmd, env)  # warm: the page cache, and __pycache__ for -m
        times: dict[str, list[float]] = {name: [] for name in forms}
        for _ in range(args.runs):
            for name, cmd in forms.items():
                times[name].append(timed(cmd, env))
    base = statistics.median(times["python -S -c pass (baseline)"])
    print(f"Python {sys.version.split()[0]}, median of {args.runs} runs each, interleaved")
    for name, values in times.items():
        median = statistics.median(values)
        ratio = median / base
        verdict = "" if name.endswith("(baseline)") else (
            f"  (target <= {TARGET:g}x: {'met' if ratio <= TARGET else 'MISSED'})")  # fmt: skip
        print(f"{name:34} {median * 1000:7.1f} ms  {ratio:5.1f}x{verdict}")


if __name__ == "__main__":
    main()
