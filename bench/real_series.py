"""Score PerfIt's change detection on real, annotated series the way TCPDBench does.

Usage: python bench/real_series.py [--methods zero,binseg,pelt,perfit]

The series are bench/real/*.csv (a header `index,value`, one row an observation; other columns
are ignored), their annotations bench/real/annotations.json in the shape of the Turing Change
Point Dataset's: {series: {annotator: [0-based indexes where a new behaviour starts]}}. Where
they come from is bench/real/SOURCES.md. Series without annotations are skipped in the report.

The scores are those of the Turing Change Point Detection Benchmark (TCPDBench; van den Burg and
Williams, "An Evaluation of Change Point Detection Algorithms", 2020), reimplemented here to the
letter of alan-turing-institute/TCPDBench analysis/scripts/metrics.py (f_measure, covering) and
analysis/scripts/summarize.py (clean_cps): before scoring, a method's locations are deduplicated
and those outside 1..n-2 are dropped; then index 0 is added to every annotator's set and to the
predictions, F1 = 2PR/(P+R) with the precision against the union of the annotators' points and
the recall averaged over the annotators, a point matched one-to-one within 5 indexes; the
covering is the segmentation covering of each annotator's partition by the predicted one,
averaged over the annotators.

Methods:
  zero    no change points (TCPDBench's "zero" baseline)
  binseg  TCPDBench's default_binseg, reproduced with ruptures (see _changepoint_default)
  pelt    TCPDBench's default_pelt, likewise
  perfit  [c.index for c in perfit.detect_changes(values)]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real")
MARGIN = 5  #: metrics.py's default margin, in indexes
BINSEG_Q = 5  #: changepoint's default Q, the most change points BinSeg may return

Method = Callable[[Sequence[float]], list[int]]
Annotations = Mapping[str, Sequence[int]]


@dataclasses.dataclass(frozen=True)
class RealSeries:
    """One real series and what each annotator marked on it."""

    name: str
    values: list[float]
    annotations: dict[str, list[int]]  #: annotator -> 0-based indexes; empty: not annotated yet


def load(directory: str = DIRECTORY) -> list[RealSeries]:
    """Every bench/real/*.csv, by name, with its annotations (an empty dict where it has none)."""
    with open(os.path.join(directory, "annotations.json")) as f:
        annotations = json.load(f)
    out = []
    for file in sorted(os.listdir(directory)):
        if file.endswith(".csv"):
            name = file[: -len(".csv")]
            with open(os.path.join(directory, file), newline="") as f:
                values = [float(row["value"]) for row in csv.DictReader(f)]
            marks = {a: [int(i) for i in ix] for a, ix in annotations.get(name, {}).items()}
            out.append(RealSeries(name, values, marks))
    return out


# --- TCPDBench's scores -------------------------------------------------------------------


def clean(predictions: Iterable[int], n: int) -> list[int]:
    """summarize.py's clean_cps: distinct locations in 1..n-2 (0 and n-1 mean nothing)."""
    return sorted({int(x) for x in predictions if 1 <= x < n - 1})


def _true_positives(truth: set[int], predictions: set[int], margin: int) -> set[int]:
    """The annotated points matched by a prediction within `margin`, each prediction used once.

    In the order metrics.py has: truth points in set order, each taking its closest unused
    prediction (the smaller on a tie).
    """
    left = set(predictions)
    hits = set()
    for tau in truth:
        close = sorted((abs(tau - x), x) for x in left if abs(tau - x) <= margin)
        if close:
            hits.add(tau)
            left.remove(close[0][1])
    return hits


def _check(locations: Iterable[int], n: int) -> None:
    bad = [x for x in locations if not 0 <= x < n]
    if bad:
        raise ValueError(f"change point locations outside 0..{n - 1}: {bad}")


def f1(annotations: Annotations, predictions: Sequence[int], n: int, margin: int = MARGIN) -> float:
    """TCPDBench's F1 (metrics.f_measure, alpha 0.5). n is only used to check the locations."""
    if not annotations:
        raise ValueError("no annotations")
    _check(predictions, n)
    sets = []
    for marks in annotations.values():
        _check(marks, n)
        tk = set(marks)
        tk.add(0)
        sets.append(tk)
    x = set(predictions)
    x.add(0)
    union: set[int] = set()
    for tk in sets:
        union.update(tk)
    precision = len(_true_positives(union, x, margin)) / len(x)
    recall = sum(len(_true_positives(tk, x, margin)) / len(tk) for tk in sets) / len(sets)
    return 2 * precision * recall / (precision + recall)


def _segments(locations: Iterable[int], n: int) -> list[tuple[int, int]]:
    """metrics.partition_from_cps as half-open intervals [start, end) covering 0..n-1."""
    starts = sorted({0, *locations} - {n})
    return list(zip(starts, [*starts[1:], n]))


def _cover_one(predicted: list[tuple[int, int]], truth: list[tuple[int, int]], n: int) -> float:
    """metrics.cover_single: each true segment weighted by its length times its best Jaccard."""
    total = 0.0
    for a, b in truth:
        best = 0.0
        for c, d in predicted:
            inter = min(b, d) - max(a, c)
            if inter > 0:
                best = max(best, inter / ((b - a) + (d - c) - inter))
        total += (b - a) * best
    return total / n


def covering(annotations: Annotations, predictions: Sequence[int], n: int) -> float:
    """TCPDBench's covering (metrics.covering): the mean over annotators of C(annotator, pred)."""
    if not annotations:
        raise ValueError("no annotations")
    _check(predictions, n)
    predicted = _segments(predictions, n)
    covers = []
    for marks in annotations.values():
        _check(marks, n)
        covers.append(_cover_one(predicted, _segments(marks, n), n))
    return sum(covers) / len(covers)


# --- the methods ----------------------------------------------------------------------------


def _changepoint_default(values: Sequence[float], algorithm: str) -> list[int]:
    """TCPDBench's default_binseg / default_pelt, reproduced with ruptures.

    What the benchmark runs (alan-turing-institute/TCPDBench abed_conf.py, COMMANDS):
    `cpdbench_changepoint.R -p MBIC -f mean -t Normal -m BinSeg -Q default` and the same with
    `-m PELT`: R changepoint's cpt.mean(data, penalty="MBIC", method=..., test.stat="Normal",
    Q=5 for BinSeg ("default" in execs/R/cpdbench_changepoint.R), minseglen left at cpt.mean's
    default of 1), on the series standardised first (execs/R/utils.R load.dataset: scale(),
    mean 0 and sample SD 1). In changepoint (rkillick/changepoint: R/penalty_decision.R,
    R/multiple.norm.R, src/cost_general_functions.c) MBIC for a change in mean means a cost of
    sum (x - mean)^2 + ln(segment length) for each segment ("mean.norm.mbic") and a penalty of
    (1 + 2) ln n for each change. PELT minimises the penalised cost exactly; BinSeg adds the
    best split while its gain is at least the penalty, Q at most. The wrapper reports each of
    changepoint's locations (the last index of a segment, 1-based) minus 1, that is the last
    point before each change, 0-based, and n-1 at the end, which clean() drops: so is this.
    Left out: BinSeg's search in changepoint also skips splits leaving a first segment of one
    point; ruptures' minimum segment is symmetric.
    """
    import numpy as np
    import ruptures as rpt

    z = np.asarray(values, dtype=float)
    n = len(z)
    sd = z.std(ddof=1) if n > 1 else 0.0
    z = (z - z.mean()) / (sd if sd > 0 else 1.0)
    cost = _mbic_mean_cost()()
    penalty = 3 * math.log(n)
    if algorithm == "pelt":
        bkps = rpt.Pelt(custom_cost=cost, min_size=1, jump=1).fit(z).predict(pen=penalty)
    else:
        search = rpt.Binseg(custom_cost=cost, min_size=1, jump=1).fit(z)
        bkps = search.predict(pen=penalty)
        if len(bkps) - 1 > BINSEG_Q:  # the same greedy order, cut at Q
            bkps = search.predict(n_bkps=BINSEG_Q)
    return [b - 1 for b in bkps]


@functools.cache
def _mbic_mean_cost() -> type:
    """changepoint's mean.norm.mbic cost as a ruptures cost (made on first use)."""
    import numpy as np
    from ruptures.base import BaseCost

    class MbicMeanCost(BaseCost):  # type: ignore[misc]
        """Squared deviations from the segment's mean, plus ln(segment length)."""

        model = "mbic_mean"
        min_size = 1

        def fit(self, signal: np.ndarray) -> MbicMeanCost:
            self.signal = np.asarray(signal, dtype=float).reshape(len(signal), -1)
            y = self.signal[:, 0]
            self.s1 = np.concatenate([[0.0], np.cumsum(y)])
            self.s2 = np.concatenate([[0.0], np.cumsum(y * y)])
            return self

        def error(self, start: int, end: int) -> float:
            m = end - start
            s = self.s1[end] - self.s1[start]
            return float(self.s2[end] - self.s2[start] - s * s / m + math.log(m))

    return MbicMeanCost


def _perfit(values: Sequence[float]) -> list[int]:
    import perfit

    return [c.index for c in perfit.detect_changes(values)]


METHODS: dict[str, Method] = {
    "zero": lambda values: [],
    "binseg": lambda values: _changepoint_default(values, "binseg"),
    "pelt": lambda values: _changepoint_default(values, "pelt"),
    "perfit": _perfit,
}


# --- the report -------------------------------------------------------------------------------


def score(
    series: Sequence[RealSeries], methods: Mapping[str, Method]
) -> dict[str, dict[str, tuple[float, float, list[int]]]]:
    """{series: {method: (F1, cover, cleaned locations)}} for the annotated series."""
    out = {}
    for s in series:
        if not s.annotations:
            continue
        n = len(s.values)
        out[s.name] = {}
        for name, method in methods.items():
            found = clean(method(s.values), n)
            out[s.name][name] = (
                f1(s.annotations, found, n),
                covering(s.annotations, found, n),
                found,
            )
    return out


def summary(
    scores: Mapping[str, Mapping[str, tuple[float, float, list[int]]]], methods: Iterable[str]
) -> dict[str, tuple[float, float]]:
    """{method: (mean F1, mean cover)} over the scored series."""
    return {
        name: (
            sum(row[name][0] for row in scores.values()) / len(scores),
            sum(row[name][1] for row in scores.values()) / len(scores),
        )
        for name in methods
        if scores
    }


def report(
    methods: Mapping[str, Method] | None = None,
    directory: str = DIRECTORY,
    scores: Mapping[str, Mapping[str, tuple[float, float, list[int]]]] | None = None,
) -> str:
    """Mean F1 and cover of each method, then PerfIt against the best reference per series
    (`scores`: score()'s answer, if already at hand)."""
    methods = METHODS if methods is None else methods
    series = load(directory)
    scores = score(series, methods) if scores is None else scores
    skipped = [s.name for s in series if not s.annotations]
    lines = [
        f"{len(scores)} annotated series of {len(series)} (skipped, no annotations yet: "
        f"{', '.join(skipped) or 'none'})",
        "",
        f"{'method':<10} {'F1':>6} {'cover':>6}",
    ]
    for name, (mean_f1, mean_cover) in summary(scores, methods).items():
        lines.append(f"{name:<10} {mean_f1:6.3f} {mean_cover:6.3f}")
    references = [m for m in methods if m != "perfit"]
    if "perfit" in methods and references and scores:
        by_name = {s.name: s for s in series}
        lines += ["", "per series: PerfIt against the best reference (* PerfIt lower)", ""]
        lines.append(f"{'series':<26} {'n':>4}  {'F1':>5} {'best':>12}  {'cover':>5} {'best':>12}")
        losses = []
        for name, row in scores.items():
            pf1, pcov, _ = row["perfit"]
            bf1 = max(references, key=lambda m: row[m][0])
            bcov = max(references, key=lambda m: row[m][1])
            flag_f1 = "*" if pf1 < row[bf1][0] else " "
            flag_cov = "*" if pcov < row[bcov][1] else " "
            if flag_f1 == "*" or flag_cov == "*":
                losses.append(name)
            lines.append(
                f"{name:<26} {len(by_name[name].values):>4}  {pf1:.3f}{flag_f1}"
                f"{row[bf1][0]:.3f} {bf1:<6}  {pcov:.3f}{flag_cov}{row[bcov][1]:.3f} {bcov:<6}"
            )
        if losses:
            lines += ["", "where PerfIt loses: annotations and each method's cleaned locations", ""]
            for name in losses:
                lines.append(f"{name}: annotations {by_name[name].annotations}")
                lines += [f"  {m:<8} {scores[name][m][2]}" for m in methods]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    args = parser.parse_args()
    chosen = {m: METHODS[m] for m in args.methods.split(",")}
    print(report(chosen))


if __name__ == "__main__":
    main()
