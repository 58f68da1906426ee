"""`perfit metric import` of a big CSV against SQLite executemany of the same rows, one run.

Usage: python bench/bench_import.py [--rows 1000000]

Writes a CSV of ROWS points (`t,v,m`: unix seconds, a CI-like duration, a 12-character
commit), then times, end to end:

  perfit    `perfit metric import FILE` (a child process, as a user runs it) into a real
            `perfit serve` on loopback with a fresh data directory: reading the file,
            10,000-point requests, each parsed, checked and fsynced before its answer
  SQLite    the same rows read from the same file with the csv module, inserted with
            executemany into a table with an index on (metric, t), committed (WAL,
            synchronous=FULL: durable) every 10,000 rows

Target (issue 13): perfit at least as fast as SQLite (ratio >= 1.0).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import perfit  # noqa: E402

BATCH = perfit.MAX_IMPORT_POINTS


def write_csv(path: str, rows: int) -> None:
    rng = random.Random(13)
    t = int(time.time()) - rows * 60
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(("t", "v", "m"))
        for i in range(rows):
            out.writerow((t + 60 * i, round(rng.gauss(120, 4), 3), f"{rng.getrandbits(48):012x}"))


def perfit_import(tmp: str, path: str) -> float:
    root = perfit.new_token()
    env = {**os.environ, "PERFITD_ROOT_ACCESS_TOKEN": root}
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "perfit.py"), "serve", "--listen", "127.0.0.1:0",
         "--data", os.path.join(tmp, "data"), "--rate-limit", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        url = next(line.split()[-1] for line in server.stdout if "listening on" in line)
        admin = perfit.Client(url, root).call("PUT", "/a/")["access_token"]
        metric = perfit.Client(url, admin).call("PUT", "/m/", {"name": "imported"})["metric_id"]
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "perfit.py"), "metric", "import", path,
             "--server", url, "--access-token", admin, "--metric", metric],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()


def sqlite_import(tmp: str, path: str) -> float:
    db = sqlite3.connect(os.path.join(tmp, "import.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE points (metric INTEGER, t REAL, v REAL, m TEXT)")
    db.execute("CREATE INDEX points_by_time ON points (metric, t)")
    started = time.perf_counter()
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        batch = []
        for t, v, m in reader:
            batch.append((1, float(t), float(v), m))
            if len(batch) == BATCH:
                db.executemany("INSERT INTO points VALUES (?, ?, ?, ?)", batch)
                db.commit()
                batch = []
        db.executemany("INSERT INTO points VALUES (?, ?, ?, ?)", batch)
        db.commit()
    took = time.perf_counter() - started
    db.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "points.csv")
        write_csv(path, args.rows)
        ours = perfit_import(tmp, path)
        theirs = sqlite_import(tmp, path)
    ratio = theirs / ours
    print(f"perfit metric import  {args.rows / ours:10,.0f} rows/s  ({ours:.1f} s)")
    print(f"SQLite executemany    {args.rows / theirs:10,.0f} rows/s  ({theirs:.1f} s)")
    print(
        f"ratio                 {ratio:10.2f}x  (target >= 1.0x: {'met' if ratio >= 1 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
