"""Benchmark a board: server time to answer GET /b/ID (and its JSON and OpenMetrics forms).

Usage: python bench/bench_board.py [--metrics 500] [--points 1000]

An account of METRICS metrics of POINTS CI-like points each (some with a step), in a real
store, answered through the WSGI app as the server would (no network: server time only).
"cold" is the first answer after one new point in every metric (a CI run just posted: every
change-point result is stale); "warm" is the next one. The baseline in the same run is the
page of one metric (GET /m/ID), which also finds change points and draws a chart.
Target (issue "A whole benchmark suite per CI run"): 500 metrics of 1,000 points in under
300 ms of server time; the page weight is printed too.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import perfit


def fill(store: perfit.Store, account: bytes, metrics: int, points: int) -> list[bytes]:
    """METRICS named metrics of POINTS points, one a minute, a fifth of them with a step."""
    rng = random.Random(5)
    start = (int(time.time()) - points * 60) * perfit.US
    ids = []
    for m in range(metrics):
        metric = store.create_metric(account, name=f"suite{m % 7}/bench_{m}", unit="s")
        level = rng.uniform(0.001, 2)
        rows = []
        for i in range(points):
            if m % 5 == 0 and i == points - 30:
                level *= rng.choice((0.8, 1.25))
            slow = rng.uniform(1.3, 2) if rng.random() < 0.05 else 1
            rows.append((start + i * 60 * perfit.US, level * rng.gauss(1, 0.02) * slow, b""))
        store.add_points(metric.id, perfit.PointBatch.of(rows))
        ids.append(metric.id)
    return ids


def answer_time(app, path: str, runs: int = 1) -> tuple[float, int, int]:
    """The fastest of `runs` answers to GET path through the app, the body's size, and its size
    gzipped (as a proxy in front would send it)."""
    best, size, packed = float("inf"), 0, 0
    for _ in range(runs):
        environ = {
            "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "x",
            "SERVER_PORT": "80", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http",
            "REMOTE_ADDR": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1",
        }  # fmt: skip
        started = time.perf_counter()
        body = b"".join(app(environ, lambda status, headers, exc_info=None: None))
        best = min(best, time.perf_counter() - started)
        size, packed = len(body), len(zlib.compress(body, 6))
    return best, size, packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=500)
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, perfit.Store.open(data) as store:
        account, _ = store.create_account()
        ids = fill(store, account, args.metrics, args.points)
        board = perfit.b64encode(store.index.board_of[account])
        app = perfit.make_app(store, perfit.ServerConfig(rate_limit=0))
        one = f"/m/{perfit.b64encode(ids[0])}"
        print(f"{args.metrics} metrics x {args.points} points")
        print(f"{'answer':<28} {'ms':>8} {'KB':>8} {'gzip KB':>8} {'x one metric page':>18}")
        base, size, packed = answer_time(app, one, runs=3)
        print(
            f"{'GET /m/ID (baseline)':<28} {base * 1000:8.1f} {size / 1024:8.1f} "
            f"{packed / 1024:8.1f} {1.0:18.2f}"
        )
        for view in ("", "/json", "/metrics"):
            for metric_id in ids:  # a CI run: one new point in every metric
                store.add_point(metric_id, random.uniform(0.001, 2))
            cold, size, packed = answer_time(app, f"/b/{board}{view}")
            warm, _, _ = answer_time(app, f"/b/{board}{view}", runs=3)
            for label, took in ((f"GET /b/ID{view} cold", cold), (f"GET /b/ID{view} warm", warm)):
                print(
                    f"{label:<28} {took * 1000:8.1f} {size / 1024:8.1f} {packed / 1024:8.1f} "
                    f"{took / base:18.2f}"
                )


if __name__ == "__main__":
    main()
