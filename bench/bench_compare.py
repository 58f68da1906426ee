"""Benchmark PerfIt's PR comparisons: verdicts under shared CI noise, speed, memory per point.

Usage: python bench/bench_compare.py [--only aa,speed,memory] [--prs 200] [--seed 1]
                                     [--examples 5] [--runs 200] [--repeats 3]

Every figure is printed beside a baseline measured in the same run (issue "Compare a PR with
main where it branched"):

aa      A/A and A/B under shared CI noise, as the issue defines it. Each PR is a suite of 50
        benchmarks with 30 main runs of history and one PR run. A run's speed is shared by all
        of its benchmarks (3 % lognormal; 5 % of runs on a runner 1.3-2x slower, uniform); each
        benchmark adds its own lognormal noise, its sd uniform in 1-3 % (drawn per benchmark).
        A/A: the PR changes nothing, and counts when any benchmark is called a regression.
        A/B: the same PR with benchmark 0 +10 % slower, and counts when benchmark 0 is called a
        regression. NEW is perfit.compare_results on the whole suite at once (each history run
        one shared time, so main's runs are told apart); its baseline, TODAY, is PerfIt 0.2's
        per-metric compare_values (`git show 86003c0:perfit.py`), re-implemented here: the
        newest level's last 30 points, spread 1.4826 MAD, a difference counts when >= 5 % and
        beyond 3 * spread * sqrt(1/k + 1/n). Its newest level is all 30 history values: the
        history has no change point (0.2's detector finds one in about 1 of 5,000 of them).
        Counts are "k / N", rates with a 95 % Wilson interval. Each PR is drawn from its own
        generator (seed, PR number), NEW and TODAY judge the very same numbers.
speed   End to end over HTTP on loopback, a real `python -m perfit serve` (port 0, a temporary
        data dir). (a) A suite of 500 benchmarks, 30 main runs posted (POST /r/ with commit and
        branch), one PR compare of all 500 (base: main's newest commit) by a fresh
        `python -S perfit.py compare --board B --format gab FILE` in this checkout (also as
        `-m perfit`, whose byte code is cached), against a fresh `python -S -c pass` plus a
        GET /healthz round trip; median of 7, interleaved.
        (b) The largest body the route takes: 10,000 results of 5 samples each against 10,000
        metrics of 30 main runs (each run posted as 10 POST /r/ of 1,000 points), POST
        /b/ID/compare against GET /healthz, median of 3, with the server's CPU share of the
        wall time, and compare_results alone on the same numbers in this process.
memory  The server's RSS growth per point, at rest, after 500 metrics x --runs runs posted
        (POST /r/), each run carrying a 40-hex commit, branch main and a job URL as metadata
        (~80 bytes); beside it the same runs as plain points (no commit, branch or metadata).
        A first run creates the 500 metrics before the "before" reading, so a metric's own
        objects are not counted as its points'. At rest: one log left (sealing done), no
        thread beyond those before, RSS within 64 KiB for 3 s. Median of --repeats fresh
        servers, interleaved. A log seals at 4 MiB (~350 runs of 500 points): with fewer
        --runs nothing is sealed, and the figure leaves sealing out (the output says so).

Targets (the issue): NEW at most 1 PR in 50 (2 %) with a false regression, a +10 % found in at
least 7 of 10 (today's: 19/200 false, 77/200 found); a 10,000-result compare under 2 s; at
most 32 B a point with commit and branch.

The default run takes about 75 s on 2 cores (memory ~50 s, speed ~15 s, aa ~1 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import perfit  # noqa: E402

SEED = 1
PRS = 200
SUITE = 50  #: benchmarks in a suite
HISTORY = 30  #: main runs before the PR
RUN_NOISE = 0.03  #: sd of a run's shared speed, lognormal
SLOW_SHARE = 0.05  #: runs on a slower runner ...
SLOW_FACTOR = (1.3, 2.0)  #: ... this much slower, uniform
OWN_NOISE = (0.01, 0.03)  #: sd of a benchmark's own lognormal noise, uniform per benchmark
STEP = 0.10  #: the A/B change of benchmark 0
THRESHOLD = perfit.DEFAULT_CHANGE_THRESHOLD
TARGET_FALSE = 0.02  #: A/A: PRs with a false regression, at most
TARGET_FOUND = 0.70  #: A/B: +10 % found, at least
TODAY_SIGMAS = 3.0  #: PerfIt 0.2's _COMPARE_SIGMAS
TODAY_POINTS = 30  #: PerfIt 0.2's _BASELINE_POINTS
START_US = 1_700_000_000 * perfit.US
RUN_GAP_US = 1800 * perfit.US

SPEED_SUITE = 500  #: speed (a): benchmarks
SPEED_REPEATS = 7
BIG_SUITE = perfit.MAX_COMPARE_RESULTS  #: speed (b): results, and metrics
BIG_SAMPLES = 5
BIG_REPEATS = 3
TARGET_BIG_SECONDS = 2.0
MEMORY_METRICS = 500
MEMORY_RUNS = 200
MEMORY_REPEATS = 3  #: RSS after a seal varies by a few bytes a point from server to server
TARGET_BYTES = 32
JOB_URL = "https://ci.example.com/acme/widget-service/actions/runs/{run:010d}/job/{job:011d}"


# ----------------------------------------------------------------------------------------------
# Counting


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    middle = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, middle - half), min(1.0, middle + half)


def rate_cells(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{f'{k} / {n}':>13} {k / n:7.1%}  [{low:5.1%}, {high:5.1%}]"


# ----------------------------------------------------------------------------------------------
# aa: A/A and A/B under shared CI noise


@dataclasses.dataclass
class Suite:
    """One PR's world: the suite's history on main and its PR run (nothing changed yet)."""

    sds: list[float]  #: each benchmark's own noise
    history: list[list[float]]  #: per benchmark, main's runs oldest first
    fresh: list[float]  #: the PR run, per benchmark
    runner: float  #: the PR run's shared speed factor
    slow_runs: int  #: main runs on a slow runner


def runner_factor(rng: random.Random) -> float:
    factor = rng.lognormvariate(0, RUN_NOISE)
    if rng.random() < SLOW_SHARE:
        factor *= rng.uniform(*SLOW_FACTOR)
    return factor


def draw_suite(seed: int, number: int, size: int = SUITE, runs: int = HISTORY) -> Suite:
    """PR `number` of the set `seed`, from its own generator."""
    rng = random.Random(seed * 1_000_003 + number)
    sds = [rng.uniform(*OWN_NOISE) for _ in range(size)]
    levels = [math.exp(rng.uniform(math.log(1e-3), math.log(10.0))) for _ in range(size)]
    history: list[list[float]] = [[] for _ in range(size)]
    slow = 0
    for _ in range(runs):
        factor = runner_factor(rng)
        slow += factor > 1.2
        for b in range(size):
            history[b].append(levels[b] * factor * rng.lognormvariate(0, sds[b]))
    factor = runner_factor(rng)
    fresh = [levels[b] * factor * rng.lognormvariate(0, sds[b]) for b in range(size)]
    return Suite(sds, history, fresh, factor, slow)


def new_verdicts(suite: Suite, fresh: Sequence[float]) -> list[perfit.Verdict]:
    """NEW: the whole suite at once; each history run one time shared by its benchmarks."""
    times = [START_US + r * RUN_GAP_US for r in range(len(suite.history[0]))]
    results = [perfit.Fresh([v], perfit.Baseline(h, times)) for v, h in zip(fresh, suite.history)]
    return perfit.compare_results(results, THRESHOLD)[0]


def today_verdict(baseline: Sequence[float], values: Sequence[float], better: str = "lower") -> str:
    """TODAY: PerfIt 0.2's compare_values on the newest level (here: all of the history)."""
    baseline = list(baseline[-TODAY_POINTS:])
    value = statistics.median(values)
    median = statistics.median(baseline)
    spread = 1.4826 * statistics.median(abs(x - median) for x in baseline)
    change = (value - median) / abs(median)
    noise = TODAY_SIGMAS * spread * math.sqrt(1 / len(values) + 1 / len(baseline))
    if abs(value - median) > noise and abs(change) >= THRESHOLD:
        worse = change > 0 if better == "lower" else change < 0
        return "regression" if worse else "improvement"
    return "same"


@dataclasses.dataclass
class Tally:
    prs: int = 0
    aa_regression: dict = dataclasses.field(default_factory=lambda: {"NEW": 0, "TODAY": 0})
    aa_improvement: dict = dataclasses.field(default_factory=lambda: {"NEW": 0, "TODAY": 0})
    ab_found: dict = dataclasses.field(default_factory=lambda: {"NEW": 0, "TODAY": 0})
    aa_inconclusive: int = 0  #: NEW's inconclusive verdicts over all benchmarks of A/A PRs
    aa_inconclusive_prs: int = 0  #: A/A PRs with at least one
    ab_inconclusive: int = 0  #: NEW's inconclusive on benchmark 0 in A/B
    by_noise: dict = dataclasses.field(default_factory=dict)  #: sd bucket -> [n, NEW, TODAY]
    #: sd bucket -> [benchmarks, NEW's inconclusive] in A/A, over all benchmarks
    aa_by_noise: dict = dataclasses.field(default_factory=dict)
    by_runner: dict = dataclasses.field(default_factory=dict)  #: slow PR runner -> [n, N, T]
    false_new: list = dataclasses.field(default_factory=list)  #: NEW's A/A false regressions


def noise_bucket(sd: float) -> int:
    """0: own sd 1-1.5 %, 1: 1.5-2 %, 2: 2-2.5 %, 3: 2.5-3 %."""
    return min(max(int((sd - 0.01) / 0.005), 0), 3)


def aa_ab(seed: int, prs: int) -> Tally:
    tally = Tally(prs=prs)
    for number in range(prs):
        suite = draw_suite(seed, number)
        # A/A
        verdicts = new_verdicts(suite, suite.fresh)
        kinds = [v.verdict for v in verdicts]
        today = [today_verdict(h, [v]) for h, v in zip(suite.history, suite.fresh)]
        for name, found in (("NEW", kinds), ("TODAY", today)):
            tally.aa_regression[name] += "regression" in found
            tally.aa_improvement[name] += "improvement" in found
        tally.aa_inconclusive += kinds.count("inconclusive")
        tally.aa_inconclusive_prs += "inconclusive" in kinds
        for b, v in enumerate(verdicts):
            if v.verdict == "regression":
                tally.false_new.append((number, b, suite, v))
            row = tally.aa_by_noise.setdefault(noise_bucket(suite.sds[b]), [0, 0])
            row[0] += 1
            row[1] += v.verdict == "inconclusive"
        # A/B: the same PR run, benchmark 0 +10 %
        fresh = [suite.fresh[0] * (1 + STEP), *suite.fresh[1:]]
        new0 = new_verdicts(suite, fresh)[0].verdict
        today0 = today_verdict(suite.history[0], [fresh[0]])
        tally.ab_found["NEW"] += new0 == "regression"
        tally.ab_found["TODAY"] += today0 == "regression"
        tally.ab_inconclusive += new0 == "inconclusive"
        slow = suite.runner > 1.2
        for key, table in ((noise_bucket(suite.sds[0]), tally.by_noise), (slow, tally.by_runner)):
            row = table.setdefault(key, [0, 0, 0])
            row[0] += 1
            row[1] += new0 == "regression"
            row[2] += today0 == "regression"
    return tally


def print_aa(seed: int, prs: int, examples: int) -> None:
    started = time.perf_counter()
    tally = aa_ab(seed, prs)
    took = time.perf_counter() - started
    print(
        f"== A/A and A/B, seed {seed}: {prs} PRs, each a suite of {SUITE} benchmarks with "
        f"{HISTORY} main runs and one PR run ({took:.1f} s)\n"
        f"   a run's speed shared by its benchmarks ({RUN_NOISE:.0%} lognormal, "
        f"{SLOW_SHARE:.0%} of runs {SLOW_FACTOR[0]}-{SLOW_FACTOR[1]}x slower), each "
        f"benchmark's own {OWN_NOISE[0]:.0%}-{OWN_NOISE[1]:.0%} lognormal\n"
        "   NEW = perfit.compare_results on the suite; TODAY = PerfIt 0.2's compare_values, "
        "per metric (the baseline)"
    )
    n, benches = prs, prs * SUITE
    print(f"{'':44} {'':6} {'count':>13} {'rate':>7}  {'95 % interval':>14}  target")
    rows = [
        ("A/A: PRs with >= 1 regression", tally.aa_regression, n, "<=", TARGET_FALSE),
        ("A/B: benchmark 0 +10 % called regression", tally.ab_found, n, ">=", TARGET_FOUND),
        ("A/A: PRs with >= 1 improvement", tally.aa_improvement, n, "", 0),
    ]
    for what, counts, total, sign, target in rows:
        for name in ("NEW", "TODAY"):
            k = counts[name]
            goal = ""
            if sign and name == "NEW":
                ok = k / total <= target if sign == "<=" else k / total >= target
                goal = f"{sign} {target:.0%}: {'met' if ok else 'MISSED'}"
            print(f"{what if name == 'NEW' else '':44} {name:6} {rate_cells(k, total)}  {goal}")
    for what, k, total in (
        ("A/A: inconclusive, per benchmark", tally.aa_inconclusive, benches),
        ("A/A: PRs with >= 1 inconclusive", tally.aa_inconclusive_prs, n),
        ("A/B: benchmark 0 inconclusive", tally.ab_inconclusive, n),
    ):
        print(f"{what:44} {'NEW':6} {rate_cells(k, total)}")
    print(
        "A/B found, by benchmark 0's own noise and by the PR's runner; and NEW's A/A "
        "inconclusive per benchmark, by its own noise:"
    )
    print(f"  {'':24} {'PRs':>5} {'NEW found':>14} {'TODAY found':>14} {'A/A inconclusive':>22}")
    groups = [
        (f"own sd {1 + b / 2:.1f}-{1.5 + b / 2:.1f} %", tally.by_noise.get(b), b) for b in range(4)
    ]
    groups += [
        ("PR runner normal", tally.by_runner.get(False), None),
        ("PR runner slow (>1.2x)", tally.by_runner.get(True), None),
    ]
    for label, row, bucket in groups:
        if row:
            total, new, today = row
            aa = tally.aa_by_noise.get(bucket)
            inconclusive = f"{aa[1]} / {aa[0]} ({aa[1] / aa[0]:.1%})" if aa else ""
            print(
                f"  {label:24} {total:5} {f'{new} ({new / total:.0%})':>14} "
                f"{f'{today} ({today / total:.0%})':>14} {inconclusive:>22}"
            )
    if tally.false_new and examples:
        print(f"NEW's false regressions in A/A (first {examples}; PR:benchmark):")
        for number, b, suite, v in tally.false_new[:examples]:
            low, high = v.interval or (0, 0)
            print(
                f"  {number}:{b:<3} own sd {suite.sds[b]:.1%}, change {v.change:+.1%} "
                f"[{low:+.1%}, {high:+.1%}], PR runner {suite.runner:.2f}x, "
                f"{suite.slow_runs} slow main runs"
            )
    print()


# ----------------------------------------------------------------------------------------------
# A server to measure


class Server:
    """A `python -m perfit serve` child on a free loopback port, with its own data dir."""

    def __init__(self, tmp: str, name: str) -> None:
        self.data = tempfile.mkdtemp(prefix=f"{name}-", dir=tmp)  # each server its own
        self.root = perfit.new_token()
        env = {**os.environ, perfit.ENV_ROOT_TOKEN: self.root}
        for key in (perfit.ENV_SERVER, perfit.ENV_ACCESS_TOKEN, perfit.ENV_METRIC):
            env.pop(key, None)
        self.log = open(self.data + ".stderr", "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "perfit", "serve", "--listen", "127.0.0.1:0"]
        cmd += ["--data", self.data, "--rate-limit", "0"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=ROOT
        )
        for line in self.proc.stdout:
            if "listening on" in line:
                self.url = line.split()[-1].rstrip("/")
                break
        else:
            raise RuntimeError(f"the server did not start; see {self.log.name}")
        self.pid = self.proc.pid
        admin = perfit.Client(self.url, self.root).call("PUT", "/a/")["access_token"]
        self.admin = perfit.Client(self.url, admin, timeout=120)
        post = self.admin.call("PUT", "/t/", {"type": "post"})["access_token"]
        self.post = perfit.Client(self.url, post, timeout=120)
        self.board = self.admin.call("GET", "/a/")["board_id"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu(self) -> float:
        """The server's CPU seconds so far (user + system)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        return _status(self.pid, "VmRSS") * 1024

    def threads(self) -> int:
        return _status(self.pid, "Threads")


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def request(method: str, url: str, body: bytes | None = None) -> bytes:
    """One request on a new connection, as a fresh client makes it; the answer's body."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=300) as answer:
        return answer.read()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def commit_hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


def post_history(
    server: Server, names: Sequence[str], runs: int, seed: int, per_request: int
) -> tuple[list[list[float]], list[str]]:
    """`runs` main runs of the suite (each posted as POST /r/ of `per_request` points, one
    commit); the values posted, per benchmark, and the commits, oldest first. The model of
    aa: a shared speed, own noise."""
    rng = random.Random(seed)
    sds = [rng.uniform(*OWN_NOISE) for _ in names]
    levels = [math.exp(rng.uniform(math.log(1.0), math.log(1000.0))) for _ in names]
    values: list[list[float]] = [[] for _ in names]
    commits = []
    for _ in range(runs):
        factor, commit = runner_factor(rng), commit_hex(rng)
        commits.append(commit)
        run = [levels[b] * factor * rng.lognormvariate(0, sds[b]) for b in range(len(names))]
        for b, v in enumerate(run):
            values[b].append(v)
        for i in range(0, len(names), per_request):
            points = [
                {"name": n, "value": round(v, 6), "unit": "ms"}
                for n, v in zip(names[i : i + per_request], run[i : i + per_request])
            ]
            server.post.call("POST", "/r/", {"points": points, "commit": commit, "branch": "main"})
    return values, commits


def pr_values(history: Sequence[Sequence[float]], samples: int, seed: int) -> list[list[float]]:
    """A PR run that changes nothing: each benchmark's median level, the run's shared speed,
    2 % noise of its own on each sample."""
    rng = random.Random(seed + 1)
    factor = rng.lognormvariate(0, RUN_NOISE)
    return [
        [
            round(statistics.median(h) * factor * rng.lognormvariate(0, 0.02), 6)
            for _ in range(samples)
        ]
        for h in history
    ]


# ----------------------------------------------------------------------------------------------
# speed (a): one PR compare of 500 benchmarks by a fresh client process

#: Variables that would make the CLI read a CI service's context, or send it elsewhere.
CI_VARIABLES = ("PERFIT", "GITHUB_", "GITLAB_", "CI_", "BUILDKITE", "CIRCLE", "JENKINS_URL")


def speed_suite(tmp: str, seed: int) -> None:
    names = [f"suite/bench_{i:03d}" for i in range(SPEED_SUITE)]
    with Server(tmp, "speed-a") as server:
        started = time.perf_counter()
        history, commits = post_history(server, names, HISTORY, seed, SPEED_SUITE)
        posted = time.perf_counter() - started
        gab = os.path.join(tmp, "pr-gab.json")
        fresh = pr_values(history, 1, seed)
        with open(gab, "w", encoding="utf-8") as f:
            json.dump([{"name": n, "unit": "ms", "value": v[0]} for n, v in zip(names, fresh)], f)
        # Not on a CI service: the CLI asks git (this checkout) for its context, as it would in
        # CI; the PR's base is main's newest run, which the server looks up by commit.
        env = {k: v for k, v in os.environ.items() if not k.startswith(CI_VARIABLES)}
        forms: dict[str, list[str]] = {}
        args = ["compare", "--server", server.url, "--board", server.board]
        args += ["--base", commits[-1], "--format", "gab", gab]
        how = "python -S perfit.py compare --board B --base SHA --format gab FILE"
        forms[how] = [sys.executable, "-S", os.path.join(ROOT, "perfit.py"), *args]
        # A script is compiled at every run (see bench_startup.py); the module is not.
        cached = "  the same as python -S -m perfit compare (byte code cached)"
        forms[cached] = [sys.executable, "-S", "-m", "perfit", *args]
        health = f"{server.url}/healthz"

        def compare(form: str) -> float:
            started = time.perf_counter()
            done = subprocess.run(forms[form], capture_output=True, text=True, env=env, cwd=ROOT)
            took = time.perf_counter() - started
            if done.returncode not in (0, 3):
                raise RuntimeError(f"{form}: exit {done.returncode}: {done.stderr[-500:]}")
            return took

        request("GET", health)  # warm: the server's first request imports what routes need
        for form in forms:
            compare(form)  # ... and the module's byte code is cached
        imports = [sys.executable, "-S", "-c", "import json, urllib.request"]
        took: dict[str, list[float]] = {k: [] for k in (*forms, "cpu", "pass", "imports", "ping")}
        for _ in range(SPEED_REPEATS):
            cpu = server.cpu()
            took[how].append(compare(how))
            took["cpu"].append(server.cpu() - cpu)
            for form in list(forms)[1:]:
                took[form].append(compare(form))
            took["pass"].append(
                timed(lambda: subprocess.run([sys.executable, "-S", "-c", "pass"], check=True))
            )
            took["imports"].append(timed(lambda: subprocess.run(imports, check=True)))
            took["ping"].append(timed(lambda: request("GET", health)))
    m = {k: statistics.median(v) for k, v in took.items()}
    base = m["pass"] + m["ping"]
    print(
        f"== speed (a): a suite of {SPEED_SUITE} benchmarks, {HISTORY} main runs posted "
        f"(POST /r/, commit and branch; {posted:.1f} s), one PR compare of all {SPEED_SUITE} "
        f"by a fresh process; median of {SPEED_REPEATS}, interleaved"
    )
    for form in forms:
        print(f"  {form:78} {m[form] * 1e3:8.1f} ms")
    print(f"  {'baseline: python -S -c pass':78} {m['pass'] * 1e3:8.1f} ms")
    print(f"  {'baseline: GET /healthz round trip (new connection)':78} {m['ping'] * 1e3:8.1f} ms")
    print(
        f"  {'compare / (pass + healthz)':78} {m[how] / base:8.2f}x  "
        f"(the compare's own cost: {(m[how] - base) * 1e3:.0f} ms)"
    )
    print(
        f"  of which the server's CPU {m['cpu'] * 1e3:.0f} ms (10 ms ticks); a fresh "
        f"`python -S -c 'import json, urllib.request'` takes {m['imports'] * 1e3:.1f} ms\n"
    )


# ----------------------------------------------------------------------------------------------
# speed (b): the largest body the route takes


def speed_largest(tmp: str, seed: int) -> None:
    names = [f"big/bench_{i:05d}" for i in range(BIG_SUITE)]
    per = perfit.MAX_RUN_POINTS
    with Server(tmp, "speed-b") as server:
        started = time.perf_counter()
        history, commits = post_history(server, names, HISTORY, seed, per)
        posted = time.perf_counter() - started
        fresh = pr_values(history, BIG_SAMPLES, seed)
        results = [{"name": n, "values": v, "unit": "ms"} for n, v in zip(names, fresh)]
        body = json.dumps({"results": results, "base": commits[-1]}).encode()
        url, health = f"{server.url}/b/{server.board}/compare", f"{server.url}/healthz"
        request("GET", health)
        answer = json.loads(request("POST", url, body))  # warm, and a look at the answer
        counts = {k: sum(r["verdict"] == k for r in answer["results"]) for k in
                  ("regression", "improvement", "inconclusive", "same", "new")}  # fmt: skip
        walls, cpus, healths = [], [], []
        for _ in range(BIG_REPEATS):
            cpu = server.cpu()
            walls.append(timed(lambda: request("POST", url, body)))
            cpus.append(server.cpu() - cpu)
            healths.append(timed(lambda: request("GET", health)))
    # The same comparison in this process, without HTTP, JSON or Baseline.of: the statistics.
    times = [START_US + r * RUN_GAP_US for r in range(HISTORY)]
    fresh_in = [perfit.Fresh(v, perfit.Baseline(h, times)) for v, h in zip(fresh, history)]
    pure = statistics.median(
        timed(lambda: perfit.compare_results(fresh_in, THRESHOLD)) for _ in range(BIG_REPEATS)
    )
    wall, cpu, ping = (statistics.median(x) for x in (walls, cpus, healths))
    ok = wall < TARGET_BIG_SECONDS
    print(
        f"== speed (b): the largest body: {BIG_SUITE:,} results x {BIG_SAMPLES} samples "
        f"({len(body) / 1e6:.2f} MB) against {BIG_SUITE:,} metrics x {HISTORY} main runs "
        f"(posted as {HISTORY * BIG_SUITE // per} POST /r/ of {per:,} points in {posted:.1f} s); "
        f"median of {BIG_REPEATS}"
    )
    print(
        f"  POST /b/ID/compare   {wall * 1e3:8.0f} ms   vs GET /healthz {ping * 1e3:6.1f} ms "
        f"= {wall / ping:6.0f}x   (target < {TARGET_BIG_SECONDS:g} s: {'met' if ok else 'MISSED'})"
    )
    print(
        f"  server CPU           {cpu * 1e3:8.0f} ms   = {cpu / wall:.0%} of the wall time "
        f"(10 ms ticks)"
    )
    print(
        f"  compare_results alone, in this process (no HTTP, JSON, Baseline.of): "
        f"{pure * 1e3:.0f} ms = {pure / wall:.0%} of the wall time"
    )
    print(f"  verdicts of the unchanged PR: {counts}\n")


# ----------------------------------------------------------------------------------------------
# memory: RSS per point with commit and branch, against plain points


def post_memory_runs(server: Server, names: Sequence[str], runs: range, origin: bool) -> int:
    rng = random.Random(runs.start)
    for run in runs:
        factor = runner_factor(rng)
        points = [{"name": n, "value": round(100 * factor * rng.lognormvariate(0, 0.02), 3)}
                  for n in names]  # fmt: skip
        body: dict = {"points": points}
        if origin:
            body.update(commit=commit_hex(rng), branch="main",
                        metadata=JOB_URL.format(run=1_000_000 + run, job=rng.getrandbits(36)))  # fmt: skip
        server.post.call("POST", "/r/", body)
    return len(runs) * len(names)


def wait_for_rest(server: Server, threads: int, timeout: float = 120) -> int:
    """Until the server is idle, its sealing and compaction done: one .log file in the data dir,
    no temporary file, no thread beyond those it had at rest before, and RSS within 64 KiB for
    3 s in a row. The RSS then."""
    deadline, stable_since, last = time.monotonic() + timeout, None, -1
    while True:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not come to rest")
        names = os.listdir(server.data)
        sealed = sum(n.endswith(".log") for n in names) == 1 and not any(".tmp" in n for n in names)
        rss = server.rss()
        if sealed and server.threads() <= threads and abs(rss - last) <= 64 << 10:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= 3:
                return rss
        else:
            stable_since, last = None, rss
        time.sleep(0.25)


def threads_at_rest(server: Server) -> int:
    """The server's threads once their number has not changed for a few looks in a row."""
    seen = [server.threads()]
    while len(seen) < 5 or len(set(seen[-5:])) > 1:
        time.sleep(0.1)
        seen.append(server.threads())
    return seen[-1]


@dataclasses.dataclass
class Grown:
    rss: int  #: bytes the server's RSS grew by, at rest
    points: int
    seconds: float  #: spent posting
    segments: int  #: sealed segments in the data dir at the end
    disk: int  #: bytes of the data dir at the end


def memory_growth(tmp: str, origin: bool, runs: int) -> Grown:
    names = [f"mem/bench_{i:03d}" for i in range(MEMORY_METRICS)]
    with Server(tmp, f"memory-{'origin' if origin else 'plain'}") as server:
        post_memory_runs(server, names, range(1), origin)  # creates the metrics
        threads = threads_at_rest(server)
        before = wait_for_rest(server, threads)
        started = time.perf_counter()
        points = post_memory_runs(server, names, range(1, runs + 1), origin)
        took = time.perf_counter() - started
        after = wait_for_rest(server, threads)
        names = os.listdir(server.data)
        disk = sum(os.path.getsize(os.path.join(server.data, n)) for n in names)
    return Grown(after - before, points, took, sum(n.endswith(".seg") for n in names), disk)


def print_memory(tmp: str, runs: int, repeats: int) -> None:
    grown: dict[bool, list[Grown]] = {False: [], True: []}
    for _ in range(repeats):  # interleaved: a fresh server each
        for origin in (False, True):
            grown[origin].append(memory_growth(tmp, origin, runs))
    points = grown[True][0].points
    per = {k: statistics.median(g.rss / points for g in v) for k, v in grown.items()}
    ok = per[True] <= TARGET_BYTES
    print(
        f"== memory: server RSS growth at rest, {MEMORY_METRICS} metrics x {runs} runs = "
        f"{points:,} points posted as POST /r/ runs; median of {repeats} fresh servers [range]"
    )
    for label, origin, goal in (
        ("with commit, branch main and a job URL (~80 B)", True,
         f"(target <= {TARGET_BYTES} B: {'met' if ok else 'MISSED'})"),
        ("baseline: plain points", False, ""),
    ):  # fmt: skip
        found = grown[origin]
        low, high = (f(g.rss for g in found) / points for f in (min, max))
        last = found[-1]
        print(
            f"  {label:48} {per[origin]:6.1f} B a point [{low:5.1f}, {high:5.1f}]  {goal:24} "
            f"posted in {statistics.median(g.seconds for g in found):4.1f} s; "
            f"{last.segments} segments, data dir {last.disk / points:5.1f} B a point"
        )
    base = per[False]
    print(
        f"  {'ratio':48} {per[True] / base if base > 0 else math.inf:6.2f}x  "
        f"(the origin's own cost {per[True] - base:+.1f} B a point)"
    )
    if not grown[True][-1].segments:
        print(
            "  note: no log was sealed during these runs (a log seals at "
            f"{perfit.SEAL_BYTES >> 20} MiB, ~350 runs of 500): the figure leaves sealing out; "
            "--runs 500 or more includes it"
        )
    print()


# ----------------------------------------------------------------------------------------------
# The run

PARTS = ("aa", "speed", "memory")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(PARTS), help="comma-separated parts: aa,speed,memory"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--prs", type=int, default=PRS, help="PRs of the A/A and A/B counts")
    parser.add_argument("--runs", type=int, default=MEMORY_RUNS, help="runs of the memory part")
    parser.add_argument(
        "--repeats", type=int, default=MEMORY_REPEATS, help="fresh servers of the memory part"
    )
    parser.add_argument("--examples", type=int, default=5, help="NEW's A/A false regressions shown")
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    if "aa" in parts:
        print_aa(args.seed, args.prs, args.examples)
    if {"speed", "memory"} & set(parts):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            if "speed" in parts:
                speed_suite(tmp, args.seed)
                speed_largest(tmp, args.seed)
            if "memory" in parts:
                print_memory(tmp, args.runs, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
