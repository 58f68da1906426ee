"""Load-test a PerfIt server with CI posters and chart readers together, in one run.

Usage: python bench/load.py [--posters 8] [--readers 8] [--seconds 20]

Starts its own `perfit serve` on 127.0.0.1 (rate limit off) with a fresh data directory, fills
a few metrics with points so that charts do real work, then runs poster threads (POST /m/ID, as
`perfit run` does from CI) and reader threads (SVG charts, pages, JSON and badges) at once and
reports, per class: requests, throughput, p50/p90/p99/max latency and errors. The same figures
for GET /healthz with as many clients, measured in the same run, give the server's floor, so the
numbers can be read as ratios: absolute figures drift on shared machines, ratios much less.

Target (issue "Lets no one in where they don't belong", item 7): no errors and p99 under 1 s
with 8 + 8 clients. Exit status 0 if met, 1 if not.

Only 127.0.0.1 is ever contacted: the server this script starts itself.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import itertools
import json
import os
import queue
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import perfit  # noqa: E402

HOST = "127.0.0.1"  #: the only address this script talks to
TARGET_P99_MS = 1000.0
TARGET_CLIENTS = (8, 8)
REQUEST_TIMEOUT = 30.0  #: seconds; a request stalled longer counts as an error (a timeout)
MAX_REQUESTS_PER_CLIENT = 1_000_000  #: a bound on each loop besides the deadline
START_TIMEOUT = 30.0  #: seconds to wait for the server's "listening" line
DAY = 86400
STEP_CHANCE = 0.0005  #: per pre-filled point: about 10 level changes in 20,000 points

#: What a reader asks for, in turn: (label, path template, query).
READS = (
    ("svg 30d", "/m/{id}/svg", "?start-rel=30d"),
    ("svg all", "/m/{id}.svg", ""),
    ("json 1d", "/m/{id}/json", "?start-rel=1d"),
    ("html", "/m/{id}", ""),
    ("badge", "/m/{id}/badge.svg", ""),
)


# -- the server ----------------------------------------------------------------------------------


class Server:
    """`python perfit.py serve` on a free loopback port, with a generated root token."""

    def __init__(self, data: str, log_path: str) -> None:
        self.root_token = perfit.new_token()
        env = dict(os.environ, **{perfit.ENV_ROOT_TOKEN: self.root_token})
        cmd = [sys.executable, os.path.join(ROOT, "perfit.py"), "serve", "--listen", f"{HOST}:0",
               "--data", data, "--rate-limit", "0"]  # fmt: skip
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=env,
                                     text=True)  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()
        # A thread drains stdout for the server's whole life, so its pipe never fills up.
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(
                    f"the server did not start within {START_TIMEOUT:.0f} s"
                ) from None
            if line is None:
                self.stop()
                raise RuntimeError(f"the server exited at start:\n{self.log_tail()}")
            match = re.match(r"perfit: listening on http://127\.0\.0\.1:(\d+)$", line.strip())
            if match:
                self.port = int(match.group(1))
                return

    def _drain(self, lines: queue.Queue[str | None]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            lines.put(line)
        lines.put(None)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (Linux only)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu(self) -> tuple[float, float, float] | None:
        """CPU seconds so far: (this server, this load generator, the whole machine busy)."""
        server = self.cpu_seconds()
        try:
            with open("/proc/stat") as f:
                jiffies = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        if server is None:
            return None
        busy = sum(jiffies) - jiffies[3] - jiffies[4]  # all but idle and iowait
        return server, time.process_time(), busy / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, then wait; the exit status (None if it had to be killed)."""
        code: int | None = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                code = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            code = self.proc.returncode
        self._log.close()
        return code


def call(port: int, method: str, path: str, token: str | None = None, body: Any = None,
         timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:  # fmt: skip
    """One request on a new connection (the server speaks HTTP/1.0): (status, body)."""
    headers = {"User-Agent": "perfit-load"}
    data = None
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def setup_call(port: int, method: str, path: str, token: str, body: Any = None) -> Any:
    """A setup request that must succeed: its decoded JSON answer."""
    status, data = call(port, method, path, token, body, timeout=120)
    if not 200 <= status < 300:
        raise RuntimeError(f"{method} {path} -> {status}: {data[:300]!r}")
    return json.loads(data) if data else None


def prepare(
    server: Server, metrics: int, points: int, steps: float, seed: int
) -> tuple[list[str], str]:
    """An account, its metrics pre-filled with `points` CI-like points each: (ids, post token)."""
    port, rng = server.port, random.Random(seed)
    admin = setup_call(port, "PUT", "/a/", server.root_token)["access_token"]
    post = setup_call(port, "PUT", "/t/", admin, {"type": "post"})["access_token"]
    ids = []
    now = int(time.time()) - 60
    span = 60 * DAY  # so that start-rel=30d charts half the points, start-rel=1d a few hundred
    for i in range(metrics):
        metric = setup_call(port, "PUT", "/m/", admin,
                            {"name": f"load test {i}", "unit": "ms"})  # fmt: skip
        ids.append(metric["metric_id"])
        level, rows = rng.uniform(20, 900), []
        for k in range(points):
            # CI-like: 3 % noise, slow outliers, and now and then a change lands (a step), so
            # that change-point detection on charts does the work it does on real data.
            if rng.random() < steps:
                level *= rng.choice((0.8, 0.9, 1.1, 1.25))
            value = level * rng.gauss(1, 0.03) * (rng.uniform(1.3, 2) if rng.random() < 0.05 else 1)
            rows.append({"t": now - span + span * k // points, "v": round(value, 3)})
        for k in range(0, len(rows), perfit.MAX_IMPORT_POINTS):
            batch = rows[k : k + perfit.MAX_IMPORT_POINTS]
            added = setup_call(port, "POST", f"/m/{ids[-1]}/points", admin, batch)["added"]
            if added != len(batch):
                raise RuntimeError(f"bulk import stored {added} of {len(batch)} points")
    # Each read of each metric once, so that first-call costs (lazy imports, a cold cache of
    # change points) are not charged to the run, and so that a broken route fails here with its
    # message rather than as thousands of errors.
    for (label, template, q), metric_id in itertools.product(READS, ids):
        status, data = call(port, "GET", template.format(id=metric_id) + q)
        if status != 200:
            raise RuntimeError(f"warm-up read {label} -> {status}: {data[:300]!r}")
    return ids, post


# -- the load ------------------------------------------------------------------------------------


#: A client: (label, request maker) where the maker returns (kind, method, path, token, body).
Request = tuple[str, str, str, "str | None", Any]
#: One answered (or failed) request: (class, kind, started on perf_counter, latency s, outcome).
Sample = tuple[str, str, float, float, str]


def run_clients(port: int, clients: Sequence[tuple[str, Callable[[], Request]]],
                seconds: float) -> tuple[list[Sample], float, float]:  # fmt: skip
    """Run every client until the deadline: (samples, the start on perf_counter, wall seconds)."""
    samples: list[list[Sample]] = [[] for _ in clients]
    barrier = threading.Barrier(len(clients) + 1)
    deadline = [0.0]

    def client(i: int, label: str, make: Callable[[], Request]) -> None:
        mine = samples[i]
        barrier.wait()
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            started = time.perf_counter()
            if started >= deadline[0]:
                break
            kind, method, path, token, body = make()
            try:
                status, _ = call(port, method, path, token, body)
                outcome = "ok" if 200 <= status < 300 else f"HTTP {status}"
            except Exception as e:  # every failure is a figure here, not a crash
                outcome = type(e).__name__
            mine.append((label, kind, started, time.perf_counter() - started, outcome))

    threads = [threading.Thread(target=client, args=(i, label, make), daemon=True)
               for i, (label, make) in enumerate(clients)]  # fmt: skip
    for t in threads:
        t.start()
    begun = time.perf_counter()
    deadline[0] = begun + seconds
    barrier.wait()
    for t in threads:
        t.join(seconds + 2 * REQUEST_TIMEOUT)
    wall = time.perf_counter() - begun
    if any(t.is_alive() for t in threads):
        print("warning: some clients were still waiting for an answer when the run ended")
    return [s for mine in samples for s in list(mine)], begun, wall


def poster(metric_ids: list[str], token: str, seed: int) -> Callable[[], Request]:
    """A CI job: POST /m/ID {"value", "metadata": a commit sha} with the post token."""
    rng = random.Random(seed)

    def make() -> Request:
        body = {"value": round(rng.uniform(50, 150), 3), "metadata": f"{rng.getrandbits(160):040x}"}
        return "post", "POST", f"/m/{rng.choice(metric_ids)}", token, body

    return make


def reader(metric_ids: list[str], seed: int) -> Callable[[], Request]:
    """A person or a README: the chart views in turn, on random metrics, no token."""
    rng = random.Random(seed)
    turn = [rng.randrange(len(READS))]

    def make() -> Request:
        label, template, q = READS[turn[0] % len(READS)]
        turn[0] += 1
        return label, "GET", template.format(id=rng.choice(metric_ids)) + q, None, None

    return make


def healthz() -> Request:
    return "healthz", "GET", "/healthz", None, None


def unloaded(port: int, metric_ids: list[str], token: str, rounds: int = 10) -> str:
    """Median latency of each kind of request sent alone: the work, without the queueing."""
    makers: dict[str, Callable[[], Request]] = {"healthz": healthz}
    makers["post"] = poster(metric_ids, token, 0)
    for label, template, q in READS:
        path = template.format(id=metric_ids[0]) + q
        makers[label] = lambda label=label, path=path: (label, "GET", path, None, None)
    figures = []
    for label, make in makers.items():
        times = []
        for _ in range(rounds):
            _, method, path, tok, body = make()
            started = time.perf_counter()
            status, _ = call(port, method, path, tok, body)
            times.append((time.perf_counter() - started) * 1000)
            if not 200 <= status < 300:
                raise RuntimeError(f"{method} {path} -> {status}")
        figures.append(f"{label} {percentile(sorted(times), 50):.1f}")
    return f"Unloaded, one request at a time, p50 ms: {', '.join(figures)}"


# -- the report ----------------------------------------------------------------------------------

HEADER = (f"{'':14} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}  errors")  # fmt: skip


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
    return ordered[int(rank) - 1]


class Figures:
    """Requests, throughput, latency percentiles and errors of one set of samples."""

    def __init__(self, samples: Sequence[Sample], wall: float) -> None:
        latencies = sorted(s[3] * 1000 for s in samples)
        self.requests = len(samples)
        self.rate = self.requests / wall if wall else 0.0
        self.p50, self.p90, self.p99 = (percentile(latencies, p) for p in (50, 90, 99))
        self.max = latencies[-1] if latencies else 0.0
        self.errors = collections.Counter(s[4] for s in samples if s[4] != "ok")

    def row(self, name: str) -> str:
        errors = sum(self.errors.values())
        detail = ", ".join(f"{what} x{n}" for what, n in self.errors.most_common())
        return (f"{name:14} {self.requests:9d} {self.rate:8.1f} {self.p50:8.1f} {self.p90:8.1f} "
                f"{self.p99:8.1f} {self.max:8.1f}  {errors}" + (f" ({detail})" if detail else ""))  # fmt: skip


def stalls(samples: Sequence[Sample], begun: float, wall: float) -> list[str]:
    """Seconds of the run in which no request completed: the server stood still."""
    done = collections.Counter(int(s[2] + s[3] - begun) for s in samples)
    return [f"{sec}-{sec + 1} s" for sec in range(int(wall)) if not done[sec]]


def server_log_problems(path: str) -> tuple[collections.Counter, list[str]]:
    """5xx answers and warnings or errors in the server's log: (counts, first few lines)."""
    counts: collections.Counter = collections.Counter()
    first = []
    with open(path, errors="replace") as f:
        for line in f:
            status = re.search(r'" (\d{3}) ', line)
            if status and status.group(1).startswith("5"):
                what = f"HTTP {status.group(1)} logged"
            elif re.search(r" (WARNING|ERROR|CRITICAL) |Traceback| failed: ", line):
                what = "warning, error or failed connection logged"
            else:
                continue
            counts[what] += 1
            if len(first) < 5:
                first.append(line.rstrip())
    return counts, first


def report(title: str, groups: dict[str, Figures]) -> None:
    print(f"\n{title}")
    print(HEADER)
    for name, figures in groups.items():
        if figures.requests:
            print(figures.row(name))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posters", type=int, default=8, help="POST /m/ID clients (8)")
    parser.add_argument("--readers", type=int, default=8, help="chart reader clients (8)")
    parser.add_argument("--seconds", type=float, default=20, help="of mixed load (20)")
    parser.add_argument("--baseline-seconds", type=float, help="of GET /healthz (as --seconds)")
    parser.add_argument("--metrics", type=int, default=4, help="metrics to spread load over (4)")
    parser.add_argument("--points", type=int, default=20_000, help="pre-filled per metric")
    parser.add_argument("--steps", type=float, default=STEP_CHANCE,
                        help=f"chance per pre-filled point of a level change ({STEP_CHANCE}; "
                        "0: flat data, no change points to find)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.posters < 0 or args.readers < 0 or args.posters + args.readers == 0:
        parser.error("need at least one poster or reader")
    if args.metrics < 1 or args.points < 0 or args.seconds <= 0:
        parser.error("--metrics >= 1, --points >= 0, --seconds > 0")
    try:
        return run(args)
    except (RuntimeError, OSError, http.client.HTTPException) as e:
        print(f"load: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Start the server, fill it, load it, report; 0 if the target is met."""
    clients = args.posters + args.readers
    baseline_seconds = args.baseline_seconds or args.seconds

    print(f"PerfIt load test: perfit {perfit.__version__}, {args.posters} posters + "
          f"{args.readers} readers for {args.seconds:g} s, {args.metrics} metrics x "
          f"{args.points:,} pre-filled points (level changes: {args.steps:g} per point)")  # fmt: skip
    print(f"Fairness: the load generator (Python threads, one GIL, a new connection per request) "
          f"runs on the same machine as the server ({os.cpu_count()} CPUs); latencies are "
          f"client-side, time.perf_counter(), and include the generator's own queueing.")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="perfit-load-", dir=os.environ.get("BENCH_TMP")) as tmp:
        server = Server(
            os.path.join(tmp, "data"),
            os.environ.get("LOAD_SERVER_LOG") or os.path.join(tmp, "server.log"),
        )
        try:
            started = time.perf_counter()
            ids, post_token = prepare(server, args.metrics, args.points, args.steps, args.seed)
            print(f"Setup: server on 127.0.0.1:{server.port}, {args.metrics * args.points:,} "
                  f"points imported in {time.perf_counter() - started:.1f} s")  # fmt: skip
            print(unloaded(server.port, ids, post_token))

            # The floor: the cheapest route, with as many clients as the mixed run.
            cpu0 = server.cpu()
            base, begun, base_wall = run_clients(server.port, [("healthz", healthz)] * clients,
                                          baseline_seconds)  # fmt: skip
            base_figures = Figures(base, base_wall)
            report(f"Baseline: GET /healthz, {clients} clients, {base_wall:.1f} s",
                   {"healthz": base_figures})  # fmt: skip
            base_stalls = stalls(base, begun, base_wall)

            mix = [("posts", poster(ids, post_token, args.seed * 1000 + i))
                   for i in range(args.posters)]  # fmt: skip
            mix += [("reads", reader(ids, args.seed * 2000 + i)) for i in range(args.readers)]
            cpu1 = server.cpu()
            samples, begun, wall = run_clients(server.port, mix, args.seconds)
            cpu2 = server.cpu()
            groups = {
                "posts": Figures([s for s in samples if s[0] == "posts"], wall),
                "reads": Figures([s for s in samples if s[0] == "reads"], wall),
            }
            for label, _, _ in READS:
                groups[f"  {label}"] = Figures([s for s in samples if s[1] == label], wall)
            groups["overall"] = Figures(samples, wall)
            report(f"Mixed load: {args.posters} posters + {args.readers} readers, {wall:.1f} s",
                   groups)  # fmt: skip
            mixed_stalls = stalls(samples, begun, wall)
        finally:
            exit_code = server.stop()
        log_counts, log_lines = server_log_problems(server.log_path)

    overall, floor = groups["overall"], base_figures
    print("\nAgainst the baseline (mixed overall / healthz):"
          f" p50 {overall.p50 / max(floor.p50, 1e-9):.1f}x,"
          f" p99 {overall.p99 / max(floor.p99, 1e-9):.1f}x,"
          f" throughput {overall.rate / max(floor.rate, 1e-9):.2f}x")  # fmt: skip
    others = []
    for what, before, after, seconds in (("baseline", cpu0, cpu1, base_wall),
                                         ("mixed run", cpu1, cpu2, wall)):  # fmt: skip
        if before is None or after is None:
            continue
        cores = os.cpu_count() or 1
        server_cpu, generator_cpu, busy = (b - a for a, b in zip(before, after))
        other = max(0.0, busy - server_cpu - generator_cpu)
        print(f"CPU during the {what}: server {server_cpu:.1f} s, load generator "
              f"{generator_cpu:.1f} s, other processes {other:.1f} s, "
              f"of {cores} CPUs x {seconds:.1f} s = {cores * seconds:.1f} s")  # fmt: skip
        if other > 0.1 * cores * seconds:
            others.append(f"other processes used {other:.1f} s of CPU during the {what}: "
                          f"the machine was shared, figures are pessimistic")  # fmt: skip

    suspicious = others
    if base_stalls or mixed_stalls:
        suspicious.append(f"seconds with no completed request: baseline {base_stalls or 'none'},"
                          f" mixed {mixed_stalls or 'none'}")  # fmt: skip
    if floor.errors:
        suspicious.append(f"errors on GET /healthz: {dict(floor.errors)}")
    if log_counts:
        suspicious.append(f"server log: {dict(log_counts)}; first lines:\n    "
                          + "\n    ".join(log_lines))  # fmt: skip
    if exit_code != 0:
        suspicious.append(f"the server's exit status on SIGTERM was {exit_code} (want 0)")
    for line in suspicious:
        print(f"Suspicious: {line}")

    errors = sum(overall.errors.values())
    worst = max(groups["posts"].p99, groups["reads"].p99, overall.p99)
    met = errors == 0 and worst < TARGET_P99_MS
    shape = (args.posters, args.readers) == TARGET_CLIENTS
    print(f"\nVerdict: target \"no errors and p99 under 1 s with 8 + 8 clients\": "
          f"{'MET' if met else 'MISSED'} - {errors} errors, p99 posts "
          f"{groups['posts'].p99:.0f} ms, reads {groups['reads'].p99:.0f} ms, overall "
          f"{overall.p99:.0f} ms" + ("" if shape else
          f" (run with {args.posters} + {args.readers} clients, not 8 + 8: indicative only)"))  # fmt: skip
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
