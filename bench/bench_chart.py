"""Benchmark PerfIt's charts: render time and size against the JSON export of the same points.

Usage: python bench/bench_chart.py [--sizes 1000,10000,100000,1000000]

For each size, one metric of CI-like durations is drawn as the SVG chart (`GET /m/ID/svg`
does exactly this) and exported as JSON (`GET /m/ID/json`), in the same run; the ratio is
what to read. Target (issue "Charts and pages a person enjoys"): an SVG of 200,000 points
under 250 KB that renders no slower than the JSON export of the same points.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import perfit


def metric_with(points: int, seed: int = 11) -> perfit.Metric:
    """A metric of `points` CI-like durations, one every ten minutes, with a few steps."""
    rng = random.Random(seed)
    metric = perfit.Metric(perfit.new_id(), perfit.new_id(), 0.0, name="build", unit="s")
    t = (int(time.time()) - points * 600) * perfit.US
    level = 300.0
    for _ in range(points):
        if rng.random() < 0.0005:
            level *= rng.choice((0.85, 1.15))
        value = level * rng.gauss(1, 0.03) * (rng.uniform(1.3, 2) if rng.random() < 0.05 else 1)
        t += 600 * perfit.US
        metric.series.add_one(t, round(value, 3), b"")
    return metric


def best_of(fn, runs: int) -> tuple[float, int]:
    """The fastest of `runs` calls, and the size of what it returned."""
    best, size = float("inf"), 0
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
        size = len(out.encode() if isinstance(out, str) else out)
    return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000,200000,1000000")
    args = parser.parse_args()
    opts = perfit.ChartOptions()
    print(f"{'points':>9} {'svg ms':>9} {'svg KB':>8} {'json ms':>9} {'json KB':>9} "
          f"{'time svg/json':>14} {'size svg/json':>14}")  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        metric = metric_with(size)
        runs = 5 if size <= 100_000 else 2
        svg_s, svg_b = best_of(lambda m=metric: perfit.chart_document([m], opts), runs)
        json_s, json_b = best_of(
            lambda m=metric: json.dumps(perfit.points_json(m, opts), separators=(",", ":")), runs
        )
        print(f"{size:>9,} {svg_s * 1e3:>9.1f} {svg_b / 1e3:>8.1f} {json_s * 1e3:>9.1f} "
              f"{json_b / 1e3:>9.1f} {svg_s / json_s:>13.2f}x {svg_b / json_b:>13.3f}x")  # fmt: skip


if __name__ == "__main__":
    main()
