"""`perfit metric import` of a big CSV against SQLite executemany of the same rows, one run.

Usage: python bench/bench_import.py [--rows 1000000] [--runs 3]

Writes a CSV of ROWS points (`t,v,m`: unix seconds, a CI-like duration, a 12-character
commit), then times, end to end, RUNS times each, interleaved:

  perfit    `python perfit.py metric import FILE` (a child process, as a user runs it: its
            start, reading the file, 10,000-point requests) into a real `perfit serve` on
            loopback with a fresh data directory, each request parsed, checked and fsynced
            before its answer; until the command exits
  SQLite    the same rows read from the same file with the csv module, inserted with
            executemany into a table (metric, t, v, m), a commit every 10,000 rows (durable:
            the default rollback journal, synchronous=FULL)
  SQLite+   the same, with an index on (metric, t) in WAL mode: what PerfIt keeps (points
            in time order, per metric), and how bench_store.py runs SQLite

Also printed: the CPU seconds of the client and of the server during the import, and how long
the server goes on sealing (compressing its full logs, in the background) after the command
has exited. Shared machines drift: read the ratio of one run, and the range over runs.

Target (issue 13): perfit metric import at least as fast as SQLite (ratio >= 1.0x).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import perfit  # noqa: E402

BATCH = perfit.MAX_IMPORT_POINTS
TARGET = 1.0


def write_csv(path: str, rows: int) -> None:
    rng = random.Random(13)
    t = int(time.time()) - rows * 60
    with open(path, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(("t", "v", "m"))
        for i in range(rows):
            out.writerow((t + 60 * i, round(rng.gauss(120, 4), 3), f"{rng.getrandbits(48):012x}"))


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sealed(data: str) -> bool:
    names = os.listdir(data)
    return sum(n.endswith(".log") for n in names) <= 1 and not any(".tmp" in n for n in names)


def perfit_import(tmp: str, path: str, rows: int) -> tuple[float, float, float, float]:
    """(seconds, client CPU s, server CPU s, seconds of sealing after the command exited)."""
    root = perfit.new_token()
    data = tempfile.mkdtemp(dir=tmp)
    env = {**os.environ, "PERFITD_ROOT_ACCESS_TOKEN": root}
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "perfit.py"), "serve", "--listen", "127.0.0.1:0",
         "--data", data, "--rate-limit", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        url = next(line.split()[-1] for line in server.stdout if "listening on" in line)
        admin = perfit.Client(url, root).call("PUT", "/a/")["access_token"]
        metric = perfit.Client(url, admin).call("PUT", "/m/", {"name": "imported"})["metric_id"]
        server_cpu = _cpu(server.pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, "perfit.py"), "metric", "import", path,
             "--server", url, "--access-token", admin, "--metric", metric],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        took = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = _cpu(server.pid) - server_cpu
        client_cpu = sum(after[:2]) - sum(children[:2])
        assert f'"added": {rows}' in out, out
        while not _sealed(data) and time.perf_counter() - started < took + 120:
            time.sleep(0.05)
        return took, client_cpu, server_cpu, time.perf_counter() - started - took
    finally:
        server.terminate()
        server.wait()


def sqlite_import(tmp: str, path: str, indexed: bool) -> float:
    db = sqlite3.connect(os.path.join(tmp, f"import-{time.monotonic_ns()}.db"))
    if indexed:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE points (metric INTEGER, t REAL, v REAL, m TEXT)")
    if indexed:
        db.execute("CREATE INDEX points_by_time ON points (metric, t)")
    db.commit()
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
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ours, plain, indexed = [], [], []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = os.path.join(tmp, "points.csv")
        write_csv(path, args.rows)
        print(f"{args.rows:,} rows, {os.path.getsize(path) / 1e6:.1f} MB of CSV, "
              f"Python {sys.version.split()[0]}, {args.runs} run(s) interleaved")  # fmt: skip
        for run in range(args.runs):
            took, client_cpu, server_cpu, sealing = perfit_import(tmp, path, args.rows)
            ours.append(took)
            plain.append(sqlite_import(tmp, path, indexed=False))
            indexed.append(sqlite_import(tmp, path, indexed=True))
            print(f"run {run + 1}: perfit {took:.2f} s (CPU: client {client_cpu:.2f} s, server "
                  f"{server_cpu:.2f} s; sealing went on {sealing:.2f} s after), SQLite "
                  f"{plain[-1]:.2f} s, SQLite+ {indexed[-1]:.2f} s; ratio "
                  f"{plain[-1] / took:.2f}x")  # fmt: skip
    rows = args.rows
    figures = (("perfit metric import", ours), ("SQLite executemany", plain),
               ("SQLite+ (WAL, index)", indexed))  # fmt: skip
    for name, times in figures:
        print(f"{name:22} {rows / statistics.median(times):10,.0f} rows/s  "
              f"(median of {', '.join(f'{s:.2f}' for s in times)} s)")  # fmt: skip
    for name, times in figures[1:]:
        ratio = statistics.median(times) / statistics.median(ours)
        runs = sorted(b / a for a, b in zip(ours, times))
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(f"ratio to {name:13} {ratio:10.2f}x  (runs {runs[0]:.2f}-{runs[-1]:.2f}x; "
              f"target >= {TARGET:g}x: {verdict})")  # fmt: skip


if __name__ == "__main__":
    main()
