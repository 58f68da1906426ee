"""Benchmark a migration from github-action-benchmark: `perfit metric import --format gab`.

Usage: python bench/bench_gab.py [--megabytes 5]

Builds a data.js of about MEGABYTES MB from the real one in fixtures/gab-data.js (written by
the action itself): its entries repeated as more commits, an hour apart, values jittered.
Then a real server is started and the real CLI imports it; printed: the import's time, the
data.js's size (raw and zlib-compressed, as git keeps each version of it on gh-pages), and
the PerfIt data directory's size after the import. A second import of the same file (which
adds nothing) is the baseline of the same run: the cost of reading and sending it.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import perfit

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROOT = "bench-root-token-" + "x" * 20


def big_data_js(megabytes: float) -> str:
    text = pathlib.Path(HERE, "fixtures", "gab-data.js").read_text(encoding="utf-8")
    doc = json.loads(text.split("=", 1)[1].strip().rstrip(";"))
    rng = random.Random(3)
    entries = {suite: [] for suite in doc["entries"]}
    k, size = 0, 0
    while size < megabytes * 1e6:
        for suite, runs in doc["entries"].items():
            entry = copy.deepcopy(runs[k % len(runs)])
            sha = hashlib.sha1(f"{suite}{k}".encode()).hexdigest()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1.7e9 + 3600 * k))
            entry["commit"].update(id=sha, tree_id=sha, timestamp=stamp)
            entry["commit"]["url"] = re.sub("[0-9a-f]{40}$", sha, entry["commit"]["url"])
            for bench in entry["benches"]:
                bench["value"] = round(bench["value"] * rng.gauss(1, 0.03), 6)
            entries[suite].append(entry)
            size += len(json.dumps(entry, indent=4))  # as nested in the file
        k += 1
    doc["entries"] = entries
    return "window.BENCHMARK_DATA = " + json.dumps(doc, indent=2)


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        source = os.path.join(work, "data.js")
        text = big_data_js(args.megabytes)
        with open(source, "w", encoding="utf-8") as f:
            f.write(text)
        series = perfit.read_gab_data_js(text)
        points = sum(len(p) for _, p in series)
        data = os.path.join(work, "data")
        env = {**os.environ, "PERFITD_ROOT_ACCESS_TOKEN": ROOT}
        server = subprocess.Popen(
            [sys.executable, "-m", "perfit", "serve", "--listen", "127.0.0.1:0", "--data", data,
             "--rate-limit", "0", "--seal-bytes", str(1 << 20)],
            cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            url = re.search(r"listening on (\S+)", server.stdout.readline()).group(1)
            admin = perfit.Client(url, ROOT).call("PUT", "/a/")["access_token"]
            command = [sys.executable, "-m", "perfit", "metric", "import", "--format", "gab",
                       source, "--server", url, "--access-token", admin]  # fmt: skip
            took = []
            for _ in range(2):
                started = time.perf_counter()
                subprocess.run(command, cwd=HERE, check=True, capture_output=True)
                took.append(time.perf_counter() - started)
            # Full logs are sealed (zstd) in the background: let that finish before measuring.
            deadline = time.monotonic() + 60
            while (
                time.monotonic() < deadline
                and len([n for n in os.listdir(data) if n.endswith(".log")]) > 1
            ):
                time.sleep(0.1)
        finally:
            server.terminate()
            server.wait(30)
        stored = directory_bytes(data)
    raw, packed = len(text.encode()), len(zlib.compress(text.encode(), 6))
    print(f"data.js: {raw / 1e6:.2f} MB ({packed / 1e6:.2f} MB zlib), {len(series)} benchmarks, "
          f"{points} points")  # fmt: skip
    print(f"import: {took[0]:.2f} s ({points / took[0]:,.0f} points/s); again (adds nothing, "
          f"the baseline): {took[1]:.2f} s; import / baseline {took[0] / took[1]:.2f}")  # fmt: skip
    print(f"PerfIt data directory: {stored / 1e6:.2f} MB, {stored / raw:.3f} of the data.js, "
          f"{stored / points:.1f} bytes a point")  # fmt: skip


if __name__ == "__main__":
    main()
