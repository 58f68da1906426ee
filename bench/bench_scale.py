"""What one PerfIt server holds on a small VPS (1 core, 512 MB), measured.

Usage: python bench/bench_scale.py [--metrics 1000] [--points 2000] [--seconds 10]

Starts a real `perfit serve` pinned to one core with taskset (a 1-core VPS; wrk, the load,
runs on the other), fills it over HTTP with METRICS x POINTS CI-like points (10,000-point
imports, as `perfit metric import` sends them), restarts it, and measures:

  memory     the server's RSS empty, after the import, and after the restart: bytes a point
  restart    seconds from start to listening, on that data
  posts/s    durable POST /m/ID (one point) and POST /r/ (a CI run of 50 results), with wrk,
             16 connections, against GET /healthz on the same server: the server's floor

and from them what fits on a 512 MB VPS, taking 400 MB for PerfIt (Debian and sshd use the
rest). Ratios and bytes a point hold across machines; the absolute rates are this machine's.

Only 127.0.0.1 is contacted: the server this script starts itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import perfit  # noqa: E402

VPS_BYTES_FOR_PERFIT = 400 << 20
RUN_RESULTS = 50  #: results in the CI run that POST /r/ posts


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def serve(data: str, root: str) -> tuple[subprocess.Popen, str, float]:
    """A server on one core: (process, URL, seconds until it listened)."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    cmd = [*pin, sys.executable, os.path.join(ROOT, "perfit.py"), "serve", "--listen",
           "127.0.0.1:0", "--data", data, "--rate-limit", "0"]  # fmt: skip
    env = {**os.environ, "PERFITD_ROOT_ACCESS_TOKEN": root}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)  # fmt: skip
    for line in proc.stdout:
        if "listening on" in line:
            return proc, line.split()[-1], time.perf_counter() - started
    raise RuntimeError("the server did not start")


def fill(url: str, admin: str, metrics: int, points: int) -> list[str]:
    """METRICS metrics of POINTS CI-like durations each, imported; their ids."""
    client = perfit.Client(url, admin)
    rng = random.Random(5)
    start = int(time.time()) - points * 900
    ids = []
    for m in range(metrics):
        metric = client.call("PUT", "/m/", {"name": f"suite/bench_{m}", "unit": "ms"})["metric_id"]
        level, rows = rng.uniform(5, 500), []
        for i in range(points):
            sha = f"{rng.getrandbits(48):012x}"  # what `perfit run` keeps: the commit
            rows.append({"t": start + 900 * i, "v": round(level * rng.gauss(1, 0.03), 3), "m": sha})
        for i in range(0, points, perfit.MAX_IMPORT_POINTS):
            client.call("POST", f"/m/{metric}/points", rows[i : i + perfit.MAX_IMPORT_POINTS])
        ids.append(metric)
    return ids


def wrk(url: str, method: str, body: str, token: str, seconds: float) -> float:
    """Requests a second, wrk on the other core, 16 connections."""
    script = f"wrk.method = {method!r}\nwrk.headers['Authorization'] = 'Bearer {token}'\n"
    if body:
        script += f"wrk.body = {body!r}\nwrk.headers['Content-Type'] = 'application/json'\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    out = subprocess.run([*pin, "wrk", "-t1", "-c16", f"-d{seconds:g}s", "-s", f.name, url],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    os.unlink(f.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"{method} {url} answered errors under load: {out}")
    return float(next(line.split()[1] for line in out.splitlines() if "Requests/sec" in line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=1000)
    parser.add_argument("--points", type=int, default=2000, help="per metric")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench_scale needs wrk (apt-get install wrk)")
    total = args.metrics * args.points
    root = perfit.new_token()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        proc, url, _ = serve(data, root)
        empty = rss(proc.pid)
        made = perfit.Client(url, root).call("PUT", "/a/")
        admin = made["access_token"]
        started = time.perf_counter()
        ids = fill(url, admin, args.metrics, args.points)
        took = time.perf_counter() - started
        filled = rss(proc.pid)
        proc.terminate()
        proc.wait()
        proc, url, restart = serve(data, root)
        restarted = rss(proc.pid)
        disk = sum(os.path.getsize(os.path.join(data, n)) for n in os.listdir(data))
        try:
            post = perfit.Client(url, admin).call("PUT", "/t/", {"type": "post"})["access_token"]
            run = {"points": [{"name": f"suite/bench_{i}", "value": 1.5} for i in range(RUN_RESULTS)],
                   "metadata": "0123456789ab https://ci.example/job/1"}  # fmt: skip
            point = json.dumps({"value": 12.5, "metadata": "0123456789ab"})
            health = wrk(f"{url}/healthz", "GET", "", post, args.seconds)
            posts = wrk(f"{url}/m/{ids[0]}", "POST", point, post, args.seconds)
            runs = wrk(f"{url}/r/", "POST", json.dumps(run), post, args.seconds)
        finally:
            proc.terminate()
            proc.wait()

    per_point = max(filled, restarted) - empty
    print(f"{args.metrics:,} metrics x {args.points:,} points = {total:,} points, imported in {took:.1f} s "
          f"({total / took:,.0f} points/s over HTTP)")  # fmt: skip
    print(f"{'server memory, empty':36} {empty / 2**20:8.1f} MiB")
    print(
        f"{'  after the import':36} {filled / 2**20:8.1f} MiB   {(filled - empty) / total:5.1f} B a point"
    )
    print(
        f"{'  after a restart':36} {restarted / 2**20:8.1f} MiB   {(restarted - empty) / total:5.1f} B a point"
    )
    print(f"{'restart (start to listening)':36} {restart:8.2f} s")
    print(f"{'disk':36} {disk / 2**20:8.1f} MiB   {disk / total:5.1f} B a point")
    print(f"{'GET /healthz (the floor)':36} {health:8.0f} req/s")
    print(f"{'durable POST /m/ID':36} {posts:8.0f} req/s  {posts / health:5.2f}x the floor")
    print(f"{f'POST /r/, a run of {RUN_RESULTS}':36} {runs:8.0f} req/s  {runs / health:5.2f}x the floor"
          f"   ({runs * RUN_RESULTS:,.0f} results/s)")  # fmt: skip
    fits = (VPS_BYTES_FOR_PERFIT - empty) / (per_point / total)
    print(
        f"a 512 MB VPS (400 MB for PerfIt) holds about {fits / 1e6:,.1f} million points "
        f"(at {per_point / total:.1f} B a point, the worse of the two)"
    )


if __name__ == "__main__":
    main()
