"""Benchmark PerfIt's store against SQLite on the same data, in one run.

Usage: python bench/bench_store.py [--metrics 10] [--points 100000] [--seconds 5]

Prints ratios, not just times: absolute numbers drift on shared machines, a ratio measured
in the same run does not. Targets (issue "The store at production grade"):

  bulk import          >= 1.0x SQLite executemany   (both durable per batch of 10,000)
  restart, all points  <= 1.0x SQLite select-all
  server memory        <= 32 bytes per point, after a restart and after an import over HTTP
  disk                 <= 0.3x SQLite
  durable POST /m/ID   >= 0.8x a do-nothing bottle handler on the same server
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import perfit  # noqa: E402

BATCH = perfit.MAX_IMPORT_POINTS


def generate(metrics: int, points: int, seed: int = 7) -> list[list[tuple[int, float, bytes]]]:
    """CI-like durations: a level per metric, 1-5 % noise, slow outliers, a few steps."""
    rng = random.Random(seed)
    start = int(time.time()) - points * 1201  # steps are at most 1,201 s: none in the future
    series = []
    for _ in range(metrics):
        level = rng.uniform(20, 900)
        noise = rng.uniform(0.01, 0.05)
        t = start * perfit.US
        rows = []
        for i in range(points):
            if rng.random() < 0.0005:
                level *= rng.choice((0.8, 0.9, 1.1, 1.25))  # a change lands
            value = level * rng.gauss(1, noise)
            if rng.random() < 0.05:
                value *= rng.uniform(1.3, 2.0)  # a cold cache or a busy runner
            t += rng.randint(60, 1200) * perfit.US + rng.randint(0, perfit.US - 1)
            rows.append((t, round(value, 3), b""))  # `perfit run` posts milliseconds
            del i
        series.append(rows)
    return series


def du(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# -- perfit ------------------------------------------------------------------------------------


def perfit_import(path: str, data) -> None:
    with perfit.Store.open(path) as store:
        account, _ = store.create_account()
        for n, rows in enumerate(data):
            metric = store.create_metric(account, name=f"bench/{n}", unit="s")
            for i in range(0, len(rows), BATCH):
                store.add_points(metric.id, perfit.PointBatch.of(rows[i : i + BATCH]))


RSS_PROBE = textwrap.dedent(
    """
    import gc, sys, time
    sys.path.insert(0, {root!r})
    import perfit, zstandard, bottle, svgwrite
    perfit.find_zstd()  # the zstd module the store reads with: its import is no per-point cost

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))

    gc.collect()
    before = rss()
    started = time.perf_counter()
    store = perfit.Store.open({path!r})
    took = time.perf_counter() - started
    gc.collect()
    points = sum(len(m.series) for m in store.metrics.values())
    print(took, rss() - before, points)
    """
)


def perfit_restart(path: str) -> tuple[float, int, int]:
    """Open the store in a fresh process: (seconds, RSS growth in bytes, points)."""
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE.format(root=ROOT, path=path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


# -- SQLite ------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE points (metric INTEGER NOT NULL, t INTEGER NOT NULL, v REAL NOT NULL, m TEXT);
CREATE INDEX points_by_metric_time ON points (metric, t);
"""


def sqlite_import(path: str, data) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # durable at each commit, as PerfIt is at each batch
    db.executescript(SCHEMA)
    for metric, rows in enumerate(data):
        for i in range(0, len(rows), BATCH):
            with db:
                db.executemany(
                    "INSERT INTO points VALUES (?, ?, ?, ?)",
                    [(metric, t, v, m.decode() or None) for t, v, m in rows[i : i + BATCH]],
                )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def sqlite_select_all(path: str) -> int:
    db = sqlite3.connect(path)
    rows = db.execute("SELECT metric, t, v, m FROM points ORDER BY metric, t").fetchall()
    db.close()
    return len(rows)


# -- HTTP: durable POSTs against a do-nothing handler ---------------------------------------

# One server process, built as `perfit serve` builds it (same WSGI server, same access log),
# with one extra route that does nothing: the baseline shares everything but the work.
BENCH_SERVER = textwrap.dedent(
    """
    import logging, sys
    sys.path.insert(0, {root!r})
    import bottle, perfit

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    store = perfit.Store.open({data!r})
    store.root_token_hash = perfit.hash_token({token!r})
    app = perfit.make_app(store, perfit.ServerConfig(rate_limit=0))

    @app.post("/noop/<metric_id>")
    def noop(metric_id):
        bottle.request.body.read()
        return perfit.json_response({{"t": 0}})

    server = perfit.make_server("127.0.0.1", 0, app)
    print("perfit: listening on http://127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()
    """
)

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"value": 12.345, "metadata": "0123456789abcdef0123456789abcdef01234567"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer TOKEN"
"""
#: ... each request with an Idempotency-Key of its own, as perfit's client sends them
WRK_KEYED = """
counter = 0
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = string.format("%d-%d-%d", os.time(), math.random(1e9), counter)
  return wrk.format()
end
"""


def start(cmd: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)  # fmt: skip
    for line in proc.stdout:
        if "listening on" in line:
            return proc, line.split()[-1]
    raise RuntimeError(f"{cmd} did not start")


def post_rate(
    url: str, path: str, token: str, seconds: float, connections: int, keyed: bool = False
) -> float:
    """Requests per second of POST url+path, with wrk if installed, else Python threads;
    `keyed`: each with an Idempotency-Key of its own."""
    if shutil.which("wrk"):
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(WRK_SCRIPT.replace("TOKEN", token) + (WRK_KEYED if keyed else ""))
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "-s", f.name, url + path],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        os.unlink(f.name)
        non2xx = [line for line in out.splitlines() if "Non-2xx" in line or "errors" in line]
        if non2xx:
            print("   wrk:", "; ".join(non2xx))
        return float(next(line.split()[1] for line in out.splitlines() if "Requests/sec" in line))
    return _thread_rate(url + path, token, seconds, connections, keyed)


def _thread_rate(url: str, token: str, seconds: float, connections: int, keyed: bool) -> float:
    import threading
    import urllib.request

    body = json.dumps({"value": 12.345, "metadata": "0" * 40}).encode()
    count = [0] * connections
    deadline = time.monotonic() + seconds

    def worker(i: int) -> None:
        while time.monotonic() < deadline:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            if keyed:
                headers["Idempotency-Key"] = f"{i}-{count[i]}-{time.time_ns()}"
            request = urllib.request.Request(url, body, method="POST", headers=headers)
            with urllib.request.urlopen(request) as answer:
                answer.read()
            count[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / seconds


def http_figures(tmp: str, seconds: float, connections: int) -> tuple[float, float, float]:
    """Median req/s of durable POST /m/ID, of the same with an Idempotency-Key each, and of
    the do-nothing route, runs interleaved."""
    root = perfit.new_token()
    script = BENCH_SERVER.format(root=ROOT, data=os.path.join(tmp, "http-data"), token=root)
    server, url = start([sys.executable, "-c", script])
    try:
        admin = perfit.Client(url, root).call("PUT", "/a/")["access_token"]
        metric = perfit.Client(url, admin).call("PUT", "/m/", {"name": "bench"})["metric_id"]
        post = perfit.Client(url, admin).call("PUT", "/t/", {"type": "post"})["access_token"]
        durable, keyed, noop = [], [], []
        for _ in range(3):
            durable.append(post_rate(url, f"/m/{metric}", post, seconds, connections))
            keyed.append(post_rate(url, f"/m/{metric}", post, seconds, connections, keyed=True))
            noop.append(post_rate(url, f"/noop/{metric}", post, seconds, connections))
    finally:
        server.terminate()
        server.wait()
    return statistics.median(durable), statistics.median(keyed), statistics.median(noop)


def http_import_memory(tmp: str, data) -> tuple[int, int]:
    """A real `perfit serve`: its RSS growth (bytes) after importing `data` over HTTP in
    batches of 10,000 points, as `perfit metric import` sends them; and the points."""
    root = perfit.new_token()
    env = {**os.environ, "PERFITD_ROOT_ACCESS_TOKEN": root}
    server, url = start([sys.executable, os.path.join(ROOT, "perfit.py"), "serve", "--listen",
                         "127.0.0.1:0", "--data", os.path.join(tmp, "import-data"),
                         "--rate-limit", "0"], env=env)  # fmt: skip
    try:
        admin = perfit.Client(url, root).call("PUT", "/a/")["access_token"]
        client = perfit.Client(url, admin)
        threads = _threads_at_rest(server.pid)  # the request threads so far have ended
        before, total = _rss(server.pid), 0
        for rows in data:
            metric = client.call("PUT", "/m/", {"unit": "s"})["metric_id"]
            for i in range(0, len(rows), BATCH):
                body = [{"t": t / perfit.US, "v": v} for t, v, _ in rows[i : i + BATCH]]
                total += client.call("POST", f"/m/{metric}/points", body)["added"]
        _wait_for_rest(server.pid, threads, os.path.join(tmp, "import-data"))
        return _rss(server.pid) - before, total
    finally:
        server.terminate()
        server.wait()


def _wait_for_rest(pid: int, threads: int, data: str, timeout: float = 60) -> None:
    """Until the server has sealed every full log and finished the pass that sealed them
    (compaction comes after sealing, and holds a run's points in memory while it works):
    one log, no temporary file, and no thread beyond those it had before the import, for a
    few looks in a row. Memory is measured at rest."""
    deadline, calm = time.monotonic() + timeout, 0
    while calm < 5:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not come to rest")
        names = os.listdir(data)
        sealed = sum(n.endswith(".log") for n in names) == 1 and not any(".tmp" in n for n in names)
        calm = calm + 1 if sealed and _threads(pid) <= threads else 0
        time.sleep(0.05)


def _threads_at_rest(pid: int) -> int:
    """The server's threads once their number has not changed for a few looks in a row."""
    seen = [_threads(pid)]
    while len(seen) < 5 or len(set(seen[-5:])) > 1:
        time.sleep(0.05)
        seen.append(_threads(pid))
    return seen[-1]


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads"))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


# -- the run -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--points", type=int, default=100_000, help="per metric")
    parser.add_argument("--seconds", type=float, default=3, help="per HTTP load run (3 each)")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    total = args.metrics * args.points
    data = generate(args.metrics, args.points)
    print(f"data: {args.metrics} metrics x {args.points} points = {total} points, no metadata")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        store_dir, db = os.path.join(tmp, "perfit"), os.path.join(tmp, "sqlite.db")

        ours = timed(lambda: perfit_import(store_dir, data))
        theirs = timed(lambda: sqlite_import(db, data))
        report("bulk import, points/s", total / ours, total / theirs, "higher", 1.0)

        restart, rss, loaded = perfit_restart(store_dir)
        assert loaded == total, (loaded, total)
        select = min(timed(lambda: sqlite_select_all(db)) for _ in range(3))
        report("restart with all points, s", restart, select, "lower", 1.0)

        print(
            f"{'server memory per point, restart':34} {rss / total:10.1f} B      (target <= 32 B)"
        )
        grown, imported = http_import_memory(tmp, data)
        assert imported == total, (imported, total)
        print(
            f"{'  ... after an import over HTTP':34} {grown / total:10.1f} B      (target <= 32 B)"
        )
        report("disk per point, B", du(store_dir) / total, du(db) / total, "lower", 0.3)

        durable, keyed, noop = http_figures(tmp, args.seconds, args.connections)
        report(f"POST /m/ID, req/s ({args.connections} conns)", durable, noop, "higher", 0.8,
               baseline="do-nothing handler")  # fmt: skip
        report("  ... each with an Idempotency-Key", keyed, durable, "higher", 0.7,
               baseline="without one")  # fmt: skip


def report(what: str, ours: float, base: float, better: str, target: float,
           baseline: str = "SQLite") -> None:  # fmt: skip
    ratio = ours / base
    ok = ratio >= target if better == "higher" else ratio <= target
    sign = ">=" if better == "higher" else "<="
    print(f"{what:34} {ours:10.3f} vs {baseline} {base:10.3f}  = {ratio:5.2f}x  "
          f"(target {sign} {target}x: {'met' if ok else 'MISSED'})")  # fmt: skip


if __name__ == "__main__":
    main()
