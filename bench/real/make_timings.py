"""Generate the engineered CI-timing series of bench/real/ on this machine.

Usage: python bench/real/make_timings.py [--only NAME,...] [--out DIR]

Each series times one real program, run after run, with time.perf_counter around
subprocess.run, the way a CI job times a step. At a known run something real changes (a
compiler flag, the input size, the work done, background load), or nothing does. The known
changes are the "truth" annotations of bench/real/annotations.json (Plan.truth below); a creep
(an input that grows a little each run) is annotated at its onset only, as a change of trend,
and a creep with no onset has no change point.

Each series writes NAME.csv: a header `index,value,cpu_ms,busy` and one row a run; value is
the wall-clock time of the run in milliseconds, cpu_ms the user+system time of the child,
busy the share of the whole machine's CPU (both cores) in use while it ran, from /proc/stat,
so load from elsewhere is visible after the fact. Two discarded warm-up runs come before run 0.
Unless the series' own background load is on, each run first waits (up to QUIET_WAIT s) until
no other task on the machine is runnable, so that load nobody planned stays out of the series;
the count of runs that started anyway is printed. About 5 minutes on 2 cores, more while the
machine is busy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PY = [sys.executable, "-I", "-S", "-c"]
C_LOCALE = dict(os.environ, LC_ALL="C")
SORT = ["sort", "--parallel=1", "-S", "200M"]  # one thread, all in memory: steadier
WARMUP = 2
QUIET_WAIT = 20.0  #: seconds a run waits for the rest of the machine to go idle, at most
BURST_HOGS = 2  #: busy loops of the load burst, one a core: the timed run must share one

Command = list[str]


@dataclasses.dataclass
class Plan:
    """One series: how many runs, the command of each run, the truth."""

    name: str
    runs: int
    command: Callable[[int], Command]  #: run number -> argv
    truth: list[int]
    before: Callable[[int], None] = lambda run: None  #: called before each run, untimed
    env: dict[str, str] | None = None


def loop(n: int) -> Command:
    return [*PY, f"s = 0\nfor i in range({n}): s += i"]


def c_source(path: str, functions: int = 60) -> None:
    """A C file of `functions` small numeric functions: gcc -O2 takes ~2x -O0 on it."""
    out = ["#include <stdio.h>"]
    for i in range(functions):
        out.append(
            f"static double f{i}(double *a, int n) {{\n"
            f"  double s = 0;\n"
            f"  for (int k = 0; k < n; k++) {{ s += a[k] * {i + 1}.5 - (a[k] > {i} ? a[k] / {i + 2} : k);"
            f" if (s > 1e9) s /= 3; }}\n"
            f"  for (int k = 1; k < n; k++) a[k] = a[k - 1] * 0.5 + a[k] * {i % 7 + 1};\n"
            f"  return s;\n}}"
        )
    out.append("int main(void) { static double a[1000]; double t = 0;")
    out.append("  for (int i = 0; i < 1000; i++) a[i] = i;")
    out += [f"  t += f{i}(a, 1000);" for i in range(functions)]
    out.append('  printf("%f\\n", t); return 0; }')
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def number_lines(path: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        f.writelines(f"{rng.randrange(10**9)}\n" for _ in range(count))


class Hogs:
    """Background load: busy-looping child processes while on, none while off.

    They are started and killed rather than paused with SIGSTOP: a stopped child gets a SIGCONT
    from the kernel when its process group is orphaned (the launching shell exits). Each is
    pinned to a core of its own, in turn: left alone, the scheduler may stack them all on one
    core and leave the timed run the other, untouched.
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def set(self, on: bool, count: int = 2) -> None:
        if on and not self.procs:
            cpus = sorted(os.sched_getaffinity(0))
            for k in range(count):
                p = subprocess.Popen([*PY, "while True: pass"])
                os.sched_setaffinity(p.pid, {cpus[k % len(cpus)]})
                self.procs.append(p)
            time.sleep(0.05)  # let them get going
        elif not on and self.procs:
            self.close()

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []


def others_running() -> int:
    """Runnable tasks on the machine besides this one, now (/proc/loadavg's 4th field)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0]) - 1


def wait_quiet(limit: float) -> bool:
    """Wait (at most `limit` s) until nothing else has been runnable for 3 looks 10 ms apart."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for _ in range(3):
            if others_running() > 0:
                time.sleep(0.2)
                break
            time.sleep(0.01)
        else:
            return True
    return False


def cpu_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def plans(work: str, hogs: Hogs) -> list[Plan]:
    src = os.path.join(work, "w.c")
    c_source(src)
    with open(os.path.join(REPO, "perfit.py"), "rb") as f:  # real text to compress
        text = f.read()
    base = os.path.join(work, "base.txt")  # ~0.9 MB of real text
    with open(base, "wb") as f:
        f.write(text * 2)
    base_size = len(text) * 2
    sort_files = {}
    for lines in (150_000, 200_000, 240_000):
        sort_files[lines] = os.path.join(work, f"sort{lines}.txt")
        number_lines(sort_files[lines], lines, seed=lines)
    creep_gz = os.path.join(work, "creep.txt")
    shutil.copy(base, creep_gz)
    creep_sort = os.path.join(work, "creep_sort.txt")
    shutil.copy(sort_files[150_000], creep_sort)
    clone = os.path.join(work, "clone")
    subprocess.run(["git", "clone", "-q", REPO, clone], check=True)

    def grow_gz(run: int) -> None:  # from run 100: +0.3 % of the base each run
        if run >= 100:
            start = (run * 7919) % (len(text) - 3000)
            with open(creep_gz, "ab") as f:
                f.write(text[start : start + base_size * 3 // 1000])

    def grow_sort(run: int) -> None:  # from run 0: +0.2 % of 150k lines each run
        rng = random.Random(run)
        with open(creep_sort, "a") as f:
            f.writelines(f"{rng.randrange(10**9)}\n" for _ in range(300))

    flaky = random.Random(12)

    def flaky_load(run: int) -> None:  # from run 150, 1 run in 4 has background load
        hogs.set(run >= 150 and flaky.random() < 0.25)

    json_setup = (
        "import json, random\n"
        "r = random.Random(1)\n"
        "d = [{'id': i, 'name': 'n%d' % r.randrange(9999), 'tags': [r.random() for _ in range(5)],"
        " 'nested': {'a': i, 'b': str(i), 'c': [1, 2, 3]}} for i in range(6000)]\n"
    )

    def gcc(flag: str) -> Command:
        return ["gcc", flag, "-c", src, "-o", os.path.join(work, "w.o")]

    def sort_at(run: int) -> Command:
        lines = 200_000 if run < 100 else 150_000 if run < 220 else 240_000
        return [*SORT, sort_files[lines]]

    return [
        Plan("t_py_step", 300, lambda r: loop(1_000_000 if r < 150 else 1_150_000), [150]),
        Plan("t_py_small_step", 300, lambda r: loop(1_000_000 if r < 180 else 1_040_000), [180]),
        Plan("t_py_import_quiet", 300, lambda r: [*PY[:-2], "-c", "import json, decimal"], []),
        Plan("t_gcc_flags", 240, lambda r: gcc("-O0" if 80 <= r < 160 else "-O2"), [80, 160]),
        Plan("t_gcc_quiet", 200, lambda r: gcc("-O1"), []),
        Plan("t_gzip_level", 300, lambda r: ["gzip", "-6" if r < 150 else "-7", "-c", base], [150]),
        Plan("t_gzip_creep", 300, lambda r: ["gzip", "-6", "-c", creep_gz], [100], grow_gz),
        Plan("t_sort_creep", 300, lambda r: [*SORT, creep_sort], [], grow_sort, C_LOCALE),
        Plan("t_sort_improve_regress", 300, sort_at, [100, 220], env=C_LOCALE),
        Plan("t_git_status_quiet", 400, lambda r: ["git", "-C", clone, "status"], []),
        Plan(
            "t_load_burst",
            300,
            lambda r: loop(1_000_000),
            [120, 170],
            lambda r: hogs.set(120 <= r < 170, BURST_HOGS),
        ),
        Plan("t_flaky_runner", 300, lambda r: loop(1_000_000), [150], flaky_load),
        Plan(
            "t_json_algo",
            300,
            lambda r: [
                *PY,
                json_setup
                + ("json.dumps(d)" if r < 200 else "json.dumps(d, sort_keys=True, indent=1)"),
            ],
            [200],
        ),
    ]


def run_plan(plan: Plan, out: str, hogs: Hogs) -> int:
    """Run one series, write its CSV; the number of runs that had to start with others busy."""
    rows = []
    loud = 0
    for run in range(-WARMUP, plan.runs):
        if run >= 0:
            plan.before(run)
        if not hogs.procs and not wait_quiet(QUIET_WAIT):
            loud += run >= 0
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0, total0 = cpu_jiffies()
        t0 = time.perf_counter()
        subprocess.run(
            plan.command(max(run, 0)),  # the warm-ups run run 0's command
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            env=plan.env,
        )
        wall = time.perf_counter() - t0
        busy1, total1 = cpu_jiffies()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        busy = (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan")
        if run >= 0:
            rows.append(f"{run},{wall * 1000:.3f},{cpu * 1000:.1f},{busy:.2f}")
    hogs.set(False)
    with open(os.path.join(out, plan.name + ".csv"), "w") as f:
        f.write("index,value,cpu_ms,busy\n" + "\n".join(rows) + "\n")
    return loud


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated series names")
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    hogs = Hogs()
    try:
        with tempfile.TemporaryDirectory() as work:
            for plan in plans(work, hogs):
                if only and plan.name not in only:
                    continue
                t0 = time.perf_counter()
                loud = run_plan(plan, args.out, hogs)
                print(
                    f"{plan.name}: {plan.runs} runs, truth {plan.truth}, "
                    f"{time.perf_counter() - t0:.0f} s, {loud} started with other load",
                    flush=True,
                )
    finally:
        hogs.close()


if __name__ == "__main__":
    main()
