"""Draw each series of bench/real/ for the annotators (the plots are not committed).

Usage: python bench/real/make_plots.py [--out /tmp/realplots] [--blind]

One PNG a series, OUT/NAME.png, x axis the 0-based index with ticks fine enough to read a
position to a point or two. With --blind the files are named s01.png, s02.png, ... in a
shuffled order instead, so the name gives nothing away, and the key is written beside OUT, to
OUT-key.json (keep it from the annotators).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MultipleLocator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import real_series


def ticks(n: int) -> tuple[int, int]:
    """Major and minor tick steps for a series of n points."""
    if n <= 120:
        return 10, 1
    if n <= 250:
        return 10, 5
    if n <= 500:
        return 20, 5
    return 50, 10


def draw(title: str, values: list[float], path: str) -> None:
    n = len(values)
    major, minor = ticks(n)
    fig, ax = plt.subplots(figsize=(max(12.0, n / 25), 4.5), dpi=110)
    ax.plot(range(n), values, color="0.6", linewidth=0.6)
    ax.plot(range(n), values, "o", color="tab:blue", markersize=2.2)
    ax.xaxis.set_major_locator(MultipleLocator(major))
    ax.xaxis.set_minor_locator(MultipleLocator(minor))
    ax.grid(which="major", axis="x", color="0.75", linewidth=0.8)
    ax.grid(which="minor", axis="x", color="0.9", linewidth=0.5)
    ax.grid(which="major", axis="y", color="0.9", linewidth=0.5)
    ax.set_xlim(-2, n + 1)
    ax.tick_params(axis="x", labelsize=7, labelrotation=90)
    ax.set_xlabel("index")
    ax.set_title(f"{title}  ({n} points)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/realplots")
    parser.add_argument("--blind", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    series = real_series.load()
    key = {}
    if args.blind:
        random.Random(2020).shuffle(series)
    for k, s in enumerate(series, 1):
        name = f"s{k:02d}" if args.blind else s.name
        key[name] = s.name
        draw(name, s.values, os.path.join(args.out, name + ".png"))
    if args.blind:
        with open(args.out.rstrip("/") + "-key.json", "w") as f:
            json.dump(key, f, indent=1)
    print(f"{len(series)} plots in {args.out}")


if __name__ == "__main__":
    main()
