"""Tests for PerfIt, in the order of perfit.py's sections: the module, shared helpers, the
store, change points, charts, the web (request helpers, routes, pages, OpenAPI, the HTTP
server, a real browser), the client and the command line.

The server is tested over real HTTP on a loopback port, the CLI as a subprocess (and through
main() for its many variations), the store across real crashes (a child killed with SIGKILL).
Synchronisation is by polling a condition, never a bare sleep; randomness is seeded.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import csv
import getpass
import gzip
import hashlib
import html
import importlib
import inspect
import io
import json
import math
import os
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from http.client import HTTPException, HTTPMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TypeVar

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from schemathesis.specs.openapi.checks import positive_data_acceptance

import perfit

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

HERE = Path(__file__).resolve().parent
PERFIT = str(HERE / "perfit.py")  #: the file itself, as a CI job downloads and runs it
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
START_TIMEOUT = 15.0
Answer = tuple[int, HTTPMessage, bytes]  #: status, headers, body
CHART_OPTIONS = [option.name for option in perfit.CHART_OPTIONS]
T = TypeVar("T")


def perfit_command(*flags: str) -> list[str]:
    """`python FLAGS -m perfit`, to run from HERE: as a module its byte code is cached, where a
    script is compiled at every start (0.1 s here, hundreds of times a run). The file run
    alone, as CI jobs do, has tests of its own (test_the_file_alone_posts_...)."""
    return [sys.executable, *flags, "-m", "perfit"]


# --------------------------------------------------------------------------------------------
# Helpers
# Children, servers and requests, as every section below uses them.
# --------------------------------------------------------------------------------------------


#: What tells the client it runs on a CI service (and so what metadata it posts): tests that
#: run on one must not post its commit.
CI_MARKERS = ("GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "CIRCLECI", "JENKINS_URL")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child, without PerfIt settings or proxies leaking in from ours.

    Byte code may be cached whatever ours says: a child that imports perfit then starts in a
    third of the time, hundreds of times a run.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("PERFIT", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"))
        and key not in ("PYTHONDONTWRITEBYTECODE", *CI_MARKERS)
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    # Outside CI the client asks git for the commit and branch it measures: the checkout the
    # tests run in (on whatever branch) must not decide where a test's points go.
    env["GIT_DIR"] = os.devnull
    env.update(extra)
    return env


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def http(
    method: str,
    url: str,
    body: object = None,
    token: str | None = None,
    raw: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    context: ssl.SSLContext | None = None,
) -> Answer:
    """One request; answers (status, headers, body) and never raises on a 4xx/5xx. `context`:
    the TLS one to verify an https server with."""
    data = raw.encode() if isinstance(raw, str) else raw
    if body is not None:
        data = json.dumps(body).encode()
    hdrs = dict(headers or {})
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    opener = (
        _OPENER
        if context is None
        else urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            _NoRedirect,
            urllib.request.HTTPSHandler(context=context),
        )
    )
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def ok_json(method: str, url: str, **kwargs: Any) -> Any:
    status, headers, body = http(method, url, **kwargs)
    assert status == 200, (method, url, status, body[:500])
    assert headers.get("Content-Type", "").startswith("application/json")
    return json.loads(body)


def assert_error(answer: Answer, status: int) -> str:
    """The answer is a JSON error {"message"} with this status; returns the message."""
    got, headers, body = answer
    assert got == status, (got, body[:500])
    assert headers.get("Content-Type", "").startswith("application/json"), headers.get(
        "Content-Type"
    )
    message = json.loads(body)["message"]
    assert isinstance(message, str)
    assert message.strip()
    return message


def random_b64(size: int) -> str:
    """Url-safe base64 of random bytes, not starting with "-" (as `token gen` makes them), so
    that `--access-token TOKEN` and `--metric ID` never look like options to the CLI."""
    while True:
        text = base64.urlsafe_b64encode(secrets.token_bytes(size)).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def random_token() -> str:
    """A well-formed token (256 random bits) that the server does not know."""
    return random_b64(32)


def unknown_id() -> str:
    """A well-formed id (128 random bits) that names nothing."""
    return random_b64(16)


ROOT = random_token()  #: the root token every test server is started with


def free_port() -> int:
    """A port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running `perfit.py serve` child, its URL and what it printed."""

    def __init__(self, proc: subprocess.Popen, url: str, data: Path, out: list[str]) -> None:
        self.proc = proc
        self.url = url
        self.data = data
        self.out = out  # stdout lines, kept up to date by a reader thread
        self.err: list[str] = []

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _pump(stream: io.TextIOBase, sink: list[str], lines: queue.Queue | None) -> None:
    for line in stream:
        sink.append(line)
        if lines is not None:
            lines.put(line)
    if lines is not None:
        lines.put(None)


def start_server(
    data: Path,
    *args: str,
    root: str | None = ROOT,
    flags: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    command: Sequence[str] = (),
    environ: dict[str, str] | None = None,
    cwd: Path = HERE,
) -> Server:
    """Starts a server on a free loopback port and waits for its 'listening on' line.

    `flags` go to the interpreter (`-S`: no site-packages), `env` adds to the environment;
    `command` runs instead of `python -m perfit` (a zipapp), `environ` is all the environment.
    """
    env = dict(environ) if environ is not None else clean_env(**(env or {}))
    if root is not None:
        env["PERFITD_ROOT_ACCESS_TOKEN"] = root
    cmd = [*(command or perfit_command(*flags)), "serve", "--listen", "127.0.0.1:0"]
    cmd += ["--data", str(data)]
    if "--rate-limit" not in args:
        cmd += ["--rate-limit", "0"]
    proc = subprocess.Popen(
        [*cmd, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(cwd),
    )
    out: list[str] = []
    err: list[str] = []
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, out, lines), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stderr, err, None), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"server not listening after {START_TIMEOUT}s: {out} {err}"
            ) from None
        if line is None:
            proc.wait(5)
            raise AssertionError(
                f"server exited with {proc.returncode}: {''.join(out)} {''.join(err)}"
            )
        match = re.search(r"perfit: listening on (http://\S+)", line)
        if match:
            server = Server(proc, match.group(1).rstrip("/"), data, out)
            server.err = err
            return server


@contextlib.contextmanager
def running_server(
    data: Path, *args: str, root: str | None = ROOT, **kwargs: Any
) -> Iterator[Server]:
    server = start_server(data, *args, root=root, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def cli(
    *args: str, env: dict[str, str] | None = None, flags: tuple[str, ...] = (), timeout: float = 60
) -> subprocess.CompletedProcess:
    """Runs `python [flags] perfit.py ARGS` with a clean environment (plus `env`)."""
    return subprocess.run(
        [*perfit_command(*flags), *args],
        capture_output=True,
        text=True,
        env=clean_env(**(env or {})),
        timeout=timeout,
        cwd=str(HERE),
    )


def perfit_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`perfit ARGS` through perfit.main() in this process, as `cli` gives it from a child: exit
    code, stdout and stderr. No interpreter to start (a quarter of a second each, here), so the
    many variations of a client command's arguments and answers go this way; what only a
    process shows (a signal, a terminal, `python -S`, a closed pipe) goes through `cli`."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(clean_env(**(env or {})))  # argparse reads its defaults from here
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = perfit.main(list(args))
            except SystemExit as stop:  # argparse: --help, a usage error
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["perfit", *args], code, out.getvalue(), err.getvalue())


def poll(get: Callable[[], T], until: Callable[[T], bool], seconds: float = 10) -> T:
    """`get()` again and again (every 20 ms) until its value satisfies `until`; that value."""
    deadline = time.monotonic() + seconds
    while True:
        value = get()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {seconds} s"
        time.sleep(0.02)


def assert_said_no(proc: subprocess.CompletedProcess, code: int = 1) -> None:
    """The CLI failed with this exit code and one line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def client_args(url: str, token: str | None = None, metric: str | None = None) -> list[str]:
    args = ["--server", url]
    if token is not None:
        args += ["--access-token", token]
    if metric is not None:
        args += ["--metric", metric]
    return args


class Account:
    def __init__(self, account_id: str, admin: str, post: str) -> None:
        self.id = account_id
        self.admin = admin
        self.post = post


def new_account(url: str) -> Account:
    made = ok_json("PUT", f"{url}/a/", token=ROOT)
    post = ok_json("PUT", f"{url}/t/", body={"type": "post"}, token=made["access_token"])
    return Account(made["account_id"], made["access_token"], post["access_token"])


def new_metric(url: str, admin: str, **fields: str) -> str:
    return ok_json("PUT", f"{url}/m/", body=fields, token=admin)["metric_id"]


def post_point(
    url: str, metric: str, token: str, value: float, metadata: str | None = None
) -> Answer:
    body: dict[str, object] = {"value": value}
    if metadata is not None:
        body["metadata"] = metadata
    return http("POST", f"{url}/m/{metric}", body=body, token=token)


def points(url: str, metric: str, **options: str) -> list[dict]:
    query = f"?{urllib.parse.urlencode(options)}" if options else ""
    return ok_json("GET", f"{url}/m/{metric}/json{query}")


def values(url: str, metric: str) -> list[float]:
    return [p["v"] for p in points(url, metric)]


def parse_svg(body: bytes) -> ET.Element:
    root = ET.fromstring(body)
    assert root.tag.rsplit("}", 1)[-1] == "svg"
    return root


def _import_series(
    url: str, account: Account, values: list[float], unit: str = "s", **fields: str
) -> tuple[str, int]:
    mid = new_metric(url, account.admin, unit=unit, **fields)
    start = int(time.time()) - 3600 * len(values)
    body = [{"t": start + 3600 * i, "v": v} for i, v in enumerate(values)]
    assert ok_json("POST", f"{url}/m/{mid}/points", body=body, token=account.admin)["added"] == len(
        values
    )
    return mid, start


def _files(data: Path, suffix: str) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.name.endswith(suffix))


def _sealed_logs(data: Path) -> int:
    """How many logs the segments hold (compaction merges several into one segment)."""
    return sum(
        f.number - f.first + 1 for f in perfit.DataFiles.list(str(data)).live() if f.kind == "seg"
    )


@contextlib.contextmanager
def _stub_server(
    status: int | list[int],
    body: bytes,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Iterator[tuple[str, list]]:
    """A tiny HTTP(S) server answering every request alike (or with each of a list of
    statuses in turn, the last for the rest); yields its URL and what it got."""
    import http.server

    seen: list = []
    statuses = status if isinstance(status, list) else [status]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
            self.send_response(statuses[min(len(seen), len(statuses)) - 1])
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
        srv.handle_error = lambda *_: None  # the handshakes the client breaks off, on purpose
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


def _git_in(path: Path) -> Callable[..., str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=path, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip

    return git


def _main_and_a_pr(path: Path, runs: int, branched_at: int, branch: str) -> tuple[list[str], str]:
    """A git repository at `path`: `runs` commits on main, and a PR's commit on `branch`
    made on the `branched_at`-th of them; (main's commits, oldest first; the PR's head)."""
    git = _git_in(path)
    git("init", "-q", "-b", "main")
    main = []
    for run in range(1, runs + 1):
        git("commit", "-q", "--allow-empty", "-m", f"main {run}")
        main.append(git("rev-parse", "HEAD"))
        if run == branched_at:
            git("checkout", "-q", "-b", branch)
            git("commit", "-q", "--allow-empty", "-m", "the PR")
            head = git("rev-parse", "HEAD")
            git("checkout", "-q", "main")
    return main, head


# --------------------------------------------------------------------------------------------
# Fixtures
# One server for the tests that need no server of their own, and accounts on it.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by every test that does not need its own.

    It believes one proxy, so tests that fail authentication on purpose can each come from their
    own address and stay clear of the failed-authentication limiter.
    """
    with running_server(
        tmp_path_factory.mktemp("data"), "--trust-proxy", "1", "--webhook-allow-private"
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def url(server: Server) -> str:
    return server.url


@pytest.fixture()
def account(url: str) -> Account:
    """A fresh account: metric names are unique within one, and each test picks its own."""
    return new_account(url)


@pytest.fixture()
def other(url: str) -> Account:
    return new_account(url)


@pytest.fixture(scope="module")
def shared_account(url: str) -> Account:
    """An account for the module's shared metrics (each with a name of its own)."""
    return new_account(url)


@pytest.fixture(scope="module")
def shared_other(url: str) -> Account:
    return new_account(url)


@pytest.fixture()
def metric(url: str, account: Account) -> str:
    """A fresh, empty metric of `account`."""
    return new_metric(url, account.admin, name="build", unit="s")


# --------------------------------------------------------------------------------------------
# The module
# One file, two roles: the client half imports nothing outside the standard library, and the
# tests run on the versions CI and the README install.
# --------------------------------------------------------------------------------------------


def test_import_does_not_pull_in_server_dependencies() -> None:
    code = "import perfit, sys; assert not {'bottle','svgwrite','zstandard'} & set(sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(HERE), capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_all_names_every_public_function_and_class_and_nothing_that_is_not_there() -> None:
    public = {
        name
        for name, value in vars(perfit).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == "perfit"
    }
    assert public <= set(perfit.__all__), "public but not in __all__ (or make it _private)"
    assert all(hasattr(perfit, name) for name in perfit.__all__)


#: What a command that sends nothing (`token gen`, `--help`, a usage error) starts without:
#: the server's modules, and the client's network stack until it sends something.
LAZY_MODULES = {
    *("bottle", "svgwrite", "zstandard", "wsgiref.simple_server", "socketserver"),
    *("urllib.request", "http.client", "ssl", "subprocess", "logging", "statistics", "typing"),
}


def test_a_command_that_sends_nothing_starts_without_the_network_and_server_modules() -> None:
    code = (
        "import sys, perfit; perfit.main(['token', 'gen']); "
        f"print(sorted(set({sorted(LAZY_MODULES)!r}) & set(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=str(HERE), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]", "imported at start: see bench/bench_startup.py"


def test_the_tests_run_on_pinned_versions_that_ci_and_the_readme_install() -> None:
    """Every package the test extra pulls in, however deep, is pinned in .ci/constraints.txt
    and installed at that version; CI and the README install with those pins."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    constraints = HERE / ".ci" / "constraints.txt"
    pins = dict(
        line.split("#")[0].strip().split("==")
        for line in constraints.read_text().splitlines()
        if line.split("#")[0].strip()
    )
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    try:
        wanted = [Requirement(r) for r in metadata.requires("perfit") or []]
    except metadata.PackageNotFoundError:
        pytest.skip("perfit is not installed: pip install -e '.[test]' -c .ci/constraints.txt")
    seen: set[str] = set()
    todo = [r for r in wanted if r.marker is None or r.marker.evaluate({"extra": "test"})]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        assert name in pins, f"{name} is installed for the tests but not pinned"
        assert metadata.version(name) == pins[name], f"{name} is not at its pinned version"
        for extra in req.extras or {""}:
            for sub in map(Requirement, metadata.requires(name) or []):
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(sub)
    command = "python -m pip install -e '.[test]' -c .ci/constraints.txt"
    assert f"{command} && python -m pytest" in (HERE / "README.md").read_text()
    ci = (HERE / ".ci" / "run").read_text()
    assert command in ci and "\npython -m pytest\n" in ci


def test_a_virtual_environment_in_the_clone_is_not_committed() -> None:
    ignored = (HERE / ".gitignore").read_text().split()
    assert ".venv/" in ignored


# --------------------------------------------------------------------------------------------
# Shared helpers
# Ids, tokens, durations and times.
# --------------------------------------------------------------------------------------------


def test_ids_and_tokens_are_url_safe_and_never_start_with_a_dash():
    for _ in range(2000):
        token = perfit.new_token()
        raw_id = perfit.new_id()
        text_id = perfit.b64encode(raw_id)
        assert len(token) == 43 and len(text_id) == 22
        assert not token.startswith("-") and not text_id.startswith("-")
        assert perfit.decode_id(text_id) == raw_id


def test_decode_id_refuses_what_is_not_exactly_an_id():
    good = perfit.b64encode(perfit.new_id())
    assert perfit.decode_id(good + "A") is None
    assert perfit.decode_id(good[:-1]) is None
    assert perfit.decode_id(good[:-1] + "!") is None
    # The 22nd character carries 2 padding bits; a second spelling of one id is refused.
    last = perfit.b64encode(bytes(15) + b"\x00")
    assert perfit.decode_id(last) == bytes(16)
    assert perfit.decode_id(last[:-1] + "B") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("3d", 259200),
        ("2w", 1209600),
        ("2 weeks", 1209600),
        ("1d 12h", 129600),
        ("1.5h", 5400),
        ("1y", 31_556_952),
    ],
)
def test_durations_read_as_people_write_them(text, seconds):
    assert perfit.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "90", "banana", "3 parsecs", "1d banana", "-1d", "9" * 30 + "y"]
)
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        perfit.parse_duration(text)


@pytest.mark.parametrize(
    "text",
    ["30d", "2 weeks", " 1d 12h ", "1.5h", "90s", "3 parsecs", "1D", "1d12", "\u0663d", "5ms"],
)
def test_the_openapi_duration_pattern_is_the_grammar_the_server_reads(text: str) -> None:
    try:
        perfit.parse_duration(text)
        read = True
    except ValueError:
        read = False
    pattern = perfit.openapi_document()["components"]["schemas"]["Duration"]["pattern"]
    assert bool(re.fullmatch(pattern, text)) == read


def test_rfc3339_times_with_z_offsets_and_dates():
    assert perfit.parse_rfc3339("2026-11-01T00:00:00Z") == 1793491200
    assert perfit.parse_rfc3339("2026-11-01T01:00:00+01:00") == 1793491200
    assert perfit.parse_rfc3339("2026-11-01") == 1793491200
    with pytest.raises(ValueError):
        perfit.parse_rfc3339("yesterday")


# --------------------------------------------------------------------------------------------
# Store: framing, the index, the log
# In process: what is acknowledged is replayed, a torn tail is cut off, corruption is named,
# concurrent writers share fsyncs, a point is readable only once durable.
# --------------------------------------------------------------------------------------------


def _log_path(data):
    (name,) = [n for n in os.listdir(data) if n.endswith(".log")]
    return os.path.join(data, name)


def _points(store, metric_id):
    series = store.metrics[metric_id].series
    return [(series.values[i], series.metadata(i)) for i in range(len(series))]


def _store_with_points(data, values):
    with perfit.Store.open(str(data)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account, name="build")
        for v in values:
            store.add_point(metric.id, v, f"sha-{v}")
        return metric.id


def test_store_replays_everything_it_acknowledged(tmp_path):
    with perfit.Store.open(str(tmp_path)) as store:
        account, admin = store.create_account()
        post = store.create_token(account, "post")
        metric = store.create_metric(account, name="tests", unit="s", better="lower")
        times = [store.add_point(metric.id, v, "é" * 3) for v in (1.5, 2.5, -3.0)]
    with perfit.Store.open(str(tmp_path)) as store:
        assert store.authenticate(admin) == perfit.Principal(account, "admin")
        assert store.authenticate(post) == perfit.Principal(account, "post")
        assert store.authenticate(perfit.new_token()) is None
        again = store.metrics[metric.id]
        assert (again.name, again.unit, again.better) == ("tests", "s", "lower")
        assert _points(store, metric.id) == [(1.5, "ééé"), (2.5, "ééé"), (-3.0, "ééé")]
        assert list(again.series.times) == times == sorted(times)


def test_store_keeps_no_token_in_plain_text(tmp_path):
    with perfit.Store.open(str(tmp_path)) as store:
        account, admin = store.create_account()
        post = store.create_token(account, "post")
    blob = Path(_log_path(tmp_path)).read_bytes()
    assert admin.encode() not in blob and post.encode() not in blob


def test_a_second_store_on_the_same_directory_is_refused(tmp_path):
    with perfit.Store.open(str(tmp_path)), pytest.raises(perfit.StoreLocked, match="in use"):
        perfit.Store.open(str(tmp_path))
    perfit.Store.open(str(tmp_path)).close()  # released on close


def test_torn_tail_is_cut_at_every_byte_offset_and_the_next_append_survives(tmp_path):
    data = tmp_path / "data"
    metric_id = _store_with_points(data, [1.0, 2.0, 3.0])
    whole = Path(_log_path(data)).read_bytes()
    start = perfit.scan_file(_log_path(data), perfit.LOG_MAGIC).records[-1][0]  # the last point
    for cut in range(start, len(whole)):
        Path(_log_path(data)).write_bytes(whole[:cut])
        with perfit.Store.open(str(data)) as store:
            assert [v for v, _ in _points(store, metric_id)] == [1.0, 2.0]
            assert store.torn_bytes_cut == cut - start
            store.add_point(metric_id, 4.0)
        with perfit.Store.open(str(data)) as store:
            assert [v for v, _ in _points(store, metric_id)] == [1.0, 2.0, 4.0]


def test_garbage_at_the_tail_is_a_torn_write(tmp_path):
    metric_id = _store_with_points(tmp_path, [1.0])
    with open(_log_path(tmp_path), "ab") as f:
        f.write(b"\x00" * 4096)  # a file system that extended the file but not its data
    with perfit.Store.open(str(tmp_path)) as store:
        assert _points(store, metric_id) == [(1.0, "sha-1.0")]


def test_a_flipped_byte_before_good_records_is_corruption_named_with_its_offset(tmp_path):
    metric_id = _store_with_points(tmp_path, [1.0, 2.0, 3.0])
    path = _log_path(tmp_path)
    blob = bytearray(Path(path).read_bytes())
    scan = perfit.scan_file(path, perfit.LOG_MAGIC)
    offset, payload = next((o, p) for o, rtype, p in scan.records if rtype == perfit.REC_RUN)
    blob[offset + perfit.FRAME.size + len(payload) - 3] ^= 0xFF  # inside the first point's value
    Path(path).write_bytes(bytes(blob))
    with pytest.raises(perfit.StoreCorrupt, match=f"offset {offset}"):
        perfit.Store.open(str(tmp_path))
    assert Path(path).read_bytes() == bytes(blob), "a corrupt log must never be truncated"
    assert metric_id


def test_concurrent_writers_share_fsyncs_and_lose_nothing(tmp_path, monkeypatch):
    fsyncs = []
    real_fsync = os.fsync

    def counting_fsync(fd):
        fsyncs.append(fd)
        time.sleep(0.002)  # a disk that takes its time, as real ones do
        real_fsync(fd)

    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account)
        monkeypatch.setattr(os, "fsync", counting_fsync)

        def writer(n):
            for i in range(50):
                store.add_point(metric.id, n * 1000 + i)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        monkeypatch.undo()
    assert len(fsyncs) < 400, "every writer paid for its own fsync: no group commit"
    with perfit.Store.open(str(tmp_path)) as store:
        values = sorted(v for v, _ in _points(store, metric.id))
    assert values == sorted(n * 1000 + i for n in range(8) for i in range(50))


def test_a_point_is_acknowledged_only_after_its_fsync(tmp_path, monkeypatch):
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account)
        entered, disk_done = threading.Event(), threading.Event()
        real_fsync = os.fsync

        def slow_fsync(fd):
            entered.set()
            disk_done.wait(10)  # the disk is still busy writing
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", slow_fsync)
        acknowledged = []
        writer = threading.Thread(
            target=lambda: acknowledged.append(store.add_point(metric.id, 1.0))
        )
        writer.start()
        assert entered.wait(10)
        # Not a synchronisation: a grace period in which a wrong store would acknowledge.
        writer.join(0.05)
        assert not acknowledged, "add_point returned before its fsync finished"
        assert len(metric.series) == 0, "a reader saw a point a crash could still take back"
        disk_done.set()
        writer.join(10)
        assert acknowledged
        monkeypatch.undo()


def test_arrival_times_never_go_backwards(tmp_path, monkeypatch):
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account)
        first = store.add_point(metric.id, 1.0)
        monkeypatch.setattr(time, "time", lambda: first - 3600)  # the clock steps back an hour
        second = store.add_point(metric.id, 2.0)
    assert second >= first


def test_readers_never_see_a_half_changed_series_while_backfills_merge(tmp_path: Path) -> None:
    # Found by bench/load.py: a chart read while a live point was merged into place raised an
    # IndexError (a 500). Readers now work on a snapshot taken under the series' lock.
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account, unit="s")
        now = int(time.time()) * perfit.US
        store.add_points(metric.id, perfit.PointBatch.of([(now - i * 60 * perfit.US, 10.0 + i % 7, b"m")
                                                          for i in range(5000, 0, -1)]))  # fmt: skip
        failures: list[BaseException] = []
        done = threading.Event()

        def backfill() -> None:
            for k in range(8):
                old = now - (5001 + k) * 60 * perfit.US  # older than everything: a merge
                store.add_points(metric.id, perfit.PointBatch.of([(old, 99.0, b"old")]))
            done.set()

        def read() -> None:
            opts = perfit.ChartOptions()
            while not done.is_set():
                try:
                    perfit.chart_document([metric], opts)
                    got = perfit.points_json(metric, opts)
                    assert [p["t"] for p in got] == sorted(p["t"] for p in got)
                except BaseException as e:
                    failures.append(e)
                    return

        threads = [
            threading.Thread(target=backfill),
            *(threading.Thread(target=read) for _ in range(3)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures, failures[0]
        assert len(metric.series) == 5008


def test_live_points_after_a_point_from_the_future_slot_in_without_a_rebuild(
    tmp_path: Path,
) -> None:
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account)
        now = time.time_ns() // 1000
        past = [
            (now - (200_000 - i) * perfit.US, float(i), b"m" if i % 2 else b"")
            for i in range(200_000)
        ]
        store.add_points(
            metric.id, perfit.PointBatch.of([*past, (now + 200 * perfit.US, -1.0, b"future")])
        )
        started = time.perf_counter()
        for value in (1.0, 2.0, 3.0):
            store.add_point(metric.id, value, "live")
        assert time.perf_counter() - started < 0.3, "each live post rebuilt the series"
        series = metric.series
        assert list(series.values[-4:]) == [1.0, 2.0, 3.0, -1.0]
        assert [series.metadata(i) for i in range(len(series) - 4, len(series))] == ["live"] * 3 + [
            "future"
        ]
        assert series.metadata(len(series) - 5) == "m"
    with perfit.Store.open(str(tmp_path)) as store:
        assert list(store.metrics[metric.id].series.values[-4:]) == [1.0, 2.0, 3.0, -1.0]


def test_a_failed_fsync_ends_the_server_process(tmp_path: Path) -> None:
    # After a failed fsync the kernel may have dropped the data; retrying would lie. The store
    # stops the process (exit 70) and lets replay on restart say what is on disk.
    script = f"""
import errno, os, sys
sys.path.insert(0, {str(HERE)!r})
import perfit
store = perfit.Store.open({str(tmp_path)!r})
account, _ = store.create_account()
metric = store.create_metric(account)
store.exit_on_fatal = True
def broken(fd):
    raise OSError(errno.EIO, "Input/output error")
os.fsync = broken
store.add_point(metric.id, 1.0)
print("acknowledged")
"""
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert child.returncode == perfit.EXIT_STORE_FATAL
    assert "acknowledged" not in child.stdout
    assert "fsync failed" in child.stderr


def test_after_a_failed_fsync_the_store_refuses_writes_and_is_unhealthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account)

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", broken)
        with pytest.raises(perfit.StoreError):
            store.add_point(metric.id, 1.0)
        monkeypatch.undo()
        assert not store.writable()
        with pytest.raises(perfit.StoreError, match="not writable"):
            store.add_point(metric.id, 2.0)


def _keep(metric, point):
    return point.value


def _run(store, account, *names, metadata="sha"):
    points = [perfit.RunPoint(name, float(i), "s") for i, name in enumerate(names)]
    return store.post_run(account, points, metadata, _keep)


def test_a_run_is_one_record_so_a_torn_one_leaves_none_of_it(tmp_path):
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        _run(store, account, "kept")
        before = os.path.getsize(_log_path(tmp_path))
        _run(store, account, *(f"suite/test_{i}" for i in range(50)))
    log = _log_path(tmp_path)
    after = os.path.getsize(log)
    for cut in (after - 1, before + 20, before + 1):
        os.truncate(log, cut)  # a crash at any byte of the run's write
        with perfit.Store.open(str(tmp_path)) as store:
            names = sorted(m.name for m in store.index.by_account[account])
            assert names == ["kept"], cut
            assert store.torn_bytes_cut == cut - before


def test_names_runs_and_boards_replay_from_logs_and_segments(tmp_path):
    with perfit.Store.open(str(tmp_path), seal_bytes=2048) as store:
        account, _ = store.create_account()
        first_board = store.index.board_of[account]
        for k in range(40):  # several logs fill up and are sealed into segments
            t, ids = _run(store, account, "a/x", "a/y", f"b/{k % 3}", metadata=f"run {k}")
        board = store.replace_board(account)
        assert board != first_board and store.index.boards == {board: account}
        poll(lambda: store.sealer._running.locked(), lambda busy: not busy)
    assert any(name.endswith(".seg") for name in os.listdir(tmp_path))
    with perfit.Store.open(str(tmp_path)) as store:
        assert store.index.boards == {board: account}
        assert store.index.names[(account, "a/x")].id == ids["a/x"]
        assert len(store.index.by_account[account]) == 5
        series = store.metrics[ids["a/y"]].series
        assert len(series) == 40 and series.times[-1] == t and series.metadata(39) == "run 39"
    assert perfit.main(["store", "check", "--data", str(tmp_path)]) == 0


def _origins(series: perfit.Series) -> list[tuple[str, str, str]]:
    return [(series.origin(i).commit, series.origin(i).branch, series.metadata(i))
            for i in range(len(series))]  # fmt: skip


def test_a_runs_commit_branch_and_metadata_are_stored_once_and_replay_everywhere(tmp_path):
    """Through the log, a sealed segment and a compaction, a run's commit, branch and
    metadata come back with each of its points; one origin serves all 50 of them."""
    with perfit.Store.open(str(tmp_path), seal_bytes=4096) as store:
        account, _ = store.create_account()
        names = [f"suite/b{i}" for i in range(50)]
        origins = len(perfit.origin_table())
        for k in range(12):
            points = [perfit.RunPoint(n, float(k), "s") for n in names]
            branch = "main" if k % 3 else ""
            store.post_run(account, points, f"job {k}", _keep, f"{k:07x}abc", branch)
        assert len(perfit.origin_table()) - origins <= 12, "one origin a run, not a point"
        ids = {m.name: m.id for m in store.index.by_account[account]}
        series = store.metrics[ids["suite/b7"]].series
        assert series.origins is not None and series.origins.itemsize == 4
        expected = [(f"{k:07x}abc", "main" if k % 3 else "", f"job {k}") for k in range(12)]
        assert _origins(series) == expected
        poll(lambda: store.sealer._running.locked(), lambda busy: not busy)
    assert _files(tmp_path, ".seg"), "the logs were sealed"
    for segment in _files(tmp_path, ".seg"):  # a run's origin once a segment, not once a metric
        control = perfit.scan_file(str(segment), perfit.SEG_MAGIC).records[0][2]
        defined = [t for t, _ in perfit._control_records(control) if t == perfit._REC_ORIGIN]
        assert 1 <= len(defined) <= 12
    for _ in range(2):  # from the segments, then from what compaction made of them
        with perfit.Store.open(str(tmp_path)) as store:
            assert _origins(store.metrics[ids["suite/b7"]].series) == expected
            store.compact()
    assert perfit.main(["store", "check", "--data", str(tmp_path)]) == 0


def test_a_branchs_points_are_kept_apart_from_mains_and_follow_the_main_branch_of_their_day(
    tmp_path,
):
    with perfit.Store.open(str(tmp_path), seal_bytes=2048) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account, name="build")
        store.add_point(metric.id, 1.0, "", "aaaaaaa", "main")
        store.add_point(metric.id, 2.0, "", "bbbbbbb", "feature")
        store.add_point(metric.id, 3.0)  # no branch: main's
        store.set_main_branch(account, "trunk")
        store.add_point(metric.id, 4.0, "", "ccccccc", "trunk")
        store.add_point(metric.id, 5.0, "", "ddddddd", "main")  # main is not main any more
        then = int(time.time() - 3600) * perfit.US  # imported: an hour ago
        rows = [(then, 6.0, b"", 0)]
        rows.append((then + 1, 7.0, b"", perfit.origin_table().intern(
            store.origin(account, "eeeeeee", "feature"))))  # fmt: skip
        store.add_points(metric.id, perfit.PointBatch.of(rows))
        for k in range(30):  # fill logs, so the points above are sealed and compacted
            store.add_point(store.create_metric(account).id, float(k), "x" * 200)
        store.compact()
    with perfit.Store.open(str(tmp_path)) as store:
        got = store.metrics[metric.id]
        assert store.index.main_branch(account) == "trunk"
        assert list(got.series.values) == [6.0, 1.0, 3.0, 4.0]
        assert list(got.branches.values) == [7.0, 2.0, 5.0]
        assert [o[1] for o in _origins(got.branches)] == ["feature", "feature", "main"]
        assert list(perfit.branch_points(got, "feature").values) == [7.0, 2.0]


def test_a_branchs_points_expire_after_thirty_days_and_mains_stay(tmp_path, monkeypatch):
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account)
        old = int(time.time() - 40 * 86400) * perfit.US
        feature = perfit.origin_table().intern(store.origin(account, "", "feature"))
        store.add_points(
            metric.id, perfit.PointBatch.of([(old, 1.0, b"", feature), (old, 2.0, b"")])
        )
        store.add_point(metric.id, 3.0, "", "", "feature")
        assert len(perfit.branch_points(metric, "feature")) == 1, "older than 30 days: not served"
        assert store.expire_points() == 1
        store.compact()
    with perfit.Store.open(str(tmp_path)) as store:
        again = store.metrics[metric.id]
        assert list(again.branches.values) == [3.0] and list(again.series.values) == [2.0]


def test_two_runs_racing_to_create_a_name_make_one_metric(tmp_path):
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        barrier = threading.Barrier(8)

        def post() -> dict:
            barrier.wait()
            return _run(store, account, "race/a", "race/b")[1]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(), range(8)))
        assert len({tuple(sorted(a.items())) for a in answers}) == 1, "every run got the same ids"
        assert sorted(m.name for m in store.index.by_account[account]) == ["race/a", "race/b"]
        assert len(store.metrics[answers[0]["race/a"]].series) == 8


def test_an_account_has_at_most_max_account_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(perfit, "MAX_ACCOUNT_METRICS", 5)
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        _run(store, account, "a", "b", "c", "d")
        with pytest.raises(perfit.Forbidden, match="at most 5"):
            _run(store, account, "a", "e", "f")  # two new: one too many; none of it is stored
        assert len(store.metrics[store.index.names[(account, "a")].id].series) == 1
        _run(store, account, "a", "b", "e")  # one new: fits
        with pytest.raises(perfit.Forbidden):
            store.create_metric(account, name="g")
        other, _ = store.create_account()
        store.create_metric(other, name="g")  # the cap is per account


def test_marks_replay_and_survive_sealing(tmp_path):
    with perfit.Store.open(str(tmp_path), seal_bytes=2048) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account, name="m")
        rows = [(i * perfit.US, float(i), b"") for i in range(1, 101)]
        store.add_points(metric.id, perfit.PointBatch.of(rows))
        store.mark(metric.id, "exclude", 10 * perfit.US, 20 * perfit.US)
        store.mark(metric.id, "include", 15 * perfit.US, 15 * perfit.US)
        store.mark(metric.id, "accept", 50 * perfit.US, 50 * perfit.US)
        for t in (60, 70, 80):
            store.mark(metric.id, "dismiss", t * perfit.US, t * perfit.US)
        store.mark(metric.id, "undismiss", 70 * perfit.US, 70 * perfit.US)
        for _ in range(30):
            store.add_point(metric.id, 1.0, "x" * 100)  # fill logs: they are sealed
        poll(lambda: store.sealer._running.locked(), lambda busy: not busy)
    with perfit.Store.open(str(tmp_path)) as store:
        marks = store.metrics[metric.id].marks
        mask = marks.excluded([t * perfit.US for t in (9, 10, 15, 20, 21)])
        assert mask == [False, True, False, True, False]
        assert marks.accepted == {50}
        assert marks.dismissed == {60, 80}


def test_a_directory_from_before_boards_gives_each_account_one(tmp_path):
    """PerfIt 0.1 wrote no board records, and let two metrics of an account share a name."""
    account, first, second = (perfit.new_id() for _ in range(3))
    records = [
        (1, {"id": perfit.b64encode(account), "created": 1.0}),
        *(
            (3, {"id": perfit.b64encode(m), "account": perfit.b64encode(account), "created": 2.0,
                 "name": "build"})
            for m in (first, second)
        ),
    ]  # fmt: skip
    log = tmp_path / "00000001.log"
    log.write_bytes(
        perfit.LOG_MAGIC
        + b"".join(perfit.encode_record(t, json.dumps(d).encode()) for t, d in records)
    )
    with perfit.Store.open(str(tmp_path)) as store:
        board = store.index.board_of[account]
        assert store.index.names[(account, "build")].id == first, "the older one keeps the name"
    with perfit.Store.open(str(tmp_path)) as store:
        assert store.index.board_of[account] == board, "given once, kept"


# --------------------------------------------------------------------------------------------
# Store: compression, segments, recovery, check, backup
# Full logs sealed into zstd segments (from whichever zstd there is, or none), a crash at any
# step of sealing, damaged files named, checked and repaired, backups of a live directory.
# --------------------------------------------------------------------------------------------


def _series(store: perfit.Store, metric_id: bytes) -> list[tuple[int, float, str]]:
    return _series_of(store.metrics[metric_id].series)


def _series_of(series: perfit.Series) -> list[tuple[int, float, str]]:
    return [(series.times[i], series.values[i], series.metadata(i)) for i in range(len(series))]


def _store_with_log(
    data: Path, count: int, seal_bytes: int = perfit.SEAL_BYTES, batch: int = 1
) -> tuple:
    """A closed store holding `count` points of one metric; returns (metric id, its points).

    Posted one by one as live points are (batch=1), or imported `batch` at a time where a
    test only needs full logs and segments (an fsync each, not thousands).
    """
    with perfit.Store.open(str(data), seal_bytes=seal_bytes) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account, name="build")
        start = int(time.time() - count) * perfit.US
        for first in range(0, count, batch):
            rows = [(start + i * perfit.US, 60 + i % 13 + i / 1000, b"sha%d" % i if i % 3 else b"")
                    for i in range(first, min(first + batch, count))]  # fmt: skip
            if batch == 1:
                store.add_point(metric.id, rows[0][1], rows[0][2].decode())
            else:
                store.add_points(metric.id, perfit.PointBatch.of(rows))
        return metric.id, _series(store, metric.id)


def test_full_logs_are_sealed_into_small_segments_that_replay_exactly(tmp_path: Path) -> None:
    metric_id, expected = _store_with_log(tmp_path, 3000, seal_bytes=8192)
    segments, logs, held = (
        _files(tmp_path, ".seg"),
        _files(tmp_path, ".log"),
        _sealed_logs(tmp_path),
    )
    assert held >= 5 and len(logs) == 1, "full logs were not sealed"
    with perfit.Store.open(str(tmp_path)) as store:
        assert _series(store, metric_id) == expected
    sealed = sum(p.stat().st_size for p in segments)
    as_logged = len(expected) * (perfit.FRAME.size + perfit.POINT.size + 4)
    assert sealed < as_logged * held / (held + 1) / 3, "segments are not compact"


#: The standard library's zstd API: compression.zstd from 3.14, backports.zstd before.
STDLIB_ZSTD = "compression.zstd" if sys.version_info >= (3, 14) else "backports.zstd"


@pytest.mark.parametrize(
    ("sealer", "reader"), [(STDLIB_ZSTD, "zstandard"), ("zstandard", STDLIB_ZSTD)]
)
def test_segments_sealed_with_either_zstd_read_back_with_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sealer: str, reader: str
) -> None:
    def use(name: str) -> None:
        zstd = perfit._zstd_of(name, importlib.import_module(name))
        monkeypatch.setattr(perfit, "find_zstd", lambda: (zstd, ""))

    use(sealer)
    metric_id, expected = _store_with_log(tmp_path, 2000, seal_bytes=8192, batch=20)
    assert _sealed_logs(tmp_path) >= 3
    use(reader)  # a server moved to another Python, or to one with zstd built in
    with perfit.Store.open(str(tmp_path)) as store:
        assert store.zstd.name.startswith(reader)
        assert _series(store, metric_id) == expected
    assert cli("store", "check", "--data", str(tmp_path)).returncode == 0


def test_the_best_zstd_there_is_is_used() -> None:
    zstd, why = perfit.find_zstd()
    assert zstd is not None and not why
    assert zstd.name == STDLIB_ZSTD, "the standard library's zstd comes before zstandard"
    blob = os.urandom(100) * 50
    assert zstd.decompress(zstd.compress(blob)) == blob


def bare_site(tmp_path: Path) -> Path:
    """A module directory with bottle and svgwrite and a zstandard that fails to import (as one
    whose compiled backend is missing does): under `python -S`, a server without zstd."""
    import bottle
    import svgwrite

    site = tmp_path / "site"
    (site / "zstandard").mkdir(parents=True)
    (site / "zstandard" / "__init__.py").write_text("from .backend_c import *  # not built\n")
    (site / "bottle.py").symlink_to(bottle.__file__)
    (site / "svgwrite").symlink_to(Path(svgwrite.__file__).parent)
    return site


def test_without_zstd_the_server_keeps_logs_uncompressed_and_says_so_once(tmp_path: Path) -> None:
    data, no_zstd = (
        tmp_path / "data",
        {"flags": ("-S",), "env": {"PYTHONPATH": str(bare_site(tmp_path))}},
    )
    with running_server(data, "--seal-bytes", "1024", **no_zstd) as srv:
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin)
        for value in range(80):  # about 4 KiB of log: three rotations
            assert post_point(srv.url, mid, acc.post, value, "sha")[0] == 200
        health = ok_json("GET", f"{srv.url}/healthz")
        assert health["ok"] is True and health["compression"] is None
        assert "uncompressed" in health["message"] and "pip install zstandard" in health["message"]
        assert srv.stop() == 0
    assert "Traceback" not in "".join(srv.err)
    assert [line for line in srv.err if "uncompressed" in line] == [
        line for line in srv.err if "zstd" in line
    ] and len([line for line in srv.err if "uncompressed" in line]) == 1, srv.err
    assert len(_files(data, ".log")) >= 3 and not _files(data, ".seg")
    assert cli("store", "check", "--data", str(data), flags=("-S",)).returncode == 0

    # With zstd back, a start seals the logs that piled up, and loses nothing.
    with running_server(data) as srv:
        assert values(srv.url, mid) == list(range(80))
        assert ok_json("GET", f"{srv.url}/healthz")["compression"]
    assert _sealed_logs(data) >= 3

    # Segments it cannot read stop a start without zstd, and `store check`: one line, the fix.
    env = {**no_zstd["env"], "PERFITD_ROOT_ACCESS_TOKEN": ROOT}
    for command in (["serve", "--listen", "127.0.0.1:0"], ["store", "check"]):
        proc = cli(*command, "--data", str(data), flags=("-S",), env=env)
        assert_said_no(proc, 2)
        assert "pip install zstandard" in proc.stderr


def test_store_commands_without_zstandard_say_so_instead_of_crying_corruption(
    tmp_path: Path,
) -> None:
    with perfit.Store.open(str(tmp_path), seal_bytes=4096) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account)
        for i in range(500):
            store.add_point(metric.id, float(i))
    check = cli("store", "check", "--data", str(tmp_path), flags=("-S",))
    assert_said_no(check, 2)
    assert "zstandard" in check.stderr


@pytest.mark.parametrize("crash_after", ["temp-file-half-written", "temp-file-written", "renamed",
                                         "log-removed"])  # fmt: skip
def test_a_crash_at_any_step_of_sealing_keeps_every_point_exactly_once(
    tmp_path: Path, crash_after: str
) -> None:
    metric_id, expected = _store_with_log(tmp_path, 500)
    (log,) = _files(tmp_path, ".log")
    segment = log.with_suffix(".seg")
    perfit.seal_log(str(log), str(segment))  # the real sealing, stopped after one of its steps
    temp = Path(str(segment) + ".tmp")
    if crash_after.startswith("temp-file"):
        segment.rename(temp)
        if crash_after == "temp-file-half-written":
            temp.write_bytes(temp.read_bytes()[: temp.stat().st_size // 2])
    elif crash_after == "log-removed":
        log.unlink()
    with perfit.Store.open(str(tmp_path)) as store:
        assert _series(store, metric_id) == expected
        store.add_point(metric_id, 1.0)
    assert not temp.exists()
    with perfit.Store.open(str(tmp_path)) as store:
        assert _series(store, metric_id)[:-1] == expected
        assert _series(store, metric_id)[-1][1] == 1.0


def _flip_byte(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x55
    path.write_bytes(bytes(blob))


def test_a_flipped_byte_in_a_segment_is_named_checked_and_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(perfit, "_COMPACT_FILES", 10**9)  # segments of a fifth of it each
    metric_id, expected = _store_with_log(tmp_path, 3000, seal_bytes=8192, batch=30)
    segment = _files(tmp_path, ".seg")[1]
    scan = perfit.scan_file(str(segment), perfit.SEG_MAGIC)
    offset = scan.records[-1][0]  # the segment's last block: its points
    _flip_byte(segment, offset + perfit.FRAME.size + 10)
    with pytest.raises(
        perfit.StoreCorrupt, match=f"{segment.name}: corrupt bytes at offset {offset}"
    ):
        perfit.Store.open(str(tmp_path))

    check = cli("store", "check", "--data", str(tmp_path))
    assert check.returncode == 1, check.stdout
    assert f"{segment}: corrupt bytes at offset {offset}" in check.stdout

    with perfit.Store.open(str(tmp_path), repair=True) as store:
        survivors = _series(store, metric_id)
    lost = len(expected) - len(survivors)
    assert 0 < lost < len(expected) / 2, "repair kept too little, or nothing was lost"
    assert all(point in expected for point in survivors)
    (kept,) = (tmp_path / perfit.DAMAGED_DIR).iterdir()
    assert kept.read_bytes() != segment.read_bytes(), "the damaged original was not kept"
    assert cli("store", "check", "--data", str(tmp_path)).returncode == 0


def test_a_flipped_byte_names_the_points_lost_and_a_backup_refills_them(tmp_path: Path) -> None:
    """The issue's case: one bad byte in a sealed segment took a block of one metric. Check,
    repair and the refused start say which metric, how many points at most and when; the
    README's refill (the metric's CSV from a backup, imported) brings them back."""
    data, backup = tmp_path / "data", tmp_path / "backup"
    start, n = 1_700_000_000, 40_000  # three blocks of points: the middle one is damaged
    with perfit.Store.open(str(data)) as store:
        account, admin = store.create_account()
        latency = store.create_metric(account, name="api/latency")
        rows = [((start + 60 * i) * perfit.US, 1.0 + i % 7, b"") for i in range(n)]
        store.add_points(latency.id, perfit.PointBatch.of(rows))
        store.add_points(store.create_metric(account, name="build").id,
                         perfit.PointBatch.of(rows[:100]))  # fmt: skip
        store.log.roll()
        store.sealer.run_now()
    assert cli("store", "backup", "--data", str(data), str(backup)).returncode == 0
    (segment,) = _files(data, ".seg")
    records = perfit.scan_file(str(segment), perfit.SEG_MAGIC).records
    blocks = [offset for offset, rtype, payload in records
              if any(h.metric == latency.id for h in perfit._held(rtype, payload))]  # fmt: skip
    _flip_byte(segment, blocks[1] + perfit.FRAME.size + 30)
    block = perfit._SEG_BLOCK_POINTS
    lost = (
        f"up to {block:,} points a block of 'api/latency' ({perfit.b64encode(latency.id)}), "
        f"between {perfit.format_time(start + 60 * (block - 1))} and "
        f"{perfit.format_time(start + 60 * 2 * block)}"
    )
    check = cli("store", "check", "--data", str(data))
    assert check.returncode == 1 and lost in check.stdout, check.stdout
    with pytest.raises(perfit.StoreCorrupt, match=re.escape(lost)):
        perfit.Store.open(str(data))
    with running_server(data, "--repair") as srv:
        assert lost in "".join(srv.err), "".join(srv.err)
        assert len(points(srv.url, perfit.b64encode(latency.id))) == n - block
    # The README's refill: the metric's CSV from a server on the backup, imported.
    metric = perfit.b64encode(latency.id)
    with running_server(backup) as old:
        (tmp_path / "lost.csv").write_bytes(http("GET", f"{old.url}/m/{metric}/csv")[2])
    with running_server(data) as srv:
        refill = cli("metric", "import", "--metric", metric, str(tmp_path / "lost.csv"),
                     *client_args(srv.url, admin))  # fmt: skip
        assert refill.returncode == 0, refill.stderr
        assert f'"added": {block}' in refill.stdout
        assert [p["t"] for p in points(srv.url, metric)] == [start + 60 * i for i in range(n)]


def test_repair_keeps_the_points_of_a_segment_whose_origins_were_damaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment's blocks name their runs' origins by number, defined in its control block:
    damage there must not take every point of the segment with it."""
    with perfit.Store.open(str(tmp_path), seal_bytes=4096) as store:
        account, _ = store.create_account()
        for k in range(40):
            points = [perfit.RunPoint(f"s/{i}", float(k), "s") for i in range(8)]
            store.post_run(account, points, "", _keep, f"{k:07x}", "main")
        ids = {m.name: m.id for m in store.index.by_account[account]}
        poll(lambda: store.sealer._running.locked(), lambda busy: not busy)
    segment = _files(tmp_path, ".seg")[-1]  # the metrics were made in an earlier one
    control_offset = perfit.scan_file(str(segment), perfit.SEG_MAGIC).records[0][0]
    with perfit.Store.open(str(tmp_path)) as store:
        before = len(store.metrics[ids["s/3"]].series)
    _flip_byte(segment, control_offset + perfit.FRAME.size + 12)
    with pytest.raises(perfit.StoreCorrupt):
        perfit.Store.open(str(tmp_path))
    check = cli("store", "check", "--data", str(tmp_path))
    assert "lost the segment's control records (accounts, tokens, metrics" in check.stdout
    with caplog.at_level("WARNING", logger="perfit"):
        store = perfit.Store.open(str(tmp_path), repair=True)
    with store:
        series = store.metrics[ids["s/3"]].series
        assert len(series) == before, "every point kept"
        assert "" in {series.origin(i).commit for i in range(len(series))}, "their commits lost"
    assert "kept without their commit, branch and metadata" in caplog.text


def test_a_flipped_byte_in_the_log_is_listed_by_store_check(tmp_path: Path) -> None:
    _store_with_log(tmp_path, 50)
    (log,) = _files(tmp_path, ".log")
    offset = perfit.scan_file(str(log), perfit.LOG_MAGIC).records[10][0]
    _flip_byte(log, offset + perfit.FRAME.size + 2)
    check = cli("store", "check", "--data", str(tmp_path))
    assert check.returncode == 1
    assert f"{log}: corrupt bytes at offset {offset}" in check.stdout
    assert "Traceback" not in check.stderr
    # The byte was in a point's time: its record still reads, so it says which point it was.
    assert re.search(r"lost probably 1 point of 'build' \(\S+\), \d{4}-", check.stdout)
    # One in the top byte of another point's time reads as a year no clock shows: unknown.
    later = perfit.scan_file(str(log), perfit.LOG_MAGIC).records[20][0]
    _flip_byte(log, later + perfit.FRAME.size + 7)
    check = cli("store", "check", "--data", str(tmp_path))
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    assert f"offset {later} " in check.stdout and "(unknown which)" in check.stdout, check.stdout


def test_store_check_of_a_clean_directory_exits_zero(tmp_path: Path) -> None:
    _store_with_log(tmp_path, 2000, seal_bytes=4096, batch=20)
    check = cli("store", "check", "--data", str(tmp_path))
    assert check.returncode == 0, check.stdout
    assert "clean" in check.stdout


def test_backup_of_a_live_server_opens_with_everything_acknowledged_before(tmp_path: Path) -> None:
    data, dest = tmp_path / "data", tmp_path / "backup"
    with running_server(data, "--seal-bytes", "2048") as srv:
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin)
        before = [v for v in range(120) if post_point(srv.url, mid, acc.post, v)[0] == 200]
        stop = threading.Event()

        def keep_posting() -> None:
            v = 1000
            while not stop.is_set():
                post_point(srv.url, mid, acc.post, v)
                v += 1

        poster = threading.Thread(target=keep_posting)
        poster.start()
        try:
            check = cli("store", "check", "--data", str(data))
            backup = cli("store", "backup", "--data", str(data), str(dest))
        finally:
            stop.set()
            poster.join()
        assert check.returncode == 0, check.stdout
        assert backup.returncode == 0, backup.stderr
    with running_server(dest) as copy:
        restored = [int(v) for v in values(copy.url, mid)]
    assert restored[: len(before)] == before
    assert len(restored) == len(set(restored))


def test_backup_refuses_a_destination_that_is_not_empty(tmp_path: Path) -> None:
    _store_with_log(tmp_path / "data", 5)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "something").write_text("mine")
    assert_said_no(
        cli("store", "backup", "--data", str(tmp_path / "data"), str(tmp_path / "dest")), 2
    )


# --------------------------------------------------------------------------------------------
# Store: across real crashes, a full disk, other users
# A server child killed with SIGKILL mid-stream, a disk that fills up, a second server, the
# umask.
# --------------------------------------------------------------------------------------------


def test_every_acknowledged_point_survives_sigkill(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin)
        acked: list[int] = []
        sent: set[int] = set()
        lock = threading.Lock()
        stop = threading.Event()

        def writer(n: int) -> None:
            for k in range(200):
                if stop.is_set():
                    return
                value = n * 1000 + k
                with lock:
                    sent.add(value)
                try:
                    status, _, _ = post_point(srv.url, mid, acc.post, value, f"w{n}")
                except (OSError, HTTPException):
                    return
                if status == 200:
                    with lock:
                        acked.append(value)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while (
            len(acked) < 50 and time.monotonic() < deadline and any(t.is_alive() for t in threads)
        ):
            time.sleep(0.005)
        srv.proc.kill()  # SIGKILL while writers are still posting
        srv.proc.wait(10)
        stop.set()
        for thread in threads:
            thread.join(30)
        with lock:
            acknowledged = list(acked)
        assert len(acknowledged) >= 50
    finally:
        srv.stop()

    with running_server(tmp_path) as again:
        stored = [int(v) for v in values(again.url, mid)]
        for value in acknowledged:
            assert stored.count(value) == 1, value
        assert len(stored) == len(set(stored))
        assert set(stored) <= sent


def test_points_survive_a_clean_restart(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin, name="restart")
        for value in (1.5, 2.5):
            assert post_point(srv.url, mid, acc.post, value, "sha")[0] == 200
    with running_server(tmp_path) as srv:
        assert [(p["v"], p["m"]) for p in points(srv.url, mid)] == [(1.5, "sha"), (2.5, "sha")]
        # The account's tokens still work after the restart.
        assert post_point(srv.url, mid, acc.post, 3.5)[0] == 200
        assert new_metric(srv.url, acc.admin)


def test_sigkill_during_sealing_and_posting_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    _crash_rounds(tmp_path, rounds=2)


@pytest.mark.slow
def test_sigkill_soak_fifty_rounds(tmp_path: Path) -> None:
    _crash_rounds(tmp_path, rounds=50)


def _crash_rounds(data: Path, rounds: int) -> None:
    """Kill a server mid-stream again and again; every acknowledged point survives once."""
    acked: list[int] = []
    srv = start_server(data, "--seal-bytes", "4096")
    acc = new_account(srv.url)
    mid = new_metric(srv.url, acc.admin)
    progress = threading.Condition()
    rng = random.Random(20261128)  # repeatable kill points
    for round_ in range(rounds):

        def writer(n: int, url: str = srv.url, base: int = round_ * 100_000) -> None:
            for k in range(10_000):
                value = base + n * 10_000 + k
                try:
                    status, _, _ = post_point(url, mid, acc.post, value, "x" * (k % 40))
                except (OSError, HTTPException):
                    return
                if status != 200:
                    return
                with progress:
                    acked.append(value)
                    progress.notify_all()

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        kill_at = len(acked) + rng.randint(50, 400)  # acknowledged points into the round
        with progress:
            assert progress.wait_for(lambda at=kill_at: len(acked) >= at, timeout=30)
        srv.proc.kill()
        srv.proc.wait(10)
        for thread in threads:
            thread.join(30)
        srv = start_server(data, "--seal-bytes", "4096")
        stored = [int(v) for v in values(srv.url, mid)]
        assert len(stored) == len(set(stored)), "a point was stored twice"
        missing = set(acked) - set(stored)
        assert not missing, f"round {round_}: lost {len(missing)} acknowledged points"
    srv.stop()
    assert _files(data, ".seg"), "no segment was sealed: the test did not exercise sealing"


def _limited_server(data: Path, file_size_limit: int) -> Server:
    """A server whose files cannot grow past the limit: a full disk, without filling one."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = clean_env(PERFITD_ROOT_ACCESS_TOKEN=ROOT)
    cmd = [*perfit_command(), "serve", "--listen", "127.0.0.1:0", "--data", str(data),
           "--rate-limit", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=limit, cwd=str(HERE))  # fmt: skip
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    return Server(proc, match.group(1), data, [line])


def test_a_full_disk_answers_507_and_acknowledges_nothing_it_did_not_store(tmp_path: Path) -> None:
    srv = _limited_server(tmp_path, 16 * 1024)
    try:
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin)
        acked, refused = [], []
        for value in range(200):
            answer = post_point(srv.url, mid, acc.post, value, "m" * 100)
            if answer[0] == 200:
                acked.append(value)
            else:
                assert "data directory" in assert_error(answer, 507)
                refused.append(value)
        assert acked and refused, "the limit was never reached"
        assert http("GET", f"{srv.url}/m/{mid}/json")[0] == 200, "reads must go on"
    finally:
        srv.stop()
    with running_server(tmp_path) as again:
        assert [int(v) for v in values(again.url, mid)] == acked


def test_second_server_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    with running_server(tmp_path) as first:
        started = time.monotonic()
        second = subprocess.run(
            [*perfit_command(), "serve", "--listen", "127.0.0.1:0", "--data", str(tmp_path)],
            cwd=str(HERE),
            capture_output=True,
            text=True,
            env=clean_env(PERFITD_ROOT_ACCESS_TOKEN=ROOT),
            timeout=20,
        )
        assert time.monotonic() - started < 10
        assert second.returncode != 0
        assert "in use" in second.stderr.lower()
        assert "Traceback" not in second.stderr
        assert ok_json("GET", f"{first.url}/healthz")["ok"] is True


def test_the_data_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    data, copy = tmp_path / "data", tmp_path / "copy"
    data.mkdir(mode=0o755)  # as PerfIt 0.1 made it
    data.chmod(0o755)
    old = os.umask(0)  # children inherit it: the loosest umask there is
    try:
        with running_server(data, "--seal-bytes", "1024") as srv:
            acc = new_account(srv.url)
            mid = new_metric(srv.url, acc.admin)
            for value in range(60):
                assert post_point(srv.url, mid, acc.post, value)[0] == 200
            assert cli("store", "backup", "--data", str(data), str(copy)).returncode == 0
    finally:
        os.umask(old)
    assert _files(data, ".seg"), "nothing was sealed"
    for top in (data, copy):
        for path in [top, *top.rglob("*")]:
            mode = path.stat().st_mode & 0o777
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def as_user(uid: int, *args: str) -> tuple[int, str]:
    """`perfit ARGS` in a forked child that has become user `uid` (this Python lives where
    other users may not run it): its exit code and stderr."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 99
        try:
            os.close(read)
            sys.stderr = sys.stdout = os.fdopen(write, "w")
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = perfit.main(list(args))
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as said:
        text = said.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), text


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_store_commands_as_root_keep_the_owner_and_without_permission_say_so(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    service, stranger = 65534, 1  # nobody, and daemon: a service user and anyone else
    top = Path(tempfile.mkdtemp())  # not pytest's folders, which only root may enter
    try:
        top.chmod(0o755)
        data = top / "data"
        with perfit.Store.open(str(data)) as store:
            account, _ = store.create_account()
            metric = store.create_metric(account, name="m")
            for part in range(3):  # three logs: something to seal and compact
                store.add_points(metric.id, perfit.PointBatch.of(
                    [((part * 10 + i) * perfit.US, 1.0, b"") for i in range(10)]))  # fmt: skip
                store.log.roll()
        for path in [data, *data.iterdir()]:
            os.chown(path, service, service)
        compacted = cli("store", "compact", "--data", str(data))  # as root, the way sudo runs it
        assert compacted.returncode == 0, compacted.stderr
        assert f"files written in {data} are given to nobody, its owner" in compacted.stderr
        assert {p.stat().st_uid for p in data.iterdir()} == {service}
        assert as_user(service, "store", "check", "--data", str(data))[0] == 0
        code, said = as_user(stranger, "store", "check", "--data", str(data))
        assert code == perfit.EXIT_USAGE and "Traceback" not in said
        assert said.strip() == (
            f"perfit: error: cannot open {data}: permission denied: it belongs to nobody, and "
            f"this runs as daemon; run it as nobody: sudo -u nobody perfit store check --data {data}"
        )
        # A file a command run as root left (before 0.3 kept the owner): named, with the fix.
        (data / "lock").unlink()
        (data / "lock").touch(mode=0o600)
        code, said = as_user(service, "store", "compact", "--data", str(data))
        assert code == perfit.EXIT_USAGE and "Traceback" not in said
        assert f"cannot open {data / 'lock'}: permission denied: it belongs to root" in said
        assert f"give it back: sudo chown nobody: {data / 'lock'}" in said
        # A directory to make where the user may not: the fix makes it, never chowns a parent.
        code, said = as_user(service, "store", "backup", "--data", str(data), str(top / "b"))
        assert code == perfit.EXIT_USAGE and "Traceback" not in said
        assert f"cannot create {top / 'b'}: permission denied: {top} belongs to root" in said
        assert f"sudo install -d -o nobody {top / 'b'}" in said
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_a_log_sealed_in_a_child_is_given_to_the_owner_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve seals big logs in a child Python, which knows nothing of whose files it makes."""
    _store_with_log(tmp_path, 50)
    monkeypatch.setattr(perfit, "_GIVE_TO", (65534, 65534))
    monkeypatch.setattr(perfit, "_SEAL_CHILD_BYTES", 0)
    with perfit.Store.open(str(tmp_path)) as store:
        store.sealer.in_child = True
        store.log.roll()
        store.sealer.run_now(everything=False)
    assert _files(tmp_path, ".seg") and {p.stat().st_uid for p in tmp_path.iterdir()} == {65534}


def test_no_token_is_kept_in_plain_text_in_the_data_directory_or_the_log(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin)
        assert post_point(srv.url, mid, acc.post, 1.0)[0] == 200
        assert http("GET", f"{srv.url}/m/{mid}/json", token=acc.admin)[0] == 200
        # Made with an Idempotency-Key, as the CLI makes them: the kept answer has no token.
        made = json.loads(
            keyed("PUT", f"{srv.url}/t/", "k", body={"type": "post"}, token=acc.admin)[2]
        )
        again = keyed("PUT", f"{srv.url}/t/", "k", body={"type": "post"}, token=acc.admin)
        assert f"revoke token {made['token_id']}" in assert_error(again, 409)
        root_made = keyed("PUT", f"{srv.url}/a/", "a", token=ROOT)
        root_again = keyed("PUT", f"{srv.url}/a/", "a", token=ROOT)
        root_said = assert_error(root_again, 409)
        assert f"made account {json.loads(root_made[2])['account_id']}" in root_said
        by_cli = perfit_main("token", "new", "--type", "admin", *client_args(srv.url, acc.admin))
        assert by_cli.returncode == 0, by_cli.stderr
        assert srv.stop() == 0
    secrets_ = [ROOT, acc.admin, acc.post, made["access_token"],
                json.loads(root_made[2])["access_token"],
                json.loads(by_cli.stdout)["access_token"]]  # fmt: skip
    for path in tmp_path.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not [s for s in secrets_ if s.encode() in blob], path
    log_text = "".join(srv.err) + "".join(srv.out)
    assert "POST /m/" in log_text, "the access log should show requests"
    assert not [s for s in secrets_ if s in log_text]
    assert "Authorization" not in log_text and "Bearer" not in log_text


# --------------------------------------------------------------------------------------------
# Store: against a model
# Hypothesis runs any mix of posts, imports, repeated imports, seals, reopens, torn tails,
# expiries, deletes and compactions against a list of what should be there.
# --------------------------------------------------------------------------------------------


_VALUES = st.floats(allow_nan=False, allow_infinity=False, width=64)


_META = st.text(max_size=8)
#: A post's commit and branch: none, main's, another branch's (kept apart from main's).
_WHERE = st.sampled_from([("", ""), ("abcdef0", "main"), ("abcdef1", "feature")])


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.path = tempfile.mkdtemp(prefix="perfit-model-")
        self.store = perfit.Store.open(self.path, seal_bytes=1024)
        account, _ = self.store.create_account()
        self.account = account
        self.metrics = [self.store.create_metric(account).id for _ in range(2)]
        #: main's points, as (t, value, metadata, commit, branch); and the other branches'
        self.model: dict[bytes, list[tuple]] = {m: [] for m in self.metrics}
        self.branches: dict[bytes, list[tuple]] = {m: [] for m in self.metrics}
        self.horizon = dict.fromkeys(self.metrics, 0)  #: points before it were expired
        self.deleted: list[bytes] = []

    def _add(self, metric: bytes, rows: list) -> None:
        kept = [r for r in rows if r[0] >= self.horizon[metric]]
        self.model[metric] = sorted(self.model[metric] + kept, key=lambda r: r[0])

    @rule(which=st.integers(0, 1), value=_VALUES, meta=_META, where=_WHERE)
    def post(self, which: int, value: float, meta: str, where: tuple[str, str]) -> None:
        metric = self.metrics[which]
        t = self.store.add_point(metric, value, meta, *where)
        if where[1] == "feature":
            self.branches[metric].append((t, value, meta, *where))
        else:
            self._add(metric, [(t, value, meta, *where)])

    @rule(which=st.integers(0, 1),
          rows=st.lists(st.tuples(st.integers(0, 2_000_000_000 * perfit.US), _VALUES, _META),
                        max_size=30))  # fmt: skip
    def import_points(self, which: int, rows: list) -> None:
        metric = self.metrics[which]
        batch = sorted(rows, key=lambda r: r[0])
        self.store.add_points(
            metric, perfit.PointBatch.of([(t, v, m.encode()) for t, v, m in batch])
        )
        self._add(metric, [(*row, "", "") for row in batch])

    @rule(which=st.integers(0, 1), data=st.data())
    def import_again(self, which: int, data: st.DataObject) -> None:
        """Import stored points (maybe twice over) and new ones: only the new ones are added."""
        metric = self.metrics[which]
        stored = self.model[metric]
        again = data.draw(st.lists(st.sampled_from(stored), max_size=10)) if stored else []
        new = data.draw(st.lists(st.tuples(st.integers(0, 2_000_000_000 * perfit.US), _VALUES,
                                           _META, st.just(""), st.just("")), max_size=5))  # fmt: skip
        rows = sorted([*again, *new], key=lambda r: r[0])
        number = self._origin_number
        batch = perfit.PointBatch.of([(t, v, m.encode(), number(c, b)) for t, v, m, c, b in rows])
        answer = self.store.import_points(metric, batch)
        # As a multiset: each row finds a stored twin at most once.
        have = collections.Counter(stored)
        fresh = []
        for row in rows:
            if have[row]:
                have[row] -= 1
            else:
                fresh.append(row)
        kept = [r for r in fresh if r[0] >= self.horizon[metric]]
        assert answer == (len(kept), len(rows) - len(fresh), len(fresh) - len(kept))
        self._add(metric, kept)

    def _origin_number(self, commit: str, branch: str) -> int:
        return perfit.origin_table().intern(self.store.origin(self.account, commit, branch))

    @rule(which=st.integers(0, 1), cutoff=st.integers(0, 1_700_000_000))
    def expire(self, which: int, cutoff: int) -> None:
        """A keep that expires the points before `cutoff`, then none (all that are left)."""
        metric = self.metrics[which]
        keep = max(perfit._MIN_KEEP, time.time() - cutoff)
        self.store.edit_metric(self.store.metrics[metric], {"keep": keep})
        self.store.edit_metric(self.store.metrics[metric], {"keep": None})
        horizon = self.store.metrics[metric].series.horizon
        assert horizon >= self.horizon[metric]
        self.horizon[metric] = horizon
        self.model[metric] = [r for r in self.model[metric] if r[0] >= horizon]

    @rule(count=st.integers(1, 60))
    def delete_a_metric(self, count: int) -> None:
        """A metric with points, deleted: nothing of it comes back, nothing else changes."""
        doomed = self.store.create_metric(self.account, name=f"doomed {len(self.deleted)}")
        rows = [(i * perfit.US, float(i), b"x") for i in range(count)]
        self.store.add_points(doomed.id, perfit.PointBatch.of(rows))
        self.store.delete_metric(doomed)
        self.deleted.append(doomed.id)

    @rule()
    def compact(self) -> None:
        self.store.compact()

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = perfit.Store.open(self.path, seal_bytes=1024)

    @rule(garbage=st.binary(min_size=1, max_size=40))
    def crash_with_a_torn_tail(self, garbage: bytes) -> None:
        self.store.close()
        log = _files(Path(self.path), ".log")[-1]  # the active one; older ones await sealing
        with open(log, "ab") as f:
            f.write(garbage)
        self.store = perfit.Store.open(self.path, seal_bytes=1024)

    @invariant()
    def matches_the_model(self) -> None:
        for metric in self.metrics:
            main, branches = self.store.metrics[metric].series, self.store.metrics[metric].branches
            assert _series(self.store, metric) == [r[:3] for r in self.model[metric]]
            assert _origins(main) == [r[3:] + r[2:3] for r in self.model[metric]]
            assert [(*r, *o) for r, o in zip(_series_of(branches), _origins(branches))] == [
                (t, v, m, c, b, m) for t, v, m, c, b in self.branches[metric]
            ]
        assert not set(self.deleted) & set(self.store.metrics)
        assert set(self.store.index.names) == {(self.account, "")} - {(self.account, "")}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.path)


TestStoreAgainstAModel = StoreMachine.TestCase


TestStoreAgainstAModel.settings = settings(max_examples=15, stateful_step_count=25, deadline=None)


# --------------------------------------------------------------------------------------------
# Change points
# Detection pinned on fixed series: steps found where they are, outliers and small steps not.
# --------------------------------------------------------------------------------------------


def _ci_series(n: int, steps: list[tuple[int, float]], noise: float, seed: int = 5) -> list[float]:
    """CI-like durations: a level with `noise` relative jitter, 5 % slow outliers, steps."""
    rng = random.Random(seed)
    level, out = 100.0, []
    for i in range(n):
        for at, factor in steps:
            if i == at:
                level *= factor
        value = level * rng.gauss(1, noise)
        out.append(value * rng.uniform(1.3, 2.0) if rng.random() < 0.05 else value)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_a_fresh_step_is_named_after_four_runs_and_marked_provisional(seed: int) -> None:
    """Checked after every run, as CI does: a 15 % step in 2 % noise is a regression once
    four runs of the new level are in, at the run where it started."""
    values = _ci_series(64, [(60, 1.15)], 0.02, seed)
    assert all(c.index != 60 for c in perfit.detect_changes(values[:63])), "three runs: not yet"
    (change,) = perfit.detect_changes(values)
    assert (change.index, change.kind) == (60, "regression")
    metric = perfit.Metric(perfit.new_id(), perfit.new_id(), 0.0)
    metric.series.add(perfit.PointBatch.of([(i * perfit.US, v, b"") for i, v in enumerate(values)]))
    (marked,) = perfit.metric_changes(metric, metric.series.snapshot(), 0.05)
    assert marked.provisional and not marked.accepted


def test_three_slow_runs_in_a_row_are_no_change() -> None:
    values = _ci_series(60, [], 0.02) + [100 * f for f in (1.6, 1.9, 1.4)]
    assert perfit.detect_changes(values) == []


@pytest.mark.parametrize(
    ("steps", "noise", "expected"),
    [
        ([(150, 1.20)], 0.03, [(150, "regression", 0.20)]),
        ([(150, 0.80)], 0.03, [(150, "improvement", -0.20)]),
        (
            [(100, 1.15), (220, 0.90)],
            0.05,
            [(100, "regression", 0.15), (220, "improvement", -0.10)],
        ),
        ([(200, 1.06)], 0.01, [(200, "regression", 0.06)]),
        ([], 0.05, []),
    ],
    ids=["step-up", "step-down", "two-steps", "small-step-low-noise", "quiet"],
)
def test_change_points_are_found_where_the_level_steps(steps, noise, expected):
    found = perfit.detect_changes(_ci_series(300, steps, noise))
    assert len(found) == len(expected), found
    for change, (index, kind, relative) in zip(found, expected):
        assert abs(change.index - index) <= 3
        assert change.kind == kind
        assert change.change == pytest.approx(relative, abs=0.03)


def test_slow_outliers_and_a_last_slow_run_are_not_changes():
    values = _ci_series(300, [], 0.03)
    values[-1] *= 3  # the newest run was slow: one run is not a new level
    for i in range(100, 106):
        values[i] *= 2  # a burst of slow runs on a busy runner
    assert perfit.detect_changes(values) == []


def test_steps_under_the_threshold_are_not_reported_unless_asked():
    values = _ci_series(300, [(150, 1.03)], 0.005)
    assert perfit.detect_changes(values) == []
    (change,) = perfit.detect_changes(values, threshold=0.02)
    assert abs(change.index - 150) <= 3


def test_better_higher_turns_a_rise_into_an_improvement():
    (change,) = perfit.detect_changes(_ci_series(300, [(150, 1.2)], 0.03), better="higher")
    assert change.kind == "improvement"


def _creep(n: int, start: int, runs: int, rise: float, seed: int) -> list[float]:
    """CI-like durations (2 % noise, 5 % slow runs) that grow by `rise` over `runs` runs from
    run `start` (a cache that grows, a dataset that grows), then hold."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        value = 100 * (1 + rise * min(max(i - start, 0), runs) / runs) * rng.gauss(1, 0.02)
        out.append(value * rng.uniform(1.3, 2.0) if rng.random() < 0.05 else value)
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("after", [60, 0], ids=["then-holds", "still-going"])
def test_a_creep_is_one_drift_not_a_staircase(seed: int, after: int) -> None:
    """30 % slower over 120 runs: one regression, from the level before it to the level it
    reached, said to be a drift over about those 120 runs."""
    (change,) = perfit.detect_changes(_creep(60 + 120 + after, 60, 120, 0.30, seed))
    assert (change.kind, change.shape) == ("regression", "drift")
    assert abs(change.index - 60) <= 8 and 100 <= change.runs <= 135
    assert change.before == pytest.approx(100, rel=0.03)
    assert change.after == pytest.approx(130, rel=0.04)
    assert change.change == pytest.approx(0.30, abs=0.04)


@pytest.mark.parametrize("seed", range(4))
def test_a_trend_a_random_walk_and_a_weekly_rhythm_are_no_change(seed: int) -> None:
    """Series whose points follow each other (no level to step from) are not staircases:
    a trend from the first run, a random walk of 1,000 points, a +-8 % weekly rhythm."""
    rng = random.Random(seed)
    trend = [100 + 0.2 * i + rng.gauss(0, 1) for i in range(300)]
    walk = [100.0]
    for _ in range(999):
        walk.append(walk[-1] * (1 + rng.gauss(0, 0.01)))
    weekly = [
        100 * (1 + 0.08 * math.sin(i * 2 * math.pi / 7)) * rng.gauss(1, 0.02) for i in range(200)
    ]
    assert perfit.detect_changes(trend) == []
    assert len(perfit.detect_changes(walk)) <= 1, "the issue's walk of 991 points had 32"
    assert perfit.detect_changes(weekly) == []


def test_a_step_is_a_step_not_a_drift() -> None:
    for seed in range(4):
        (change,) = perfit.detect_changes(_ci_series(300, [(150, 1.2)], 0.03, seed))
        assert (change.shape, change.runs) == ("step", 1)


def test_a_change_stays_put_as_runs_arrive_one_at_a_time() -> None:
    """Checked after every run, as CI does: a step of 10-30 % either way, from 12 to 70 runs
    in, in 2 % noise. Once named, a change point stays named, never sits on a run of the old
    level and never moves by more than 2 runs (before: 12 fast runs then slow ones were named
    at run 12, then 10, then 11, then 12, and an accept made at 11 was lost). (A first level
    under ten runs is not held: the partition keeps ten points a side.)"""
    wrong = []
    replays = 0
    for before in (12, 13, 15, 25, 70):
        for step in (1.1, 1.3, 0.9, 0.7):
            for seed in range(3):
                rng = random.Random(seed * 100 + before)
                xs = [
                    100 * (step if i >= before else 1) * rng.gauss(1, 0.02)
                    for i in range(before + 30)
                ]
                seen = []  # after each run: where the change is, or None
                for n in range(before + 1, len(xs) + 1):
                    found = [
                        c.index for c in perfit.detect_changes(xs[:n]) if c.index > before - 10
                    ]
                    seen.append(found[-1] if found else None)
                named = [at for at in seen if at is not None]
                replays += 1
                gone = not named or None in seen[seen.index(named[0]) :]
                if gone or min(named) < before or max(named) - min(named) > 2:
                    wrong.append((before, step, seed, seen))
    # One of them: two fair runs that both lie two noise SDs low just before a 10 %
    # improvement are its first runs for as long as nothing says otherwise.
    assert len(wrong) <= 1 and replays == 60, wrong


def test_the_alert_record_is_kept_while_points_arrive_not_after_an_admin_speaks(
    tmp_path: Path,
) -> None:
    """GET /a/ follows every CI post: the detector must not run over every metric each time."""
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account, name="m")
        start = (int(time.time()) - 3600) * perfit.US  # within the record's 90 days
        rows = [(start + i * perfit.US, 100.0 if i < 40 else 130.0, b"") for i in range(60)]
        store.add_points(metric.id, perfit.PointBatch.of(rows))
        records, changes = perfit._AlertRecords(), perfit._ChangeCache()
        record = records.get([metric], changes)
        assert record == {"named": 1, "accepted": 0, "dismissed": 0}
        store.add_point(metric.id, 130.0)  # a point arrives: the data changed
        assert records.get([metric], changes) is record, "kept while points arrive"
        (change,) = [c for c in perfit.metric_changes(metric, metric.series.snapshot(), 0.05)
                     if c.kind == "regression"]  # fmt: skip
        store.mark(metric.id, "dismiss", change.t * perfit.US, change.t * perfit.US)
        assert records.get([metric], changes)["dismissed"] == 1, "what an admin says, at once"


def test_what_was_said_of_a_change_binds_within_its_reach(tmp_path: Path) -> None:
    """An accept or a dismissal said a run or two from where the change now sits holds; one
    said of a point further off, or nearer another change, does not."""
    with perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        metric = store.create_metric(account, name="m")
        values = _ci_series(120, [(40, 1.25), (80, 0.8)], 0.01, seed=2)
        store.add_points(
            metric.id, perfit.PointBatch.of([(i * perfit.US, v, b"") for i, v in enumerate(values)])
        )

        def said() -> list[tuple[int, bool, bool]]:
            found = perfit.metric_changes(metric, metric.series.snapshot(), 0.05)
            return [(c.index, c.accepted, c.dismissed) for c in found]

        assert said() == [(40, False, False), (80, False, False)]
        store.mark(metric.id, "accept", 38 * perfit.US, 38 * perfit.US)  # two runs early
        store.mark(metric.id, "dismiss", 86 * perfit.US, 86 * perfit.US)  # six runs late
        assert said() == [(40, True, False), (80, False, False)]
        store.mark(metric.id, "dismiss", 84 * perfit.US, 84 * perfit.US)  # within five
        assert said() == [(40, True, False), (80, False, True)]
        store.mark(metric.id, "accept", 61 * perfit.US, 61 * perfit.US)  # nearer 80, too far
        assert said()[1] == (80, False, True)


def test_the_readmes_regression_numbers_are_the_codes() -> None:
    readme = (HERE / "README.md").read_text()
    section = readme[readme.index("## Regressions") : readme.index("## Pull requests")]
    for said in (
        f"points of the last {perfit._ALERT_DAYS} days (its\nnewest {perfit._BOARD_WINDOW} of them",
        f"within {perfit._MARK_REACH} runs of where it was said",
        f"spans {perfit._DRIFT_MIN_RUNS} runs or more",
        f"while \N{GREEK SMALL LETTER RHO} is over {perfit._MEMORY_FLOOR}",
        f"(and {perfit._MEMORY_SDS:g} of its standard deviations",
        f"(by {perfit._DRIFT_PRICE:g} ln(n) noise variances)",
        f"as close as {perfit._TAIL_MIN} runs to either end",
        f"still under {2 * perfit._CHANGE_MIN_SEGMENT} runs",
        f"named in {perfit._ALERT_DAYS} days",
    ):
        assert said in section, said


def test_detection_takes_milliseconds():
    values = _ci_series(400, [(100, 1.2), (300, 0.85)], 0.04)
    started = time.perf_counter()
    perfit.detect_changes(values)
    assert time.perf_counter() - started < 0.05


# --------------------------------------------------------------------------------------------
# Comparisons
# In process: a PR's results against main's baselines; a suite's shared shift taken out, an
# interval as wide as the data allows, and no verdict the data cannot carry.
# --------------------------------------------------------------------------------------------


def _ci_suite(runs: int, size: int, rng: random.Random) -> list[perfit.Baseline]:
    """Main's runs of a suite as CI makes them: each run's speed shared by every benchmark of
    it (3 %, and one run in ten on a runner 1.5x slow), each benchmark's own noise 1-3 %."""
    noise = [rng.uniform(0.01, 0.03) for _ in range(size)]
    shared = [rng.lognormvariate(0, 0.03) * (1.5 if r % 10 == 4 else 1) for r in range(runs)]
    return [
        perfit.Baseline(
            [(j + 1) * s * rng.lognormvariate(0, noise[j]) for s in shared], list(range(runs))
        )
        for j in range(size)
    ]


def test_a_slow_runner_is_one_shift_not_fifty_regressions_and_one_slow_benchmark_stands_out():
    rng = random.Random(5)
    baselines = _ci_suite(30, 50, rng)
    run = 1.7  # the PR ran on a slow runner; benchmark 7 is 20 % slower besides
    fresh = [
        perfit.Fresh([(j + 1) * run * (1.2 if j == 7 else 1)], b) for j, b in enumerate(baselines)
    ]
    verdicts, shift = perfit.compare_results(fresh)
    assert [j for j, v in enumerate(verdicts) if v.verdict == "regression"] == [7]
    assert verdicts[7].change == pytest.approx(0.2, abs=0.05) and verdicts[7].interval[0] > 0.05
    assert shift.verdict == "inconclusive" and shift.change == pytest.approx(0.7, abs=0.05)
    alone, _ = perfit.compare_results(fresh[:1])
    assert alone[0].verdict == "regression", "alone, a slow runner is not told from slow code"


def test_a_slow_runner_moves_durations_and_rates_but_not_counts():
    """A Go suite with -benchmem: ns/op grow on a slow runner, MB/s fall, B/op stay."""
    rng = random.Random(8)
    times = [
        perfit.Fresh([1.3 * (j + 1)], b, "lower", "s") for j, b in enumerate(_ci_suite(30, 8, rng))
    ]
    rates = [perfit.Fresh([1 / (1.3 * (j + 1))], perfit.Baseline([1 / x for x in b.values], b.times), "higher", "MB/s")
             for j, b in enumerate(_ci_suite(30, 8, random.Random(8)))]  # fmt: skip
    counts = [
        perfit.Fresh([64.0], perfit.Baseline([64.0] * 30, list(range(30))), "lower", "B/op")
    ] * 8
    verdicts, shift = perfit.compare_results([*times, *rates, *counts])
    assert {v.verdict for v in verdicts} == {"same"} and shift.results == 16
    assert shift.change == pytest.approx(0.3, abs=0.05)


def test_most_of_a_suite_slower_is_a_shift_not_the_rest_faster():
    rng = random.Random(9)
    baselines = _ci_suite(30, 10, rng)
    fresh = [perfit.Fresh([(j + 1) * (1.1 if j < 6 else 1.0)], b) for j, b in enumerate(baselines)]
    verdicts, shift = perfit.compare_results(fresh)
    assert "improvement" not in {v.verdict for v in verdicts}, [v.verdict for v in verdicts]
    assert shift.verdict == "inconclusive" and shift.change == pytest.approx(0.1, abs=0.03)


def test_no_verdict_without_the_noise_and_an_exact_metric_needs_none():
    two = perfit.Baseline([10.0, 10.0], [1, 2])
    assert perfit.compare_results([perfit.Fresh([11.0], two)])[0][0].verdict == "inconclusive"
    exact = perfit.Baseline([3.0] * 5, list(range(5)))  # allocs/op: the same every run
    (more,), _ = perfit.compare_results([perfit.Fresh([4.0], exact, "lower", "allocs/op")])
    assert (more.verdict, more.change) == ("regression", pytest.approx(1 / 3))
    (none,), _ = perfit.compare_results([perfit.Fresh([4.0], None)])
    assert (none.verdict, none.median, none.interval) == ("new", None, None)
    negative = perfit.Baseline([-10.0, -10.5, -9.5, -10.2], [1, 2, 3, 4])  # not a ratio: relative
    (found,), _ = perfit.compare_results([perfit.Fresh([-5.0], negative, "higher", "")])
    assert found.verdict == "improvement" and found.change == pytest.approx(0.5, abs=0.03)
    zero = perfit.Baseline([0.0] * 5, list(range(5)))  # 0 allocs/op on main
    verdicts, _ = perfit.compare_results([perfit.Fresh([1.0], zero), perfit.Fresh([0.0], zero)])
    assert [(v.verdict, v.change) for v in verdicts] == [("regression", None), ("same", 0.0)]
    identical = perfit.Fresh([10.0], perfit.Baseline([10.0] * 5, list(range(5))))
    assert perfit.compare_results([identical], threshold=0)[0][0].verdict == "same"


def test_huge_values_give_finite_json_not_an_overflow():
    tiny = perfit.Baseline([1e-9 * (1 + 0.01 * (i % 3)) for i in range(30)], list(range(30)))
    verdicts, _ = perfit.compare_results([perfit.Fresh([1e308, 1e308], tiny)])
    doc = verdicts[0].to_json()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["value"] == 1e308 and doc["change"] is None and doc["verdict"] == "regression"


@pytest.mark.parametrize(
    ("p", "freedom", "table"),
    [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776), (0.975, 29, 2.045),
     (0.999, 9, 4.297), (0.99, 5, 3.365), (0.9996, 29, 3.77)],
)  # fmt: skip
def test_students_t_quantiles_match_the_table(p: float, freedom: int, table: float) -> None:
    assert perfit._t_quantile(p, freedom) == pytest.approx(table, rel=0.01)


# --------------------------------------------------------------------------------------------
# Charts
# In process: ticks people read, lines and markers, clamping, reduction, overlays, badges.
# --------------------------------------------------------------------------------------------


SVG = "{http://www.w3.org/2000/svg}"


def _texts(svg):
    return [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_value_ticks_are_round_1_2_5_steps():
    assert perfit.nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert perfit.nice_ticks(0.013, 0.051) == [0.02, 0.03, 0.04, 0.05]
    assert perfit.nice_ticks(55, 80) == [55, 60, 65, 70, 75, 80]


@pytest.mark.parametrize(
    ("span", "example"),
    [
        (90, r"^\d\d:\d\d:\d\d$"),  # seconds within a minute or two
        (3 * 3600, r"^\d\d:\d\d$"),  # hours of a day
        (30 * 86400, r"^[A-Z][a-z]{2} \d\d$"),  # days of a month
        (300 * 86400, r"^[A-Z][a-z]{2} \d{4}$"),  # months of a year
        (12 * 365 * 86400, r"^\d{4}$"),  # years
    ],
)
def test_time_ticks_fit_the_span(span, example):
    start = 1_790_000_000
    ticks = perfit.time_ticks(start, start + span)
    assert 2 <= len(ticks) <= 8
    assert all(start <= t <= start + span for t, _ in ticks)
    assert all(re.match(example, label) for _, label in ticks), ticks


def _metric(points, unit="s", name="build"):
    """A metric holding (unix seconds, value, metadata) points, for the chart functions."""
    metric = perfit.Metric(perfit.new_id(), perfit.new_id(), 0.0, name=name, unit=unit)
    for t, v, meta in points:
        metric.series.add_one(round(t * perfit.US), v, meta.encode())
    return metric


def _chart(metrics, **options):
    return perfit.chart_document(metrics, perfit.ChartOptions(**options))


def test_chart_draws_a_line_with_a_marker_and_a_tooltip_per_point():
    t0 = 1_790_000_000
    metric = _metric(
        [(t0 + 3600 * i, v, m) for i, (v, m) in enumerate(zip([3, 1, 4, 1, 95], "ab-de"))]
    )
    svg = _chart([metric], title="build")
    root = ET.fromstring(svg)
    (line,) = root.iter(f"{SVG}polyline")
    assert len(line.get("points").split()) == 5
    circles = list(root.iter(f"{SVG}circle"))
    assert len(circles) == 5
    tips = [c.find(f"{SVG}title").text for c in circles]
    assert tips[0] == "2026-09-21T14:13:20Z\n3 s\na"
    assert tips[4].endswith("1m 35s\ne"), "seconds are shown as durations"
    assert "build" in _texts(svg) and "duration" in _texts(svg)


def test_points_beyond_min_and_max_sit_on_the_edge_and_leave_the_line():
    metric = _metric(
        [(1_790_000_000 + 60 * i, v, "") for i, v in enumerate([5, 50, 6, -3])], unit=""
    )
    root = ET.fromstring(_chart([metric], min=0, max=10))
    (line,) = root.iter(f"{SVG}polyline")
    assert len(line.get("points").split()) == 2
    clamped = [c for c in root.iter(f"{SVG}circle") if "clamped" in c.get("class")]
    top = perfit.CHART_MARGIN["top"]
    bottom = perfit.CHART_HEIGHT - perfit.CHART_MARGIN["bottom"]
    assert sorted(float(c.get("cy")) for c in clamped) == [top, bottom]
    assert clamped[0].find(f"{SVG}title").text.endswith("\n50")


def test_an_empty_chart_says_so():
    svg = _chart([_metric([])], title="nothing")
    assert "No data points yet" in _texts(svg)


def test_a_huge_series_is_reduced_to_the_pixels_but_keeps_its_spikes():
    t0 = 1_790_000_000
    points = [(t0 + 60 * i, 100 + (i % 7), "") for i in range(200_000)]
    points[123_456] = (points[123_456][0], 999.0, "")  # one slow run among 200,000
    svg = _chart([_metric(points)])
    assert len(svg.encode()) < 250_000
    root = ET.fromstring(svg)
    tips = [c.find(f"{SVG}title").text for c in root.iter(f"{SVG}circle")]
    assert len(tips) < 2 * 800
    assert any(tip.endswith("16m 39s") for tip in tips), "the spike was smoothed away"
    assert any("200,000 points, reduced to" in text for text in _texts(svg))


def test_overlay_gives_each_metric_its_colour_and_a_legend_entry():
    t0 = 1_790_000_000
    metrics = [
        _metric([(t0 + 60 * i, 10 * n + i, "") for i in range(5)], name=f"job {n}")
        for n in range(3)
    ]
    root = ET.fromstring(_chart(metrics))
    lines = list(root.iter(f"{SVG}polyline"))
    assert [line.get("class") for line in lines] == ["line s0", "line s1", "line s2"]
    assert {"job 0", "job 1", "job 2"} <= set(_texts(ET.tostring(root, encoding="unicode")))


def test_overlay_marks_each_metrics_changes_in_its_colour():
    t0 = 1_790_000_000
    rng = random.Random(3)
    steps = [(40, 1.3), (70, 0.7)]  # the two metrics step at different runs
    metrics = [
        _metric(
            [
                (t0 + 60 * i, (100 if i < at else 100 * factor) * rng.gauss(1, 0.01), "")
                for i in range(100)
            ],
            name=f"job {n}",
        )
        for n, (at, factor) in enumerate(steps)
    ]
    root = ET.fromstring(_chart(metrics))
    marks = [g for g in root.iter(f"{SVG}g") if "change" in g.get("class", "").split()]
    assert [(g.get("class"), g.get("data-kind")) for g in marks] == [
        ("change s0", "regression"),
        ("change s1", "improvement"),
    ]
    tips = [g.find(f"{SVG}title").text for g in marks]
    assert tips[0].startswith("job 0: regression of +30 %") and tips[1].startswith("job 1: ")


def test_a_duration_axis_from_zero_reads_0_not_0_ms():
    t0 = 1_790_000_000
    chart = _chart([_metric([(t0 + 60 * i, 60.0 + i, "") for i in range(5)])], min=0)
    labels = _texts(chart)
    assert "0" in labels and "1m" in labels, labels
    assert "0 ms" not in labels and "0 s" not in labels
    assert perfit.format_value(0, "s") == "0 s"  # a value (a badge) still says its unit


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.35, "350 ms"), (12.5, "12.5 s"), (90, "1m 30s"), (3600, "1h"), (7500, "2h 5m"),
     (273_600, "3d 4h"), (2.5e-6, "2.5 µs"), (4e-8, "40 ns")],
)  # fmt: skip
def test_durations_are_shown_as_durations(seconds, shown):
    assert perfit.format_value(seconds, "s") == shown
    assert perfit.format_value(seconds * 1000, "ms") == shown
    assert perfit.format_value(seconds * 1e9, "ns") == shown


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [(63_603_957, "ops/sec", "63.6M ops/sec"), (24_780_800, "B", "24.78 MB"), (9999, "x", "9999 x"),
     (999_999, "ops", "1M ops"), (42, "", "42"), (-2.5e6, "items", "-2.5M items"), (1e30, "x", "1e+30 x")],
)  # fmt: skip
def test_big_values_read_with_an_si_prefix_as_harnesses_print_them(value, unit, shown):
    """benchmark.js's 63,603,957 ops/sec was "6.3604e+07 ops/sec" on the board."""
    assert perfit.format_value(value, unit) == shown


def test_duration_axis_ticks_fall_on_whole_minutes():
    ticks = perfit.value_ticks(0, 1000, "s")
    assert 3 <= len(ticks) <= 8
    assert all(t % 60 == 0 for t in ticks), ticks
    assert perfit.value_ticks(0, 10, "") == [0, 2, 4, 6, 8, 10]


@pytest.mark.parametrize(
    ("values", "better", "state"),
    [([10] * 10 + [10.2], "lower", "good"), ([10] * 10 + [11.5], "lower", "warn"),
     ([10] * 10 + [15], "lower", "bad"), ([10] * 10 + [15], "higher", "good"),
     ([10] * 10 + [7], "higher", "bad"), ([], "lower", "none"), ([5], "lower", "neutral")],
)  # fmt: skip
def test_badge_colour_compares_the_latest_value_with_the_recent_median(values, better, state):
    assert perfit.badge_state(values, better) == state


# --------------------------------------------------------------------------------------------
# Web: request helpers
# Rate limits, client addresses and bodies: per address, behind proxies, chunked, too large.
# --------------------------------------------------------------------------------------------


def test_rate_limiter_allows_a_burst_then_refills():
    limiter = perfit.RateLimiter(rate=2, burst=4)
    assert [limiter.wait_time("a", now=100.0) for _ in range(4)] == [0, 0, 0, 0]
    assert limiter.wait_time("a", now=100.0) == pytest.approx(0.5)
    assert limiter.wait_time("b", now=100.0) == 0  # another address has its own bucket
    assert limiter.wait_time("a", now=101.0) == 0  # refilled at 2 per second


def test_rate_limiter_memory_stays_bounded():
    limiter = perfit.RateLimiter(rate=1, burst=1, max_clients=100)
    for i in range(10_000):
        limiter.wait_time(f"10.0.{i // 256}.{i % 256}", now=0.0)
    assert len(limiter._buckets) == 100


@pytest.mark.parametrize(
    ("trust", "forwarded", "expected"),
    [
        (0, "6.6.6.6", "127.0.0.1"),  # no proxy trusted: the header is the client's to forge
        (1, "6.6.6.6, 1.2.3.4", "1.2.3.4"),  # the entry our proxy appended
        (2, "6.6.6.6, 1.2.3.4, 10.0.0.2", "1.2.3.4"),
        (1, "", "127.0.0.1"),
    ],
)
def test_client_address_believes_only_trusted_proxies(trust, forwarded, expected):
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": forwarded}
    assert perfit.client_address(environ, trust) == expected


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    # A refill of one a second: a busy machine's slow requests do not refill the bucket
    # between the burst and the checks after it.
    with running_server(tmp_path, "--rate-limit", "1") as srv:  # bursts of 2
        answers = [http("GET", f"{srv.url}/healthz") for _ in range(6)]
        assert answers[0][0] == 200
        limited = [a for a in answers if a[0] == 429]
        assert limited
        assert_error(limited[0], 429)
        assert int(limited[0][1]["Retry-After"]) >= 1
        # Without --trust-proxy, a forged X-Forwarded-For does not buy a fresh budget.
        forged = http("GET", f"{srv.url}/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
        assert forged[0] == 429
        # The bucket refills at one a second: within a few there is room again.
        deadline = time.monotonic() + 3
        while http("GET", f"{srv.url}/healthz")[0] == 429:
            assert time.monotonic() < deadline, "the rate limit never let up"


def test_rate_limit_counts_each_address_behind_a_trusted_proxy(tmp_path: Path) -> None:
    with running_server(tmp_path, "--rate-limit", "1", "--trust-proxy", "1") as srv:
        busy = {"X-Forwarded-For": "198.51.100.1"}
        answers = [http("GET", f"{srv.url}/", headers=busy)[0] for _ in range(10)]
        assert 429 in answers
        quiet = {"X-Forwarded-For": "198.51.100.2"}
        assert http("GET", f"{srv.url}/", headers=quiet)[0] == 200


def test_failed_authentications_are_limited_even_without_a_rate_limit(tmp_path: Path) -> None:
    with running_server(tmp_path, "--rate-limit", "0") as srv:
        statuses = []
        for _ in range(200):
            answer = http("PUT", f"{srv.url}/a/", token=random_token())
            statuses.append(answer[0])
            if answer[0] == 429:
                assert_error(answer, 429)
                assert answer[1].get("Retry-After", "").strip()
                break
        assert statuses[0] == 401
        assert statuses[-1] == 429, f"no 429 after {len(statuses)} failed authentications"


def test_a_rate_limit_under_one_per_second_still_serves(tmp_path: Path) -> None:
    with running_server(tmp_path, "--rate-limit", "0.4") as srv:
        assert http("GET", f"{srv.url}/healthz")[0] == 200
        assert http("GET", f"{srv.url}/healthz")[0] == 429


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def _raw_request(url: str, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read the answer until the server closes."""
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def test_a_chunked_body_is_read_and_stored(url: str, account: Account, metric: str) -> None:
    body = b'{"value": 42.5, "metadata": "chunked"}'
    request = (
        f"POST /m/{metric} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {account.post}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:])
    answer = _raw_request(url, request)
    assert answer.startswith(b"HTTP/1.0 200"), answer[:200]
    assert points(url, metric) == [{"t": points(url, metric)[0]["t"], "v": 42.5, "m": "chunked"}]


def test_a_huge_chunked_body_is_413_and_memory_stays_flat(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin)
        before = _rss(srv.proc.pid)
        host, port = urllib.parse.urlsplit(srv.url).netloc.rsplit(":", 1)
        head = (
            f"POST /m/{mid}/points HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acc.admin}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b"[" * (1 << 20))
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head)
            with contextlib.suppress(OSError):
                for _ in range(64):  # 64 MiB, if the server kept reading
                    sock.sendall(chunk)
            answer = b""
            with contextlib.suppress(OSError):
                answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.0 413"), answer[:200]
        assert _rss(srv.proc.pid) - before < 16 << 20, "the server buffered the body"
        assert values(srv.url, mid) == []


def test_a_64_mib_content_length_is_refused_before_the_body_is_read(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin)
        before = _rss(srv.proc.pid)
        head = (
            f"POST /m/{mid} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acc.post}\r\n"
            f"Content-Length: {64 << 20}\r\n\r\n"
        ).encode()
        answer = _raw_request(srv.url, head + b"x" * (1 << 20), timeout=30)
        assert b" 413 " in answer.split(b"\r\n", 1)[0], answer[:200]
        assert _rss(srv.proc.pid) - before < 16 << 20


# --------------------------------------------------------------------------------------------
# Web: who may do what
# Every route with every kind of caller; accounts, tokens and metrics.
# --------------------------------------------------------------------------------------------


ROUTES = {
    "PUT /a/": ("PUT", "/a/", None),
    "PUT /t/": ("PUT", "/t/", {"type": "post"}),
    "GET /a/": ("GET", "/a/", None),
    "PUT /b/": ("PUT", "/b/", None),
    "PATCH /a/": ("PATCH", "/a/", {"webhook": None}),
    "PUT /m/": ("PUT", "/m/", {"unit": "s"}),
    "POST /m/ID": ("POST", "/m/{metric}", {"value": 0}),
    "POST /r/": ("POST", "/r/", {"points": [{"name": "auth-run", "value": 0}]}),
    "POST /m/ID/compare": ("POST", "/m/{metric}/compare", {"values": [1]}),
    "POST /m/ID/exclude": ("POST", "/m/{metric}/exclude", {"t": 1}),
    "POST /m/ID/include": ("POST", "/m/{metric}/include", {"t": 1}),
    "POST /m/ID/points": ("POST", "/m/{metric}/points", [{"t": 0, "v": 0}]),
    "GET /m/ID": ("GET", "/m/{metric}", None),
    "GET /m/ID/svg": ("GET", "/m/{metric}/svg", None),
    "GET /m/ID.svg": ("GET", "/m/{metric}.svg", None),
    "GET /m/ID/json": ("GET", "/m/{metric}/json", None),
    "GET /m/ID/csv": ("GET", "/m/{metric}/csv", None),
    "GET /m/ID/badge.svg": ("GET", "/m/{metric}/badge.svg", None),
    "GET /m/ID/changes": ("GET", "/m/{metric}/changes", None),
    "GET /openapi.json": ("GET", "/openapi.json", None),
    "GET /m/?metric-id": ("GET", "/m/?metric-id={metric}", None),
    "GET /": ("GET", "/", None),
    "GET /healthz": ("GET", "/healthz", None),
    "GET /b/BOARD_ID": ("GET", "/b/{board}", None),
    "GET /b/BOARD_ID/json": ("GET", "/b/{board}/json", None),
    "GET /b/BOARD_ID/metrics": ("GET", "/b/{board}/metrics", None),
    "GET /m/ID/metrics": ("GET", "/m/{metric}/metrics", None),
    "GET /t/": ("GET", "/t/", None),
    # A token and a metric of their own, made for the case: an allowed one removes them.
    "DELETE /t/TOKEN_ID": ("DELETE", "/t/{token_id}", None),
    "PATCH /m/ID": ("PATCH", "/m/{metric}", {"description": "patched"}),
    "DELETE /m/ID": ("DELETE", "/m/{doomed}", None),
}


CALLERS = ["root", "admin-own", "post-own", "admin-other", "post-other"]


UNAUTHENTICATED = ["none", "unknown", "garbage", "not-bearer", "empty-bearer"]


EXPECTED = {
    "PUT /a/": {"root": 200, "admin-own": 403, "post-own": 403, "admin-other": 403, "post-other": 403},
    "PUT /t/": {"root": 403, "admin-own": 200, "post-own": 403, "admin-other": 200, "post-other": 403},
    "PUT /m/": {"root": 403, "admin-own": 200, "post-own": 403, "admin-other": 200, "post-other": 403},
    "GET /a/": {"root": 403, "admin-own": 200, "post-own": 200, "admin-other": 200, "post-other": 200},
    "PUT /b/": {"root": 403, "admin-own": 200, "post-own": 403, "admin-other": 200, "post-other": 403},
    "PATCH /a/": {"root": 403, "admin-own": 200, "post-own": 403, "admin-other": 200, "post-other": 403},
    # A run goes to the token's own account, whichever that is.
    "POST /r/": {"root": 403, "admin-own": 200, "post-own": 200, "admin-other": 200, "post-other": 200},
    "POST /m/ID": {"root": 403, "admin-own": 200, "post-own": 200, "admin-other": 403, "post-other": 403},
    "POST /m/ID/points": {"root": 403, "admin-own": 200, "post-own": 403, "admin-other": 403,
                          "post-other": 403},
    # A metric id is a read capability: reads ignore whatever token comes along, even a bad one.
    **{route: dict.fromkeys([*CALLERS, *UNAUTHENTICATED], 200)
       for route in ROUTES if route.startswith("GET") and route not in ("GET /m/?metric-id", "GET /a/", "GET /t/")},
    # Listing an account's tokens, and revoking one: its admins only.
    "GET /t/": {"root": 403, "admin-own": 200, "post-own": 403, "admin-other": 200, "post-other": 403},
    "DELETE /t/TOKEN_ID": {"root": 403, "admin-own": 200, "post-own": 403, "admin-other": 404,
                           "post-other": 403},
    "GET /m/?metric-id": dict.fromkeys([*CALLERS, *UNAUTHENTICATED], 303),
    **{
        route: {"root": 403, "admin-own": 200, "post-own": 403, "admin-other": 403, "post-other": 403}
        for route in ("POST /m/ID/exclude", "POST /m/ID/include", "PATCH /m/ID", "DELETE /m/ID")
    },
    # Comparing reads the metric and stores nothing: anyone with the id, as for reads.
    "POST /m/ID/compare": dict.fromkeys([*CALLERS, *UNAUTHENTICATED], 200),
}  # fmt: skip


AUTH_CASES = [
    (route, caller, expected.get(caller, 401))
    for route, expected in EXPECTED.items()
    for caller in dict.fromkeys([*expected, *UNAUTHENTICATED])
]


@pytest.fixture(scope="module")
def auth_metric(url: str, shared_account: Account) -> str:
    return new_metric(url, shared_account.admin, name="auth")


@pytest.fixture(scope="module")
def callers(shared_account: Account, shared_other: Account) -> dict[str, dict[str, str]]:
    account, other = shared_account, shared_other
    bearer = {
        "root": ROOT,
        "admin-own": account.admin,
        "post-own": account.post,
        "admin-other": other.admin,
        "post-other": other.post,
        "unknown": random_token(),
        "garbage": "not a token!!",
    }
    headers = {name: {"Authorization": f"Bearer {token}"} for name, token in bearer.items()}
    headers["none"] = {}
    headers["not-bearer"] = {"Authorization": f"Token {account.admin}"}
    headers["empty-bearer"] = {"Authorization": "Bearer "}
    return headers


@pytest.mark.parametrize(("route", "caller", "expected"), AUTH_CASES)
def test_authorization_table(
    url: str,
    auth_metric: str,
    shared_account: Account,
    callers: dict[str, dict[str, str]],
    route: str,
    caller: str,
    expected: int,
) -> None:
    method, path, body = ROUTES[route]
    value = secrets.randbelow(10**9) + 0.5
    if route == "POST /m/ID":
        body = {"value": value}
    elif route == "POST /m/ID/points":
        body = [{"t": int(time.time()) - 60, "v": value}]
    # Each case comes from its own address (see the `server` fixture).
    n = AUTH_CASES.index((route, caller, expected))
    headers = {**callers[caller], "X-Forwarded-For": f"10.1.{n // 200}.{n % 200 + 1}"}
    board = doomed = token_id = ""
    if "{board}" in path:  # looked up now: the PUT /b/ cases replace it
        board = ok_json("GET", f"{url}/a/", token=shared_account.admin)["board_id"]
    if "{doomed}" in path:
        doomed = new_metric(url, shared_account.admin)
    if "{token_id}" in path:
        made = ok_json("PUT", f"{url}/t/", body={"type": "post"}, token=shared_account.admin)
        token_id = made["token_id"]
    filled = path.format(metric=auth_metric, board=board, doomed=doomed, token_id=token_id)
    answer = http(method, url + filled, body=body, headers=headers)
    if expected in (200, 303):
        assert answer[0] == expected, answer
        if answer[1].get("Content-Type", "").startswith("application/json"):
            json.loads(answer[2])
    else:
        assert_error(answer, expected)
    if route in ("POST /m/ID", "POST /m/ID/points"):
        assert (value in values(url, auth_metric)) == (expected == 200), "stored iff allowed"
    for secret in (ROOT, *(h.get("Authorization", "")[7:] for h in callers.values())):
        if len(secret) > 20:
            assert secret.encode() not in answer[2], "a route gave away a token"


def test_the_readmes_api_table_says_who_may_call_each_route_as_the_route_table_does() -> None:
    """Every route is in the README's HTTP API table, with the token types its entry needs."""
    readme = (HERE / "README.md").read_text()
    api = readme[readme.index("## HTTP API") : readme.index("### Errors")]
    said = {}  # (method, OpenAPI path) -> the words of the "who" column
    for row in re.findall(r"^\| (`[A-Z]+ /.*?) \| (.*?) \|", api, flags=re.M):
        for method, path in re.findall(r"`([A-Z]+) (/[^`?]*)", row[0]):
            path = re.sub(
                r"/(m/(ID|A,B,C)|b/BOARD_ID|t/TOKEN_ID)", lambda m: m[0][:3] + "{id}", path
            )
            said[(method, path)] = set(re.findall(r"\b(root|admin|post|anyone)\b", row[1]))
    for route in perfit.ROUTES:
        key = (route.method, re.sub(r"<[^>]+>", "{id}", route.rule))
        assert key in said, f"{key} is not in the README's HTTP API table"
        assert said[key] == (set(route.auth) or {"anyone"}), key


def test_new_ids_and_tokens_are_well_formed_and_unique(url: str, account: Account) -> None:
    accounts = [ok_json("PUT", f"{url}/a/", token=ROOT) for _ in range(2)]
    tokens = [ok_json("PUT", f"{url}/t/", body={}, token=account.admin) for _ in range(2)]
    metrics = [ok_json("PUT", f"{url}/m/", token=account.admin) for _ in range(2)]
    for made in accounts + tokens:
        assert ID_RE.match(made["account_id"])
        assert TOKEN_RE.match(made["access_token"])
    for made in metrics:
        assert ID_RE.match(made["metric_id"])
    assert len({a["account_id"] for a in accounts}) == 2
    assert len({t["access_token"] for t in accounts + tokens}) == 4
    assert len({m["metric_id"] for m in metrics}) == 2


def test_admin_creates_tokens_only_for_its_own_account(
    url: str, account: Account, other: Account
) -> None:
    made = ok_json("PUT", f"{url}/t/", body={"type": "post"}, token=other.admin)
    assert made["account_id"] == other.id
    mine = new_metric(url, account.admin)
    theirs = new_metric(url, other.admin)
    assert post_point(url, theirs, made["access_token"], 1)[0] == 200
    assert_error(post_point(url, mine, made["access_token"], 1), 403)


def test_token_without_type_is_a_post_token(url: str, account: Account, metric: str) -> None:
    for kwargs in ({}, {"raw": b""}, {"body": {}}):
        made = ok_json("PUT", f"{url}/t/", token=account.admin, **kwargs)
        assert made["account_id"] == account.id
        assert post_point(url, metric, made["access_token"], 1)[0] == 200
        assert_error(http("PUT", f"{url}/m/", token=made["access_token"]), 403)
        assert_error(http("PUT", f"{url}/t/", token=made["access_token"]), 403)


def test_admin_token_made_by_an_admin_can_create_metrics_and_tokens(
    url: str, account: Account
) -> None:
    made = ok_json("PUT", f"{url}/t/", body={"type": "admin"}, token=account.admin)
    assert made["account_id"] == account.id
    mid = new_metric(url, made["access_token"], name="by second admin")
    assert post_point(url, mid, account.post, 2)[0] == 200
    assert post_point(url, mid, made["access_token"], 3)[0] == 200
    assert ok_json("PUT", f"{url}/t/", body={"type": "post"}, token=made["access_token"])


def test_post_token_cannot_create_tokens(url: str, account: Account) -> None:
    for body in ({"type": "post"}, {"type": "admin"}):
        assert_error(http("PUT", f"{url}/t/", body=body, token=account.post), 403)


@pytest.mark.parametrize("kind", ["root", "superuser", "", 5])
def test_token_of_a_bad_type_is_refused(url: str, account: Account, kind: object) -> None:
    status, _, body = http("PUT", f"{url}/t/", body={"type": kind}, token=account.admin)
    assert status in (400, 403), body
    assert "access_token" not in json.loads(body)


def test_new_metric_echoes_its_fields(url: str, account: Account) -> None:
    fields = {"name": "build time", "unit": "s", "description": "make all", "better": "higher"}
    made = ok_json("PUT", f"{url}/m/", body=fields, token=account.admin)
    assert ID_RE.match(made["metric_id"])
    for key, value in fields.items():
        assert made[key] == value


@pytest.mark.parametrize(
    "raw",
    [
        '{"better": "sideways"}',
        '{"name": 5}',
        '{"unit": ["s"]}',
        '{"colour": "red"}',
        "{name: 1}",
        "[]",
    ],
)
def test_bad_metric_fields_are_refused(url: str, account: Account, raw: str) -> None:
    assert_error(http("PUT", f"{url}/m/", raw=raw, token=account.admin), 400)


# --------------------------------------------------------------------------------------------
# Web: posting and importing
# Points posted live and imported with their own times; what is refused stores nothing.
# --------------------------------------------------------------------------------------------


def test_posted_point_reads_back_with_its_time(url: str, account: Account, metric: str) -> None:
    before = int(time.time())
    status, _, body = post_point(url, metric, account.post, 12.25, "abc123")
    after = int(time.time())
    assert status == 200
    answer = json.loads(body)
    assert isinstance(answer["t"], int)
    assert not isinstance(answer["t"], bool)
    assert before - 1 <= answer["t"] <= after + 1
    assert points(url, metric) == [{"t": answer["t"], "v": 12.25, "m": "abc123"}]


def test_points_come_back_in_arrival_order(url: str, account: Account) -> None:
    metric = new_metric(url, account.admin, name="score")  # no time: it may go below 0
    sent = [3, 1, 2, -4.5, 0, 1e300, 7]
    for value in sent:
        assert post_point(url, metric, account.admin, value)[0] == 200
    got = points(url, metric)
    assert [p["v"] for p in got] == sent
    times = [p["t"] for p in got]
    assert times == sorted(times)


def test_empty_metadata_is_left_out(url: str, account: Account, metric: str) -> None:
    assert post_point(url, metric, account.post, 1)[0] == 200
    assert post_point(url, metric, account.post, 2, "")[0] == 200
    assert [set(p) for p in points(url, metric)] == [{"t", "v"}, {"t", "v"}]


@pytest.mark.parametrize(
    "metadata",
    ["x" * 256, "é" * 128, "é" * 100, "ünïcødé ✓ 🚀", "https://ci.example.com/job/1?a=b&c=d"],
)
def test_metadata_up_to_256_bytes_is_kept_exactly(
    url: str, account: Account, metric: str, metadata: str
) -> None:
    assert post_point(url, metric, account.post, 1, metadata)[0] == 200
    assert [p["m"] for p in points(url, metric)] == [metadata]


BAD_POSTS = {
    "NaN": '{"value": NaN}',
    "Infinity": '{"value": Infinity}',
    "-Infinity": '{"value": -Infinity}',
    "overflow": '{"value": 1e999}',
    "string": '{"value": "1.5"}',
    "bool": '{"value": true}',
    "null": '{"value": null}',
    "list": '{"value": [1]}',
    "missing value": '{"metadata": "x"}',
    "unknown field": '{"value": 1, "colour": "red"}',
    "metadata not a string": '{"value": 1, "metadata": 5}',
    "metadata 257 bytes": json.dumps({"value": 1, "metadata": "x" * 257}),
    "metadata 258 bytes in 129 chars": json.dumps({"value": 1, "metadata": "é" * 129}),
    "malformed": "{value: 1}",
    "truncated": '{"value": 1',
    "empty": "",
    "array": "[1]",
    "number": "1",
    "not utf-8": b'{"value": 1, "metadata": "\xff\xfe"}',
}


@pytest.mark.parametrize("raw", list(BAD_POSTS.values()), ids=list(BAD_POSTS))
def test_bad_post_is_400_and_stores_nothing(
    url: str, account: Account, metric: str, raw: str | bytes
) -> None:
    assert_error(http("POST", f"{url}/m/{metric}", raw=raw, token=account.post), 400)
    assert points(url, metric) == []


def test_body_over_64_kib_is_413_and_stores_nothing(
    url: str, account: Account, metric: str
) -> None:
    raw = json.dumps({"value": 1, "metadata": "x" * (70 * 1024)})
    assert_error(http("POST", f"{url}/m/{metric}", raw=raw, token=account.post), 413)
    assert points(url, metric) == []


def test_body_just_under_64_kib_is_accepted(url: str, account: Account, metric: str) -> None:
    raw = '{"value": 1' + " " * (60 * 1024) + "}"
    assert http("POST", f"{url}/m/{metric}", raw=raw, token=account.post)[0] == 200
    assert values(url, metric) == [1]


@pytest.mark.parametrize(
    "metric_unit, sent, unit, stored",
    [
        ("ms", 1.5, "s", 1500.0),
        ("s", 250, "ms", 0.25),
        ("ns", 2, "us", 2000.0),
        ("min", 90, "s", 1.5),
        ("s", 1.234567, "s", 1.234567),
        ("ms", 1.234567, "s", 1234.567),  # no float noise: not 1234.5670000000002
        ("", 1.5, "s", 1.5),  # a metric without a unit takes the value as it comes
        ("MB", 3.0, "MB", 3.0),
    ],
)
def test_a_value_posted_with_its_unit_is_stored_in_the_metrics_unit(
    url: str, account: Account, metric_unit: str, sent: float, unit: str, stored: float
) -> None:
    mid = new_metric(url, account.admin, unit=metric_unit)
    body = {"value": sent, "unit": unit}
    assert http("POST", f"{url}/m/{mid}", body=body, token=account.post)[0] == 200
    assert values(url, mid) == [stored]


@pytest.mark.parametrize("metric_unit, unit", [("MB", "s"), ("ms", "MB"), ("ms", "parsecs")])
def test_a_unit_that_does_not_convert_is_400_and_stores_nothing(
    url: str, account: Account, metric_unit: str, unit: str
) -> None:
    mid = new_metric(url, account.admin, unit=metric_unit)
    answer = http("POST", f"{url}/m/{mid}", body={"value": 1, "unit": unit}, token=account.post)
    assert "unit" in assert_error(answer, 400)
    assert points(url, mid) == []


@pytest.mark.parametrize("target", ["well-formed", "nope", "D" * 22])
def test_post_to_an_unknown_metric_is_404(url: str, account: Account, target: str) -> None:
    if target == "well-formed":
        target = unknown_id()
    assert_error(post_point(url, target, account.admin, 1), 404)


def test_bulk_import_comes_back_in_time_order_ties_in_sent_order(
    url: str, account: Account, metric: str
) -> None:
    now = int(time.time())
    assert post_point(url, metric, account.post, 9.0)[0] == 200  # a live point, newest
    sent = [
        {"t": now - 3600, "v": 2.0},
        {"t": now - 7200, "v": 1.0, "m": "first"},
        {"t": now - 3600, "v": 3.0},
    ]
    answer = ok_json("POST", f"{url}/m/{metric}/points", body=sent, token=account.admin)
    assert answer == {"added": 3, "existing": 0}
    got = points(url, metric)
    assert [p["v"] for p in got] == [1.0, 2.0, 3.0, 9.0]
    assert got[0] == {"t": now - 7200, "v": 1.0, "m": "first"}


def test_an_import_as_columns_is_the_same_points(url: str, account: Account) -> None:
    now = int(time.time())
    as_rows, as_columns = new_metric(url, account.admin), new_metric(url, account.admin)
    rows = [
        {"t": now - 60, "v": 2.5, "m": "b"},
        {"t": now - 120, "v": 1, "m": "a"},
        {"t": now - 60, "v": 3},
    ]
    columns = {
        "t": [r["t"] for r in rows],
        "v": [r["v"] for r in rows],
        "m": [r.get("m", "") for r in rows],
    }
    for mid, body in ((as_rows, rows), (as_columns, columns)):
        assert (
            ok_json("POST", f"{url}/m/{mid}/points", body=body, token=account.admin)["added"] == 3
        )
    assert points(url, as_columns) == points(url, as_rows)
    assert [p["v"] for p in points(url, as_columns)] == [1, 2.5, 3], "time order, ties as sent"
    again = ok_json("POST", f"{url}/m/{as_columns}/points", body=columns, token=account.admin)
    assert again == {"added": 0, "existing": 3}
    many = {"t": [now] * 10_001, "v": [1.0] * 10_001}
    assert "10000" in assert_error(
        http("POST", f"{url}/m/{as_columns}/points", body=many, token=account.admin), 413
    )


BAD_IMPORTS = {
    "not a list": {"t": 1, "v": 1},
    "bad value": [{"t": 1_700_000_000, "v": 1}, {"t": 1_700_000_000, "v": "x"}],
    "missing t": [{"v": 1}],
    "future": [{"t": 4_000_000_000, "v": 1}],
    "negative t": [{"t": -5, "v": 1}],
    "unknown field": [{"t": 1_700_000_000, "v": 1, "x": 1}],
    "long metadata": [{"t": 1_700_000_000, "v": 1, "m": "é" * 129}],
    "columns of two lengths": {"t": [1_700_000_000, 1_700_000_001], "v": [1]},
    "bad value in a column": {"t": [1_700_000_000, 1_700_000_001], "v": [1, True]},
    "long metadata in a column": {"t": [1_700_000_000], "v": [1], "m": ["é" * 129]},
    "a column that is no list": {"t": [1_700_000_000], "v": 1},
    "an unknown column": {"t": [1_700_000_000], "v": [1], "x": [1]},
}


@pytest.mark.parametrize("case", BAD_IMPORTS)
def test_a_bad_import_is_400_and_stores_none_of_its_points(
    url: str, account: Account, metric: str, case: str
) -> None:
    answer = http("POST", f"{url}/m/{metric}/points", body=BAD_IMPORTS[case], token=account.admin)
    message = assert_error(answer, 400)
    if case.startswith("bad value"):
        assert "points[1].v" in message
    assert points(url, metric) == []


def test_import_limits_are_413(url: str, account: Account, metric: str) -> None:
    many = [{"t": 1_700_000_000 + i, "v": 1.0} for i in range(10_001)]
    too_many = http("POST", f"{url}/m/{metric}/points", body=many, token=account.admin)
    assert "10000" in assert_error(too_many, 413)
    huge = b"[" + b" " * (4 * 1024 * 1024) + b"]"
    assert_error(http("POST", f"{url}/m/{metric}/points", raw=huge, token=account.admin), 413)
    assert points(url, metric) == []


@pytest.mark.parametrize("caller", ["post", "other-admin", "none"])
def test_only_the_owning_admin_may_import(
    url: str, account: Account, other: Account, metric: str, caller: str
) -> None:
    token = {"post": account.post, "other-admin": other.admin, "none": None}[caller]
    answer = http("POST", f"{url}/m/{metric}/points", body=[{"t": 1, "v": 1}], token=token)
    assert_error(answer, 401 if caller == "none" else 403)
    assert points(url, metric) == []


def test_importing_the_same_points_again_adds_only_what_is_new(
    url: str, account: Account, metric: str
) -> None:
    rows = [{"t": 1767225600 + i, "v": float(i % 3), "m": "x" * (i % 2)} for i in range(40)]
    rows.append(dict(rows[0]))  # a point that really was measured twice is kept twice
    target = f"{url}/m/{metric}/points"
    assert ok_json("POST", target, body=rows, token=account.admin) == {"added": 41, "existing": 0}
    assert ok_json("POST", target, body=rows, token=account.admin) == {"added": 0, "existing": 41}
    grown = [*rows, {"t": 1767225600, "v": 0.0, "m": ""}, {"t": 1767229999, "v": 7.0}]
    assert ok_json("POST", target, body=grown, token=account.admin) == {"added": 2, "existing": 41}
    assert len(points(url, metric)) == 43


def test_a_points_commit_and_branch_come_back_from_json_and_csv(
    url: str, account: Account, metric: str
) -> None:
    body = {"value": 1.5, "metadata": "https://ci/1", "commit": "ABCDEF12345", "branch": "main"}
    ok_json("POST", f"{url}/m/{metric}", body=body, token=account.post)
    ok_json("POST", f"{url}/m/{metric}", body={"value": 2.5}, token=account.post)
    (first, second) = points(url, metric)
    assert {k: first[k] for k in ("v", "m", "commit", "branch")} == {
        "v": 1.5, "m": "https://ci/1", "commit": "abcdef12345", "branch": "main"
    }  # fmt: skip
    assert set(second) == {"t", "v"}, "commit and branch only where set"
    csv_body = http("GET", f"{url}/m/{metric}/csv")[2]
    lines = csv_body.decode().splitlines()
    assert lines[0] == "t,v,m,commit,branch"
    assert lines[1].endswith(",1.5,https://ci/1,abcdef12345,main") and lines[2].endswith(",2.5,,,")


def test_a_run_and_an_import_carry_commits_and_branches(url: str, account: Account) -> None:
    run = {"commit": "1234567", "branch": "main", "metadata": "job 7",
           "points": [{"name": "origins/a", "value": 1.0}, {"name": "origins/b", "value": 2.0}]}  # fmt: skip
    ids = ok_json("POST", f"{url}/r/", body=run, token=account.post)["metrics"]
    for name in ("origins/a", "origins/b"):
        (point,) = points(url, ids[name])
        assert (point["commit"], point["branch"], point["m"]) == ("1234567", "main", "job 7")
    mid = new_metric(url, account.admin)
    now = int(time.time())
    rows = [{"t": now - 60, "v": 1.0, "commit": "aaaaaaa", "branch": "main"},
            {"t": now - 50, "v": 2.0, "commit": "bbbbbbb"}]  # fmt: skip
    columns = {"t": [now - 40], "v": [3.0], "commit": ["ccccccc"], "branch": ["main"]}
    for body in (rows, columns, rows):  # the rows again: the same points, nothing added
        ok_json("POST", f"{url}/m/{mid}/points", body=body, token=account.admin)
    assert [(p["v"], p["commit"], p.get("branch")) for p in points(url, mid)] == [
        (1.0, "aaaaaaa", "main"), (2.0, "bbbbbbb", None), (3.0, "ccccccc", "main")
    ]  # fmt: skip


@pytest.mark.parametrize(
    "fields",
    [
        {"commit": "abc12"},  # too short
        {"commit": "g" * 7},
        {"commit": "a" * 41},
        {"commit": 1234567},
        {"branch": "a\nb"},
        {"branch": " main"},
        {"branch": "b" * 201},
        {"branch": ["main"]},
    ],
)
def test_a_bad_commit_or_branch_is_400_and_stores_nothing(
    url: str, account: Account, metric: str, fields: dict
) -> None:
    name = next(iter(fields))
    for path, body in (
        (f"/m/{metric}", {"value": 1.0, **fields}),
        ("/r/", {"points": [{"name": "bad origin", "value": 1.0}], **fields}),
        (f"/m/{metric}/points", [{"t": 1767225600, "v": 1.0, **fields}]),
        (f"/m/{metric}/points", {"t": [1767225600], "v": [1.0], name: [fields[name]]}),
    ):
        token = account.admin
        assert name in assert_error(http("POST", url + path, body=body, token=token), 400)
    assert points(url, metric) == []
    assert "bad origin" not in [m["name"] for m in account_doc(url, account.admin)["metrics"]]


def test_a_branchs_points_are_drawn_over_mains_and_move_nothing_of_mains(
    url: str, account: Account
) -> None:
    mid, start = _import_series(url, account, [1.0 + 0.01 * (i % 3) for i in range(30)])
    slow = [{"t": start + 3600 * i + 60, "v": 2.0, "commit": f"{i:07x}", "branch": "slow-pr"}
            for i in range(20, 30)]  # fmt: skip
    ok_json("POST", f"{url}/m/{mid}/points", body=slow, token=account.admin)
    assert len(points(url, mid)) == 30, "main's points only, unless a branch is asked for"
    both = points(url, mid, branch="slow-pr")
    assert len(both) == 40 and [p["t"] for p in both] == sorted(p["t"] for p in both)
    assert {p["branch"] for p in both if p["v"] == 2.0} == {"slow-pr"}
    assert ok_json("GET", f"{url}/m/{mid}/changes") == [], "a branch moves no change point"
    badge = http("GET", f"{url}/m/{mid}/badge.svg")[2].decode()
    assert "1.01 s" in badge or "1 s" in badge or "1.02 s" in badge
    row = next(r for r in board_json(url, account)["metrics"] if r["metric_id"] == mid)
    assert row["state"] == "steady" and row["points"] == 30 and row["latest"]["v"] < 1.5
    svg = parse_svg(http("GET", f"{url}/m/{mid}.svg?branch=slow-pr")[2])
    texts = [t.text or "" for t in svg.iter() if t.tag.endswith("text")]
    assert any(t.endswith("@ slow-pr") for t in texts), "the legend names the branch"
    lines = [e for e in svg.iter() if e.tag.endswith("polyline")]
    assert any("branch" in e.get("class", "") for e in lines), "its line is dashed"
    assert len(parse_svg(http("GET", f"{url}/m/{mid}.svg")[2]).findall(".//{*}polyline")) == 1


def test_an_accounts_main_branch_decides_where_new_points_go(url: str, account: Account) -> None:
    assert account_doc(url, account.admin)["main_branch"] == "main"
    for body in ({}, {"main_branch": ""}, {"main_branch": "a\tb"}, {"other": 1}):
        assert_error(http("PATCH", f"{url}/a/", body=body, token=account.admin), 400)
    assert_error(http("PATCH", f"{url}/a/", body={"main_branch": "x"}, token=account.post), 403)
    changed = ok_json("PATCH", f"{url}/a/", body={"main_branch": "trunk"}, token=account.admin)
    assert changed["main_branch"] == "trunk" and changed["webhook"] is None
    mid = new_metric(url, account.admin)
    for branch, value in (("trunk", 1.0), ("main", 2.0), ("", 3.0)):
        body = {"value": value, "branch": branch}
        ok_json("POST", f"{url}/m/{mid}", body=body, token=account.post)
    assert values(url, mid) == [1.0, 3.0]
    assert [p["v"] for p in points(url, mid, branch="main")] == [1.0, 2.0, 3.0]


# --------------------------------------------------------------------------------------------
# Web: names, runs and boards
# A name is unique in its account; a CI run posts many named points at once; a board shows an
# account's metrics as a page, JSON and OpenMetrics.
# --------------------------------------------------------------------------------------------


def post_run(url: str, token: str, *points: dict, metadata: str = "") -> Answer:
    body: dict[str, Any] = {"points": list(points)}
    if metadata:
        body["metadata"] = metadata
    return http("POST", f"{url}/r/", body=body, token=token)


def account_doc(url: str, token: str) -> dict:
    return ok_json("GET", f"{url}/a/", token=token)


def account_ids(url: str, account: Account) -> dict[str, str]:
    return {m["name"]: m["metric_id"] for m in account_doc(url, account.admin)["metrics"]}


def board_json(url: str, account: Account) -> dict:
    return ok_json("GET", f"{url}/b/{account_doc(url, account.admin)['board_id']}/json")


def test_a_taken_name_is_409_naming_the_metric_that_has_it(
    url: str, account: Account, other: Account
) -> None:
    first = new_metric(url, account.admin, name="pytest/test_sort[100]")
    status, _, body = http(
        "PUT", f"{url}/m/", body={"name": "pytest/test_sort[100]"}, token=account.admin
    )
    assert status == 409 and json.loads(body)["metric_id"] == first
    assert "is taken" in json.loads(body)["message"]
    new_metric(
        url, other.admin, name="pytest/test_sort[100]"
    )  # another account's names are its own
    new_metric(url, account.admin)  # no name: as many as you like
    new_metric(url, account.admin)


@pytest.mark.parametrize(
    "name", ["tab\there", "line\nbreak", " leading", "trailing ", "nel\x85", "x" * 201]
)
def test_a_name_with_a_control_character_an_edge_space_or_201_bytes_is_400(
    url: str, account: Account, name: str
) -> None:
    assert_error(http("PUT", f"{url}/m/", body={"name": name}, token=account.admin), 400)
    assert_error(post_run(url, account.post, {"name": name, "value": 1}), 400)
    assert account_doc(url, account.admin)["metrics"] == []


def test_a_run_creates_metrics_by_name_once_and_posts_to_them_at_one_time(
    url: str, account: Account
) -> None:
    first = ok_json("POST", f"{url}/r/", token=account.post, body={
        "metadata": "3f2a9c1e7b0d https://ci.example/job/1",
        "points": [
            {"name": "go/BenchmarkSort", "value": 1.5e-6, "unit": "s"},
            {"name": "go/BenchmarkSort (MB/s)", "value": 250, "unit": "MB/s", "better": "higher"},
        ],
    })  # fmt: skip
    ids = first["metrics"]
    assert set(ids) == {"go/BenchmarkSort", "go/BenchmarkSort (MB/s)"}
    second = post_run(url, account.post, {"name": "go/BenchmarkSort", "value": 1.6e-6, "unit": "s"})
    assert json.loads(second[2])["metrics"] == {"go/BenchmarkSort": ids["go/BenchmarkSort"]}
    info = ok_json("GET", f"{url}/m/{ids['go/BenchmarkSort (MB/s)']}/info")
    assert (info["name"], info["unit"], info["better"]) == (
        "go/BenchmarkSort (MB/s)",
        "MB/s",
        "higher",
    )
    sort = points(url, ids["go/BenchmarkSort"])
    assert [p["v"] for p in sort] == [1.5e-6, 1.6e-6]
    assert sort[0]["m"] == "3f2a9c1e7b0d https://ci.example/job/1" and "m" not in sort[1]
    assert sort[0]["t"] == first["t"] == points(url, ids["go/BenchmarkSort (MB/s)"])[0]["t"]
    listed = account_doc(url, account.post)
    assert [(m["name"], m["metric_id"]) for m in listed["metrics"]] == list(ids.items())
    assert ID_RE.match(listed["board_id"]) and listed["account_id"] == account.id


def test_a_name_twice_in_a_run_is_two_points_of_one_new_metric(url: str, account: Account) -> None:
    answer = post_run(url, account.post, {"name": "rep", "value": 1}, {"name": "rep", "value": 2})
    metric = json.loads(answer[2])["metrics"]["rep"]
    assert [p["v"] for p in points(url, metric)] == [1, 2]
    assert len(account_doc(url, account.admin)["metrics"]) == 1


def test_a_run_stores_a_duration_in_an_existing_metrics_unit(url: str, account: Account) -> None:
    step = new_metric(url, account.admin, name="step", unit="ms")
    size = new_metric(url, account.admin, name="size", unit="MB")
    assert post_run(url, account.post, {"name": "step", "value": 1.5, "unit": "s"})[0] == 200
    assert values(url, step) == [1500.0]
    refused = post_run(url, account.post, {"name": "step", "value": 1, "unit": "s"},
                       {"name": "size", "value": 2, "unit": "s"})  # fmt: skip
    assert "not a unit of time" in assert_error(refused, 400)
    assert values(url, step) == [1500.0] and values(url, size) == [], "all or nothing"


@pytest.mark.parametrize(
    "body, status",
    [
        ({"points": [{"name": "a", "value": 1}, {"name": "b", "value": "2"}]}, 400),
        ({"points": [{"name": "a", "value": 1}, {"name": "b"}]}, 400),
        ({"points": [{"name": "a", "value": 1, "better": "up"}]}, 400),
        ({"points": [{"name": "a", "value": 1, "colour": "red"}]}, 400),
        ({"points": [{"name": "", "value": 1}]}, 400),
        ({"points": []}, 400),
        ({"points": {"a": 1}}, 400),
        ({"metadata": "x" * 257, "points": [{"name": "a", "value": 1}]}, 400),
        ({"points": [{"name": f"n{i}", "value": i} for i in range(1001)]}, 413),
        (None, 400),
        ([], 400),
    ],
    ids=["string", "no value", "better", "unknown", "empty name", "none", "object",
         "metadata", "1001", "no body", "array"],
)  # fmt: skip
def test_a_bad_run_is_refused_whole(url: str, account: Account, body: Any, status: int) -> None:
    known = new_metric(url, account.admin, name="a")
    assert_error(http("POST", f"{url}/r/", body=body, token=account.post), status)
    assert [m["name"] for m in account_doc(url, account.admin)["metrics"]] == ["a"]
    assert values(url, known) == []


def test_a_new_board_id_retires_the_old_links(url: str, account: Account) -> None:
    old = account_doc(url, account.admin)["board_id"]
    assert http("GET", f"{url}/b/{old}")[0] == 200
    new = ok_json("PUT", f"{url}/b/", token=account.admin)["board_id"]
    assert new != old and account_doc(url, account.post)["board_id"] == new
    for view in ("", "/json", "/metrics"):
        assert_error(http("GET", f"{url}/b/{old}{view}"), 404)
        assert http("GET", f"{url}/b/{new}{view}")[0] == 200


def _stepped_run_metrics(url: str, account: Account) -> dict[str, str]:
    """api/latency: 30 runs at 100 ms, then 15 at 130 (a regression); api/size steady; db/query
    10 % faster at the end (an improvement); idle: no points. Each run a minute apart."""
    start = int(time.time()) - 3600
    ids = {}
    series = {
        "api/latency": [100 + (i % 3) for i in range(30)] + [130 + (i % 3) for i in range(15)],
        "api/size": [50 + (i % 2) for i in range(45)],
        "db/query": [20 + (i % 2) * 0.1 for i in range(30)]
        + [18 + (i % 2) * 0.1 for i in range(15)],
    }
    for name, vals in series.items():
        ids[name] = new_metric(url, account.admin, name=name, unit="ms")
        rows = [{"t": start + 60 * i, "v": v, "m": f"run {i}"} for i, v in enumerate(vals)]
        ok_json("POST", f"{url}/m/{ids[name]}/points", body=rows, token=account.admin)
    ids["idle"] = new_metric(url, account.admin, name="idle")
    return ids


def test_the_boards_json_puts_regressions_first_with_their_newest_change(
    url: str, account: Account
) -> None:
    ids = _stepped_run_metrics(url, account)
    board = account_doc(url, account.admin)["board_id"]
    doc = ok_json("GET", f"{url}/b/{board}/json")
    rows = {m["name"]: m for m in doc["metrics"]}
    assert [m["name"] for m in doc["metrics"]] == ["api/latency", "api/size", "db/query", "idle"]
    latency = rows["api/latency"]
    assert latency["state"] == "regression" and latency["metric_id"] == ids["api/latency"]
    change = latency["newest_change"]
    assert (change["kind"], change["index"], change["before"], change["after"]) == (
        "regression", 30, 101, 131,
    )  # fmt: skip
    assert latency["latest"]["v"] == 132 and latency["latest"]["m"] == "run 44"
    # The 20 values before the newest: 6 of the old level, 14 of the new; their median is 130.
    assert latency["level"] == 130 and latency["change"] == round(2 / 130, 6)
    assert rows["db/query"]["state"] == "improvement" and rows["api/size"]["state"] == "steady"
    assert rows["idle"] | {"metric_id": ""} == {
        "metric_id": "", "name": "idle", "unit": "", "better": "lower", "points": 0,
        "latest": None, "level": None, "change": None, "state": "empty", "newest_change": None,
    }  # fmt: skip


def test_the_boards_openmetrics_parse_and_carry_the_same_numbers(
    url: str, account: Account
) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    _stepped_run_metrics(url, account)
    odd = 'q"uote\\back'  # a name OpenMetrics must escape
    assert post_run(url, account.post, {"name": odd, "value": 2.5, "unit": "s"})[0] == 200
    board = account_doc(url, account.admin)["board_id"]
    status, headers, body = http("GET", f"{url}/b/{board}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert set(families) == {"perfit_value", "perfit_recent_change", "perfit_regressed"}
    value = {s.labels["name"]: s.value for s in families["perfit_value"].samples}
    assert value == {"api/latency": 132, "api/size": 50, "db/query": 18, odd: 2.5}
    regressed = {s.labels["name"]: s.value for s in families["perfit_regressed"].samples}
    assert regressed == {"api/latency": 1, "api/size": 0, "db/query": 0, odd: 0}
    units = {s.labels["unit"] for s in families["perfit_value"].samples}
    assert units == {"ms", "s"}


def test_the_board_page_lists_every_metric_by_group_with_links_that_work(
    url: str, account: Account
) -> None:
    ids = _stepped_run_metrics(url, account)
    board = account_doc(url, account.admin)["board_id"]
    status, headers, body = http("GET", f"{url}/b/{board}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert (
        page.index('<h2 id="g0">api</h2>') < page.index(">db</h2>") < page.index(">(no group)</h2>")
    )
    assert "1 regressed" in page and page.count('<svg class="spark"') == 3
    for name, metric in ids.items():
        link = f'href="../m/{metric}"'
        assert link in page, name
        target = urllib.parse.urljoin(f"{url}/b/{board}", f"../m/{metric}")
        assert http("GET", target)[0] == 200
    assert "132 ms" in page and "regression</span> +29.7 %" in page


def test_an_empty_board_says_how_to_fill_it(url: str, account: Account) -> None:
    board = account_doc(url, account.admin)["board_id"]
    page = http("GET", f"{url}/b/{board}")[2].decode()
    assert "No metrics yet" in page and "perfit post --format" in page


def test_an_unknown_board_is_404(url: str) -> None:
    for view in ("", "/json", "/metrics"):
        assert "no board" in assert_error(
            http("GET", f"{url}/b/{perfit.b64encode(perfit.new_id())}{view}"), 404
        )
    assert_error(http("GET", f"{url}/b/nope"), 404)


# --------------------------------------------------------------------------------------------
# Web: lifecycle
# Tokens listed and revoked, metrics renamed, kept for a while, deleted; across restarts, an
# offline compaction, and a compaction killed with SIGKILL.
# --------------------------------------------------------------------------------------------


def test_a_revoked_token_stops_working_and_stays_revoked_across_a_restart(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        acc = new_account(srv.url)
        made = ok_json("PUT", f"{srv.url}/t/", body={"type": "post"}, token=acc.admin)
        listed = ok_json("GET", f"{srv.url}/t/", token=acc.admin)
        assert listed["account_id"] == acc.id
        assert [t["type"] for t in listed["tokens"]] == ["admin", "post", "post"]
        assert made["token_id"] == listed["tokens"][-1]["token_id"]
        assert abs(listed["tokens"][-1]["created"] - time.time()) < 60
        assert made["access_token"] not in json.dumps(listed), "a listing gave a token away"
        mid = new_metric(srv.url, acc.admin)
        assert post_point(srv.url, mid, made["access_token"], 1)[0] == 200
        revoked = ok_json("DELETE", f"{srv.url}/t/{made['token_id']}", token=acc.admin)
        assert revoked == {"token_id": made["token_id"], "revoked": True}
        assert_error(post_point(srv.url, mid, made["access_token"], 2), 401)
        assert_error(http("DELETE", f"{srv.url}/t/{made['token_id']}", token=acc.admin), 404)
        assert post_point(srv.url, mid, acc.post, 3)[0] == 200, "the other post token works"
    with running_server(tmp_path) as srv:
        assert_error(post_point(srv.url, mid, made["access_token"], 4), 401)
        left = ok_json("GET", f"{srv.url}/t/", token=acc.admin)["tokens"]
        assert made["token_id"] not in [t["token_id"] for t in left] and len(left) == 2
        assert values(srv.url, mid) == [1, 3]


def test_the_last_admin_token_cannot_be_revoked_until_there_is_another(url: str) -> None:
    acc = new_account(url)
    (admin,) = [
        t for t in ok_json("GET", f"{url}/t/", token=acc.admin)["tokens"] if t["type"] == "admin"
    ]
    message = assert_error(http("DELETE", f"{url}/t/{admin['token_id']}", token=acc.admin), 403)
    assert "last admin token" in message
    second = ok_json("PUT", f"{url}/t/", body={"type": "admin"}, token=acc.admin)
    assert ok_json("DELETE", f"{url}/t/{admin['token_id']}", token=second["access_token"])[
        "revoked"
    ]
    assert_error(http("GET", f"{url}/t/", token=acc.admin), 401)
    assert_error(http("DELETE", f"{url}/t/not-an-id", token=second["access_token"]), 404)


def test_a_metric_renamed_and_kept_for_a_while_stays_so_across_a_restart(tmp_path: Path) -> None:
    day, now = 86400, int(time.time())
    with running_server(tmp_path) as srv:
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin, name="old name", unit="ms")
        other = new_metric(srv.url, acc.admin, name="taken")
        rows = [{"t": now - age * day, "v": age} for age in (100, 40, 20, 10, 1)]
        ok_json("POST", f"{srv.url}/m/{mid}/points", body=rows, token=acc.admin)
        change = {
            "name": "new name",
            "unit": "s",
            "description": "d",
            "better": "higher",
            "keep": "30d",
        }
        changed = ok_json("PATCH", f"{srv.url}/m/{mid}", body=change, token=acc.admin)
        assert {k: changed[k] for k in change} == change
        assert values(srv.url, mid) == [20, 10, 1], "points past keep are served no more"
        assert b"keeps 30d of points" in http("GET", f"{srv.url}/m/{mid}")[2]
        assert ok_json("GET", f"{srv.url}/m/{mid}/info")["points"] == 3
        # An import of points older than keep stores none of them, and says so.
        again = [{"t": now - 50 * day, "v": 50}, {"t": now - 2 * day, "v": 2}]
        answer = ok_json("POST", f"{srv.url}/m/{mid}/points", body=again, token=acc.admin)
        assert answer == {"added": 1, "existing": 0, "expired": 1}
        taken = http("PATCH", f"{srv.url}/m/{mid}", body={"name": "taken"}, token=acc.admin)
        assert_error(taken, 409)
        assert json.loads(taken[2])["metric_id"] == other
        for bad in ({}, {"keep": "5m"}, {"keep": "soon"}, {"better": "up"}, {"colour": "red"}):
            assert_error(http("PATCH", f"{srv.url}/m/{mid}", body=bad, token=acc.admin), 400)
        # The old name is free: a run under it makes a new metric.
        run = ok_json(
            "POST",
            f"{srv.url}/r/",
            body={"points": [{"name": "old name", "value": 7}]},
            token=acc.post,
        )
        assert run["metrics"]["old name"] != mid
        assert (
            ok_json("PATCH", f"{srv.url}/m/{mid}", body={"keep": None}, token=acc.admin)["keep"]
            is None
        )
    with running_server(tmp_path) as srv:
        info = ok_json("GET", f"{srv.url}/m/{mid}/info")
        assert (info["name"], info["unit"], info["better"], info["keep"]) == (
            "new name",
            "s",
            "higher",
            None,
        )
        assert values(srv.url, mid) == [20, 10, 2, 1], "expired points stay gone"
        names = {
            m["name"]: m["metric_id"]
            for m in ok_json("GET", f"{srv.url}/a/", token=acc.admin)["metrics"]
        }
        assert names["new name"] == mid and names["old name"] == run["metrics"]["old name"]


def test_a_deleted_metric_is_gone_for_good_and_compaction_reclaims_its_space(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path, "--seal-bytes", "4096") as srv:
        acc = new_account(srv.url)
        body = {
            "points": [{"name": "doomed", "value": 1.5}, {"name": "kept", "value": 2.5}],
            "metadata": "x" * 200,
        }
        for _ in range(150):  # many small sealed segments: the server compacts them meanwhile
            ids = ok_json("POST", f"{srv.url}/r/", body=body, token=acc.post)["metrics"]
        doomed, kept = ids["doomed"], ids["kept"]
        assert_error(http("DELETE", f"{srv.url}/m/{doomed}", token=acc.post), 403)
        gone = ok_json("DELETE", f"{srv.url}/m/{doomed}", token=acc.admin)
        assert gone == {"metric_id": doomed, "deleted": 150}
        for view in ("", "/json", "/svg", "/info", "/metrics"):
            assert_error(http("GET", f"{srv.url}/m/{doomed}{view}"), 404)
        assert [m["name"] for m in ok_json("GET", f"{srv.url}/a/", token=acc.admin)["metrics"]] == [
            "kept"
        ]
        assert values(srv.url, kept) == [2.5] * 150
    compacted_online = any("-" in p.name for p in _files(tmp_path, ".seg"))
    assert compacted_online, "the server did not compact its small segments"
    before = sum(p.stat().st_size for p in tmp_path.iterdir() if p.suffix in (".seg", ".log"))
    done = cli("store", "compact", "--data", str(tmp_path))
    assert done.returncode == 0 and "compacted" in done.stdout, done.stderr
    after = sum(p.stat().st_size for p in tmp_path.iterdir() if p.suffix in (".seg", ".log"))
    assert after < before * 0.7, (before, after)
    checked = cli("store", "check", "--data", str(tmp_path))
    assert checked.returncode == 0 and "clean" in checked.stdout, checked.stdout
    with running_server(tmp_path) as srv:
        assert_error(http("GET", f"{srv.url}/m/{doomed}/json"), 404)
        assert values(srv.url, kept) == [2.5] * 150
        again = ok_json("POST", f"{srv.url}/r/", body=body, token=acc.post)["metrics"]
        assert again["kept"] == kept and again["doomed"] != doomed, "the name is free again"


def _store_of_segments(data: Path, runs: int, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """A closed store of many small segments, none compacted yet: a metric kept, one deleted
    (its points still in the segments); returns (their ids, the points kept)."""
    with monkeypatch.context() as later:
        later.setattr(perfit, "_COMPACT_FILES", 10**9)  # no compaction in the background
        later.setattr(perfit, "_COMPACT_GARBAGE_MIN", 10**9)
        return _fill_store(data, runs)


def _fill_store(data: Path, runs: int) -> tuple:
    """...with, besides, points of a year ago expired by a keep of 30 days, the kept metric
    renamed, and a token revoked: what a compaction must carry over."""
    with perfit.Store.open(str(data), seal_bytes=2048) as store:
        account, _ = store.create_account()
        kept, doomed = store.create_metric(account, name="kept"), store.create_metric(account)
        a_year_ago = (int(time.time()) - 365 * 86400) * perfit.US
        store.add_points(
            kept.id, perfit.PointBatch.of([(a_year_ago + i, 1.0, b"") for i in range(50)])
        )
        revoked = store.create_token(account, "post")
        for i in range(runs):
            store.add_point(kept.id, float(i), f"sha{i:05d}")
            store.add_point(doomed.id, float(i), "x" * 100)
        store.delete_metric(doomed)
        store.revoke_token(account, perfit.token_id(perfit.hash_token(revoked)))
        store.edit_metric(kept, {"name": "renamed", "keep": 30 * 86400.0})
        expected = _series(store, kept.id)
        assert len(expected) == runs, "the year-old points were not expired"
        store.sealer.run_now(everything=False)  # seal what is full; no compaction yet
    return kept.id, doomed.id, expected, revoked


@pytest.mark.parametrize(
    ("segments", "merged"),
    [
        ([(1, 1), (2, 2), (3, 3), (4, 4)], [(1, 4)]),  # four small ones become one
        ([(1, 1), (2, 2), (3, 3)], []),  # three wait for a fourth
        ([(1, 4), (5, 5), (6, 6), (7, 7), (8, 8)], [(5, 8)]),  # four of a size, not the big one
        ([(1, 4), (5, 8), (9, 12), (13, 16)], [(1, 16)]),  # then four of the next size
    ],
)
def test_compaction_merges_four_segments_of_a_size_at_a_time(
    tmp_path: Path, segments: list, merged: list
) -> None:
    """Size-tiered: a point is rewritten a few times, not once for every new segment."""
    for first, last in segments:
        (tmp_path / perfit._file_name(last, ".seg", first)).write_bytes(
            b"x" * 1000 * (last - first + 1)
        )
    runs = perfit.compaction_runs(perfit.DataFiles.list(str(tmp_path)).live(), everything=False)
    assert [(run[0].first, run[-1].number) for run in runs] == merged


def test_a_crash_between_writing_a_compacted_segment_and_removing_its_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, doomed, expected, _ = _store_of_segments(tmp_path, 400, monkeypatch)
    sources = {p.name: p.read_bytes() for p in _files(tmp_path, ".seg")}
    assert len(sources) >= 20
    with perfit.Store.open(str(tmp_path)) as store:
        (_, made), *_ = store.sealer.run_now(everything=True)
    # The crash: the sources are all still there beside what was made of them, and a temp file.
    for name, blob in sources.items():
        (tmp_path / name).write_bytes(blob)
    (tmp_path / (Path(made.path).name + ".tmp")).write_bytes(b"PERFITS1 half written")
    notes = [n for r in perfit.check_directory(str(tmp_path)) for n in r.notes]
    assert len(notes) >= len(sources) - 1 and all(
        "newer segment holds all of it" in n for n in notes
    )
    with perfit.Store.open(str(tmp_path)) as store:
        assert _series(store, kept) == expected, "a point was lost or doubled"
        assert doomed not in store.metrics
    left = {p.name for p in tmp_path.iterdir() if p.suffix in (".seg", ".tmp")}
    assert left == {Path(made.path).name}, "the stale sources were not removed"


#: When to kill a compaction: as it writes its segment, as it removes the segments that went
#: into it, and never (it ends).
_COMPACTION_MOMENTS = {
    "writing": lambda names: any("-" in n and n.endswith(".tmp") for n in names),
    "removing": lambda names: any("-" in n and n.endswith(".seg") for n in names),
    "done": lambda names: False,
}


def test_sigkill_during_compaction_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    kept, doomed, expected, revoked = _store_of_segments(source, 1200, monkeypatch)
    assert len(_files(source, ".seg")) >= 40
    for moment, now in _COMPACTION_MOMENTS.items():
        data = tmp_path / moment
        shutil.copytree(source, data)
        child = subprocess.Popen([*perfit_command(), "store", "compact", "--data", str(data)],
                                 env=clean_env(), cwd=str(HERE), stdout=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            if now(os.listdir(data)):
                break
        child.kill()
        child.wait(10)
        with perfit.Store.open(str(data)) as store:
            assert _series(store, kept) == expected, f"killed {moment}: lost or doubled points"
            assert doomed not in store.metrics
            metric = store.metrics[kept]
            assert (metric.name, metric.to_json()["keep"]) == ("renamed", "30d")
            assert store.authenticate(revoked) is None, "a revoked token works again"
        assert not [p for r in perfit.check_directory(str(data)) for p in r.problems]


def test_the_client_lists_and_revokes_tokens_and_edits_and_deletes_metrics(url: str) -> None:
    acc = new_account(url)
    env = {"PERFIT_SERVER": url, "PERFIT_ACCESS_TOKEN": acc.admin}
    listed = json.loads(perfit_main("token", "list", env=env).stdout)
    post_id = next(t["token_id"] for t in listed["tokens"] if t["type"] == "post")
    revoked = perfit_main("token", "revoke", "--", post_id, env=env)  # ids may start with -
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked"] is True
    assert_error(post_point(url, new_metric(url, acc.admin), acc.post, 1), 401)
    bad = perfit_main("token", "revoke", "nope", env=env)
    assert bad.returncode == 2 and "token list" in bad.stderr
    mid = new_metric(url, acc.admin, name="before")
    edited = perfit_main(
        "metric", "edit", "--metric", "before", "--name", "after", "--keep", "400d", env=env
    )
    assert edited.returncode == 0, edited.stderr
    assert (json.loads(edited.stdout)["name"], json.loads(edited.stdout)["keep"]) == (
        "after",
        "400d",
    )
    nothing = perfit_main("metric", "edit", "--metric", mid, env=env)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    unsure = perfit_main("metric", "delete", "--metric", "after", env=env)
    assert unsure.returncode == 2 and "--yes" in unsure.stderr and "0 point(s)" in unsure.stderr
    assert ok_json("GET", f"{url}/m/{mid}/info")["name"] == "after", "deleted without --yes"
    deleted = perfit_main("metric", "delete", "--metric", "after", "--yes", env=env)
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["metric_id"] == mid
    assert_error(http("GET", f"{url}/m/{mid}/info"), 404)


def test_a_metrics_openmetrics_parse(url: str, account: Account) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    mid = new_metric(url, account.admin, name="one/metric", unit="s")
    assert post_point(url, mid, account.post, 4.25)[0] == 200
    status, headers, body = http("GET", f"{url}/m/{mid}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    (sample,) = families["perfit_value"].samples
    assert (sample.value, sample.labels["name"], sample.labels["unit"]) == (4.25, "one/metric", "s")


# --------------------------------------------------------------------------------------------
# Web: comparing (PR gating)
# Fresh values against a metric's recent level: a verdict, and nothing stored.
# --------------------------------------------------------------------------------------------


def leveled_metric(url: str, account: Account, *levels: tuple[int, float], **fields: str) -> str:
    """A metric of runs a minute apart: (count, level) pairs, each with ±0.5 % of noise."""
    metric = new_metric(url, account.admin, **fields)
    values = [level * (1 + 0.005 * (-1) ** i) for count, level in levels for i in range(count)]
    start = int(time.time()) - 86400
    rows = [{"t": start + 60 * i, "v": v} for i, v in enumerate(values)]
    ok_json("POST", f"{url}/m/{metric}/points", body=rows, token=account.admin)
    return metric


def compare(url: str, metric: str, *values: float, query: str = "", **more: Any) -> dict:
    return ok_json(
        "POST", f"{url}/m/{metric}/compare{query}", body={"values": list(values), **more}
    )


def test_compare_tells_a_regression_an_improvement_and_noise_apart(
    url: str, account: Account
) -> None:
    metric = leveled_metric(url, account, (30, 100.0), unit="ms")
    assert compare(url, metric, 100.5)["verdict"] == "same"
    slower = compare(url, metric, 130)
    assert slower["verdict"] == "regression" and slower["change"] == pytest.approx(0.3, abs=0.011)
    assert slower["baseline"]["n"] == 30 and slower["baseline"]["median"] == pytest.approx(
        100, abs=1
    )
    assert compare(url, metric, 80)["verdict"] == "improvement"
    assert compare(url, metric, 0.13, unit="s")["verdict"] == "regression", "130 ms"
    # 4 % slower: beyond the noise, under the default threshold (5 %), over a 3 % one.
    assert compare(url, metric, 104)["verdict"] == "same"
    assert compare(url, metric, 104, query="?threshold=0.03")["verdict"] == "regression"
    assert len(points(url, metric)) == 30, "a comparison stores nothing"
    faster = leveled_metric(url, account, (30, 100.0), better="higher")
    assert compare(url, faster, 130)["verdict"] == "improvement"


def test_compare_takes_the_newest_level_as_its_baseline(url: str, account: Account) -> None:
    stepped = leveled_metric(url, account, (40, 100.0), (30, 130.0))
    now = compare(url, stepped, 131)
    assert now["verdict"] == "same" and now["baseline"]["median"] == pytest.approx(130, abs=1.5)
    just = leveled_metric(url, account, (40, 100.0), (3, 130.0))  # a change of three runs ago
    assert compare(url, just, 100)["baseline"]["n"] == 30
    empty = new_metric(url, account.admin)
    assert compare(url, empty, 5) == {
        "baseline": {"median": None, "n": 0, "spread": 0, "commit": None}, "value": 5,
        "change": None, "interval": None, "verdict": "new",
    }  # fmt: skip


def test_compare_measures_against_main_where_the_pr_branched(url: str, account: Account) -> None:
    # Main at 100 ms for 30 commits, then it regressed to 120 ms (after the PR branched at 25).
    metric = new_metric(url, account.admin, unit="ms")
    start = int(time.time()) - 86400
    rows = [{"t": start + 60 * i, "v": (100.0 if i < 30 else 120.0) * (1 + 0.005 * (-1) ** i),
             "commit": f"c{i:02d}{'0' * 37}"} for i in range(40)]  # fmt: skip
    ok_json("POST", f"{url}/m/{metric}/points", body=rows, token=account.admin)
    base = f"c25{'0' * 37}"
    at_base = compare(url, metric, 100.2, base=base)
    assert at_base["verdict"] == "same" and at_base["baseline"]["commit"] == base
    assert at_base["baseline"]["median"] == pytest.approx(100, abs=0.6)
    drifted = compare(url, metric, 100.2)  # no base: main's newest level, 120 ms
    assert drifted["verdict"] == "improvement" and drifted["baseline"]["n"] == 10
    assert drifted["baseline"]["commit"] == rows[-1]["commit"]
    ancestors = compare(url, metric, 100.2, base=["f" * 40, "c25000000", "c2400000"])
    assert ancestors["baseline"]["commit"] == base, "the first stored of the list, by prefix"
    unknown = compare(url, metric, 100.2, base=["f" * 40])
    assert unknown["baseline"]["commit"] is None and unknown["verdict"] == "improvement"
    # PerfIt 0.2 kept the commit at the start of the metadata: it is read as the commit.
    old = new_metric(url, account.admin)
    legacy = [{"t": start + 60 * i, "v": 10.0 + i % 2 * 0.01, "m": f"{i:012x} https://ci/{i}"}
              for i in range(30)]  # fmt: skip
    ok_json("POST", f"{url}/m/{old}/points", body=legacy, token=account.admin)
    found = compare(url, old, 10.0, base=f"{12:012x}{'9' * 28}")
    assert found["baseline"] == {**found["baseline"], "commit": f"{12:012x}", "n": 13}


def test_compare_gives_an_interval_and_says_inconclusive_when_unsure(
    url: str, account: Account
) -> None:
    rng = random.Random(7)
    metric = new_metric(url, account.admin, unit="s")
    start = int(time.time()) - 86400
    rows = [{"t": start + 60 * i, "v": 10 * rng.lognormvariate(0, 0.03)} for i in range(30)]
    ok_json("POST", f"{url}/m/{metric}/points", body=rows, token=account.admin)
    level = statistics.median(r["v"] for r in rows)
    clear = compare(url, metric, level * 1.3)
    low, high = clear["interval"]
    assert clear["verdict"] == "regression" and 0.05 < low < clear["change"] < high
    assert high - low == pytest.approx(2 * 2.045 * 0.03 * 1.02, rel=0.35), "95 %: t times its SE"
    unsure = compare(url, metric, level * 1.07)
    assert (
        unsure["verdict"] == "inconclusive" and unsure["interval"][0] < 0.05 < unsure["interval"][1]
    )
    assert compare(url, metric, level * 1.02)["verdict"] == "same"
    # Samples that scatter more than main's runs do widen the interval.
    scattered = compare(url, metric, *(level * f for f in (0.8, 1.0, 1.2, 0.9, 1.1)))
    assert scattered["interval"][1] - scattered["interval"][0] > 2 * (high - low)


def _suite_history(
    url: str, account: Account, prefix: str, runs: int = 30, size: int = 12
) -> list[str]:
    """A suite's main runs (POST /r/), CI-like: each run's speed shared by all of its
    benchmarks (3 %, one run in ten on a 1.5x runner), each benchmark's own noise 1 %."""
    rng = random.Random(11)
    names = [f"{prefix}/bench_{i}" for i in range(size)]
    for r in range(runs):
        runner = rng.lognormvariate(0, 0.03) * (1.5 if r % 10 == 7 else 1.0)
        points = [{"name": n, "value": (1 + i) * runner * rng.lognormvariate(0, 0.01), "unit": "ms"}
                  for i, n in enumerate(names)]  # fmt: skip
        body = {"points": points, "commit": f"{r:07x}", "branch": "main"}
        ok_json("POST", f"{url}/r/", body=body, token=account.post)
    return names


def test_a_suite_compared_on_its_board_takes_out_the_runners_shift(
    url: str, account: Account
) -> None:
    names = _suite_history(url, account, "shifted")
    board = account_doc(url, account.admin)["board_id"]
    # A PR run on a runner 30 % slower, where bench_3 got 15 % slower still; no token at all.
    results = [{"name": n, "values": [1.3 * (1 + i) * (1.15 if i == 3 else 1.0)], "unit": "ms"}
               for i, n in enumerate(names) if i != 5]  # fmt: skip
    results.append({"name": "shifted/brand_new", "value": 1.0})
    doc = ok_json("POST", f"{url}/b/{board}/compare", body={"results": results})
    verdicts = {r["name"]: r["verdict"] for r in doc["results"]}
    assert verdicts.pop("shifted/bench_3") == "regression"
    assert verdicts.pop("shifted/brand_new") == "new"
    assert set(verdicts.values()) == {"same"}, "the runner's 30 % is no benchmark's regression"
    shift = doc["shift"]
    assert shift["verdict"] == "inconclusive" and shift["change"] == pytest.approx(0.3, abs=0.04)
    assert shift["results"] == len(names) - 1
    (lost,) = doc["missing"]
    assert lost["name"] == "shifted/bench_5", "main has it, the PR lost it"
    new = next(r for r in doc["results"] if r["name"] == "shifted/brand_new")
    assert new["metric_id"] is None and new["baseline"]["median"] is None
    slow = next(r for r in doc["results"] if r["name"] == "shifted/bench_3")
    assert slow["change"] == pytest.approx(0.15, abs=0.03) and slow["interval"][0] > 0.05
    assert (
        slow["unit"] == "ms" and slow["metric_id"] == account_ids(url, account)["shifted/bench_3"]
    )
    # At a base commit of main's history, the same; an unknown base is said to be unknown.
    at = ok_json("POST", f"{url}/b/{board}/compare", body={"results": results, "base": "000000f"})
    assert at["base"] == "000000f" and at["results"][0]["baseline"]["commit"] == "000000f"
    nowhere = ok_json(
        "POST", f"{url}/b/{board}/compare", body={"results": results, "base": "a" * 40}
    )
    assert nowhere["base"] is None


def test_compare_says_once_that_the_whole_run_moved_and_fails_nothing_for_it(
    url: str, account: Account, tmp_path: Path
) -> None:
    _suite_history(url, account, "runner", size=8)
    board = account_doc(url, account.admin)["board_id"]
    slower = [{"name": f"bench_{i}", "unit": "ms", "value": 1.3 * (1 + i)} for i in range(8)]
    results = tmp_path / "slower.json"
    results.write_text(json.dumps(slower))
    args = ["--format", "gab", "--prefix", "runner", "--board", board, "--server", url]
    done = perfit_main("compare", "--markdown", *args, str(results))
    assert done.returncode == 0, "a slower runner is no regression"
    (note,) = [line for line in done.stderr.splitlines() if "whole run" in line]
    said = re.match(r"perfit: the whole run is \+([\d.]+) %: a slower runner", note)
    assert said and float(said[1]) == pytest.approx(30, abs=4), note
    assert f"\n> ⚠️ The whole run is +{said[1]} %" in done.stdout, "said once, on top"
    assert done.stdout.count("whole run") == 1 and "8 the same" in done.stdout


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        {"results": []},
        {"results": [{"name": "x"}]},
        {"results": [{"name": "x", "value": 1, "values": [1]}]},
        {"results": [{"name": "", "value": 1}]},
        {"results": [{"name": "x", "values": []}]},
        {"results": [{"name": "x", "value": "1"}]},
        {"results": [{"name": "x", "value": 1}], "base": "xyz"},
        {"results": [{"name": "x", "value": 1}], "base": ["a" * 7] * 101},
        {"results": [{"name": "x", "value": 1, "other": 2}]},
    ],
)
def test_a_bad_suite_comparison_is_400(url: str, shared_account: Account, body: Any) -> None:
    board = account_doc(url, shared_account.admin)["board_id"]
    assert_error(http("POST", f"{url}/b/{board}/compare", body=body), 400)


def test_a_suite_comparison_is_bounded_and_needs_a_board_that_exists(
    url: str, shared_account: Account
) -> None:
    board = account_doc(url, shared_account.admin)["board_id"]
    many = {
        "results": [{"name": f"r{i}", "value": 1} for i in range(perfit.MAX_COMPARE_RESULTS + 1)]
    }
    assert_error(http("POST", f"{url}/b/{board}/compare", body=many), 413)
    assert_error(
        http(
            "POST", f"{url}/b/{unknown_id()}/compare", body={"results": [{"name": "x", "value": 1}]}
        ),
        404,
    )


@pytest.mark.parametrize(
    "body",
    [None, {}, {"values": []}, {"values": [1, "2"]}, {"values": [1], "unit": "parsecs"}, [1]],
)
def test_a_bad_comparison_is_400(url: str, account: Account, body: Any) -> None:
    metric = leveled_metric(url, account, (20, 10.0), unit="s")
    assert_error(http("POST", f"{url}/m/{metric}/compare", body=body), 400)
    assert_error(
        http("POST", f"{url}/m/{perfit.b64encode(perfit.new_id())}/compare", body={"values": [1]}),
        404,
    )


# --------------------------------------------------------------------------------------------
# Web: accepting changes, excluding points
# An admin says a change was meant, or that some points are bad: kept, drawn, left out.
# --------------------------------------------------------------------------------------------


def test_an_accepted_regression_no_longer_fails_metric_check(url: str, account: Account) -> None:
    metric = leveled_metric(url, account, (40, 100.0), (20, 125.0), name="suite", unit="s")
    check = [*client_args(url, account.admin, metric)]
    assert perfit_main("metric", "check", *check).returncode == 3
    (change,) = ok_json("GET", f"{url}/m/{metric}/changes")
    assert (change["kind"], change["accepted"]) == ("regression", False)
    refused = http(
        "POST", f"{url}/m/{metric}/accept", body={"t": change["t"] + 1}, token=account.admin
    )
    assert "no change point" in assert_error(refused, 404)
    assert_error(
        http("POST", f"{url}/m/{metric}/accept", body={"t": change["t"]}, token=account.post), 403
    )
    accepted = perfit_main("metric", "accept", *check)  # the newest, by default
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout) == {**change, "accepted": True}
    passed = perfit_main("metric", "check", *check)
    assert passed.returncode == 0 and "accepted as intended" in passed.stdout
    svg = http("GET", f"{url}/m/{metric}.svg")[2].decode()
    assert 'class="change regression accepted"' in svg and "+25 % accepted" in svg


def test_a_dismissed_change_is_noise_for_everyone_and_counted(url: str, account: Account) -> None:
    metric = leveled_metric(url, account, (40, 100.0), (20, 125.0), name="suite", unit="s")
    check = [*client_args(url, account.admin, metric)]
    board = ok_json("GET", f"{url}/a/", token=account.admin)["board_id"]
    assert ok_json("GET", f"{url}/a/", token=account.admin)["alerts"] == {
        "named": 1,
        "accepted": 0,
        "dismissed": 0,
    }
    assert_error(http("POST", f"{url}/m/{metric}/dismiss", body={"t": 1}, token=account.admin), 404)
    dismissed = perfit_main("metric", "dismiss", *check)  # the newest, by default
    assert dismissed.returncode == 0, dismissed.stderr
    assert json.loads(dismissed.stdout)["dismissed"] is True
    (change,) = ok_json("GET", f"{url}/m/{metric}/changes")
    assert (change["kind"], change["dismissed"], change["accepted"]) == ("regression", True, False)
    passed = perfit_main("metric", "check", *check)
    assert passed.returncode == 0 and "dismissed" in passed.stdout, passed.stdout
    assert perfit_main("check", *client_args(url, account.admin)).returncode == 0
    row = ok_json("GET", f"{url}/b/{board}/json")["metrics"][0]
    assert (row["state"], row["newest_change"]) == ("steady", None)
    scraped = http("GET", f"{url}/b/{board}/metrics")[2].decode()
    assert re.search(r"^perfit_regressed\{.*\} 0\.0$", scraped, re.M), scraped
    svg = http("GET", f"{url}/m/{metric}.svg")[2].decode()
    assert 'class="change regression dismissed"' in svg and "+25 % dismissed" in svg
    alerts = {"named": 1, "accepted": 0, "dismissed": 1}
    assert ok_json("GET", f"{url}/a/", token=account.admin)["alerts"] == alerts
    assert ok_json("GET", f"{url}/b/{board}/json")["alerts"] == alerts
    page = http("GET", f"{url}/b/{board}")[2].decode()
    assert "1 regression named in 90 days: 0 real, 0 meant, 1 dismissed as noise" in page
    assert_error(http("POST", f"{url}/m/{metric}/undismiss", body=change, token=account.post), 403)
    taken_back = perfit_main("metric", "undismiss", *check)
    assert taken_back.returncode == 0 and json.loads(taken_back.stdout)["dismissed"] is False
    assert perfit_main("metric", "check", *check).returncode == 3


def test_an_accept_holds_as_the_change_it_was_said_of_settles(url: str, account: Account) -> None:
    """The issue's replay: 12 fast runs, then slow ones posted one at a time, with a check
    after each; an accept made at 21 runs still holds at 40."""
    metric = new_metric(url, account.admin, name="replay", unit="s")
    check = [*client_args(url, account.admin, metric)]
    rng = random.Random(3)
    for run in range(40):
        assert (
            post_point(url, metric, account.post, (130 if run >= 12 else 100) * rng.gauss(1, 0.02))[
                0
            ]
            == 200
        )
        changes = ok_json("GET", f"{url}/m/{metric}/changes")
        if changes:
            assert [c["index"] for c in changes] == [12], (run, changes)
        if run + 1 == 21:
            assert perfit_main("metric", "accept", *check).returncode == 0
        if run + 1 >= 21:
            assert changes and (run + 1 == 21 or changes[0]["accepted"]), run
    assert perfit_main("metric", "check", *check).returncode == 0


def test_a_change_names_its_suspects_and_the_commits_between(url: str, account: Account) -> None:
    now = int(time.time())
    repos = {
        "github": ("https://github.com/acme/app/actions/runs/{i}", "https://github.com/acme/app/compare/{good}...{bad}"),
        "gitlab": ("https://gitlab.example/g/sub/app/-/jobs/{i}", "https://gitlab.example/g/sub/app/-/compare/{good}...{bad}"),
    }  # fmt: skip
    for forge, (job, compare_page) in repos.items():
        rows = [
            {"t": now - 3600 + i, "v": 125.0 if i >= 40 else 100.0, "commit": f"{i:07x}", "m": job.format(i=i)}
            for i in range(60)
        ]  # fmt: skip
        metric = new_metric(url, account.admin, name=forge, unit="s")
        ok_json("POST", f"{url}/m/{metric}/points", body=rows, token=account.admin)
        (change,) = ok_json("GET", f"{url}/m/{metric}/changes")
        assert change["last_good"] == {"t": now - 3600 + 39, "commit": "0000027"}
        assert change["first_bad"] == {"t": now - 3600 + 40, "commit": "0000028"}
        assert change["compare_url"] == compare_page.format(good="0000027", bad="0000028")
        report = perfit_main("metric", "check", *client_args(url, account.admin, metric))
        assert report.returncode == 3
        assert "suspects: last good" in report.stdout and change["compare_url"] in report.stdout
        svg = http("GET", f"{url}/m/{metric}.svg")[2].decode()
        assert f'href="{change["compare_url"]}"' in svg and "first bad 20" in svg


@pytest.mark.parametrize(
    ("levels", "word"),
    [
        ((0.0, 5.0), "from 0"),
        ((-2.0, 3.0), "across 0"),
        ((1.7e308, -1.7e308), "across 0"),
        ((-1.7e308, 1.7e308), "across 0"),
        ((5e-324, 1.7e308), "from 0"),
        ((-1e-200, 1e-200), "across 0"),
    ],
    ids=["from-zero", "across-zero", "float-max-down", "float-max-up", "denormal-to-max", "tiny"],
)
def test_no_answer_holds_infinity_or_nan_whatever_the_values(
    url: str, account: Account, levels: tuple[float, float], word: str | None
) -> None:
    """A change from a level of 0, between levels of opposite sign, or at the ends of float
    range: every JSON answer parses as strict JSON, OpenMetrics has no Inf or NaN, pages and
    charts draw, and where no ratio means anything the change is null and says why."""
    # The newest value back at the first level: the board compares it with the second.
    values = [levels[0]] * 30 + [levels[1]] * 30 + [levels[0]]
    metric, _ = _import_series(url, account, values, unit="score")  # no time: it may go below 0
    board = ok_json("GET", f"{url}/a/", token=account.admin)["board_id"]

    def strict(body: bytes) -> Any:
        return json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    for path in (f"/m/{metric}/changes", f"/m/{metric}/json", f"/b/{board}/json", "/a/"):
        status, _, body = http("GET", f"{url}{path}", token=account.admin)
        assert status == 200, (path, body[:300])
        doc = strict(body)
    (change,) = strict(http("GET", f"{url}/m/{metric}/changes")[2])
    if word is not None:
        assert change["change"] is None
    scraped = http("GET", f"{url}/b/{board}/metrics")[2].decode()
    assert not re.search(r" [+-]?(inf|nan)\b", scraped, re.I), scraped
    for path in (f"/m/{metric}", f"/m/{metric}.svg", f"/b/{board}", f"/m/{metric}/badge.svg"):
        status, _, body = http("GET", f"{url}{path}")
        assert status == 200, (path, body[:300])
        assert b"Infinity" not in body and b"NaN" not in body and b"inf %" not in body
    if word is not None:
        assert word in http("GET", f"{url}/b/{board}")[2].decode()
    assert doc["alerts"]["named"] <= 1


def test_excluded_points_are_kept_drawn_hollow_and_left_out(url: str, account: Account) -> None:
    # A broken runner made the last 15 runs twice as slow; they are not the code's fault.
    metric = leveled_metric(url, account, (40, 100.0), (15, 200.0), name="suite", unit="s")
    broken = points(url, metric)[40:]
    assert ok_json("GET", f"{url}/m/{metric}/changes")[0]["kind"] == "regression"
    span = {"start": broken[0]["t"], "end": broken[-1]["t"]}
    assert ok_json("POST", f"{url}/m/{metric}/exclude", body=span, token=account.admin) == {
        "points": 15
    }
    assert ok_json("GET", f"{url}/m/{metric}/changes") == []
    assert len(points(url, metric)) == 55, "kept"
    chart = http("GET", f"{url}/m/{metric}.svg")[2].decode()
    assert chart.count('class="point excluded"') == 15
    baseline = compare(url, metric, 100)["baseline"]
    assert (baseline["median"], baseline["n"]) == (100.0, 30)
    assert baseline["spread"] == pytest.approx(0.5, abs=0.02), "±0.5 %: a standard deviation of 0.5"
    badge = http("GET", f"{url}/m/{metric}/badge.svg")[2].decode()
    assert ">1m 39s<" in badge, "the newest kept value (99.5 s), not a broken run (200 s)"
    one = {"t": broken[-1]["t"]}
    assert ok_json("POST", f"{url}/m/{metric}/include", body=one, token=account.admin) == {
        "points": 1
    }
    assert http("GET", f"{url}/m/{metric}.svg")[2].decode().count('class="point excluded"') == 14
    assert (
        ok_json("POST", f"{url}/m/{metric}/include", body=span, token=account.admin)["points"] == 15
    )
    assert ok_json("GET", f"{url}/m/{metric}/changes")[0]["kind"] == "regression", "reversible"


@pytest.mark.parametrize(
    "body",
    [None, {}, {"t": 1.5}, {"t": -1}, {"start": 1}, {"t": 1, "start": 1, "end": 2}, {"t": "1"}],
)
def test_a_bad_span_is_400(url: str, account: Account, metric: str, body: Any) -> None:
    assert_error(http("POST", f"{url}/m/{metric}/exclude", body=body, token=account.admin), 400)


def test_metric_exclude_and_include_take_times_people_write(url: str, account: Account) -> None:
    metric = leveled_metric(url, account, (20, 10.0), name="step", unit="s")
    first = points(url, metric)[0]["t"]
    args = client_args(url, account.admin, "step")
    at = perfit.format_time(first)  # RFC 3339
    done = perfit_main("metric", "exclude", *args, "--at", at)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"points": 1} and "excluded 1 point(s)" in done.stderr
    span = perfit_main("metric", "include", *args, "--from", str(first), "--to", str(first + 600))
    assert json.loads(span.stdout) == {"points": 11}
    assert_said_no(perfit_main("metric", "exclude", *args, "--at", "yesterday"), 2)
    assert_said_no(perfit_main("metric", "exclude", *args, "--from", str(first)), 2)


def test_client_errors_say_what_to_do_next(url: str, account: Account, metric: str) -> None:
    """Each of these left a person stuck: an https URL to the plain-HTTP server, a server URL
    with a path, a wrong token; and check by name printed the name twice."""
    tls = perfit_main(
        "post", *client_args(url.replace("http://", "https://"), account.post, metric), "1"
    )
    assert tls.returncode == 4 and f"did you mean {url}?" in tls.stderr, tls.stderr
    assert "it may have arrived" not in tls.stderr
    sub = perfit_main("post", *client_args(f"{url}/perfit", account.post, metric), "1")
    assert sub.returncode == 1 and f"{url}/perfit/m/{metric} was asked" in sub.stderr, sub.stderr
    assert "PerfIt serves from its root" in sub.stderr
    wrong = perfit_main("post", *client_args(url, "x" * 43, metric), "1")
    assert wrong.returncode == 1 and "PERFIT_ACCESS_TOKEN" in wrong.stderr, wrong.stderr
    new_metric(url, account.admin, name="twice")
    checked = perfit_main("metric", "check", *client_args(url, account.admin, "twice"))
    assert "twice (twice)" not in checked.stdout and checked.stdout.startswith("twice:")


def test_the_access_log_takes_no_orders_from_a_client(tmp_path: Path) -> None:
    """A request line with terminal escapes, or a TLS ClientHello sent to the plain-HTTP port,
    lands in the log escaped: text, one line a request, nothing but newlines for control."""
    hello = bytes.fromhex("160301020001") + bytes(range(256))  # a ClientHello's first bytes
    with running_server(tmp_path / "data") as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        for raw in (b"GET /\x1b[31mRED\x1b]0;pwned\x07 HTTP/1.1\r\n\r\n", hello):
            with socket.create_connection((host, int(port))) as s:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
        poll(lambda: "".join(srv.err), lambda log: "x1b[31mRED" in log and "x16" in log)
    log = "".join(srv.err)
    assert "\\x1b[31mRED\\x1b]0;pwned\\x07" in log
    assert not [c for c in log if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]


# --------------------------------------------------------------------------------------------
# Web: webhooks
# A local receiver hears of each new regression once; a slow or failing one delays no post.
# --------------------------------------------------------------------------------------------


def test_a_webhook_hears_of_a_new_regression_once(url: str, account: Account) -> None:
    with _stub_server(200, b"ok") as (hook, seen):
        done = perfit_main("account", "webhook", f"{hook}/slack", *client_args(url, account.admin))
        assert done.returncode == 0, done.stderr
        assert account_doc(url, account.post)["webhook"] == f"{hook}/slack"
        metric = leveled_metric(url, account, (40, 100.0), name="suite", unit="s")
        assert seen == [], "no regression, no message"
        for _ in range(15):  # the step: fifteen runs 25 % slower
            assert post_point(url, metric, account.post, 125.0)[0] == 200
        poll(lambda: len(seen), lambda n: n >= 1)
        for _ in range(3):
            assert post_point(url, metric, account.post, 125.0)[0] == 200
    method, path, headers, body = seen[0]
    assert (method, path, headers["Content-Type"]) == ("POST", "/slack", "application/json")
    message = json.loads(body)
    assert message["text"].startswith("PerfIt: regression in suite: +25.0 %")
    assert "; last good 20" in message["text"] and ", first bad 20" in message["text"]
    assert message["text"].endswith(f"/m/{metric}") and message["links"]["page"].endswith(
        f"/m/{metric}"
    )
    assert message["change"]["kind"] == "regression" and message["metric"]["name"] == "suite"
    assert len(seen) == 1, "told once, however many points follow"


def test_links_have_the_public_url_and_never_a_clients_forwarded_host(tmp_path: Path) -> None:
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "gopher"}
    with running_server(tmp_path / "a", "--public-url", "perfit.example/") as srv:
        account = new_account(srv.url)
        board = ok_json("GET", f"{srv.url}/a/", token=account.admin)["board_id"]
        doc = ok_json("GET", f"{srv.url}/b/{board}/json", headers=forged)
        assert doc["base_url"] == "http://perfit.example"  # as --server is read: http:// added
        suite = {"results": [{"name": "x", "value": 1.0, "unit": "s"}]}
        compared = ok_json("POST", f"{srv.url}/b/{board}/compare", body=suite, headers=forged)
        assert compared["base_url"] == "http://perfit.example"
    # Without it: the request's Host; a proxy's X-Forwarded-* only when --trust-proxy says so.
    host = {"Host": "perfit.example:8443"}
    with running_server(tmp_path / "b") as srv:
        account = new_account(srv.url)
        board = ok_json("GET", f"{srv.url}/a/", token=account.admin)["board_id"]
        doc = ok_json("GET", f"{srv.url}/b/{board}/json", headers={**forged, **host})
        assert doc["base_url"] == "http://perfit.example:8443"
    with running_server(tmp_path / "c", "--trust-proxy", "1") as srv:
        account = new_account(srv.url)
        board = ok_json("GET", f"{srv.url}/a/", token=account.admin)["board_id"]
        proxied = {"X-Forwarded-Host": "evil.example, perfit.example", "X-Forwarded-Proto": "https"}
        doc = ok_json("GET", f"{srv.url}/b/{board}/json", headers={**proxied, **host})
        assert doc["base_url"] == "https://perfit.example"  # the entry the one proxy wrote
    bad = cli("serve", "--public-url", "ftp://x", "--data", str(tmp_path / "d"))
    assert bad.returncode == perfit.EXIT_USAGE and "--public-url" in bad.stderr


def test_a_regression_dismissed_as_noise_is_not_told(tmp_path: Path) -> None:
    with _stub_server(200, b"ok") as (hook, seen), perfit.Store.open(str(tmp_path)) as store:
        account, _ = store.create_account()
        store.set_webhook(account, f"{hook}/hook")
        metric = store.create_metric(account, name="suite")
        rows = [(i * 60 * perfit.US, 125.0 if i >= 40 else 100.0, b"") for i in range(60)]
        store.add_points(metric.id, perfit.PointBatch.of(rows))
        (change,) = perfit.metric_changes(metric, metric.series.snapshot(), 0.05)
        store.mark(metric.id, "dismiss", change.t * perfit.US, change.t * perfit.US)
        notifier = perfit.Notifier(store, allow_private=True)  # the receiver is on loopback
        notifier._look(metric.id, "http://perfit.example")  # what its thread does, in this one
        assert seen == []
        store.mark(metric.id, "undismiss", change.t * perfit.US, change.t * perfit.US)
        notifier._look(metric.id, "http://perfit.example")
        assert len(seen) == 1


def test_a_failing_webhook_is_retried_and_a_silent_one_delays_no_post(tmp_path: Path) -> None:
    store = perfit.Store.open(str(tmp_path))
    try:
        account, _ = store.create_account()
        metric = store.create_metric(account, name="m")
        rows = [(i * perfit.US, 100.0 if i < 40 else 130.0, b"") for i in range(1, 56)]
        store.add_points(metric.id, perfit.PointBatch.of(rows))
        notifier = perfit.Notifier(store, backoff=0.01, allow_private=True)
        with _stub_server(500, b"no") as (hook, seen):
            store.set_webhook(account, hook)
            notifier.written([metric.id], "http://perfit.example")
            poll(lambda: len(seen), lambda n: n == 4)  # the first attempt and three retries
        assert store.metrics[metric.id].marks.notified == {40}, "and not told again"
    finally:
        store.close()


def test_a_webhook_that_never_answers_delays_no_post(url: str, account: Account) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hook = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        ok_json("PATCH", f"{url}/a/", body={"webhook": hook}, token=account.admin)
        metric = leveled_metric(url, account, (40, 100.0), name="suite", unit="s")
        started = time.monotonic()
        for _ in range(15):  # a regression: the notifier now waits on the silent webhook
            assert post_point(url, metric, account.post, 125.0)[0] == 200
        assert time.monotonic() - started < 5, "the posts waited for the webhook"
        assert ok_json("GET", f"{url}/m/{metric}/changes")[-1]["kind"] == "regression"


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "[::1]", "169.254.169.254", "10.0.0.8", "192.168.1.1", "[fd00::1]", "0.0.0.0",
     "[::ffff:127.0.0.1]", "localhost"],
)  # fmt: skip
def test_a_webhook_inside_the_servers_network_is_refused(address: str, tmp_path: Path) -> None:
    """A tenant's admin could make the server POST to the operator's network (blind SSRF):
    loopback, link-local (cloud metadata), private, unique-local and unspecified addresses are
    refused unless the operator says otherwise."""
    with pytest.raises(perfit.BadRequest, match="--webhook-allow-private"):
        perfit.webhook_address(f"http://{address}:8080/hook")
    assert perfit.webhook_address(f"http://{address}:8080/hook", allow_private=True)


def test_the_server_refuses_a_local_webhook_and_does_not_send_to_one(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as srv, _stub_server(200, b"ok") as (hook, seen):
        acc = new_account(srv.url)
        refused = http("PATCH", f"{srv.url}/a/", body={"webhook": hook}, token=acc.admin)
        assert "webhook-allow-private" in assert_error(refused, 400)
        assert account_doc(srv.url, acc.admin)["webhook"] is None
    # Set when it resolved to a public address, sent when it resolves to a local one: not sent.
    store = perfit.Store.open(str(tmp_path / "store"))
    try:
        account, _ = store.create_account()
        metric = store.create_metric(account, name="m")
        rows = [(i * perfit.US, 100.0 if i < 40 else 130.0, b"") for i in range(1, 56)]
        store.add_points(metric.id, perfit.PointBatch.of(rows))
        with _stub_server(200, b"ok") as (hook, seen):
            store.set_webhook(account, hook)
            perfit.Notifier(store, backoff=0.001)._look(metric.id, "http://perfit.example")
            assert seen == []
    finally:
        store.close()


def test_a_webhook_must_be_an_http_url(url: str, account: Account) -> None:
    for bad in ("ftp://x.example/", "javascript:alert(1)", "https://", "https://a b", 5):
        answer = http("PATCH", f"{url}/a/", body={"webhook": bad}, token=account.admin)
        assert_error(answer, 400)
    assert_error(
        http("PATCH", f"{url}/a/", body={"webhook": "https://x.example"}, token=account.post), 403
    )
    done = ok_json("PATCH", f"{url}/a/", body={"webhook": None}, token=account.admin)
    assert done["webhook"] is None and account_doc(url, account.admin)["webhook"] is None


# --------------------------------------------------------------------------------------------
# Web: reading
# JSON, CSV, SVG, badges, change points, info and pages over HTTP, with their options.
# --------------------------------------------------------------------------------------------


def test_csv_has_a_header_and_one_row_per_point(url: str, account: Account, metric: str) -> None:
    assert post_point(url, metric, account.post, 1.5, 'a,b "quoted"')[0] == 200
    assert post_point(url, metric, account.post, 2)[0] == 200
    status, headers, body = http("GET", f"{url}/m/{metric}/csv")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("text/")
    text = body.decode()
    assert text.splitlines()[0] == "t,v,m"
    rows = list(csv.DictReader(io.StringIO(text)))
    expected = points(url, metric)
    assert [int(r["t"]) for r in rows] == [p["t"] for p in expected]
    assert [float(r["v"]) for r in rows] == [1.5, 2]
    assert [r["m"] for r in rows] == ['a,b "quoted"', ""]


def test_csv_of_an_empty_metric_is_just_the_header(url: str, metric: str) -> None:
    status, _, body = http("GET", f"{url}/m/{metric}/csv")
    assert status == 200
    assert body.decode().strip() == "t,v,m"


@pytest.mark.parametrize("suffix", ["/svg", ".svg"])
def test_svg_chart_is_an_svg_image(url: str, account: Account, metric: str, suffix: str) -> None:
    for value in (10, 12, 9, 15):
        assert post_point(url, metric, account.post, value)[0] == 200
    status, headers, body = http("GET", f"{url}/m/{metric}{suffix}")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("image/svg+xml")
    parse_svg(body)


def test_empty_metric_still_draws_a_chart(url: str, metric: str) -> None:
    status, headers, body = http("GET", f"{url}/m/{metric}/svg")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("image/svg+xml")
    parse_svg(body)


def test_svg_shows_title_labels_and_unit(url: str, account: Account) -> None:
    mid = new_metric(url, account.admin, name="build", unit="widgets")
    for value in (1, 2, 3):
        assert post_point(url, mid, account.post, value)[0] == 200
    query = urllib.parse.urlencode({"title": "Nightly build", "x-label": "When", "y-label": "Cost"})
    status, _, body = http("GET", f"{url}/m/{mid}/svg?{query}")
    assert status == 200
    text = " ".join(parse_svg(body).itertext())
    for expected in ("Nightly build", "When", "Cost", "widgets"):
        assert expected in text


def test_title_with_markup_is_escaped(url: str, account: Account, metric: str) -> None:
    assert post_point(url, metric, account.post, 1)[0] == 200
    evil = "<script>alert(1)</script>&"
    query = urllib.parse.urlencode({"title": evil})
    status, _, body = http("GET", f"{url}/m/{metric}/svg?{query}")
    assert status == 200
    assert evil in " ".join(parse_svg(body).itertext())
    status, _, body = http("GET", f"{url}/m/{metric}?{query}")
    assert status == 200
    assert "<script>alert(1)</script>" not in body.decode()


def test_a_negative_duration_is_refused_and_odd_number_syntax_too(
    url: str, account: Account, metric: str
) -> None:
    """A metric that counts time takes no negative value (a clock gone back, a lost sign); the
    CLI takes numbers as people write them in CI, not Python's 1_000."""
    said = assert_error(post_point(url, metric, account.post, -2.5), 400)
    assert "-2.5 s is a negative duration" in said
    rows = [{"t": 1_700_000_000, "v": 1.0}, {"t": 1_700_000_060, "v": -1.0}]
    assert_error(http("POST", f"{url}/m/{metric}/points", body=rows, token=account.admin), 400)
    run = {"points": [{"name": "build", "value": -3, "unit": "s"}]}
    assert "negative duration" in assert_error(
        http("POST", f"{url}/r/", body=run, token=account.post), 400
    )
    assert [p["v"] for p in points(url, metric)] == [], "nothing stored"
    args = client_args(url, account.post, metric)
    for odd in ("1_000", "inf", "nan", "0x10", "1,5"):
        assert_said_no(perfit_main("post", *args, odd), 2)
    assert perfit_main("post", *args, "1e3").returncode == 0
    assert [p["v"] for p in points(url, metric)] == [1000.0]


def test_min_and_max_clamp_without_breaking_the_chart(url: str, account: Account) -> None:
    metric = new_metric(url, account.admin, name="score")  # no time: it may go below 0
    for value in (-50, 5, 6, 500):
        assert post_point(url, metric, account.post, value)[0] == 200
    status, _, body = http("GET", f"{url}/m/{metric}/svg?min=0&max=10")
    assert status == 200
    parse_svg(body)


def test_control_characters_in_a_unit_still_make_a_valid_svg(url: str, account: Account) -> None:
    mid = new_metric(url, account.admin, unit="s\u0001", description="odd\u0002")
    assert post_point(url, mid, account.post, 1.0)[0] == 200
    for path in ("svg", "badge.svg"):
        parse_svg(http("GET", f"{url}/m/{mid}/{path}")[2])


# Found by the schemathesis run: the largest float once overflowed format_duration.
@pytest.mark.parametrize("value", [1.7976931348623157e308, -1.7976931348623157e308])
def test_duration_metric_with_the_largest_float_still_draws(url: str, value: float) -> None:
    admin = ok_json("PUT", f"{url}/a/", token=ROOT)["access_token"]
    metric = new_metric(url, admin, unit="s" if value > 0 else "score")  # no negative time
    assert post_point(url, metric, admin, value)[0] == 200
    for suffix in ("", ".svg", "/svg", "/html", "/badge.svg"):
        status, _, body = http("GET", f"{url}/m/{metric}{suffix}")
        assert status == 200, (suffix, status, body[:200])


ODD_NUMBERS = ["1e308", "-1.7976931348623157e308", "5e-324", "0", "-0", "1e-320", "nan", "inf"]


@pytest.mark.parametrize("low", ODD_NUMBERS[:4])
@pytest.mark.parametrize("high", ODD_NUMBERS)
def test_extreme_min_and_max_never_break_the_chart(
    url: str, metric: str, low: str, high: str
) -> None:
    status, _, body = http("GET", f"{url}/m/{metric}/svg?min={low}&max={high}")
    assert status in (200, 400), body[:300]


def test_extreme_values_draw_a_chart(url: str, account: Account) -> None:
    mid = new_metric(url, account.admin)
    extremes = [1.7976931348623157e308, -1.7976931348623157e308, 5e-324, 0.0]
    answer = http("POST", f"{url}/m/{mid}/points", token=account.admin,
                  body=[{"t": 1_700_000_000 + i, "v": v} for i, v in enumerate(extremes)])  # fmt: skip
    assert answer[0] == 200, answer
    for path in ("svg", "html", "badge.svg", "json", "csv"):
        assert http("GET", f"{url}/m/{mid}/{path}")[0] == 200, path


def _metrics_with_points(url: str, account: Account, count: int) -> list[str]:
    ids = []
    for n in range(count):
        mid = new_metric(url, account.admin, name=f"step {n}", unit="s")
        assert post_point(url, mid, account.post, 10 + n)[0] == 200
        ids.append(mid)
    return ids


def test_overlay_json_is_keyed_by_metric_id(url: str, account: Account) -> None:
    ids = _metrics_with_points(url, account, 3)
    doc = ok_json("GET", f"{url}/m/{','.join(ids)}/json")
    assert list(doc) == ids
    assert [doc[i][0]["v"] for i in ids] == [10.0, 11.0, 12.0]


@pytest.mark.parametrize("path", ["/svg", ".svg", "", "/html"])
def test_overlay_chart_has_a_legend_with_every_name(url: str, account: Account, path: str) -> None:
    ids = _metrics_with_points(url, account, 3)
    status, _, body = http("GET", f"{url}/m/{','.join(ids)}{path}")
    assert status == 200
    for n in range(3):
        assert f"step {n}".encode() in body
    if "svg" in path:
        groups = parse_svg(body).iter("{http://www.w3.org/2000/svg}g")
        colours = [g.get("class") for g in groups if (g.get("class") or "").startswith("s")]
        assert colours == ["s0", "s1", "s2"], "each metric gets its own colour"


def test_overlay_of_more_than_eight_metrics_is_400(url: str, account: Account) -> None:
    ids = [new_metric(url, account.admin) for _ in range(9)]
    assert "at most 8" in assert_error(http("GET", f"{url}/m/{','.join(ids)}/svg"), 400)


@pytest.mark.parametrize("fmt", ["csv", "badge.svg"])
def test_single_metric_formats_refuse_an_overlay(url: str, account: Account, fmt: str) -> None:
    ids = _metrics_with_points(url, account, 2)
    assert_error(http("GET", f"{url}/m/{','.join(ids)}/{fmt}"), 404)


def test_badge_shows_name_and_latest_value_as_a_duration(url: str, account: Account) -> None:
    mid = new_metric(url, account.admin, name="unit tests", unit="s")
    for value in (60, 61, 59, 90):
        assert post_point(url, mid, account.post, value)[0] == 200
    status, headers, body = http("GET", f"{url}/m/{mid}/badge.svg")
    assert status == 200 and headers["Content-Type"].startswith("image/svg+xml")
    root = parse_svg(body)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts == ["unit tests", "1m 30s"]
    colours = [r.get("fill") for r in root.iter("{http://www.w3.org/2000/svg}rect")]
    assert perfit.BADGE_COLOURS["bad"] in colours, "90 s after about 60 s is a regression"


def test_badge_of_an_empty_metric_says_no_data(url: str, metric: str) -> None:
    status, _, body = http("GET", f"{url}/m/{metric}/badge.svg")
    assert status == 200 and b"no data" in body


@pytest.mark.parametrize("fmt", ["svg", "json", "badge.svg"])
def test_answers_carry_an_etag_and_304_when_unchanged(
    url: str, account: Account, metric: str, fmt: str
) -> None:
    assert post_point(url, metric, account.post, 1.0)[0] == 200
    status, headers, _ = http("GET", f"{url}/m/{metric}/{fmt}")
    etag = headers["ETag"]
    assert status == 200 and etag and "max-age" in headers["Cache-Control"]
    status, _, body = http("GET", f"{url}/m/{metric}/{fmt}", headers={"If-None-Match": etag})
    assert status == 304 and body == b""
    assert post_point(url, metric, account.post, 2.0)[0] == 200  # the data changed
    status, _, _ = http("GET", f"{url}/m/{metric}/{fmt}", headers={"If-None-Match": etag})
    assert status == 200


def test_relative_ranges_are_cached_briefly_and_finished_ranges_long(url: str, metric: str) -> None:
    relative = http("GET", f"{url}/m/{metric}/svg?start-rel=30d")[1]["Cache-Control"]
    past = "start-fixed=2020-01-01T00:00:00Z&end-fixed=2020-02-01T00:00:00Z"
    finished = http("GET", f"{url}/m/{metric}/svg?{past}")[1]["Cache-Control"]
    assert relative == "public, max-age=60"
    assert finished == "public, max-age=86400"
    mixed = http("GET", f"{url}/m/{metric}/svg?start-fixed=2020-01-01T00:00:00Z&end-rel=1d")
    assert mixed[1]["Cache-Control"] == "public, max-age=60"


def test_changes_answer_numbers_as_the_data_carries_them(url: str, account: Account) -> None:
    # Medians of an even count are the mean of two points: 219.6 and 219.642 average to
    # 219.62099999999998 in binary; the answer says 219.621.
    mid, _ = _import_series(url, account, [219.6, 219.642] * 15 + [300.1, 300.3] * 15)
    _, _, body = http("GET", f"{url}/m/{mid}/changes")
    [change] = json.loads(body)
    assert (change["before"], change["after"]) == (219.621, 300.2)
    assert not re.search(rb"\d\.\d{10,}", body), body


def test_changes_route_reports_the_step_with_its_time(url: str, account: Account) -> None:
    mid, start = _import_series(url, account, _ci_series(200, [(120, 1.25)], 0.03))
    (change,) = ok_json("GET", f"{url}/m/{mid}/changes")
    fields = "t index before after change kind accepted dismissed provisional shape runs"
    assert set(change) == {*fields.split(), "last_good", "first_bad"}
    assert (change["accepted"], change["dismissed"], change["provisional"]) == (False,) * 3
    assert (change["shape"], change["runs"]) == ("step", 1)
    assert abs(change["index"] - 120) <= 3 and change["t"] == start + 3600 * change["index"]
    # The suspect window: the run before the step and its first (no commits were posted).
    assert change["last_good"] == {"t": change["t"] - 3600}
    assert change["first_bad"] == {"t": change["t"]}
    assert change["kind"] == "regression" and change["change"] == pytest.approx(0.25, abs=0.03)
    # The same time range as the chart: before the step, nothing changed.
    assert ok_json("GET", f"{url}/m/{mid}/changes?end-rel=100h") == []
    assert_error(http("GET", f"{url}/m/{mid}/changes?threshold=lots"), 400)
    assert ok_json("GET", f"{url}/m/{mid}/changes?threshold=0.5") == []


def test_the_chart_marks_each_change_with_its_size(url: str, account: Account) -> None:
    mid, _ = _import_series(url, account, _ci_series(200, [(120, 1.25)], 0.03))
    svg = parse_svg(http("GET", f"{url}/m/{mid}/svg")[2])
    marks = [
        g for g in svg.iter("{http://www.w3.org/2000/svg}g") if "change" in (g.get("class") or "")
    ]
    assert [g.get("class") for g in marks] == ["change regression"]
    label = marks[0].find("{http://www.w3.org/2000/svg}text").text
    assert re.fullmatch(r"\+2[3-7] %", label), label
    assert "regression" in marks[0].find("{http://www.w3.org/2000/svg}title").text


def test_changes_from_a_level_of_zero_are_valid_json(url: str, account: Account) -> None:
    mid, _ = _import_series(url, account, [0.0] * 30 + [5.0] * 30)
    status, _, body = http("GET", f"{url}/m/{mid}/changes")
    assert status == 200
    (change,) = json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert change["change"] is None and change["kind"] == "regression"
    assert http("GET", f"{url}/m/{mid}/svg")[0] == 200


@pytest.mark.parametrize(
    "duration", ["90s", "15m", "12h", "3d", "2w", "2 weeks", "1d 12h", "1 day"]
)
def test_start_rel_accepts_durations(
    url: str, account: Account, metric: str, duration: str
) -> None:
    assert post_point(url, metric, account.post, 4)[0] == 200
    assert [p["v"] for p in points(url, metric, **{"start-rel": duration})] == [4]
    query = urllib.parse.urlencode({"start-rel": duration})
    assert http("GET", f"{url}/m/{metric}/svg?{query}")[0] == 200


def test_time_range_filters_json_and_csv(url: str, account: Account, metric: str) -> None:
    assert post_point(url, metric, account.post, 4)[0] == 200
    assert points(url, metric, **{"end-rel": "1h"}) == []
    assert points(url, metric, **{"start-fixed": "2000-01-01T00:00:00Z"})[0]["v"] == 4
    assert points(url, metric, **{"start-fixed": "2000-01-01T02:00:00+02:00"})[0]["v"] == 4
    assert points(url, metric, **{"end-fixed": "2000-01-01T00:00:00Z"}) == []
    assert points(url, metric, **{"start-fixed": "2100-01-01T00:00:00Z"}) == []
    status, _, body = http("GET", f"{url}/m/{metric}/csv?end-rel=1h")
    assert status == 200
    assert body.decode().strip() == "t,v,m"


def test_relative_bound_wins_over_fixed(url: str, account: Account, metric: str) -> None:
    assert post_point(url, metric, account.post, 4)[0] == 200
    options = {"start-fixed": "2100-01-01T00:00:00Z", "start-rel": "1d"}
    assert [p["v"] for p in points(url, metric, **options)] == [4]


def test_empty_options_mean_unset(url: str, account: Account, metric: str) -> None:
    """What a submitted form with blank fields sends."""
    assert post_point(url, metric, account.post, 4)[0] == 200
    query = urllib.parse.urlencode(dict.fromkeys(CHART_OPTIONS, ""))
    for suffix in ("/svg", "/html", "/json"):
        assert http("GET", f"{url}/m/{metric}{suffix}?{query}")[0] == 200
    assert values(url, metric) == [4]


@pytest.mark.parametrize("suffix", ["/svg", "/json", ""])
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("start-rel", "banana"),
        ("end-rel", "banana"),
        ("start-fixed", "yesterday"),
        ("end-fixed", "2026-13-45T00:00:00Z"),
        ("min", "abc"),
        ("max", "abc"),
    ],
)
def test_bad_option_is_400_naming_it(
    url: str, metric: str, suffix: str, option: str, value: str
) -> None:
    query = urllib.parse.urlencode({option: value})
    message = assert_error(http("GET", f"{url}/m/{metric}{suffix}?{query}"), 400)
    assert option in message


def test_an_option_that_is_not_utf8_is_400_naming_it(url: str, metric: str) -> None:
    assert "start-fixed" in assert_error(http("GET", f"{url}/m/{metric}/svg?start-fixed=%ff"), 400)


@pytest.mark.parametrize("chart", [[5], [5, 5, 5], [0, 1e-9], [-1e300, 1e300]])
def test_edge_case_data_still_draws(url: str, account: Account, chart: list[float]) -> None:
    mid = new_metric(url, account.admin)
    for value in chart:
        assert post_point(url, mid, account.post, value)[0] == 200
    for suffix in ("/svg", ".svg"):
        status, _, body = http("GET", f"{url}/m/{mid}{suffix}")
        assert status == 200
        parse_svg(body)
    assert http("GET", f"{url}/m/{mid}")[0] == 200


ODD_QUERIES = [
    "min=nan",
    "max=inf",
    "min=1e999",
    "min=5&max=1",
    "min=3&max=3",
    "start-fixed=2030-01-01T00:00:00Z&end-fixed=2000-01-01T00:00:00Z",
    "start-fixed=9999-12-31T23:59:59Z",
    "start-fixed=0001-01-01T00:00:00Z",
    "end-fixed=1969-12-31T23:59:59Z",
    "start-rel=99999999999999999999w",
    "start-rel=0s",
    "start-rel=-5m",
    "end-rel=1d&start-rel=1h",
    "title=%ZZ",
    "title=" + "x" * 5000,
    "title=%00%01",
    "y-label=%F0%9F%9A%80",
]


@pytest.mark.parametrize("query", ODD_QUERIES)
def test_odd_chart_options_never_get_a_500(
    url: str, account: Account, metric: str, query: str
) -> None:
    for value in (1, 2, 3):
        assert post_point(url, metric, account.post, value)[0] == 200
    for suffix in ("/svg", "/json", "/csv", ""):
        answer = http("GET", f"{url}/m/{metric}{suffix}?{query}")
        assert answer[0] in (200, 400), (suffix, answer)
        if answer[0] == 400:
            assert_error(answer, 400)
        elif suffix == "/svg":
            parse_svg(answer[2])


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer \u00e9t\u00e9"},
        {"Authorization": "Bearer a b c"},
        {"Authorization": "Bearer " + "A" * 10000},
        {"Content-Type": "text/plain"},
        {"Content-Length": "-5"},
    ],
    ids=["latin-1-token", "spaces", "huge-token", "text-plain", "negative-length"],
)
def test_odd_headers_never_get_a_500(
    url: str, account: Account, metric: str, headers: dict[str, str]
) -> None:
    headers = {"X-Forwarded-For": f"10.2.0.{secrets.randbelow(250) + 1}", **headers}
    try:
        answer = http("POST", f"{url}/m/{metric}", raw=b'{"value": 1}', headers=headers)
    except (OSError, HTTPException):
        return  # the server may drop a request it cannot parse; it just must not crash
    assert answer[0] < 500, answer
    if answer[0] >= 400:
        assert_error(answer, answer[0])
    assert ok_json("GET", f"{url}/healthz")["ok"] is True


# --------------------------------------------------------------------------------------------
# Web: pages and errors
# The index and metric pages, the open form, and what a browser gets for an error.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "/html"])
def test_metric_page_has_the_chart_and_an_options_form(url: str, metric: str, path: str) -> None:
    status, headers, body = http("GET", f"{url}/m/{metric}{path}")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("text/html")
    page = body.decode()
    assert "<form" in page.lower()
    assert "svg" in page.lower()
    for option in CHART_OPTIONS:
        assert re.search(rf"name=[\"']?{re.escape(option)}\b", page), option


def test_metric_page_links_its_data_and_loads_nothing_from_elsewhere(url: str, metric: str) -> None:
    page = http("GET", f"{url}/m/{metric}")[2].decode()
    assert "json" in page
    assert "csv" in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", page, re.I)


def test_url_metadata_becomes_a_link_and_a_script_url_does_not(
    url: str, account: Account, metric: str
) -> None:
    job = "https://ci.example/jobs/42"
    assert post_point(url, metric, account.post, 1.0, job)[0] == 200
    assert post_point(url, metric, account.post, 2.0, "javascript:alert(1)")[0] == 200
    svg = parse_svg(http("GET", f"{url}/m/{metric}/svg")[2])
    xlink = "{http://www.w3.org/1999/xlink}href"
    links = [a.get("href") or a.get(xlink) for a in svg.iter("{http://www.w3.org/2000/svg}a")]
    assert links == [job]
    page = http("GET", f"{url}/m/{metric}")[2].decode()
    assert f'<a href="{job}"' in page
    assert 'href="javascript:' not in page


def test_metric_page_offers_embed_snippets_and_shows_the_metric(url: str, account: Account) -> None:
    mid = new_metric(url, account.admin, name="e2e", unit="s", description="nightly end-to-end")
    page = http("GET", f"{url}/m/{mid}?start-rel=30d")[2].decode()
    for expected in (
        "e2e",
        "nightly end-to-end",
        "unit: s",
        'id="embed-markdown"',
        'id="embed-html"',
    ):
        assert expected in page
    assert f"![e2e]({mid}.svg?start-rel=30d)" in page


def test_metric_page_under_html_links_its_data_correctly(url: str, metric: str) -> None:
    page = http("GET", f"{url}/m/{metric}/html")[2].decode()
    href = re.search(r'id="link-json" href="([^"]+)"', page).group(1)
    resolved = urllib.parse.urljoin(f"{url}/m/{metric}/html", href)
    assert resolved == f"{url}/m/{metric}/json"


def test_index_page_has_a_form_to_open_a_metric(url: str) -> None:
    status, headers, body = http("GET", f"{url}/")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("text/html")
    page = body.decode()
    assert "<form" in page.lower()
    assert "metric-id" in page


def test_open_metric_by_id_redirects_to_its_page(url: str, metric: str) -> None:
    asked = f"{url}/m/?metric-id={metric}"
    status, headers, _ = http("GET", asked)
    assert status == 303
    # Where a browser (or curl -L) lands: the Location resolved against the request's URL.
    assert urllib.parse.urljoin(asked, headers["Location"]) == f"{url}/m/{metric}"


@pytest.mark.parametrize(
    "pasted, lands_on",
    [
        ("{url}/m/{a}", "{a}"),
        ("  {url}/m/{a}.svg?start-rel=30d&title=&bogus=1  ", "{a}?start-rel=30d"),
        ("{url}/m/{a}/badge.svg", "{a}"),
        ("https://perfit.example/prefix/m/{a},{b}/html?max=9", "{a},{b}?max=9"),
        ("![build]({url}/m/{a}.svg)", "{a}"),
    ],
)
def test_the_open_form_takes_any_link_to_a_metric(
    url: str, account: Account, pasted: str, lands_on: str
) -> None:
    a, b = new_metric(url, account.admin), new_metric(url, account.admin)
    query = urllib.parse.urlencode({"metric-id": pasted.format(url=url, a=a, b=b)})
    status, headers, _ = http("GET", f"{url}/m/?{query}")
    assert status == 303
    assert headers["Location"] == lands_on.format(a=a, b=b)


def test_a_browser_gets_a_page_for_an_error_and_an_api_client_json(url: str, metric: str) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    for asked, status, link in [
        (f"{url}/m/{metric}?min=abc", 400, f'href="./{metric}"'),  # the same view, no options
        (f"{url}/m/{metric}/html?start-rel=soon", 400, 'href="./html"'),
        # A link back never runs script, whatever the path: a relative link, quoted.
        (
            f"{url}/m/javascript:alert(1),2,3,4,5,6,7,8,9?a=1",
            400,
            'href="./javascript%3Aalert%281%29,2,3,4,5,6,7,8,9"',
        ),
        (f"{url}/m/{unknown_id()}", 404, 'href="../"'),
        (f"{url}/no/such/route", 404, 'href="../../"'),
    ]:
        got, headers, body = http("GET", asked, headers=browser)
        assert got == status, asked
        assert headers["Content-Type"].startswith("text/html")
        page = body.decode()
        assert link in page and "PerfIt home" in page and "<h1>" in page
        assert_error(http("GET", asked, headers={"Accept": "application/json"}), status)
        assert_error(http("GET", asked, headers={"Accept": "*/*"}), status)  # curl, fetch()
    typed = unknown_id()
    _, _, body = http("GET", f"{url}/m/?metric-id={typed}", headers=browser)
    assert f'value="{typed}"' in body.decode(), "the form comes back with what was typed"


def test_open_unknown_metric_by_id_is_404(url: str) -> None:
    assert_error(http("GET", f"{url}/m/?metric-id={unknown_id()}"), 404)


def test_open_metric_without_an_id_is_an_error(url: str) -> None:
    answer = http("GET", f"{url}/m/")
    assert answer[0] in (400, 404)
    assert_error(answer, answer[0])


@pytest.mark.parametrize("suffix", ["", "/html", "/svg", ".svg", "/json", "/csv"])
def test_unknown_metric_is_404_in_every_format(url: str, suffix: str) -> None:
    assert_error(http("GET", f"{url}/m/{unknown_id()}{suffix}"), 404)


def test_unknown_format_is_404(url: str, metric: str) -> None:
    assert_error(http("GET", f"{url}/m/{metric}/nope"), 404)
    assert_error(http("GET", f"{url}/m/{metric}.png"), 404)


def test_unknown_route_is_404_json(url: str) -> None:
    assert_error(http("GET", f"{url}/nope"), 404)
    assert_error(http("GET", f"{url}/m/x/y/z"), 404)


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/m/{}"), ("DELETE", "/a/"), ("PATCH", "/t/")]
)
def test_wrong_method_is_405_json(url: str, metric: str, method: str, path: str) -> None:
    assert_error(http(method, url + path.format(metric)), 405)


# --------------------------------------------------------------------------------------------
# Web: the OpenAPI document
# Derived from the route table: valid, complete, truthful about tokens; schemathesis runs
# every check against it and finds nothing.
# --------------------------------------------------------------------------------------------


HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def openapi_paths(method: str, rule: str) -> set[str]:
    """The OpenAPI paths that document one bottle route."""
    # <board_id> and <token_id> are what they say; every other parameter is a metric id (or ids)
    named = rule.replace("<board_id>", "{board_id}").replace("<token_id>", "{token_id}")
    return {re.sub(r"<[^>]+>", "{id}", named)}


def test_openapi_json_is_a_valid_openapi_3_document(url: str) -> None:
    doc = ok_json("GET", f"{url}/openapi.json")
    from openapi_spec_validator import validate  # here: a second of imports for one test

    validate(doc)
    assert doc["openapi"].startswith("3.0.")
    assert doc["info"]["version"] == perfit.__version__


def test_openapi_documents_every_route_and_nothing_else(url: str, tmp_path: Path) -> None:
    doc = ok_json("GET", f"{url}/openapi.json")
    documented = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    store = perfit.Store.open(str(tmp_path))
    try:
        app = perfit.make_app(store, perfit.ServerConfig())
        routed = {
            (route.method, path)
            for route in app.routes
            for path in openapi_paths(route.method, route.rule)
        }
    finally:
        store.close()
    assert documented == routed


def test_openapi_says_which_routes_need_a_token(url: str) -> None:
    doc = ok_json("GET", f"{url}/openapi.json")
    bearer = doc["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    secured = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS and op.get("security")
    }
    assert secured == {
        ("PUT", "/a/"),
        ("GET", "/a/"),
        ("PATCH", "/a/"),
        ("PUT", "/t/"),
        ("PUT", "/b/"),
        ("PUT", "/m/"),
        ("POST", "/m/{id}"),
        ("POST", "/r/"),
        ("POST", "/m/{id}/points"),
        ("POST", "/m/{id}/accept"),
        ("POST", "/m/{id}/dismiss"),
        ("POST", "/m/{id}/undismiss"),
        ("POST", "/m/{id}/exclude"),
        ("POST", "/m/{id}/include"),
        ("GET", "/t/"),
        ("DELETE", "/t/{token_id}"),
        ("PATCH", "/m/{id}"),
        ("DELETE", "/m/{id}"),
    }


def test_openapi_links_lead_from_what_a_put_makes_to_the_routes_that_take_it(
    url: str, account: Account
) -> None:
    doc = ok_json("GET", f"{url}/openapi.json")
    links = doc["paths"]["/m/"]["put"]["responses"]["200"]["links"]
    takes_an_id = {
        op["operationId"]
        for path, item in doc["paths"].items()
        if "{id}" in path
        for method, op in item.items()
        if method in HTTP_METHODS
    }
    assert set(links) == takes_an_id
    made = ok_json("PUT", f"{url}/m/", body={"name": "linked"}, token=account.admin)
    link = links["showPoints"]
    pointer = link["parameters"]["id"].removeprefix("$response.body#/")
    assert ok_json("GET", f"{url}/m/{made[pointer]}/json") is not None
    assert "links" not in doc["paths"]["/a/"]["put"]["responses"]["200"]  # root's is no account


class FuzzWorld:
    """What the schemathesis run acts on: an admin token and metrics, some of another account."""

    def __init__(self, url: str) -> None:
        self.cases = 0
        self.url = url
        made = ok_json("PUT", f"{url}/a/", token=ROOT)
        self.admin = made["access_token"]
        stranger = ok_json("PUT", f"{url}/a/", token=ROOT)["access_token"]
        self.metrics = [
            new_metric(url, self.admin),
            new_metric(url, self.admin, name="build", unit="s"),
            new_metric(url, self.admin, name="size", unit="MB", better="higher"),
            new_metric(url, stranger, name="not ours", unit="ms"),
        ]
        for i, value in enumerate([12.5, 11.0, 0.0, -3.0, 1e300]):
            for metric in self.metrics[1:3]:
                if value < 0 and metric == self.metrics[1]:
                    continue  # "build" counts time: no negative value
                assert post_point(url, metric, self.admin, value, f"sha{i}")[0] == 200

    def real_ids(self, generated: str) -> str:
        """Well-formed ids in `generated` swapped for real ones, chosen by their hashes (so the
        run is repeatable); one time in five they are kept, to stay unknown metrics."""
        parts = urllib.parse.unquote(generated).split(",")  # path parameters come quoted
        ok = all(re.fullmatch(r"[A-Za-z0-9_-]{22}", part) for part in parts)
        if not ok or zlib.crc32(generated.encode()) % 5 == 4:
            return generated
        return ",".join(self.metrics[zlib.crc32(part.encode()) % 4] for part in parts)


@pytest.fixture(scope="module")
def fuzz_world(url: str) -> FuzzWorld:
    return FuzzWorld(url)


def _openapi_schema(url: str, coverage: bool = False, stateful: bool = False) -> Any:
    """The app's own OpenAPI document, as schemathesis reads it; repeatable runs."""
    config = schemathesis.Config.from_dict(
        {
            "seed": 5050,
            "generation": {"deterministic": True, "database": "none"},
            # Links are the document's own: schemathesis's inferred ones start every sequence
            # at a POST, and PerfIt makes things with PUT.
            "phases": {
                "stateful": {"enabled": stateful, "inference": {"algorithms": []}},
                "coverage": {"enabled": coverage},
            },
            # A body over its limit (more than 10,000 points) is refused with 413, as SPEC says,
            # though the schema's maxItems would make it a 400; an Idempotency-Key the fuzzer
            # sent before with another request is a 422 before the request is looked at.
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": ["400", "401", "403", "404", "405", "413", "422", "429"]
                }
            },
        }
    )
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def openapi_schema(url: str) -> Any:
    return _openapi_schema(url, coverage=False)


@pytest.fixture(scope="module")
def openapi_schema_with_coverage(url: str) -> Any:
    """Also with schemathesis's coverage phase: every boundary of every parameter (slow)."""
    return _openapi_schema(url, coverage=True)


#: Rules that OpenAPI 3.0 cannot state: one between two options, one between a request and
#: the metric it names, a length in UTF-8 bytes (maxLength counts characters). A schema-valid
#: request may break one of them (or a bound a pattern cannot count, or one that moves with the
#: clock); the 400 it gets must then name the rule.
UNSTATABLE_RULES = (
    "the start is after the end",
    "must be less than max",
    "not a unit of time",
    "bytes long; at most",
    "longer than a thousand years",
    "between 1970 and now",
    "shorter than a day",
    "must have the same length",
    "is a negative duration",  # by the metric's unit, which the request does not carry
    "webhook: cannot resolve",  # by what DNS says
    "came with another request before",  # an Idempotency-Key, by what was sent with it before
)


def positive_data_accepted_unless_unstatable(ctx: Any, response: Any, case: Any) -> Any:
    """schemathesis's positive_data_acceptance, but for a 400 that names such a rule."""
    if response.status_code in (400, 422) and any(
        rule in response.text for rule in UNSTATABLE_RULES
    ):
        return None
    return positive_data_acceptance(ctx, response, case)


def _fuzz_case(case: Any, world: FuzzWorld) -> None:
    params = case.path_parameters or {}
    well_formed = re.fullmatch(r"[A-Za-z0-9_-]{22}", str(params.get("id", "")))
    if case.method in ("DELETE", "PATCH") and well_formed:
        params["id"] = new_metric(world.url, world.admin)  # one of its own to change or delete
    elif "id" in params:
        params["id"] = world.real_ids(str(params["id"]))
    token_id = str(params.get("token_id", ""))
    if re.fullmatch(r"[A-Za-z0-9_-]{21}[AQgw]", token_id) and zlib.crc32(token_id.encode()) % 2:
        made = ok_json("PUT", f"{world.url}/t/", body={"type": "post"}, token=world.admin)
        params["token_id"] = made["token_id"]  # half the time, one that exists
    case.call_and_validate(headers=_fuzz_headers(world), timeout=10, **_FUZZ_CHECKS)


def _fuzz_headers(world: FuzzWorld) -> dict[str, str]:
    """The admin's token, and an address of its own for each case, so that the unauthenticated
    requests of one case (schemathesis leaves the token out on purpose) do not spend the
    failed-authentication budget of the next."""
    world.cases += 1
    return {
        "Authorization": f"Bearer {world.admin}",
        "X-Forwarded-For": f"10.5.{world.cases // 250}.{world.cases % 250}",
    }


_FUZZ_CHECKS = {
    "excluded_checks": [positive_data_acceptance],
    "additional_checks": [positive_data_accepted_unless_unstatable],
}


_FUZZ_SETTINGS = {"deadline": None, "derandomize": True, "database": None,
                  "suppress_health_check": list(HealthCheck)}  # fmt: skip


@schemathesis.pytest.from_fixture("openapi_schema").parametrize()
@settings(max_examples=5, **_FUZZ_SETTINGS)
def test_openapi_fuzz_finds_no_server_error(case: Any, fuzz_world: FuzzWorld) -> None:
    _fuzz_case(case, fuzz_world)


@pytest.mark.slow
@schemathesis.pytest.from_fixture("openapi_schema_with_coverage").parametrize()
@settings(max_examples=50, **_FUZZ_SETTINGS)
def test_openapi_fuzz_with_coverage_finds_no_server_error(case: Any, fuzz_world: FuzzWorld) -> None:
    _fuzz_case(case, fuzz_world)


@pytest.mark.slow
def test_openapi_stateful_run_finds_no_server_error(url: str, fuzz_world: FuzzWorld) -> None:
    """Sequences that follow the document's links: a metric made, then posted to, changed,
    accepted, deleted, read; a token made, then revoked; a board made, then compared with."""
    machine = _openapi_schema(url, stateful=True).as_state_machine()

    class Sequences(machine):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            # A key of its own for each call: hypothesis replays a sequence to shrink it, and
            # a key kept from the first run would answer differently (the default run fuzzes keys).
            fresh = {"Idempotency-Key": f"stateful-{fuzz_world.cases}-{time.monotonic_ns()}"}
            return {"headers": {**_fuzz_headers(fuzz_world), **fresh}, "timeout": 10}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, transport_kwargs=kwargs, **_FUZZ_CHECKS)

    Sequences.run(settings=settings(max_examples=25, stateful_step_count=6, **_FUZZ_SETTINGS))


# --------------------------------------------------------------------------------------------
# Web: idempotency keys
# A write sent again with its Idempotency-Key is stored once and answered as the first was;
# across a restart, sealing, and a crash between storing and answering.
# --------------------------------------------------------------------------------------------


def keyed(method: str, url: str, key: str, **kwargs: Any) -> Answer:
    return http(method, url, headers={"Idempotency-Key": key}, **kwargs)


def test_a_write_sent_again_with_its_key_is_stored_once_and_answered_alike(
    url: str, account: Account, metric: str
) -> None:
    first = keyed("POST", f"{url}/m/{metric}", "post-1", body={"value": 1.5}, token=account.post)
    again = keyed("POST", f"{url}/m/{metric}", "post-1", body={"value": 1.5}, token=account.post)
    assert first[0] == again[0] == 200 and first[2] == again[2]
    assert again[1].get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first[1]
    assert values(url, metric) == [1.5]
    # Every write: a run, an import, a new metric.
    run = {"points": [{"name": "keyed/a", "value": 2.0, "unit": "s"}]}
    runs = [keyed("POST", f"{url}/r/", "run-1", body=run, token=account.post) for _ in range(2)]
    assert runs[0][2] == runs[1][2] and runs[0][0] == 200
    made = [
        keyed("PUT", f"{url}/m/", "new-1", body={"name": "keyed/b"}, token=account.admin)
        for _ in range(2)
    ]
    assert made[0][2] == made[1][2]
    listed = ok_json("GET", f"{url}/a/", token=account.admin)["metrics"]
    assert sorted(m["name"] for m in listed) == ["build", "keyed/a", "keyed/b"]
    # The same key in another account is another key.
    other = new_account(url)
    mine = keyed("PUT", f"{url}/m/", "new-1", body={"name": "keyed/b"}, token=other.admin)
    assert json.loads(mine[2])["metric_id"] != json.loads(made[0][2])["metric_id"]


def test_a_key_sent_with_another_request_is_a_422_and_a_bad_key_a_400(
    url: str, account: Account, metric: str
) -> None:
    keyed("POST", f"{url}/m/{metric}", "k", body={"value": 1.0}, token=account.post)
    other = keyed("POST", f"{url}/m/{metric}", "k", body={"value": 2.0}, token=account.post)
    assert "another request" in assert_error(other, 422)
    for bad in ("", "x" * 256, "caf\u00e9"):
        answer = keyed("POST", f"{url}/m/{metric}", bad, body={"value": 3.0}, token=account.post)
        assert "Idempotency-Key" in assert_error(answer, 400)
    assert values(url, metric) == [1.0]
    # A refused write is no answer to keep: sent again (mended), it is done.
    bad_value = keyed("POST", f"{url}/m/{metric}", "k2", body={"value": -1}, token=account.post)
    assert_error(bad_value, 400)  # a time metric takes no negative duration
    assert (
        keyed("POST", f"{url}/m/{metric}", "k2", body={"value": 4.0}, token=account.post)[0] == 200
    )
    assert values(url, metric) == [1.0, 4.0]


def test_repeats_of_one_key_at_once_store_it_once(url: str, account: Account, metric: str) -> None:
    def send(_: int) -> Answer:
        return keyed(
            "POST", f"{url}/m/{metric}", "at-once", body={"value": 7.0}, token=account.post
        )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    assert {a[0] for a in answers} == {200} and len({a[2] for a in answers}) == 1
    assert values(url, metric) == [7.0]


def test_keys_outlive_a_restart_and_sealing_and_are_forgotten_after_a_day(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data) as srv:
        account = new_account(srv.url)
        metric = new_metric(srv.url, account.admin, name="m")
        first = keyed("POST", f"{srv.url}/m/{metric}", "k1", body={"value": 1}, token=account.post)
    store = perfit.Store.open(str(data))  # a key older than a day, then every log sealed
    store.keep_answer({"account": account.id, "key": "old", "request": "?", "t": 1e9,
                       "status": 200, "answer": {}})  # fmt: skip
    store.log.roll()
    store.sealer.run_now()
    store.close()
    assert not _files(data, ".log") or all(p.stat().st_size < 100 for p in _files(data, ".log"))
    with running_server(data) as srv:
        again = keyed("POST", f"{srv.url}/m/{metric}", "k1", body={"value": 1}, token=account.post)
        assert again[2] == first[2] and values(srv.url, metric) == [1.0]
    store = perfit.Store.open(str(data))
    try:
        assert (account.id, "k1") in store.index.keys and (
            account.id,
            "old",
        ) not in store.index.keys
    finally:
        store.close()


def test_compaction_forgets_keys_past_their_day_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key younger than a day when its log was sealed is carried into the segment; the
    compaction after its day leaves it out."""
    doc = {
        "account": "a",
        "key": "k",
        "request": "?",
        "t": time.time(),
        "status": 200,
        "answer": {},
    }
    with perfit.Store.open(str(tmp_path)) as store:
        store.keep_answer(doc)
        store.log.roll()
        store.sealer.run_now()
    with perfit.Store.open(str(tmp_path)) as store:
        assert ("a", "k") in store.index.keys  # sealed with it
        monkeypatch.setattr(perfit, "IDEMPOTENCY_KEEP", -60)  # a day and a minute later
        store.sealer.run_now(everything=True)
    monkeypatch.undo()
    with perfit.Store.open(str(tmp_path)) as store:
        assert ("a", "k") not in store.index.keys


def test_a_key_stored_without_its_answer_is_not_stored_again(tmp_path: Path) -> None:
    """A crash between storing a write and storing its answer: the key landed with the write
    (one record), so a repeat is told so, and nothing is stored twice."""
    data = tmp_path / "data"
    with running_server(data) as srv:
        account = new_account(srv.url)
        metric = new_metric(srv.url, account.admin, name="m")
    body = {"value": 1}
    digest = hashlib.sha256(
        json.dumps(["POST", f"/m/{metric}", "", body], sort_keys=True).encode()
    ).hexdigest()[:32]
    store = perfit.Store.open(str(data))
    riding = perfit._RIDERS.set([(perfit._REC_KEY, json.dumps(
        {"account": account.id, "key": "k", "request": digest, "t": time.time()}).encode())])  # fmt: skip
    try:
        store.add_point(perfit.decode_id(metric), 1.0)
    finally:
        perfit._RIDERS.reset(riding)
        store.close()
    with running_server(data) as srv:
        again = keyed("POST", f"{srv.url}/m/{metric}", "k", body=body, token=account.post)
        assert "not stored again" in assert_error(again, 409)
        assert values(srv.url, metric) == [1.0]


def test_the_client_sends_one_key_for_all_the_tries_of_a_write() -> None:
    """A proxy's 502 (the server restarting behind it) is tried again, with the same key."""
    with _stub_server([502, 502, 200], b'{"t": 1}') as (stub, seen):
        proc = perfit_main("post", "1", *client_args(stub, random_token(), unknown_id()))
    assert proc.returncode == 0, proc.stderr
    keys = [headers.get("Idempotency-Key") for _, _, headers, _ in seen]
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    assert "502" in proc.stderr and "retrying" in proc.stderr
    with _stub_server([200], b'{"t": 1}') as (stub, seen):
        for _ in range(2):
            perfit_main("post", "1", *client_args(stub, random_token(), unknown_id()))
    assert seen[0][2]["Idempotency-Key"] != seen[1][2]["Idempotency-Key"]  # two posts, two keys
    with _stub_server([500], b'{"message": "bug"}') as (stub, seen):
        proc = perfit_main("post", "1", *client_args(stub, random_token(), unknown_id()))
    assert len(seen) == 1 and "not retried" in proc.stderr  # a bug would only recur


# --------------------------------------------------------------------------------------------
# Web: the HTTP server
# Slow, stalled, greedy and malformed clients; a hypothesis fuzz of everything a client sends.
# --------------------------------------------------------------------------------------------


def test_healthz_says_ok(url: str) -> None:
    assert ok_json("GET", f"{url}/healthz")["ok"] is True


def test_slow_client_does_not_block_others(url: str) -> None:
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        started = time.monotonic()
        assert http("GET", f"{url}/healthz", timeout=5)[0] == 200
        assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"y" * 70_000 + b"\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /m/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["garbage", "long-uri", "long-header", "bad-version", "bad-chunk"],
)
def test_malformed_requests_get_a_json_4xx(url: str, request_bytes: bytes) -> None:
    answer = _raw_request(url, request_bytes)
    status_line, _, rest = answer.partition(b"\r\n")
    assert re.match(rb"HTTP/1\.[01] (4\d\d|505) ", status_line), status_line
    assert b"application/json" in rest.split(b"\r\n\r\n")[0]
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["message"]


def test_a_hundred_stalled_clients_do_not_block_a_new_request(tmp_path: Path) -> None:
    with running_server(tmp_path, "--header-timeout", "1") as srv:
        host, port = urllib.parse.urlsplit(srv.url).netloc.rsplit(":", 1)
        stalled = []
        try:
            for _ in range(100):
                sock = socket.create_connection((host, int(port)), timeout=5)
                sock.sendall(b"POST /m/x HTTP/1.1\r\nHost: x\r\nContent-Le")  # and then nothing
                stalled.append(sock)
            started = time.monotonic()
            assert http("GET", f"{srv.url}/healthz", timeout=5)[0] == 200
            assert time.monotonic() - started < 1.0
            # Trickling headers is no way to keep a thread: cut off after --header-timeout.
            stalled[0].settimeout(1 + 5)
            assert stalled[0].recv(1024) == b"", "the stalled connection was not closed"
        finally:
            for sock in stalled:
                sock.close()


def test_more_connections_than_allowed_get_503_at_once(tmp_path: Path) -> None:
    with running_server(tmp_path, "--max-connections", "5") as srv:
        host, port = urllib.parse.urlsplit(srv.url).netloc.rsplit(":", 1)
        held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(5)]
        try:
            # The server takes the five in as it gets to them: poll until they hold every slot.
            _, headers, body = poll(
                lambda: http("GET", f"{srv.url}/healthz", timeout=5), until=lambda a: a[0] == 503
            )
            assert headers["Retry-After"] == "1"
            assert "busy" in json.loads(body)["message"]
        finally:
            for sock in held:
                sock.close()
        # Slots come back when clients leave (as soon as the server sees them go).
        poll(lambda: http("GET", f"{srv.url}/healthz")[0], until=lambda status: status == 200)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)


_FIELDS = st.sampled_from(["value", "metadata", "t", "v", "m", "type", "name", "unit", "better"])


_BODIES = st.one_of(
    st.none(),
    st.binary(max_size=400),
    _JSON.map(lambda doc: json.dumps(doc).encode()),
    st.dictionaries(_FIELDS, _JSON, max_size=4).map(lambda doc: json.dumps(doc).encode()),
    st.lists(st.dictionaries(_FIELDS, _JSON, max_size=4), max_size=4).map(
        lambda d: json.dumps(d).encode()
    ),
)


_OPTIONS = st.dictionaries(
    st.sampled_from([*(o.name for o in perfit.CHART_OPTIONS), "metric-id", "zzz"]),
    st.text(max_size=40)
    | st.sampled_from(["1e308", "-1e308", "nan", "90s", "2 weeks", "0001-01-01"]),
    max_size=4,
)


_SEGMENT = st.text(max_size=30)


_PATHS = st.sampled_from(["/m/{metric}", "/m/{metric}/{seg}", "/m/{seg}", "/{seg}", "/m/{metric},{seg}/svg",
                          "/m/{metric}/points", "/a/", "/t/", "/m/", "/m/{metric}.svg", "/m/{seg}/json"])  # fmt: skip


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=_PATHS,
    segment=_SEGMENT,
    options=_OPTIONS,
    body=_BODIES,
    caller=st.sampled_from(["admin", "post", "none", "garbage"]),
)
def test_fuzzed_requests_never_get_a_5xx_nor_store_what_was_refused(
    url: str, account: Account, fuzz_metric: str, method: str, path: str, segment: str,
    options: dict, body: bytes | None, caller: str,
) -> None:  # fmt: skip
    before = len(points(url, fuzz_metric))
    target = path.format(metric=fuzz_metric, seg=urllib.parse.quote(segment, safe=""))
    query = urllib.parse.urlencode(options)
    token = {"admin": account.admin, "post": account.post, "none": None, "garbage": "x y z"}[caller]
    headers = {"X-Forwarded-For": f"10.9.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"}
    status, _, answer = http(method, f"{url}{target}?{query}", raw=body, token=token,
                                          headers=headers)  # fmt: skip
    assert status < 500, (method, target, query, body, answer[:300])
    if status >= 400:
        assert json.loads(answer)["message"]
    after = len(points(url, fuzz_metric))
    stored = method == "POST" and status == 200 and target.startswith(f"/m/{fuzz_metric}")
    if not stored:
        assert after == before, "a refused request stored points"


@pytest.fixture(scope="module")
def fuzz_metric(url: str, shared_account: Account) -> str:
    return new_metric(url, shared_account.admin, name="fuzzed", unit="s")


# --------------------------------------------------------------------------------------------
# Deploying: behind nginx
# The README's nginx block, verbatim but for ports and certificate paths, run by Debian's
# nginx in front of a server: big imports, gzip, no forged host in a link, restarts.
# --------------------------------------------------------------------------------------------

_LETSENCRYPT = "/etc/letsencrypt/live/perfit.example/"


@contextlib.contextmanager
def readme_nginx(upstream: str, folder: Path) -> Iterator[str]:
    """nginx running the README's ```nginx block in front of `upstream`; yields its https URL
    (its certificate, for SSL_CERT_FILE, is folder/cert.pem)."""
    nginx, openssl = shutil.which("nginx"), shutil.which("openssl")
    if not nginx or not openssl:
        need("nginx and openssl (apt-get install nginx)")
    (block,) = re.findall(r"```nginx\n(.*?)```", (HERE / "README.md").read_text(), re.S)
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)  # fmt: skip
    port = free_port()
    for old, new in [
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        (_LETSENCRYPT + "fullchain.pem", str(folder / "cert.pem")),
        (_LETSENCRYPT + "privkey.pem", str(folder / "key.pem")),
        ("http://127.0.0.1:5050", upstream),
    ]:
        assert old in block, old
        block = block.replace(old, new)
    temps = "".join(f"{k}_temp_path {folder}/{k};\n" for k in ("client_body", "proxy", "fastcgi",
                                                              "uwsgi", "scgi"))  # fmt: skip
    # As root, nginx's workers would be nobody, who cannot enter pytest's 0700 folders.
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(
        f"{user}pid {folder}/nginx.pid;\nerror_log {folder}/error.log;\nevents {{}}\n"
        f"http {{\naccess_log off;\n{temps}{block}}}\n"
    )
    proc = subprocess.Popen([nginx, "-p", str(folder), "-c", "nginx.conf", "-e",
                             str(folder / "error.log"), "-g", "daemon off;"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # until it accepts connections (or has died)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def through(proxy: str, folder: Path, method: str, path: str, **kwargs: Any) -> Answer:
    """One request through the proxy, trusting its certificate; gzip answers unzipped."""
    tls = ssl.create_default_context(cafile=str(folder / "cert.pem"))
    headers = {"Accept-Encoding": "gzip", **kwargs.pop("headers", {})}
    status, got, body = http(method, proxy + path, headers=headers, context=tls, **kwargs)
    if got.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return status, got, body


def test_the_readme_nginx_block_takes_a_whole_import_gzips_and_drops_a_forged_host(
    url: str, account: Account, tmp_path: Path
) -> None:
    metric = new_metric(url, account.admin, name="behind nginx", unit="s")
    with readme_nginx(url, tmp_path) as proxy:
        # The issue's import: 20,000 points with what a GitHub job stores (commit, job URL),
        # in batches of 10,000: over 3 MB each, three times nginx's default limit.
        n, start = (
            2 * perfit.MAX_IMPORT_POINTS,
            int(time.time()) - 2 * perfit.MAX_IMPORT_POINTS * 60,
        )
        job = "https://github.com/octo-org/octo-repo/actions/runs/12345678901/job/34567890123"
        rows = "".join(f"{start + 60 * i},{1.0 + i % 7},{job},{i:040x}\n" for i in range(n))
        (tmp_path / "points.csv").write_text("t,v,m,commit\n" + rows)
        imported = perfit_main("metric", "import", "--metric", metric, str(tmp_path / "points.csv"),
                               *client_args(proxy, account.admin),
                               env={"SSL_CERT_FILE": str(tmp_path / "cert.pem")})  # fmt: skip
        assert imported.returncode == 0 and f'"added": {n}' in imported.stdout, imported.stderr
        for view in ("/json", ".svg", "/csv", "/metrics"):
            status, headers, body = through(proxy, tmp_path, "GET", f"/m/{metric}{view}")
            assert status == 200 and headers.get("Content-Encoding") == "gzip" and body, view
        board = ok_json("GET", f"{url}/a/", token=account.admin)["board_id"]
        forged = {"X-Forwarded-Host": "evil.example"}
        status, _, body = through(proxy, tmp_path, "GET", f"/b/{board}/json", headers=forged)
        assert json.loads(body)["base_url"] == proxy  # its host and port, not the forged one


def test_the_readme_systemd_unit_is_rated_as_the_readme_says(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze") or need("systemd-analyze (apt-get install systemd)")
    readme = (HERE / "README.md").read_text()
    (unit,) = re.findall(r"```ini\n(\[Unit\].*?)```", readme, re.S)
    (tmp_path / "perfit.service").write_text(unit)
    rated = subprocess.run([analyze, "security", "--offline=true", "perfit.service"],
                           cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    exposure = re.search(
        r"Overall exposure level for perfit.service: (\d+\.\d) (\w+)", rated.stdout
    )
    assert exposure, rated.stdout + rated.stderr
    assert float(exposure[1]) <= 3.0  # "OK" or better, as the issue asked
    assert f"rates it\n**{exposure[1]} {exposure[2]}**" in readme


@pytest.mark.slow
def test_posts_through_nginx_while_the_server_restarts_are_each_stored_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    listen = ("--listen", f"127.0.0.1:{port}")
    srv = start_server(tmp_path / "data", *listen)
    account = new_account(srv.url)
    metric = new_metric(srv.url, account.admin, name="restarted", unit="s")
    half_way = threading.Event()
    restarted: list[Server] = []

    def restart() -> None:
        half_way.wait()
        srv.stop()
        time.sleep(3)  # the outage: three seconds of 502s from nginx
        restarted.append(start_server(tmp_path / "data", *listen))

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        with readme_nginx(srv.url, tmp_path) as proxy:
            env = {"SSL_CERT_FILE": str(tmp_path / "cert.pem"), "PERFIT_TIMEOUT": "30"}
            said = []
            for value in range(1, 61):
                posted = perfit_main("post", str(value), *client_args(proxy, account.post, metric),
                                     env=env)  # fmt: skip
                assert posted.returncode == 0, posted.stderr
                said.append(posted.stderr)
                if value == 10:
                    half_way.set()
            restarter.join()
            assert values(restarted[0].url, metric) == list(range(1, 61))
            assert any("502 Bad Gateway; retrying" in text for text in said), said
    finally:
        half_way.set()
        restarter.join()
        for server in restarted:
            server.stop()


# --------------------------------------------------------------------------------------------
# Web: in a real browser
# Playwright drives Debian's Chromium (`apt-get install chromium`): Playwright's own browser
# cannot be downloaded here. The pages as people use them, light and dark, desktop and phone.
# --------------------------------------------------------------------------------------------


CHROMIUM = "/usr/bin/chromium"


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


#: Where the browser tests leave full-page screenshots for people to look at, when set
#: (PERFIT_SHOTS=/tmp/shots python -m pytest -k browser ...). Off by default: each costs 0.4 s.
SHOTS = os.environ.get("PERFIT_SHOTS", "")


BROWSER_WAIT_MS = 5000  #: how long a page may take to show what a test waits for


OLD_POINTS = 10  #: posted with times two days ago, through the bulk import


RECENT_URLS = [f"https://ci.example.com/job/{n}" for n in range(4)]


RECENT_METADATA = [*RECENT_URLS, *(f"{n:07x}" for n in range(5)), "javascript:alert(1)"]


CHART_STATE = """() => {
  const svg = document.querySelector('#chart svg');
  if (!svg) return null;
  return {
    title: svg.querySelector('text.title')?.textContent ?? null,
    circles: svg.querySelectorAll('circle').length,
    texts: Array.from(svg.querySelectorAll('text'), (t) => t.textContent),
  };
}"""


POINT_LINKS = """() => Array.from(document.querySelectorAll('#chart svg circle'), (c) => {
  const a = c.closest('a');
  const href = a && (a.getAttribute('href')
                     || a.getAttributeNS('http://www.w3.org/1999/xlink', 'href'));
  return [c.querySelector('title')?.textContent ?? '', href || null];
})"""


def need(what: str) -> NoReturn:
    """Skips the test for want of `what`; on CI (CI=true) fails it instead: CI must install it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must install {what}", pytrace=False)
    pytest.skip(f"no {what}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the whole module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        need(f"{CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        for key in [k for k in _PAGES if k[0] == id(chromium)]:
            del _PAGES[key]
        chromium.close()


@pytest.fixture(scope="module")
def axe() -> Any:
    """axe-core, the accessibility checker, as axe-playwright-python ships it."""
    try:
        from axe_playwright_python.sync_playwright import Axe
    except ImportError:
        need("axe-playwright-python (pip install axe-playwright-python)")
    return Axe()


@pytest.fixture(scope="module")
def plotted(url: str, shared_account: Account) -> str:
    """A metric with old points (two days ago, metadata git shas) and recent ones (now, a few
    with a job URL as metadata); read, never written, by the tests that share it."""
    account = shared_account
    metric = new_metric(url, account.admin, name="build", unit="s")
    old = time.time() - 2 * 86400
    backfill = [{"t": old + 60 * n, "v": 50 + n, "m": f"old{n:04x}"} for n in range(OLD_POINTS)]
    answer = ok_json("POST", f"{url}/m/{metric}/points", body=backfill, token=account.admin)
    assert answer == {"added": OLD_POINTS, "existing": 0}
    for n, meta in enumerate(RECENT_METADATA):
        # Values 10 apart, so that no marker hides another one: each can be pointed at.
        assert post_point(url, metric, account.post, 100 + 10 * n, meta)[0] == 200
    return metric


#: Pages kept open between tests, one per browser and context settings (viewport, colour
#: scheme, touch): a new page starts a renderer process, a quarter of a second each time.
_PAGES: dict[tuple[int, str], Page] = {}


@contextlib.contextmanager
def opened(browser: Browser, address: str, status: int = 200, **context: Any) -> Iterator[Page]:
    """`address` loaded (answered with `status`) in a page with these context settings (colour
    scheme, viewport, ...); the page must not throw a JavaScript error meanwhile. What a test
    leaves behind (routes, pop-ups) is cleared; navigating away clears the rest."""
    key = (id(browser), json.dumps(context, sort_keys=True))
    page = _PAGES.get(key)
    if page is None or page.is_closed():
        ctx = browser.new_context(**context)
        ctx.set_default_timeout(BROWSER_WAIT_MS)
        page = _PAGES[key] = ctx.new_page()
    errors: list[str] = []

    def on_error(error: Any) -> None:
        errors.append(str(error))

    page.on("pageerror", on_error)
    try:
        response = page.goto(address)
        assert response is not None
        assert response.status == status, (address, response.status)
        yield page
        assert not errors, errors
    finally:
        page.remove_listener("pageerror", on_error)
        page.context.unroute_all(behavior="ignoreErrors")
        for other in page.context.pages:
            if other is not page:
                other.close()


def settle(page: Page, predicate: str, arg: Any = None) -> None:
    """Waits (at most BROWSER_WAIT_MS) until the JavaScript `predicate` holds, e.g. until the
    debounced redraw has landed; never raises: the asserts that follow say what is wrong."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(predicate, arg=arg, timeout=BROWSER_WAIT_MS)


def field(page: Page, name: str) -> Any:
    return page.locator(f"form#options [name={name!r}]")


def chart_state(page: Page) -> dict[str, Any]:
    """What the chart shows: its title, its number of markers and all of its texts."""
    state = page.evaluate(CHART_STATE)
    assert state is not None, "no <svg> in #chart"
    return state


def page_query(page: Page) -> dict[str, str]:
    """The query of the URL in the address bar."""
    return dict(urllib.parse.parse_qsl(page.evaluate("location.search.slice(1)")))


def split_url(address: str) -> tuple[str, dict[str, str]]:
    """An absolute URL as (everything before the query, the query's fields)."""
    parts = urllib.parse.urlsplit(address)
    return parts._replace(query="", fragment="").geturl(), dict(urllib.parse.parse_qsl(parts.query))


def embed_snippets(page: Page) -> dict[str, str]:
    for box in ("embed-markdown", "embed-html"):
        assert page.locator(f"textarea#{box}").count() == 1, f"no <textarea id={box}> on the page"
        assert page.locator(f"textarea#{box}").get_attribute("readonly") is not None, box
    return {
        "markdown": page.locator("#embed-markdown").input_value(),
        "html": page.locator("#embed-html").input_value(),
    }


def assert_embeds(snippets: dict[str, str], url: str, metric: str, query: dict[str, str]) -> None:
    """The snippets show this view's chart by absolute URL (and the metric's badge)."""
    chart = f"{url}/m/{metric}.svg"
    images = re.findall(r"!\[([^\]]*)\]\(([^)\s]+)\)", snippets["markdown"])
    assert [(alt, *split_url(src)) for alt, src in images if src.startswith(chart)] == [
        ("build", chart, query)
    ], snippets["markdown"]
    tags = [
        dict((k, html.unescape(v)) for k, v in re.findall(r'(\w+)="([^"]*)"', tag))
        for tag in re.findall(r"<img\b[^>]*>", snippets["html"])
    ]
    assert [
        (tag.get("alt"), *split_url(tag["src"]))
        for tag in tags
        if tag.get("src", "").startswith(chart)
    ] == [("build", chart, query)], snippets["html"]
    assert f"{url}/m/{metric}/badge.svg" in snippets["markdown"] + snippets["html"], snippets


def shoot(page: Page, name: str) -> None:
    """A full-page screenshot in SHOTS, if it is set, for people to look at."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


def luminance(css_colour: str) -> float:
    """Relative luminance (WCAG) of a computed `rgb(r, g, b)` colour."""
    channels = [int(c) / 255 for c in re.findall(r"\d+", css_colour)[:3]]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_form_redraws_the_chart_without_a_reload(browser: Browser, url: str, plotted: str) -> None:
    with opened(browser, f"{url}/m/{plotted}") as page:
        assert chart_state(page)["circles"] == OLD_POINTS + len(RECENT_METADATA)
        page.evaluate("window.__noReload = 1")
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url) if "/svg" in r.url else None)

        title = "Build time · main"
        field(page, "title").press_sequentially(title, delay=10)
        field(page, "start-rel").fill("1h")
        settle(
            page,
            "t => document.querySelector('#chart svg text.title')?.textContent === t"
            " && location.search.includes('start-rel=1h')",
            title,
        )
        shown = chart_state(page)
        assert shown["title"] == title
        assert shown["circles"] == len(RECENT_METADATA)  # the old points are out of range
        assert page_query(page) == {"title": title, "start-rel": "1h"}
        assert page.evaluate("window.__noReload") == 1
        assert 1 <= len(fetched) < len(title) / 2  # one redraw per pause, not per keystroke
        json_link = page.evaluate("document.getElementById('link-json').href")
        assert split_url(json_link) == (f"{url}/m/{plotted}/json", page_query(page))
        assert len(ok_json("GET", json_link)) == len(RECENT_METADATA)

        field(page, "end-rel").fill("30m")
        settle(page, "() => !document.querySelector('#chart svg circle')")
        shown = chart_state(page)
        assert shown["circles"] == 0
        assert any("No data points" in text for text in shown["texts"]), shown["texts"]
        assert shown["title"] == title
        assert page_query(page)["end-rel"] == "30m"
        assert page.evaluate("window.__noReload") == 1


def test_a_branch_picked_on_the_page_is_drawn_over_mains_line(
    browser: Browser, url: str, shared_account: Account
) -> None:
    mid, start = _import_series(
        url, shared_account, [10.0 + i % 3 for i in range(30)], name="pr build"
    )
    for branch, factor in (("fix-login", 1.4), ("old-idea", 0.7)):
        rows = [{"t": start + 3600 * i + 60, "v": 10.0 * factor, "branch": branch}
                for i in range(24, 30)]  # fmt: skip
        ok_json("POST", f"{url}/m/{mid}/points", body=rows, token=shared_account.admin)
    for scheme, phone in (("light", False), ("dark", False), ("light", True)):
        size = {"viewport": {"width": 390, "height": 800}, "is_mobile": True} if phone else {}
        with opened(browser, f"{url}/m/{mid}", color_scheme=scheme, **size) as page:
            if phone:  # the options are folded there
                page.locator("#options-box > summary").click()
            picker = field(page, "branch")
            assert picker.evaluate("s => Array.from(s.options, (o) => o.value)") == [
                "", "old-idea", "fix-login"
            ]  # fmt: skip
            picker.select_option("fix-login")
            settle(page, "() => location.search.includes('branch=fix-login')")
            assert page_query(page) == {"branch": "fix-login"}
            texts = chart_state(page)["texts"]
            assert "pr build @ fix-login" in texts and "pr build" in texts, texts
            dashed = page.evaluate(
                "() => getComputedStyle(document.querySelector('#chart svg .line.branch'))"
                ".strokeDasharray"
            )
            assert dashed not in ("", "none"), dashed
            shoot(page, f"metric-branch-{scheme}{'-phone' if phone else ''}.png")
            if phone:
                assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1


def test_a_bad_option_shows_the_servers_message_and_keeps_the_chart(
    browser: Browser, url: str, plotted: str
) -> None:
    said = json.loads(http("GET", f"{url}/m/{plotted}/svg?start-rel=banana")[2])["message"]
    with opened(browser, f"{url}/m/{plotted}?title=Kept") as page:
        before = chart_state(page)
        assert before["title"] == "Kept"
        field(page, "start-rel").fill("banana")
        settle(page, "() => document.getElementById('error').textContent.trim() !== ''")
        error = page.locator("p#error[role=alert]")
        assert error.text_content().strip() == said
        assert "start-rel" in said
        assert error.is_visible()
        assert chart_state(page) == before
        assert page_query(page) == {"title": "Kept"}  # a reload would not show an error page

        field(page, "start-rel").fill("1h")
        settle(page, "() => document.getElementById('error').textContent.trim() === ''")
        assert error.text_content().strip() == ""
        assert chart_state(page)["circles"] == len(RECENT_METADATA)


def test_embed_box_gives_absolute_snippets_of_the_current_view(
    browser: Browser, url: str, plotted: str
) -> None:
    with opened(browser, f"{url}/m/{plotted}?title=Nightly") as page:
        assert_embeds(embed_snippets(page), url, plotted, {"title": "Nightly"})
        field(page, "start-rel").fill("7d")
        # (Not just "7d": a random metric id may hold it, as Xdg7dUZi... once did.)
        settle(page, "() => document.getElementById('embed-html').value.includes('start-rel=7d')")
        assert_embeds(embed_snippets(page), url, plotted, {"title": "Nightly", "start-rel": "7d"})


def test_a_point_whose_metadata_is_a_url_links_to_it(
    browser: Browser, url: str, plotted: str
) -> None:
    # A tooltip ends with the point's metadata; only http(s) URLs become links, never javascript:.
    wanted = {meta: meta if meta.startswith("https://") else None for meta in RECENT_METADATA}
    with opened(browser, f"{url}/m/{plotted}") as page:
        links = {tip.splitlines()[-1]: href for tip, href in page.evaluate(POINT_LINKS)}
        assert {meta: links.get(meta, "no such point") for meta in wanted} == wanted
        field(page, "title").fill("Redrawn")
        settle(
            page, "() => document.querySelector('#chart svg text.title')?.textContent === 'Redrawn'"
        )
        links = {tip.splitlines()[-1]: href for tip, href in page.evaluate(POINT_LINKS)}
        assert {meta: links.get(meta, "no such point") for meta in wanted} == wanted

        # On the page a click (or a tap) on a point opens its box; the link is in there.
        job = RECENT_URLS[1]
        page.context.route(f"{job}*", lambda route: route.fulfill(body="a job", status=200))
        page.locator(f'#chart svg a[*|href="{job}"] circle').click()
        assert page.locator("#tip a").get_attribute("href") == job
        page.locator("#tip a").click()
        deadline = time.monotonic() + BROWSER_WAIT_MS / 1000
        while job not in [p.url for p in page.context.pages] and time.monotonic() < deadline:
            page.context.pages[-1].wait_for_timeout(50)
        assert job in [p.url for p in page.context.pages]


PHONE = {"viewport": {"width": 375, "height": 740}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True}  # fmt: skip


LONG_JOB_URL = "https://github.com/example-org/example-repository/actions/runs/12345678901/job/3"


@pytest.fixture(scope="module")
def stepped(url: str, shared_account: Account) -> str:
    """A metric that steps up by a third at its 40th run of 60, each run linking to its job."""
    account = shared_account
    metric = new_metric(url, account.admin, name="test suite", unit="s")
    start, rng = int(time.time()) - 60 * 3600, random.Random(7)
    runs = [{"t": start + 3600 * i, "v": round((100 if i < 40 else 133) * rng.gauss(1, 0.01), 3),
             "m": f"{LONG_JOB_URL}{i}"} for i in range(60)]  # fmt: skip
    ok_json("POST", f"{url}/m/{metric}/points", body=runs, token=account.admin)
    return metric


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_tapping_a_point_shows_its_time_value_and_link(
    browser: Browser, url: str, stepped: str, scheme: str
) -> None:
    with opened(browser, f"{url}/m/{stepped}", color_scheme=scheme, **PHONE) as page:
        newest = page.locator("#chart circle.point").last
        box = newest.bounding_box()
        assert box is not None
        assert page.locator("#tip").is_hidden()
        page.touchscreen.tap(box["x"] + box["width"] / 2 - 6, box["y"] + box["height"] / 2 + 6)
        tip = page.locator("#tip")
        assert tip.is_visible(), "a tap near a point showed nothing"
        shoot(page, f"metric-phone-tap-{scheme}.png")
        points_ = ok_json("GET", f"{url}/m/{stepped}/json")
        text = tip.inner_text()
        assert perfit.format_time(points_[-1]["t"]) in text
        assert perfit.format_value(points_[-1]["v"], "s") in text
        assert tip.locator("a").get_attribute("href") == points_[-1]["m"]
        assert page.evaluate("document.documentElement.scrollWidth") <= 375 + 1
        page.touchscreen.tap(5, 5)  # elsewhere: the box goes
        assert tip.is_hidden()


def test_change_labels_and_latest_points_read_well_on_a_phone(
    browser: Browser, url: str, stepped: str
) -> None:
    with opened(browser, f"{url}/m/{stepped}", **PHONE) as page:
        shoot(page, "metric-phone-latest.png")
        sizes = page.evaluate(
            """() => Object.fromEntries(['.change text', 'text.ticklabel'].map((s) => {
                 const t = document.querySelector('#chart svg ' + s);
                 return [s, t && t.getBoundingClientRect().height]; }))"""
        )
        assert sizes[".change text"], "no change marked"
        assert sizes[".change text"] >= 0.75 * sizes["text.ticklabel"], sizes
        layout = page.evaluate(
            """() => {
              const lines = (node) => { const r = document.createRange(); r.selectNodeContents(node);
                                        return new Set(Array.from(r.getClientRects(), (b) => Math.round(b.top))).size; };
              const values = document.querySelectorAll('table.latest tbody td:nth-child(2)');
              const words = Array.from(document.querySelectorAll('table.latest a'),
                                       (a) => Array.from(a.childNodes).filter((n) => n.nodeType === 3));
              return {values: Array.from(values, lines), links: words.length,
                      broken: words.flat().filter((n) => lines(n) > 1).map((n) => n.textContent),
                      wrapped: Array.from(document.querySelectorAll('table.latest a'), lines)};
            }"""
        )
    assert layout["values"] and set(layout["values"]) == {1}, "a value wraps inside itself"
    assert layout["links"] == 10
    assert max(layout["wrapped"]) > 1, "the long URLs should wrap on a phone"
    assert layout["broken"] == [], "a URL broke in the middle of a word"


def test_a_browser_gets_a_page_for_a_bad_option_or_an_unknown_metric(
    browser: Browser, url: str, plotted: str
) -> None:
    with opened(browser, f"{url}/m/{plotted}?min=abc", status=400, **PHONE) as page:
        shoot(page, "error-bad-option.png")
        assert "min" in page.locator("[role=alert]").inner_text()
        page.get_by_role("link", name="the same view with its default options").click()
        page.wait_for_url(f"{url}/m/{plotted}")
        assert chart_state(page)["circles"] > 0
    with opened(browser, f"{url}/m/{unknown_id()}", status=404) as page:
        shoot(page, "error-unknown-metric.png")
        page.get_by_role("link", name="PerfIt home").click()
        page.wait_for_url(f"{url}/")
        assert page.locator("#metric-id").is_visible()


@pytest.mark.parametrize(
    "typed", ["{metric}", "{url}/m/{metric}.svg?start-rel=30d", "  {url}/m/{metric}/html "]
)
def test_the_index_form_opens_a_metric_by_id_or_any_link_to_it(
    browser: Browser, url: str, plotted: str, typed: str
) -> None:
    with opened(browser, f"{url}/") as page:
        page.fill("#metric-id", typed.format(url=url, metric=plotted))
        page.click("form.open button")
        page.wait_for_url(re.compile(re.escape(f"{url}/m/{plotted}") + r"(\?|$)"))
        assert chart_state(page)["circles"] > 0
        assert page_query(page) == ({"start-rel": "30d"} if "start-rel" in typed else {})


def test_the_index_form_says_so_for_an_unknown_metric_and_keeps_what_was_typed(
    browser: Browser, url: str
) -> None:
    typed = unknown_id()
    with opened(browser, f"{url}/") as page:
        page.fill("#metric-id", typed)
        page.click("form.open button")
        page.wait_for_load_state()
        assert "no metric" in page.locator("[role=alert]").inner_text()
        assert page.locator("#metric-id").input_value() == typed
        shoot(page, "error-open-unknown.png")


def test_page_and_chart_follow_the_dark_colour_scheme(
    browser: Browser, url: str, plotted: str
) -> None:
    colours = {}
    for scheme in ("light", "dark"):
        with opened(browser, f"{url}/m/{plotted}?title=Scheme", color_scheme=scheme) as page:
            shoot(page, f"metric-{scheme}.png")
            colours[scheme] = page.evaluate(
                """() => [getComputedStyle(document.body).backgroundColor,
                          getComputedStyle(document.querySelector('#chart svg .bg')).fill]"""
            )
            page.goto(f"{url}/m/{plotted}.svg")  # the static SVG, as a README links it
            colours[scheme].append(
                page.evaluate("getComputedStyle(document.querySelector('.bg')).fill")
            )
    for light, dark in zip(colours["light"], colours["dark"]):
        assert light != dark, colours
        assert luminance(light) > 0.8, colours
        assert luminance(dark) < 0.1, colours


def test_the_chart_draws_a_line_not_a_filled_area(browser: Browser, url: str, plotted: str) -> None:
    for address in (f"{url}/m/{plotted}", f"{url}/m/{plotted}.svg"):  # inline, and as linked
        with opened(browser, address) as page:
            fills = page.evaluate(
                "() => Array.from(document.querySelectorAll('svg .line'),"
                " (line) => getComputedStyle(line).fill)"
            )
        assert fills, address
        assert set(fills) == {"none"}, (address, fills)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_metric_page_fits_a_phone(browser: Browser, url: str, plotted: str, scheme: str) -> None:
    with opened(
        browser,
        f"{url}/m/{plotted}?title=On+a+phone",
        viewport={"width": 375, "height": 740},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme=scheme,
    ) as page:
        shoot(page, f"metric-phone-{scheme}.png")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375 + 1
        chart = page.locator("#chart svg")
        assert chart.is_visible()
        box = chart.bounding_box()
        assert box is not None
        assert 300 <= box["width"] <= 375, box
        assert box["x"] >= 0, box
        # The nine chart options are folded on a phone (they filled the screen); a tap opens them.
        assert not field(page, "title").is_visible()
        page.locator("#options-box > summary").click()
        assert field(page, "title").is_visible()


def test_the_metric_page_says_how_many_points_links_commits_and_wraps_names(
    url: str, account: Account
) -> None:
    name = "tests/test_parse.py::TestParser::test_a_rather_long_benchmark_name"
    mid = new_metric(url, account.admin, name=name, unit="s")
    now = int(time.time())
    rows = [{"t": now - 600 + i, "v": 1.0, "commit": f"{i:07x}abc",
             "m": f"https://github.com/acme/app/actions/runs/{i}"} for i in range(12)]  # fmt: skip
    ok_json("POST", f"{url}/m/{mid}/points", body=rows, token=account.admin)
    page = http("GET", f"{url}/m/{mid}")[2].decode()
    assert f'The newest 10 of 12 points; <a href="{mid}/csv">all of them as CSV</a>' in page
    assert 'href="https://github.com/acme/app/commit/000000babc"' in page
    assert "tests/<wbr>test_parse.<wbr>py::<wbr>TestParser::<wbr>test_a_rather_long" in page
    assert 'rel="icon" href="data:image/svg+xml' in page, "no request for /favicon.ico"


def test_chart_text_stays_readable_on_a_phone(browser: Browser, url: str, plotted: str) -> None:
    phone = {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True}
    with opened(browser, f"{url}/m/{plotted}?title=Small", **phone) as page:
        # The size a reader sees: the font size times the scale the chart is drawn at.
        sizes = page.evaluate(
            """() => Array.from(document.querySelectorAll('#chart svg text'),
                 (t) => [t.textContent, Math.hypot(t.getScreenCTM().a, t.getScreenCTM().b) * parseFloat(getComputedStyle(t).fontSize)])"""
        )
    assert sizes
    assert [(text, round(px, 1)) for text, px in sizes if px < 9] == []


#: Where a chart's visible texts that a selector picks lie: [text, left, right, top, bottom],
#: and the chart's own left and right.
_TEXT_BOXES = """(selector) => {
  const svg = document.querySelector('#chart svg').getBoundingClientRect();
  const boxes = Array.from(document.querySelectorAll('#chart svg ' + selector))
    .filter((t) => getComputedStyle(t).display !== 'none')
    .map((t) => { const r = t.getBoundingClientRect(); return [t.textContent, r.left, r.right, r.top, r.bottom]; });
  return [boxes, [svg.left, svg.right]];
}"""


def test_tick_labels_never_overlap_nor_leave_the_chart_at_any_width_or_span(
    browser: Browser, url: str, account: Account
) -> None:
    """A 7-month chart at 390 px ran its month labels together ("Dec 2023Jan 2024") and past
    the frame; the reduction note started off the canvas."""
    now, day = int(time.time()), 86400
    for span in (day, 7 * day, 213 * day, 730 * day, 3652 * day):
        mid = new_metric(url, account.admin, name=f"span {span // day}d", unit="s")
        count = 2000 if span > 100 * day else 60  # the long ones reduced to the pixels: a note
        rows = [{"t": now - span + span * i // count, "v": 1.0 + i % 3} for i in range(count)]
        ok_json("POST", f"{url}/m/{mid}/points", body=rows, token=account.admin)
        for width in (320, 390, 1280):
            size = {"viewport": {"width": width, "height": 800}, "is_mobile": width < 600}
            with opened(browser, f"{url}/m/{mid}", **size) as page:
                # The time axis's labels (the value axis's are anchored at their end).
                axis = "text.ticklabel[text-anchor=middle]"
                (boxes, (left, right)) = page.evaluate(_TEXT_BOXES, axis)
                notes = page.evaluate(_TEXT_BOXES, "text.note")[0]
            where = f"{span // day} days at {width} px"
            assert len(boxes) >= 2, (where, boxes)
            # The reduction note, in its long or (on a phone) short form, never both.
            assert len(notes) == (span > 100 * day), (where, notes)
            for text, a, b, _, _ in boxes + notes:
                assert left - 0.5 <= a and b <= right + 0.5, (where, text, a, b, left, right)
            for one, two in zip(boxes, boxes[1:]):
                assert one[2] <= two[1], (where, one, two)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("path", ["/", "/m/{metric}?title=Build+time"], ids=["index", "metric"])
def test_pages_pass_an_accessibility_check(
    browser: Browser, axe: Any, url: str, plotted: str, path: str, scheme: str
) -> None:
    with opened(browser, url + path.format(metric=plotted), color_scheme=scheme) as page:
        found = axe.run(page).response["violations"]
    for v in found:
        print(f"{v['id']} ({v['impact']}): {v['help']}")
        for node in v["nodes"]:
            print(f"  {' '.join(node['target'])}: {node['failureSummary']}")
            print(f"    {node['html'][:200]}")
    bad = [v for v in found if v["impact"] in ("serious", "critical")]
    assert [(v["id"], len(v["nodes"])) for v in bad] == []


@pytest.fixture(scope="module")
def board(url: str) -> str:
    """A board: metrics in two groups with a regression and an improvement, an idle one, and
    a Go suite posted by name; read, never written, by the tests that share it."""
    account = new_account(url)
    _stepped_run_metrics(url, account)
    args = [*client_args(url, account.post), "--metadata", "3f2a9c1e7b0d https://ci.example/job/7"]
    done = perfit_main("post", "--format", "go", str(FIXTURES / "go.txt"), "--prefix", "go", *args)
    assert done.returncode == 0, done.stderr
    return f"{url}/b/{account_doc(url, account.admin)['board_id']}"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_board_passes_an_accessibility_check(
    browser: Browser, axe: Any, board: str, scheme: str
) -> None:
    with opened(browser, board, color_scheme=scheme) as page:
        shoot(page, f"board-{scheme}.png")
        found = axe.run(page).response["violations"]
    bad = [
        (v["id"], [n["html"][:120] for n in v["nodes"]])
        for v in found
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_board_fits_a_phone(browser: Browser, board: str, scheme: str) -> None:
    phone = {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True}
    with opened(browser, board, color_scheme=scheme, device_scale_factor=2, **phone) as page:
        shoot(page, f"board-phone-{scheme}.png")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375 + 1
        first = page.locator("table.board tbody tr").first
        assert first.locator("svg.spark").is_visible() and first.locator("a").is_visible()


def test_the_boards_filter_box_hides_what_does_not_match(browser: Browser, board: str) -> None:
    with opened(browser, board) as page:
        rows = page.locator("table.board tbody tr")
        assert rows.count() == 18
        page.fill("#filter", "LATENCY")  # any case
        visible = page.evaluate(
            "() => Array.from(document.querySelectorAll('tbody tr:not([hidden])'),"
            " (r) => r.dataset.name)"
        )
        assert visible == ["api/latency"]
        assert page.locator("section.group:not([hidden]) h2").all_inner_texts() == ["api"]
        page.fill("#filter", "no such metric")
        assert page.locator("#none").is_visible()
        page.fill("#filter", "")
        assert page.locator("tbody tr:not([hidden])").count() == 18
        page.click("text=latency")  # a row's name opens the metric's page
        page.wait_for_url("**/m/*")
        assert page.locator("h1").inner_text() == "api/latency"


# --------------------------------------------------------------------------------------------
# Client
# Against a server that is down, not there, not trusted, not PerfIt, or elsewhere.
# --------------------------------------------------------------------------------------------


def test_a_server_that_is_down_is_retried_aloud_then_exit_4() -> None:
    down = client_args(f"http://127.0.0.1:{free_port()}", random_token(), unknown_id())
    started = time.monotonic()
    proc = cli("post", "1", *down, env={"PERFIT_TIMEOUT": "1.5"})
    assert time.monotonic() - started < 1.5 + 5  # the timeout, and a Python start
    assert proc.returncode == perfit.EXIT_UNREACHABLE, proc.stderr
    retrying, failed = proc.stderr.strip().splitlines()
    assert "refused" in retrying and "retrying for up to" in retrying
    assert "PERFIT_TIMEOUT" in retrying
    assert "within 1.5s" in failed


def test_a_name_that_does_not_resolve_fails_at_once() -> None:
    started = time.monotonic()
    proc = perfit_main(
        "post", "1", *client_args("http://perfit.invalid", random_token(), unknown_id())
    )
    assert time.monotonic() - started < 10, "a typo in the host name was retried for 30 s"
    assert_said_no(proc, perfit.EXIT_UNREACHABLE)
    assert "cannot resolve" in proc.stderr and "perfit.invalid" in proc.stderr


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A TLS server context with a self-signed certificate, which no client trusts."""
    openssl = shutil.which("openssl") or need("openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_a_certificate_that_does_not_verify_fails_at_once(self_signed: ssl.SSLContext) -> None:
    with _stub_server(200, b"{}", tls=self_signed) as (url, seen):
        started = time.monotonic()
        server = url.replace("http://", "https://")
        proc = perfit_main("post", "1", *client_args(server, random_token(), unknown_id()))
    assert time.monotonic() - started < 10, "a bad certificate was retried"
    assert_said_no(proc, perfit.EXIT_UNREACHABLE)
    assert "certificate" in proc.stderr
    assert seen == [], "the request went out over a connection that did not verify"


def test_a_redirect_is_not_followed_and_the_token_stays_home() -> None:
    with _stub_server(200, b"{}") as (elsewhere, seen_elsewhere):
        moved = {"Location": f"{elsewhere}/m/x"}
        with _stub_server(301, b"", moved) as (url, _):
            token = random_token()
            post = perfit_main("post", "1", *client_args(url, token, unknown_id()))
            assert_said_no(post, 1)
            assert "redirects to" in post.stderr
    assert seen_elsewhere == [], "the client followed the redirect"


def test_run_keeps_the_commands_code_when_the_server_answers_html() -> None:
    with _stub_server(200, b"<html>a login page</html>", {"Content-Type": "text/html"}) as (url, _):
        run = perfit_main(
            "run", *client_args(url, random_token(), unknown_id()), "--", sys.executable, "-c", ""
        )
        assert run.returncode == 0, run.stderr
        assert "not JSON" in run.stderr and "Traceback" not in run.stderr
        assert_said_no(perfit_main("metric", "get", *client_args(url, metric=unknown_id())), 1)


@pytest.mark.parametrize(
    "server", ["http://127.0.0.1:abc", "http://[::1", "ftp://example.com", "http://x/?q=1"]
)
def test_a_bad_server_url_is_a_usage_error(server: str) -> None:
    assert_said_no(perfit_main("post", "1", *client_args(server, random_token(), unknown_id())), 2)


# --------------------------------------------------------------------------------------------
# CLI: serve
# Starting and stopping the server: what can fail comes before a root token, which is printed
# once and kept only as a hash.
# --------------------------------------------------------------------------------------------


def test_sigterm_stops_the_server_cleanly(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    assert srv.stop() == 0


def _printed_root_token(srv: Server) -> list[str]:
    marker = "perfit: root access token:"
    return [line.split(marker, 1)[1].strip() for line in srv.out if marker in line]


def test_generated_root_token_is_printed_once_and_only_its_hash_is_kept(tmp_path: Path) -> None:
    with running_server(tmp_path, root=None) as srv:
        (token,) = _printed_root_token(srv)
        assert TOKEN_RE.match(token)
        saved = tmp_path / perfit.ROOT_TOKEN_FILE
        assert saved.read_text().strip() == perfit.hash_token(token).hex()
        assert saved.stat().st_mode & 0o777 == 0o600
        assert http("PUT", f"{srv.url}/a/", token=token)[0] == 200
        assert srv.stop() == 0
    with running_server(tmp_path, root=None) as srv:
        assert token not in "".join(srv.out)
        assert not _printed_root_token(srv)
        assert http("PUT", f"{srv.url}/a/", token=token)[0] == 200
    # Rotation: delete the hash and restart; the old token stops working, a new one is printed.
    saved.unlink()
    with running_server(tmp_path, root=None) as srv:
        (new,) = _printed_root_token(srv)
        assert new != token
        assert http("PUT", f"{srv.url}/a/", token=token)[0] == 401
        assert http("PUT", f"{srv.url}/a/", token=new)[0] == 200


def test_a_root_token_replaced_never_works_again_whatever_the_next_start_is_told(
    tmp_path: Path,
) -> None:
    """Generated, then PERFITD_ROOT_ACCESS_TOKEN, then a start without it (an EnvironmentFile
    gone missing): the generated token, once replaced, stays refused."""
    with running_server(tmp_path, root=None) as srv:
        (generated,) = _printed_root_token(srv)
    chosen = random_token()
    for root in (chosen, None):
        with running_server(tmp_path, root=root) as srv:
            assert not _printed_root_token(srv)
            assert http("PUT", f"{srv.url}/a/", token=generated)[0] == 401
            assert http("PUT", f"{srv.url}/a/", token=chosen)[0] == 200
    saved = (tmp_path / perfit.ROOT_TOKEN_FILE).read_text().strip()
    assert saved == perfit.hash_token(chosen).hex()


def test_a_plain_root_token_file_from_0_1_is_replaced_by_its_hash(tmp_path: Path) -> None:
    token = random_token()
    (tmp_path / "root-token").write_text(token + "\n")
    with running_server(tmp_path, root=None) as srv:
        assert not (tmp_path / "root-token").exists()
        assert http("PUT", f"{srv.url}/a/", token=token)[0] == 200


def test_a_start_that_fails_makes_no_root_token_and_the_next_start_prints_one(
    tmp_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = cli("serve", "--data", str(tmp_path), "--listen", f"127.0.0.1:{port}")
    assert_said_no(proc, 1)
    assert "cannot listen" in proc.stderr
    assert "token" not in proc.stdout
    assert not (tmp_path / perfit.ROOT_TOKEN_FILE).exists()
    with running_server(tmp_path, root=None) as srv:
        (token,) = _printed_root_token(srv)
        assert http("PUT", f"{srv.url}/a/", token=token)[0] == 200


def test_serve_without_its_modules_names_the_fix_and_makes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = cli("serve", "--data", str(data), "--listen", "127.0.0.1:0", flags=("-S",))
    assert_said_no(proc, 2)
    assert "bottle" in proc.stderr and "pip install" in proc.stderr
    assert not data.exists(), "nothing is made before the server can start"


# --------------------------------------------------------------------------------------------
# CLI: bundle
# The zipapp, built and run as an operator would: with nothing but Python (`env -i python -S`),
# and where zstd is installed, sealing and reading segments across a restart.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("bundle") / "perfit.pyz"
    made = cli("bundle", "-o", str(target))
    assert made.returncode == 0, made.stderr
    assert "bottle" in made.stdout and "svgwrite" in made.stdout
    return target


def test_the_bundle_holds_perfit_bottle_svgwrite_their_licences_and_no_compiled_code(
    pyz: Path,
) -> None:
    with zipfile.ZipFile(pyz) as z:
        names = set(z.namelist())
    assert {"__main__.py", "perfit.py", "bottle.py", "svgwrite/__init__.py"} <= names
    assert {"LICENSES/bottle.txt", "LICENSES/svgwrite.txt"} <= names
    assert not [n for n in names if n.endswith((".so", ".pyd"))]
    assert pyz.stat().st_size < 2 << 20, "a zipapp of a few hundred KiB, not the 25 MB of wheels"
    # The README says its size (twice): within 10 % of the one made here and now.
    readme = (HERE / "README.md").read_text()
    found = re.findall(r"(\d+) KiB `perfit.pyz`|perfit.pyz +# about (\d+) KiB", readme)
    said = {int(kib) for pair in found for kib in pair if kib}
    assert said and all(
        abs(kib * 1024 - pyz.stat().st_size) < 0.1 * pyz.stat().st_size for kib in said
    ), (said, pyz.stat().st_size // 1024)


def test_the_bundle_serves_with_nothing_but_python(pyz: Path, tmp_path: Path) -> None:
    """`env -i python -S perfit.pyz serve`: no site-packages, no environment, no zstd (before
    3.14): the server runs, says logs stay uncompressed, and keeps every point across a
    restart; the client in the same file posts to it."""
    bare = (sys.executable, "-S", str(pyz))
    with running_server(tmp_path, command=bare, environ={}) as srv:
        health = ok_json("GET", f"{srv.url}/healthz")
        if sys.version_info < (3, 14):
            assert health["compression"] is None and "uncompressed" in health["message"]
        acc = new_account(srv.url)
        mid = new_metric(srv.url, acc.admin, name="from the zipapp", unit="s")
        env = {"PERFIT_SERVER": srv.url, "PERFIT_ACCESS_TOKEN": acc.post, "PERFIT_METRIC": mid}
        posted = subprocess.run(
            [*bare, "post", "1.5"], env=env, capture_output=True, text=True, timeout=60
        )
        assert posted.returncode == 0, posted.stderr
        assert http("GET", f"{srv.url}/m/{mid}.svg")[0] == 200
    with running_server(tmp_path, command=bare, environ={}) as srv:
        assert values(srv.url, mid) == [1.5]
    assert "Traceback" not in "".join(srv.err)


def test_the_bundle_seals_and_reads_segments_where_zstd_is_installed(
    pyz: Path, tmp_path: Path
) -> None:
    with_zstd = (sys.executable, str(pyz))  # this venv's site-packages has zstandard
    with running_server(tmp_path, "--seal-bytes", "2048", command=with_zstd) as srv:
        assert ok_json("GET", f"{srv.url}/healthz")["compression"]
        acc = new_account(srv.url)
        body = {
            "points": [{"name": f"bench/{i}", "value": i} for i in range(20)],
            "metadata": "x" * 100,
        }
        for _ in range(20):
            ids = ok_json("POST", f"{srv.url}/r/", body=body, token=acc.post)["metrics"]
    assert _sealed_logs(tmp_path) >= 3
    with running_server(tmp_path, command=with_zstd) as srv:
        assert values(srv.url, ids["bench/7"]) == [7] * 20


def test_a_server_seals_a_big_log_in_a_child_process_also_from_the_bundle(
    pyz: Path, tmp_path: Path
) -> None:
    """What sealing holds for a moment would stay resident in the server's heap: a log of a
    mebibyte or more is sealed by a child Python, which imports the same perfit (the bundle's
    too) and gives its memory back when it ends."""
    with_zstd = (sys.executable, str(pyz))
    elsewhere = tmp_path / "cwd"  # where the operator started it: another perfit.py lies there
    elsewhere.mkdir()
    (elsewhere / "perfit.py").write_text("raise SystemExit('the wrong perfit')\n")
    big = ("--seal-bytes", str(1200 << 10))
    with running_server(tmp_path / "data", *big, command=with_zstd, cwd=elsewhere) as srv:
        acc = new_account(srv.url)
        body = {
            "points": [{"name": f"big/{i}", "value": i} for i in range(1000)],
            "commit": "abcdef1",
        }
        for _ in range(52):  # 24 KB a run: the log fills up, and a new one starts
            ids = ok_json("POST", f"{srv.url}/r/", body=body, token=acc.post)["metrics"]
        poll(lambda: "\n".join(srv.err), lambda err: "(in a child process)" in err, seconds=30)
    assert _sealed_logs(tmp_path / "data") >= 1
    with running_server(tmp_path / "data", command=with_zstd) as srv:
        (first, *_) = points(srv.url, ids["big/7"])
        assert len(points(srv.url, ids["big/7"])) == 52 and first["commit"] == "abcdef1"


# --------------------------------------------------------------------------------------------
# CLI: the client commands
# As a subprocess where a process matters (a signal, a terminal, python -S, a closed pipe), and
# through main() in-process for the many variations of arguments and answers.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [(), ("-S",)])
def test_token_gen_prints_a_fresh_token_without_a_server(flags: tuple[str, ...]) -> None:
    first = cli("token", "gen", flags=flags)
    second = cli("token", "gen", flags=flags)
    assert first.returncode == 0, first.stderr
    assert TOKEN_RE.match(first.stdout.strip())
    assert first.stdout.strip() != second.stdout.strip()


def test_main_runs_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(HERE))
    try:
        import perfit
    finally:
        sys.path.remove(str(HERE))
    assert perfit.main(["token", "gen"]) == 0
    assert TOKEN_RE.match(capsys.readouterr().out.strip())


def test_help_exits_zero() -> None:
    proc = perfit_main("--help")
    assert proc.returncode == 0
    assert "serve" in proc.stdout


def test_help_teaches_the_environment_and_the_exit_codes() -> None:
    top = perfit_main("--help").stdout
    assert "--access-token ROOT" not in top, "tokens on the command line show up in `ps`"
    assert "PERFIT_ACCESS_TOKEN=" in top and "PERFIT_TIMEOUT" in top
    assert "4 the server could not be reached" in top
    assert "PERFITD_ROOT_ACCESS_TOKEN" in perfit_main("serve", "--help").stdout
    assert "$PERFIT_TIMEOUT" in perfit_main("post", "--help").stdout


def test_account_new_with_root_token(url: str) -> None:
    proc = perfit_main("account", "new", *client_args(url, ROOT))
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    assert ID_RE.match(made["account_id"])
    assert TOKEN_RE.match(made["access_token"])
    assert new_metric(url, made["access_token"])


def test_account_new_with_admin_token_is_refused(url: str, account: Account) -> None:
    assert_said_no(perfit_main("account", "new", *client_args(url, account.admin)))


def test_token_new_defaults_to_post_and_makes_admins_on_request(url: str, account: Account) -> None:
    post = perfit_main("token", "new", *client_args(url, account.admin))
    admin = perfit_main("token", "new", "--type", "admin", *client_args(url, account.admin))
    assert post.returncode == 0, post.stderr
    assert admin.returncode == 0, admin.stderr
    post_token = json.loads(post.stdout)["access_token"]
    admin_token = json.loads(admin.stdout)["access_token"]
    assert json.loads(post.stdout)["account_id"] == account.id
    assert_error(http("PUT", f"{url}/m/", token=post_token), 403)
    assert new_metric(url, admin_token)


def test_token_new_with_post_token_is_refused(url: str, account: Account) -> None:
    assert_said_no(perfit_main("token", "new", *client_args(url, account.post)))


def test_metric_new_prints_the_metric(url: str, account: Account) -> None:
    proc = perfit_main(
        "metric",
        "new",
        "--name",
        "tests",
        "--unit",
        "s",
        "--description",
        "pytest wall time",
        "--better",
        "higher",
        *client_args(url, account.admin),
    )
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    assert ID_RE.match(made["metric_id"])
    assert (made["name"], made["unit"], made["description"], made["better"]) == (
        "tests",
        "s",
        "pytest wall time",
        "higher",
    )
    assert points(url, made["metric_id"]) == []


def test_metric_new_with_bad_better_is_a_usage_error(url: str, account: Account) -> None:
    proc = perfit_main("metric", "new", "--better", "sideways", *client_args(url, account.admin))
    assert proc.returncode == 2


def test_post_and_metric_get(url: str, account: Account, metric: str) -> None:
    proc = cli("post", "2.5", "--metadata", "sha1", *client_args(url, account.post, metric))
    assert proc.returncode == 0, proc.stderr
    t = json.loads(proc.stdout)["t"]
    got = cli("metric", "get", *client_args(url, metric=metric))
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == [{"t": t, "v": 2.5, "m": "sha1"}], (
        "no CI, no git: nothing else"
    )
    assert points(url, metric) == [{"t": t, "v": 2.5, "m": "sha1"}]


def on_a_terminal(*args: str) -> str:
    """What `perfit.py ARGS` prints when its stdout is a terminal (a pseudo-terminal here)."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*perfit_command(), *args], stdout=follower, cwd=str(HERE),
                              stderr=subprocess.PIPE, env=clean_env(), timeout=60)  # fmt: skip
        os.close(follower)
        follower = -1
        chunks = []
        with contextlib.suppress(OSError):  # EIO: the terminal's other end is closed
            while chunk := os.read(leader, 65536):
                chunks.append(chunk)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0, proc.stderr
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_metric_get_prints_a_table_on_a_terminal_json_or_csv_when_asked(
    url: str, account: Account
) -> None:
    mid = new_metric(url, account.admin, name="build", unit="s")
    now = int(time.time())
    rows = [{"t": now - 10 * 86400, "v": 30.0}, {"t": now - 60, "v": 99.0, "m": "https://ci/1"}]
    ok_json("POST", f"{url}/m/{mid}/points", body=rows, token=account.admin)
    table = on_a_terminal("metric", "get", *client_args(url, metric=mid))
    header, old, new, summary = table.strip().splitlines()
    assert header.split() == ["time", "(UTC)", "value", "metadata"]
    assert old.split() == [perfit.format_time(now - 10 * 86400), "30", "s"]
    assert new.split() == [perfit.format_time(now - 60), "1m", "39s", "https://ci/1"]
    assert summary == "2 point(s) of build, in s"

    piped = cli("metric", "get", *client_args(url, metric=mid))  # not a terminal: JSON
    assert json.loads(piped.stdout) == [
        {"t": r["t"], "v": r["v"], **({"m": r["m"]} if "m" in r else {})} for r in rows
    ]
    assert len(piped.stdout.splitlines()) == 2, "one point a line"
    recent = cli(
        "metric", "get", "--start-rel", "1d", "--format", "csv", *client_args(url, metric=mid)
    )
    assert recent.stdout == f"t,v,m\n{now - 60},99.0,https://ci/1\n"


def test_metric_get_ends_quietly_when_its_reader_goes_away(url: str, account: Account) -> None:
    mid = new_metric(url, account.admin)
    start = int(time.time()) - 10_000
    rows = [
        {"t": start + i, "v": i / 7, "m": "abcdef"} for i in range(5000)
    ]  # over a pipe's 64 KiB
    ok_json("POST", f"{url}/m/{mid}/points", body=rows, token=account.admin)
    command = [*perfit_command(), "metric", "get", "--format", "csv",
               *client_args(url, metric=mid)]  # fmt: skip
    get = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=clean_env(), cwd=str(HERE))  # fmt: skip
    assert get.stdout.readline() == b"t,v,m\n"
    get.stdout.close()  # as `| head -1` does
    assert get.wait(30) == 0
    assert get.stderr.read() == b""


def test_client_options_come_from_the_environment(url: str, account: Account, metric: str) -> None:
    env = {
        "PERFIT_SERVER": url,
        "PERFIT_ACCESS_TOKEN": account.post,
        "PERFIT_METRIC": metric,
        "PERFIT_METADATA": "from-env",
    }
    proc = perfit_main("post", "7", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [(p["v"], p["m"]) for p in points(url, metric)] == [(7, "from-env")]
    got = perfit_main("metric", "get", env=env)
    assert got.returncode == 0, got.stderr
    assert [p["v"] for p in json.loads(got.stdout)] == [7]


def test_the_file_alone_posts_without_site_packages(
    url: str, account: Account, metric: str, tmp_path: Path
) -> None:
    alone = tmp_path / "perfit.py"  # as a CI job has it: downloaded, nothing installed
    shutil.copy(PERFIT, alone)
    proc = subprocess.run(
        [sys.executable, "-S", str(alone), "post", "3", *client_args(url, account.post, metric)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=str(tmp_path),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert values(url, metric) == [3]


def test_post_to_another_accounts_metric_says_no(url: str, other: Account, metric: str) -> None:
    assert_said_no(perfit_main("post", "1", *client_args(url, other.post, metric)))
    assert points(url, metric) == []


def test_post_to_an_unknown_metric_says_no(url: str, account: Account) -> None:
    assert_said_no(perfit_main("post", "1", *client_args(url, account.post, unknown_id())))


@pytest.mark.parametrize(
    "args",
    [
        ["post", "abc"],
        ["post"],
        ["frobnicate"],
        ["metric", "frobnicate"],
    ],
    ids=["post-abc", "post-no-value", "unknown-command", "unknown-subcommand"],
)
def test_usage_errors_exit_2(url: str, account: Account, metric: str, args: list[str]) -> None:
    proc = perfit_main(
        *args,
        env={"PERFIT_SERVER": url, "PERFIT_ACCESS_TOKEN": account.post, "PERFIT_METRIC": metric},
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert points(url, metric) == []


def test_post_without_an_access_token_is_a_usage_error(url: str, metric: str) -> None:
    proc = perfit_main("post", "1", *client_args(url, metric=metric))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert points(url, metric) == []


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_post_of_a_non_finite_value_fails_and_stores_nothing(
    url: str, account: Account, metric: str, value: str
) -> None:
    proc = perfit_main("post", value, *client_args(url, account.post, metric))
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert points(url, metric) == []


def test_metric_check_exits_3_while_regressed_and_0_otherwise(url: str, account: Account) -> None:
    regressed, _ = _import_series(url, account, _ci_series(200, [(120, 1.25)], 0.03))
    improved, _ = _import_series(url, account, _ci_series(200, [(120, 0.75)], 0.03))
    steady, _ = _import_series(url, account, _ci_series(200, [], 0.03))
    check = perfit_main("metric", "check", *client_args(url, metric=regressed))
    assert check.returncode == 3, check.stderr
    assert "REGRESSED" in check.stdout and "regression" in check.stdout
    assert re.search(r"median 1m \d+s -> 2m \d+s", check.stdout), "medians without their unit"
    assert perfit_main("metric", "check", *client_args(url, metric=improved)).returncode == 0
    quiet = perfit_main("metric", "check", *client_args(url, metric=steady))
    assert quiet.returncode == 0 and "no change points" in quiet.stdout
    assert (
        perfit_main(
            "metric", "check", "--threshold", "0.5", *client_args(url, metric=regressed)
        ).returncode
        == 0
    )
    assert_said_no(perfit_main("metric", "check", *client_args(url, metric=unknown_id())), 1)


def test_metric_check_runs_without_site_packages(url: str, account: Account) -> None:
    mid, _ = _import_series(url, account, _ci_series(200, [(120, 1.25)], 0.03))
    check = cli("metric", "check", *client_args(url, metric=mid), flags=("-S",))
    assert check.returncode == 3, check.stderr


def test_metric_import_round_trips_the_csv_export_with_progress(
    url: str, account: Account, metric: str, tmp_path: Path
) -> None:
    start = int(time.time()) - 30 * 86400
    rows = "".join(
        f"{start + 60 * i},{i % 50 / 4},{'sha' if i % 2 else ''}\n" for i in range(25_000)
    )
    source = tmp_path / "points.csv"
    source.write_text("t,v,m\n" + rows)
    done = perfit_main("metric", "import", str(source), *client_args(url, account.admin, metric))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"added": 25_000, "existing": 0}
    assert "imported 10000/25000" in done.stderr and "imported 25000/25000" in done.stderr
    _, _, exported = http("GET", f"{url}/m/{metric}/csv")
    assert exported.decode().replace(".0,", ",") == ("t,v,m\n" + rows).replace(".0,", ",")
    again = perfit_main("metric", "import", str(source), *client_args(url, account.admin, metric))
    assert json.loads(again.stdout) == {"added": 0, "existing": 25_000}, again.stderr
    assert "0 new, 25000 already there" in again.stderr
    assert http("GET", f"{url}/m/{metric}/csv")[2] == exported, "a second import changed the data"


def test_metric_import_reads_json_lines_and_rejects_a_bad_file(
    url: str, account: Account, metric: str, tmp_path: Path
) -> None:
    lines = tmp_path / "points.jsonl"
    lines.write_text('{"t": 1700000000, "v": 1.5}\n{"t": 1700000060, "v": 2.5, "m": "b"}\n')
    done = perfit_main("metric", "import", str(lines), *client_args(url, account.admin, metric))
    assert done.returncode == 0, done.stderr
    assert values(url, metric) == [1.5, 2.5]
    bad = tmp_path / "bad.csv"
    bad.write_text("when,what\n1,2\n")
    assert_said_no(
        perfit_main("metric", "import", str(bad), *client_args(url, account.admin, metric)), 2
    )


def test_metric_import_names_a_bad_csv_line_and_accepts_a_bom(
    url: str, account: Account, metric: str, tmp_path: Path
) -> None:
    short = tmp_path / "short.csv"
    short.write_text("t,v,m\n1767225600,1.5\n1767225660\n")
    bad = perfit_main("metric", "import", str(short), *client_args(url, account.admin, metric))
    assert_said_no(bad, 2)
    assert "line 3" in bad.stderr
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbft,v\r\n1767225600,2.5\r\n")
    assert (
        perfit_main(
            "metric", "import", str(excel), *client_args(url, account.admin, metric)
        ).returncode
        == 0
    )
    assert values(url, metric) == [2.5]


@pytest.mark.parametrize(
    "text",
    [
        "t,v\n1767225600,1.5\n1767225660,-2e-3\n",
        "v,m,t\n1.5,,1767225600\n2,a b,1767225660",
        "t,v,m\n1767225600,0,\n",
        "t,v\n",
        # not JSON numbers, though float() reads them: the csv module's path does
        "t,v\n1767225600,1.\n1767225660,+2\n1767225720,.5\n1767225780, 7\n1767225840,01\n",
        "t,v\n1767225600,NaN\n1767225660,Infinity\n1767225720,1e400\n",
        'x,t,v,m\n,1767225600,1.5,"a,b"\n',  # quoted: the csv module's path
        "t,v,m\n1767225600,1.5\n1767225660,2.5,sha,more\n",  # ragged: the same
    ],
)
def test_reading_a_plain_csv_file_a_column_at_a_time_reads_what_the_csv_module_does(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def numbers(columns: dict[str, list]) -> dict[str, list]:
        return {k: [float(x) for x in c] if k in "tv" else c for k, c in columns.items()}

    fast = numbers(perfit._csv_columns(text))
    monkeypatch.setattr(perfit, "_plain_csv_columns", lambda text: None)
    assert repr(fast) == repr(perfit._csv_columns(text))  # repr: nan is not nan


def test_an_import_is_sent_a_batch_at_a_time_and_a_refused_one_stops_it(
    url: str, account: Account, metric: str, tmp_path: Path
) -> None:
    start = int(time.time()) - 86400
    rows = [f"{start + i},{i % 7}" for i in range(25_000)]
    rows[15_000] = f"{start + 10**9},1"  # in the future: its batch is refused
    source = tmp_path / "points.csv"
    source.write_text("t,v\n" + "\n".join(rows) + "\n")
    done = perfit_main("metric", "import", str(source), *client_args(url, account.admin, metric))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "imported 10000/25000 points" in done.stderr
    assert "after 10000 of 25000 points: 10000 added" in done.stderr
    assert len(points(url, metric)) == 10_000


GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_SHA": "3f2a9c1e7b0d5a6c8e9f00112233445566778899",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "acme/widgets",
    "GITHUB_RUN_ID": "7001",
    "GITHUB_RUN_ATTEMPT": "1",
    "GITHUB_REF_NAME": "main",
}


@pytest.mark.parametrize(
    "env, expected",
    [
        (GITHUB, ("3f2a9c1e7b0d5a6c8e9f00112233445566778899", "main",
                  "https://github.com/acme/widgets/actions/runs/7001")),
        ({**GITHUB, "GITHUB_RUN_ATTEMPT": "2", "GITHUB_HEAD_REF": "fix-it"},
         (GITHUB["GITHUB_SHA"], "fix-it", "https://github.com/acme/widgets/actions/runs/7001/attempts/2")),
        ({"GITLAB_CI": "true", "CI_COMMIT_SHA": "a" * 40, "CI_COMMIT_BRANCH": "main",
          "CI_JOB_URL": "https://gitlab.com/a/b/-/jobs/9"}, ("a" * 40, "main", "https://gitlab.com/a/b/-/jobs/9")),
        ({"GITLAB_CI": "true", "CI_COMMIT_SHA": "a" * 40, "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "mr",
          "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA": "f" * 40, "CI_JOB_URL": "https://gitlab.com/a/b/-/jobs/9"},
         ("f" * 40, "mr", "https://gitlab.com/a/b/-/jobs/9")),
        ({"BUILDKITE": "true", "BUILDKITE_COMMIT": "b" * 40, "BUILDKITE_JOB_ID": "j-1", "BUILDKITE_BRANCH": "dev",
          "BUILDKITE_BUILD_URL": "https://buildkite.com/acme/w/builds/5"},
         ("b" * 40, "dev", "https://buildkite.com/acme/w/builds/5#j-1")),
        ({"CIRCLECI": "true", "CIRCLE_SHA1": "C" * 40, "CIRCLE_BRANCH": "main",
          "CIRCLE_BUILD_URL": "https://circleci.com/gh/a/b/3"}, ("c" * 40, "main", "https://circleci.com/gh/a/b/3")),
        ({"JENKINS_URL": "https://ci.acme/", "GIT_COMMIT": "d" * 40, "GIT_BRANCH": "origin/main",
          "BUILD_URL": "https://ci.acme/job/w/4/"}, ("d" * 40, "main", "https://ci.acme/job/w/4/")),
        ({"JENKINS_URL": "https://ci.acme/", "GIT_COMMIT": "d" * 40, "GIT_BRANCH": "origin/PR-4",
          "CHANGE_BRANCH": "feature"}, ("d" * 40, "feature", "")),
        ({"GITHUB_ACTIONS": "true", "GITHUB_SHA": "e" * 40}, ("e" * 40, "", "")),  # no URL, no branch
        ({"BUILDKITE": "true", "BUILDKITE_COMMIT": "HEAD"}, ("", "", "")),  # not a commit; no git here
    ],
    ids=["github", "github-pr-rerun", "gitlab", "gitlab-mr", "buildkite", "circleci", "jenkins",
         "jenkins-pr", "partial", "not-a-commit"],
)  # fmt: skip
def test_ci_context_is_the_commit_branch_and_jobs_url(env: dict, expected: tuple) -> None:
    found = perfit.ci_context({**env, "GIT_DIR": os.devnull})
    assert (found.commit, found.branch, found.job) == expected


def test_ci_context_elsewhere_is_the_checkouts_commit_and_branch_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git = _git_in(tmp_path)
    monkeypatch.chdir(tmp_path)  # not a git checkout
    assert perfit.ci_context({}) == perfit.CiContext()
    git("init", "-q", "-b", "trunk")
    git("commit", "-q", "--allow-empty", "-m", "x")
    found = perfit.ci_context({})
    assert (found.commit, found.branch) == (git("rev-parse", "HEAD"), "trunk")
    git("checkout", "-q", "--detach")
    assert perfit.ci_context({}).branch == "", "a detached head: no branch, so main's line"


def test_a_pull_requests_base_is_where_it_branched_and_its_ancestors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """main: m1-m2-m3-m4; the PR branched at m2 (head p1). GitHub's event names m4 as the
    base (main's tip when the PR was opened): git's merge base finds m2, then its past."""

    monkeypatch.chdir(tmp_path)
    main, head = _main_and_a_pr(tmp_path, 4, 2, "pr")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7, "head": {"sha": head},
                                                  "base": {"sha": main[3]}}}))  # fmt: skip
    env = {**GITHUB, "GITHUB_EVENT_PATH": str(event), "GITHUB_HEAD_REF": "pr"}
    found = perfit.ci_context(env)
    assert found.branched_from(env) == ((main[1], main[0]), "")
    assert (found.commit, found.branch) == (head, "pr"), "the PR's head, not GitHub's merge"
    shallow = {**env, "GIT_DIR": os.devnull}  # a checkout with no history
    base, note = perfit.ci_context(shallow).branched_from(shallow)
    assert base == (main[3],) and "fetch-depth: 0" in note
    gitlab = {"GITLAB_CI": "true", "CI_MERGE_REQUEST_DIFF_BASE_SHA": main[2]}
    assert perfit.ci_context(gitlab).branched_from(gitlab) == ((main[2], main[1], main[0]), "")
    jenkins = {"JENKINS_URL": "x", "CHANGE_TARGET": "main"}  # no origin/main here: no base
    assert perfit.ci_context(jenkins).branched_from(jenkins)[0] == ()


def test_a_points_commit_and_job_url_link_to_the_job_in_the_chart_and_the_table(
    url: str, account: Account, metric: str
) -> None:
    meta = "3f2a9c1e7b0d https://ci.example/acme/jobs/7"
    assert post_point(url, metric, account.post, 1.5, meta)[0] == 200
    assert perfit.metadata_link(meta) == "https://ci.example/acme/jobs/7"
    assert perfit.metadata_link("3f2a9c1e7b0d") is None
    assert perfit.metadata_link("see javascript:alert(1)") is None
    chart = parse_svg(http("GET", f"{url}/m/{metric}.svg")[2])
    xlink = "{http://www.w3.org/1999/xlink}href"
    links = [a.get("href") or a.get(xlink) for a in chart.iter("{http://www.w3.org/2000/svg}a")]
    assert links == ["https://ci.example/acme/jobs/7"]
    page = http("GET", f"{url}/m/{metric}")[2].decode()
    assert '3f2a9c1e7b0d <a href="https://ci.example/acme/jobs/7"' in page


def test_account_show_links_the_board_and_new_board_retires_the_link(
    url: str, account: Account
) -> None:
    new_metric(url, account.admin, name="build")
    shown = perfit_main("account", "show", *client_args(url, account.post))
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert next(iter(doc)) == "board", "the link first: the list of metrics may be long"
    assert [m["name"] for m in doc["metrics"]] == ["build"]
    assert http("GET", doc["board"])[0] == 200
    refused = perfit_main("account", "new-board", *client_args(url, account.post))
    assert_said_no(refused, 1)  # a post token may not
    replaced = json.loads(
        perfit_main("account", "new-board", *client_args(url, account.admin)).stdout
    )
    assert replaced["board"] != doc["board"] and http("GET", replaced["board"])[0] == 200
    assert_error(http("GET", doc["board"]), 404)


def test_post_and_run_fill_in_the_commit_branch_and_job_unless_given(
    url: str, account: Account, metric: str
) -> None:
    args = client_args(url, account.post, metric)
    assert perfit_main("post", "1.5", *args, env=GITHUB).returncode == 0
    mine = ("--metadata", "mine", "--commit", "ABCDEF0", "--branch", "main")
    assert perfit_main("post", "2.5", *args, *mine, env=GITHUB).returncode == 0
    job = [sys.executable, "-c", "pass"]
    assert perfit_main("run", *args, "--", *job, env=GITHUB).returncode == 0
    suite = FIXTURES / "hyperfine.json"
    posted = perfit_main(
        "post", "--format", "auto", str(suite), *client_args(url, account.post), env=GITHUB
    )
    assert posted.returncode == 0, posted.stderr
    job_url = "https://github.com/acme/widgets/actions/runs/7001"
    expected = {"m": job_url, "commit": GITHUB["GITHUB_SHA"], "branch": "main"}
    got = [{k: p.get(k) for k in expected} for p in points(url, metric)]
    assert got == [expected, {"m": "mine", "commit": "abcdef0", "branch": "main"}, expected]
    (run,) = points(url, json.loads(posted.stdout)["metrics"]["true"])
    assert {k: run.get(k) for k in expected} == expected


def test_posting_on_a_branch_that_is_not_main_says_so_and_says_how_to_make_it_main(
    url: str, account: Account, metric: str
) -> None:
    master = {**GITHUB, "GITHUB_REF_NAME": "master"}
    said = perfit_main("post", "1.5", *client_args(url, account.post, metric), env=master)
    assert (
        said.returncode == 0
        and "branch 'master' is not the account's main branch ('main')" in said.stderr
    )
    assert "perfit account main-branch master" in said.stderr and values(url, metric) == []
    made = perfit_main("account", "main-branch", "master", *client_args(url, account.admin))
    assert made.returncode == 0 and json.loads(made.stdout)["main_branch"] == "master"
    again = perfit_main("post", "2.5", *client_args(url, account.post, metric), env=master)
    assert again.returncode == 0 and again.stderr == "" and values(url, metric) == [2.5]
    suite = perfit_main("post", "--format", "hyperfine", str(FIXTURES / "hyperfine.json"),
                        *client_args(url, account.post), env={**GITHUB, "GITHUB_REF_NAME": "dev"})  # fmt: skip
    assert suite.stderr.count("is not the account's main branch") == 1


def test_a_metric_is_named_by_its_name_as_well_as_its_id(url: str, account: Account) -> None:
    named = [*client_args(url, account.post), "--metric", "unit tests"]
    posted = perfit_main("post", "12.5", *named)
    assert posted.returncode == 0, posted.stderr
    metric = json.loads(posted.stdout)["metrics"]["unit tests"]  # created by its name
    job = [sys.executable, "-c", "pass"]
    assert perfit_main("run", *named, "--", *job).returncode == 0
    assert (
        perfit_main(
            "run", *client_args(url, account.post), "--metric", "new step", "--", *job
        ).returncode
        == 0
    )
    shown = perfit_main("metric", "get", "--format", "json", *named)
    assert [p["v"] for p in json.loads(shown.stdout)] == [12.5, pytest.approx(0, abs=5)]
    created = {m["name"]: m for m in account_doc(url, account.admin)["metrics"]}
    assert created["unit tests"]["metric_id"] == metric
    assert created["new step"]["unit"] == "s", "run creates a metric of seconds"
    unknown = perfit_main("metric", "get", *client_args(url, account.post), "--metric", "nope")
    assert_said_no(unknown, 1)
    assert "no metric named 'nope'" in unknown.stderr
    tokenless = perfit_main("metric", "check", "--server", url, "--metric", "unit tests")
    assert_said_no(tokenless, 2)
    assert "needs a token" in tokenless.stderr


# --------------------------------------------------------------------------------------------
# Client: harness formats
# The real output of each harness (fixtures/, made by fixtures/regenerate.sh) read into named
# results: which number, which name, which unit, which way is better.
# --------------------------------------------------------------------------------------------

FIXTURES = HERE / "fixtures"


def read_fixture(name: str, fmt: str = "auto", prefix: str = "") -> dict[str, perfit.Result]:
    results = perfit.read_results((FIXTURES / name).read_text(), fmt, prefix)
    assert len({r.name for r in results}) == len(results), "names are unique"
    return {r.name: r for r in results}


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("pytest-benchmark.json", "pytest-benchmark"),
        ("hyperfine.json", "hyperfine"),
        ("go.txt", "go"),
        ("go.json", "go"),
        ("google-benchmark.json", "google-benchmark"),
        ("google-benchmark-norep.json", "google-benchmark"),
        ("libtest.txt", "libtest"),
        ("pyperf.json", "pyperf"),
    ],
)
def test_auto_tells_each_harness_by_its_output(name: str, fmt: str) -> None:
    assert perfit.detect_format((FIXTURES / name).read_text()) == fmt


def test_pytest_benchmark_gives_each_tests_median_by_group_or_full_name() -> None:
    doc = json.loads((FIXTURES / "pytest-benchmark.json").read_text())
    found = read_fixture("pytest-benchmark.json")
    expected = {
        (f"{b['group']}/{b['name']}" if b["group"] else b["fullname"]): b["stats"]["median"]
        for b in doc["benchmarks"]
    }
    assert {n: r.value for n, r in found.items()} == pytest.approx(expected, rel=1e-12)
    assert "strings/test_join" in found and any(n.endswith("::test_sort[1000]") for n in found)
    assert {(r.unit, r.better) for r in found.values()} == {("s", "lower")}


def test_hyperfine_gives_each_commands_median_in_seconds() -> None:
    found = read_fixture("hyperfine.json")
    assert list(found) == ["sleep 0.01", "sleep 0.02", "true"]
    assert 0.01 <= found["sleep 0.01"].value < found["sleep 0.02"].value < 0.5
    scanned = read_fixture("hyperfine-params.json", "hyperfine")
    assert list(scanned) == ["sleep 0.010", "sleep 0.020"]  # a parameter scan: one per value


def test_go_names_drop_gomaxprocs_and_take_the_package_when_there_are_several() -> None:
    several = read_fixture("go.txt")
    sort = "example.com/bench/sorting/BenchmarkSort/size=1000"
    assert several[sort] == perfit.Result(sort, 8.118e-06, "s", "lower")  # 8118 ns/op
    assert several[f"{sort} (B/op)"] == perfit.Result(f"{sort} (B/op)", 105, "B/op", "lower")
    join = "example.com/bench/strs/BenchmarkJoin"
    assert several[f"{join} (MB/s)"] == perfit.Result(f"{join} (MB/s)", 237.53, "MB/s", "higher")
    search = "example.com/bench/sorting/BenchmarkSearch (lookups/s)"
    assert several[search].better == "higher"
    one = read_fixture("go-one-package.txt")
    assert "BenchmarkSort/size=100" in one and not any("example.com" in n for n in one)
    assert not any(re.search(r"-\d+($| )", n) for n in [*several, *one]), "no -GOMAXPROCS"


def test_go_json_events_read_like_the_text_and_repeats_give_their_median() -> None:
    from_json = read_fixture("go.json")
    assert set(from_json) == set(read_fixture("go.txt"))
    lines = [
        float(m.group(1))
        for line in (FIXTURES / "go.json").read_text().splitlines()
        for m in [re.search(r"\s([0-9.]+) ns/op", json.loads(line).get("Output", ""))]
        if m and json.loads(line)["Package"].endswith("strs")
    ]
    assert len(lines) == 2  # -count 2
    assert from_json["example.com/bench/strs/BenchmarkJoin"].value == pytest.approx(
        statistics.median(lines) * 1e-9
    )


def test_google_benchmark_takes_the_median_aggregate_or_the_iteration_rows() -> None:
    doc = json.loads((FIXTURES / "google-benchmark.json").read_text())
    medians = {b["run_name"]: b for b in doc["benchmarks"] if b.get("aggregate_name") == "median"}
    found = read_fixture("google-benchmark.json")
    assert set(found) == {"BM_Sort/100", "BM_Sort/1000", "BM_Accumulate", "BM_Accumulate (items/s)"}
    assert found["BM_Sort/1000"].value == pytest.approx(medians["BM_Sort/1000"]["real_time"] * 1e-9)
    items = found["BM_Accumulate (items/s)"]
    assert (items.unit, items.better) == ("items/s", "higher")
    assert items.value == pytest.approx(medians["BM_Accumulate"]["items_per_second"])
    plain = read_fixture("google-benchmark-norep.json")
    assert set(plain) == set(found)


def test_libtest_reads_bench_lines_with_thousands_separators() -> None:
    found = read_fixture("libtest.txt")
    assert set(found) == {"bench_sort", "strings::bench_join"}
    line = re.search(
        r"bench_sort\s+\.\.\. bench:\s+([\d,.]+)", (FIXTURES / "libtest.txt").read_text()
    )
    assert found["bench_sort"].value == pytest.approx(float(line.group(1).replace(",", "")) * 1e-9)


def test_criterions_bencher_output_reads_as_libtest() -> None:
    found = read_fixture("criterion-bencher.txt")
    assert perfit.detect_format((FIXTURES / "criterion-bencher.txt").read_text()) == "libtest"
    assert set(found) == {"sort/100", "sort/1000", "join"}
    line = re.search(
        r"test join \.\.\. bench:\s+(\d+) ns", (FIXTURES / "criterion-bencher.txt").read_text()
    )
    assert (found["join"].unit, found["join"].better) == ("s", "lower")
    assert found["join"].value == pytest.approx(int(line.group(1)) * 1e-9)


#: What each new format's fixture holds, as the tool wrote it (fixtures/README.md says which
#: tool made each file, or whose published example it is): its format, and each result's name,
#: value, unit and direction after reading. The statistic each format takes is the README's.
_FIXTURE_RESULTS = {
    "catch2-v2.txt": ("catch2", {
        "fib 15": (8.44617e-07, "s", "lower"),
        "fib 20": (8.33573e-06, "s", "lower"),
        "std::sort of a reversed vector of 1000 ints": (3.17913e-06, "s", "lower"),  # wrapped
    }),
    "catch2-v3.txt": ("catch2", {
        "fib 15": (7.57118e-07, "s", "lower"),
        "std::sort of a reversed vector of 1000 ints": (3.79658e-06, "s", "lower"),
    }),
    "benchmarkjs.txt": ("benchmarkjs", {
        "fib(10)": (1974874, "ops/sec", "higher"),
        "String#indexOf with a long string": (1230370246, "ops/sec", "higher"),
    }),
    "criterion.txt": ("criterion", {
        "sort/100": (7.7494e-08, "s", "lower"),
        "checksum/sum 4 KiB": (6.3529e-07, "s", "lower"),
        "checksum/sum 4 KiB (GiB/s)": (6.0047, "GiB/s", "higher"),
        "noop": (3.1396e-10, "s", "lower"),  # picoseconds
    }),
    "criterion-change.txt": ("criterion", {
        "sort/100": (9.1151e-08, "s", "lower"),  # its change: [...] percentages are no result
        "checksum/sum 4 KiB (GiB/s)": (6.1582, "GiB/s", "higher"),
    }),
    "criterion-bencher-spaces.txt": ("libtest", {
        "checksum/sum 4 KiB": (6.49e-07, "s", "lower"),
        "noop": (0.0, "s", "lower"),
    }),
    "libtest-units.txt": ("libtest", {
        "cmov": (2835, "cycles/iter", "lower"),
        "upload": (1911, "MS/s", "higher"),
    }),
    "jmh.json": ("jmh", {
        "org.openjdk.jmh.samples.JMHSample_01_HelloWorld.wellHelloThere": (
            3376238873.1228185, "ops/s", "higher"
        ),
    }),
    "jmh-params.json": ("jmh", {
        "org.openjdk.jmh.samples.JMHSample_01_HelloWorld.wellHelloThere(paramA=17,paramB=33)": (
            3376238873.1228185, "ops/s", "higher"
        ),
    }),
    "benchmarkdotnet.json": ("benchmarkdotnet", {
        "Benchmarks.Fib10": (24.419498533010483e-9, "s", "lower"),  # the median, not the mean
        "Benchmarks.Fib20": (51.40195590257645e-9, "s", "lower"),
    }),
    "julia.json": ("julia", {
        "fib/10": (246.03846153846155e-9, "s", "lower"),
        "fib/20": (31028e-9, "s", "lower"),
    }),
    "luau.txt": ("luau", {
        "base64": (0.015041, "s", "lower"),
        "life": (0.085089, "s", "lower"),
    }),
    "asv-results.json": ("asv", {
        "benchmarks.Sort.time_sort(100, 'sorted')": (8.545002856408246e-07, "s", "lower"),
        "benchmarks.Sort.time_sort(1000, 'reversed')": (4.982000064046588e-06, "s", "lower"),
        "benchmarks.TimeSuite.time_keys": (3.3875003282446414e-06, "s", "lower"),
        "benchmarks.peakmem_list": (24780800, "B", "lower"),
        "benchmarks.track_items_per_chunk": (42, "", "lower"),
    }),
    "go-cpu.txt": ("go", {
        "BenchmarkSort/size=100": (4.048e-07, "s", "lower"),
        "BenchmarkSort/size=100-2": (7.413e-07, "s", "lower"),
        "BenchmarkSort/size=100-4": (3.872e-07, "s", "lower"),
        "BenchmarkSearch-4 (lookups/s)": (21663778, "lookups/s", "higher"),
    }),
}  # fmt: skip


@pytest.mark.parametrize("name", _FIXTURE_RESULTS)
def test_each_new_harness_fixture_reads_as_its_tool_wrote_it(name: str) -> None:
    fmt, expected = _FIXTURE_RESULTS[name]
    assert perfit.detect_format((FIXTURES / name).read_text()) == fmt
    found = read_fixture(name)
    assert read_fixture(name, fmt) == found, "auto reads as the format named"
    for result, (value, unit, better) in expected.items():
        assert (found[result].unit, found[result].better) == (unit, better), result
        assert found[result].value == pytest.approx(value, rel=1e-9, abs=1e-15), result


def test_criterions_directory_reads_each_benchmarks_estimates(url: str, account: Account) -> None:
    """`post --format auto target/criterion`: each benchmark's estimates.json, named by its
    benchmark.json, the median (criterion's text prints the slope), with its 100 samples."""
    text = perfit._read_text(str(FIXTURES / "criterion-estimates"))
    assert perfit.detect_format(text) == "criterion"
    found = {r.name: r for r in perfit.read_results(text, "auto")}
    assert set(found) == {"sort/100", "sort/1000", "join", "checksum/sum 4 KiB", "noop"}
    assert found["sort/100"].value == pytest.approx(76.98396821908801e-9)
    assert len(found["noop"].samples) == 100 and found["noop"].unit == "s"
    args = [*client_args(url, account.admin), "--format", "auto", "--prefix", "crit"]
    posted = perfit_main("post", *args, str(FIXTURES / "criterion-estimates"))
    assert posted.returncode == 0, posted.stderr
    assert len(json.loads(posted.stdout)["metrics"]) == 5
    assert_said_no(perfit_main("post", *args, str(FIXTURES / "src")), 2)


def _jmh_run(mode: str, score: float, unit: str) -> dict:
    return {
        "benchmark": "a.B.sort",
        "mode": mode,
        "primaryMetric": {"score": score, "scoreUnit": unit},
    }


def test_one_benchmark_run_several_ways_is_several_metrics_and_a_repeat_is_refused() -> None:
    """JMH with -bm thrpt,avgt gave one name twice (an ops/s and a time in one metric)."""
    jmh = [_jmh_run("thrpt", 3.4e9, "ops/s"), _jmh_run("avgt", 0.3, "ns/op")]
    found = {r.name: r for r in perfit.read_results(json.dumps(jmh), "auto")}
    assert found["a.B.sort [thrpt]"].better == "higher"
    assert found["a.B.sort [avgt]"] == perfit.Result("a.B.sort [avgt]", 3e-10, "s", "lower")
    catch2 = (
        (FIXTURES / "catch2-v2.txt")
        .read_text()
        .replace(
            "std::sort of a reversed vector of                                              \n1000 ints",
            "fib 20",
        )
    )
    names = [r.name for r in perfit.read_results(catch2, "catch2")]
    assert names == ["fib 15", "fib 20 [Fibonacci]", "fib 20 [Sorting a reversed vector of one "
                     "thousand numbers, with spaces in the name]"]  # fmt: skip
    twice = '[{"name": "x", "unit": "s", "value": 1}, {"name": "x", "unit": "s", "value": 2}]'
    with pytest.raises(perfit.UsageError, match="names 'x' more than once"):
        perfit.read_results(twice, "gab")


def test_a_failed_or_odd_entry_is_left_out_or_said_never_a_traceback() -> None:
    doc = json.loads((FIXTURES / "benchmarkdotnet.json").read_text())
    doc["Benchmarks"][0]["Statistics"] = None  # how BenchmarkDotNet writes a failed one
    assert [r.name for r in perfit.read_results(json.dumps(doc), "auto")] == ["Benchmarks.Fib20"]
    for odd in ("[1]", "[null]", "[[]]", '{"Benchmarks": [], "HostEnvironmentInfo": {}}'):
        with pytest.raises(perfit.UsageError, match="none of the formats"):
            perfit.read_results(odd, "auto")


def test_better_leaves_times_and_rates_as_they_are() -> None:
    found = {r.name: r for r in perfit.read_results(
        (FIXTURES / "asv-results.json").read_text(), "asv", better="higher")}  # fmt: skip
    assert found["benchmarks.track_items_per_chunk"].better == "higher"
    assert found["benchmarks.TimeSuite.time_keys"].better == "lower"


def test_a_utf16_file_reads_and_a_binary_one_says_where(tmp_path: Path) -> None:
    """PowerShell's > writes UTF-16."""
    text = (FIXTURES / "benchmarkjs.txt").read_text()
    (tmp_path / "ps.txt").write_bytes(text.encode("utf-16"))
    assert perfit._read_text(str(tmp_path / "ps.txt")) == text
    (tmp_path / "bin").write_bytes(b"ok\x00\xff\xfe!")
    with pytest.raises(perfit.UsageError, match="byte 0xff at offset 3 is not UTF-8"):
        perfit._read_text(str(tmp_path / "bin"))


def test_the_new_readers_keep_the_samples_their_tools_write() -> None:
    assert (
        len(
            read_fixture("jmh.json")[
                "org.openjdk.jmh.samples.JMHSample_01_HelloWorld.wellHelloThere"
            ].samples
        )
        == 3
    )
    assert len(read_fixture("benchmarkdotnet.json")["Benchmarks.Fib10"].samples) == 14
    sort = read_fixture("asv-results.json")["benchmarks.Sort.time_sort(100, 'sorted')"]
    assert len(sort.samples) == 20 and sort.value == pytest.approx(statistics.median(sort.samples))


def test_the_readmes_newest_change_is_this_version() -> None:
    readme = (HERE / "README.md").read_text()
    changes = readme[readme.index("## Changes") :]
    assert re.search(r"^### (\S+)", changes, re.M)[1] == perfit.__version__


def test_the_readme_lists_every_format_the_client_reads() -> None:
    readme = (HERE / "README.md").read_text()
    assert f"from {len(perfit._FORMATS)} harnesses' output" in readme
    rows = set(re.findall(r"^\| `([a-z0-9-]+)` \|", readme, re.M))
    assert {*perfit._FORMATS, "auto"} <= rows, {*perfit._FORMATS, "auto"} - rows


def test_libtest_lines_with_spaces_in_names_and_other_units_are_read() -> None:
    """criterion's bencher output of a name with spaces raised (or, beside a plain name, was
    dropped); a libtest-shaped line in another unit was skipped without a word."""
    text = (
        "test Create Realm ... bench:         329 ns/iter (+/- 4)\n"
        "test plain ... bench:       1,200 ns/iter (+/- 9)\n"
        "test upload ... bench:        1911 MS/s (+/- 420)\n"
    )
    found = {r.name: r for r in perfit.read_results(text, "auto")}
    assert found == {
        "Create Realm": perfit.Result("Create Realm", 3.29e-07, "s", "lower"),
        "plain": perfit.Result("plain", 1.2e-06, "s", "lower"),
        "upload": perfit.Result("upload", 1911, "MS/s", "higher"),
    }


def test_go_benchmarks_at_several_gomaxprocs_are_several_benchmarks() -> None:
    """`go test -bench . -cpu=1,2,4` names one benchmark three ways; 0.2 merged the three
    into one metric holding the median of different things."""
    text = (
        "pkg: example.com/x\n"
        "BenchmarkSort       \t  1000\t      4000 ns/op\n"
        "BenchmarkSort-2     \t  1000\t      2100 ns/op\n"
        "BenchmarkSort-4     \t  1000\t      1200 ns/op\n"
        "BenchmarkJoin       \t  1000\t       300 ns/op\n"
    )
    found = {r.name: r.value for r in perfit.read_results(text, "auto")}
    assert found == pytest.approx(
        {
            "BenchmarkSort": 4e-06,
            "BenchmarkSort-2": 2.1e-06,
            "BenchmarkSort-4": 1.2e-06,
            "BenchmarkJoin": 3e-07,
        }
    )
    # At GOMAXPROCS=1 go writes no suffix: a name's own number is not one.
    one = "BenchmarkSort/size-100 \t 10\t 400 ns/op\nBenchmarkSort/size-1000 \t 10\t 3000 ns/op\n"
    assert [r.name for r in perfit.read_results(one, "go")] == [
        "BenchmarkSort/size-100",
        "BenchmarkSort/size-1000",
    ]
    eight = one.replace("100 \t", "100-8 \t").replace("1000 \t", "1000-8 \t")
    assert [r.name for r in perfit.read_results(eight, "go")] == [
        "BenchmarkSort/size-100",
        "BenchmarkSort/size-1000",
    ]


def test_picoseconds_are_a_unit_of_time() -> None:
    (result,) = perfit.read_results('[{"name": "add", "unit": "ps", "value": 5}]', "gab")
    assert result == perfit.Result("add", 5e-12, "s", "lower")


def test_pytest_benchmark_tests_of_one_name_in_one_group_keep_their_files() -> None:
    """Two test_parse in two files of the group "io" were one metric; they are two, and every
    name 0.2 gave that did not collide stays (a suite keeps landing on its metrics)."""
    stats = {"median": 0.5}

    def bench(file: str, name: str, group: str | None) -> dict:
        return {"group": group, "name": name, "fullname": f"{file}::{name}", "stats": stats}

    doc = {
        "machine_info": {},
        "benchmarks": [
            bench("tests/test_a.py", "test_parse", "io"),
            bench("tests/test_b.py", "test_parse", "io"),
            bench("tests/test_b.py", "test_dump", "io"),
            bench("tests/test_c.py", "test_sort", None),
        ],
    }
    names = [r.name for r in perfit.read_results(json.dumps(doc), "auto")]
    assert names == [
        "io/tests/test_a.py::test_parse",
        "io/tests/test_b.py::test_parse",
        "io/test_dump",
        "tests/test_c.py::test_sort",
    ]


def test_better_says_which_way_for_a_format_that_says_none(url: str, account: Account) -> None:
    """github-action-benchmark's custom JSON has no direction: "Free Memory" in MB was made
    lower-is-better, and post had no way to say otherwise."""
    doc = [{"name": "Free Memory", "unit": "MB", "value": 512}]
    (result,) = perfit.read_results(json.dumps(doc), "gab", better="higher")
    assert (result.unit, result.better) == ("MB", "higher")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
    args = [*client_args(url, account.admin), "--format", "gab", "--prefix", "mem", f.name]
    posted = perfit_main("post", *args, "--better", "higher")
    os.unlink(f.name)
    assert posted.returncode == 0, posted.stderr
    info = ok_json("GET", f"{url}/m/{json.loads(posted.stdout)['metrics']['mem/Free Memory']}/info")
    assert info["better"] == "higher"
    assert perfit_main("post", *args, "--better", "sideways").returncode == 2


def test_pyperf_takes_the_median_of_every_runs_values_not_the_warmups() -> None:
    doc = json.loads((FIXTURES / "pyperf.json").read_text())
    found = read_fixture("pyperf.json")
    assert set(found) == {"sort_100", "join_200", "dict_lookup"}
    bench = next(b for b in doc["benchmarks"] if b["metadata"]["name"] == "join_200")
    values = [v for run in bench["runs"] for v in run.get("values", [])]
    assert found["join_200"].value == pytest.approx(statistics.median(values))


@pytest.mark.parametrize(
    "name, samples",
    [
        ("pytest-benchmark-data.json", lambda doc: [b["stats"]["data"] for b in doc["benchmarks"]]),
        ("hyperfine.json", lambda doc: [r["times"] for r in doc["results"]]),
        (
            "pyperf.json",
            lambda doc: [
                [v for r in b["runs"] for v in r.get("values", [])] for b in doc["benchmarks"]
            ],
        ),
        ("google-benchmark.json", None),
        ("go-count.txt", None),
    ],
)
def test_readers_keep_every_sample_the_harness_wrote_and_post_their_median(
    name: str, samples: Callable | None
) -> None:
    found = list(read_fixture(name, "go" if name.endswith(".txt") else "auto").values())
    timed = [r for r in found if r.unit == "s"]
    assert timed and all(len(r.samples) >= 3 for r in timed), "3 repetitions, 5 runs, 5 counts..."
    for result in timed:
        assert statistics.median(result.samples) == pytest.approx(result.value, rel=1e-9)
        assert "samples" not in result.to_json(), "post stores the median only"
    if samples is not None:
        wanted = samples(json.loads((FIXTURES / name).read_text()))
        assert len(timed) == len(wanted)
        for result, expected in zip(timed, wanted):
            assert list(result.samples) == pytest.approx(expected, rel=1e-12)
    assert not read_fixture("pytest-benchmark.json")["strings/test_join"].samples, "no data: none"


def test_bmf_and_gab_custom_json_take_their_documented_shapes() -> None:
    bmf = {"sort": {"latency": {"value": 1500.0, "lower_value": 1400.0}, "throughput": {"value": 9e5}},
           "parse": {"file-size": {"value": 2048}}}  # fmt: skip
    found = {r.name: r for r in perfit.read_results(json.dumps(bmf), "bmf")}
    assert found["sort"] == perfit.Result("sort", 1.5e-06, "s", "lower")
    assert found["sort (throughput)"] == perfit.Result("sort (throughput)", 9e5, "ops/s", "higher")
    assert found["parse (file-size)"].unit == "file-size"
    gab = [{"name": "render", "unit": "ms", "value": 12.5, "range": "± 0.3"},
           {"name": "rps", "unit": "req/s", "value": 950}]  # fmt: skip
    found = {r.name: r for r in perfit.read_results(json.dumps(gab), "auto", "web")}
    assert found == {
        "web/render": perfit.Result("web/render", 0.0125, "s", "lower"),
        "web/rps": perfit.Result("web/rps", 950, "req/s", "higher"),
    }


@pytest.mark.parametrize(
    "text, fmt, message",
    [
        ("hello\nworld", "auto", "text that starts 'hello': none of the formats PerfIt reads"),
        ("{}", "pytest-benchmark", 'no "benchmarks" list'),
        ('{"benchmarks": [{"name": "x"}], "machine_info": {}}', "pytest-benchmark", "KeyError"),
        # --format auto names a tool only when its reader reads the file, and else says what
        # the file is (0.2 blamed pyperf, bmf or "a known harness" by a guess).
        ('{"benchmarks": [{"name": "x"}], "machine_info": {}}', "auto", "keys benchmarks, mac"),
        ('{"benchmarks": []}', "auto", "JSON with top-level keys benchmarks: none of the"),
        ("", "auto", "the file is empty"),
        ('{"results": [{"command": "x", "me', "auto", "JSON that breaks off .* line 1 column 31"),
        ('{"results": [{"command": "x", "me', "hyperfine", "not JSON .*line 1 column 31"),
        ("\x00\x01\x02", "auto", "the file is binary"),
        ("PASS\nok  example.com/x 0.1s\n", "go", "no Benchmark"),
        ("[1, 2]", "gab", "expected"),
    ],
)
def test_a_file_that_is_not_what_format_says_is_a_usage_error(
    text: str, fmt: str, message: str
) -> None:
    with pytest.raises(perfit.UsageError, match=message):
        perfit.read_results(text, fmt)


def test_post_format_creates_a_metric_per_result_and_prints_the_board(
    url: str, account: Account
) -> None:
    args = [*client_args(url, account.post), "--metadata", "run 1"]
    posted = perfit_main("post", "--format", "auto", str(FIXTURES / "go.txt"), *args)
    assert posted.returncode == 0, posted.stderr
    ids = json.loads(posted.stdout)["metrics"]
    assert len(ids) == len(read_fixture("go.txt")) == 14
    board = account_doc(url, account.admin)["board_id"]
    assert "posted 14 result(s)" in posted.stderr and f"{url}/b/{board}" in posted.stderr
    again = perfit_main(
        "post", "--format", "go", str(FIXTURES / "go.txt"), *args, "--prefix", "nightly"
    )
    assert set(json.loads(again.stdout)["metrics"]) == {f"nightly/{n}" for n in ids}
    shown = ok_json("GET", f"{url}/b/{board}/json")["metrics"]
    assert len(shown) == 28 and {m["latest"]["m"] for m in shown} == {"run 1"}


def test_post_format_reads_stdin_and_runs_under_python_s(url: str, account: Account) -> None:
    text = (FIXTURES / "hyperfine.json").read_text()
    done = subprocess.run(
        [sys.executable, "-S", "perfit.py", "post", "--format", "hyperfine", "-", *client_args(url, account.post)],
        input=text, capture_output=True, text=True, cwd=HERE, env=clean_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["metrics"]) == {"sleep 0.01", "sleep 0.02", "true"}


def test_post_of_a_bad_value_or_file_says_what_to_do(url: str, account: Account) -> None:
    args = client_args(url, account.post, "x")
    notanumber = perfit_main("post", "fast", *args)
    assert_said_no(notanumber, 2)
    assert "give --format" in notanumber.stderr
    missing = perfit_main("post", "--format", "go", "/nonexistent.txt", *args)
    assert_said_no(missing, 2)
    wrong = perfit_main("post", "--format", "pytest-benchmark", str(FIXTURES / "go.txt"), *args)
    assert_said_no(wrong, 2)
    assert "not pytest-benchmark output" in wrong.stderr


def test_import_of_a_github_action_benchmark_data_js_is_named_timed_and_idempotent(
    url: str, account: Account
) -> None:
    source = str(FIXTURES / "gab-data.js")
    # PerfIt 0.2 imported the first point with the commit at the start of its metadata.
    name = "Python Benchmark/fixtures/src/pytest/test_sort[100]"
    first_entry = perfit.read_gab_data_js((FIXTURES / "gab-data.js").read_text())
    result, rows = next((r, p) for r, p in first_entry if r.name.endswith("::test_sort[100]"))
    old = new_metric(url, account.admin, name=result.name, unit=result.unit, better=result.better)
    legacy = {"t": rows[0]["t"], "v": rows[0]["v"], "m": f"{'1' * 12} {rows[0]['m']}"}
    ok_json("POST", f"{url}/m/{old}/points", body=[legacy], token=account.admin)
    done = perfit_main(
        "metric", "import", "--format", "gab", source, *client_args(url, account.admin)
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["existing"] == 1 and summary["added"] > 0, "0.2's point is the same point"
    assert name
    metrics = {m["name"]: m for m in account_doc(url, account.admin)["metrics"]}
    assert len(metrics) == summary["metrics"]
    sort = metrics["Python Benchmark/fixtures/src/pytest/test_bench.py::test_sort[100]"]
    assert (sort["unit"], sort["better"]) == ("iter/sec", "higher")  # pytest's numbers are ops/s
    first, second = points(url, sort["metric_id"])
    assert first["t"] == 1795165200  # 2026-11-20T10:00:00+01:00, the commit's time
    assert first["m"] == "1" * 12 + " https://github.com/acme/widgets/commit/" + "1" * 40  # 0.2's
    assert second["m"] == "https://github.com/acme/widgets/commit/" + "2" * 40
    assert second["commit"] == "2" * 40
    assert second["t"] - first["t"] == 86400
    go = metrics["Go Benchmark/BenchmarkSort/size=100 - ns/op"]
    assert (go["unit"], go["better"]) == ("s", "lower")  # ns/op in seconds
    again = perfit_main(
        "metric", "import", "--format", "gab", source, *client_args(url, account.admin)
    )
    everything = summary["added"] + summary["existing"]
    assert json.loads(again.stdout) == {**summary, "added": 0, "existing": everything}


def test_compare_exits_3_on_a_regression_and_writes_the_job_summary(
    url: str, account: Account, tmp_path: Path
) -> None:
    leveled_metric(url, account, (30, 100.0), name="api/latency", unit="ms")
    args = [*client_args(url, account.post), "--metric", "api/latency"]
    same = perfit_main("compare", *args, "101", "99", "100.5")
    assert same.returncode == 0, same.stderr
    assert "the same  api/latency  100 ms" in same.stdout and "perfit: 1 the same" in same.stdout
    assert "compared with main's newest level" in same.stderr, "no base: said so"
    summary = tmp_path / "summary.md"
    slower = perfit_main("compare", *args, "135", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert slower.returncode == 3
    assert "perfit: REGRESSED: 1 regression" in slower.stdout
    table = summary.read_text()
    assert table.startswith("### PerfIt: 1 regression in 1 benchmark\n")
    row = next(line for line in table.splitlines() if line.startswith("| 🔴 | [api/latency]("))
    assert re.search(r"\| 100 ms \| 135 ms \| \+35\.0 % \| \+3\d\.\d % … \+3\d\.\d % \|$", row), row
    markdown = perfit_main("compare", "--markdown", *args, "135")
    assert markdown.stdout.strip() == table.strip()
    board = ["--board", account_doc(url, account.admin)["board_id"], "--server", url]
    by_board = perfit_main("compare", *board, "--metric", "api/latency", "135")  # no token
    assert by_board.returncode == 3, by_board.stderr


def test_compare_times_a_command_or_reads_a_suite_by_name(url: str, account: Account) -> None:
    leveled_metric(url, account, (30, 0.001), name="step", unit="s")
    args = [*client_args(url, account.post), "--metric", "step"]
    slow = perfit_main("compare", *args, "--", sys.executable, "-c", "import time; time.sleep(0.3)")
    assert slow.returncode == 3, slow.stdout + slow.stderr
    failed = perfit_main("compare", *args, "--", sys.executable, "-c", "raise SystemExit(4)")
    assert failed.returncode == 4 and "nothing to compare" in failed.stderr
    suite = FIXTURES / "hyperfine.json"
    assert (
        perfit_main(
            "post", "--format", "hyperfine", str(suite), *client_args(url, account.post)
        ).returncode
        == 0
    )
    again = perfit_main(
        "compare", "--format", "hyperfine", str(suite), *client_args(url, account.post)
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("\nthe same ") == 3
    renamed = perfit_main(
        "compare",
        "--format",
        "hyperfine",
        "--prefix",
        "other",
        str(suite),
        *client_args(url, account.post),
    )
    assert renamed.returncode == 0 and renamed.stdout.count("\nnew ") == 3


# --------------------------------------------------------------------------------------------
# Client: pull requests
# The PR workflow end to end: main's runs with their commits, a PR compared where it branched,
# one comment created and then edited in place on a fake GitHub and GitLab, a fork with no
# secret, `perfit check`, and the one-file executable's exit codes.
# --------------------------------------------------------------------------------------------


class FakeForge:
    """GitHub's issue comments and GitLab's merge request notes, as the real APIs answer
    them (paged lists, 201 on create, PATCH or PUT to edit), recording every request; a
    read-only token (a fork's) is answered 403, as GitHub does."""

    def __init__(self, read_only: bool = False, others: int = 0) -> None:
        self.read_only = read_only
        self.comments: dict[int, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []
        for _ in range(others):  # other people's comments, so ours is on a later page
            self._add("someone else", system=False)

    def _add(self, body: str, system: bool = False) -> dict:
        comment = {"id": 1000 + len(self.comments), "body": body, "system": system,
                   "user": {"login": "github-actions[bot]", "type": "Bot"}}  # fmt: skip
        self.comments[comment["id"]] = comment
        return comment

    def ours(self) -> list[dict]:
        return [c for c in self.comments.values() if "perfit-comment" in c["body"]]

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        import http.server

        forge = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                path, _, query = self.path.partition("?")
                forge.requests.append((self.command, self.path, body))
                status, doc, headers = forge.handle(self.command, path, query, body)
                data = json.dumps(doc).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _answer

            def log_message(self, *args: object) -> None:
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        try:
            yield f"http://127.0.0.1:{srv.server_address[1]}"
        finally:
            srv.shutdown()
            srv.server_close()

    def handle(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any, dict]:
        listing = re.fullmatch(
            r"/repos/acme/widgets/issues/7/comments|/api/v4/projects/42/merge_requests/3/notes",
            path,
        )
        one = re.fullmatch(
            r"/repos/acme/widgets/issues/comments/(\d+)|/api/v4/projects/42/merge_requests/3/notes/(\d+)",
            path,
        )
        if method == "GET" and listing:
            options = dict(urllib.parse.parse_qsl(query))
            size, page = min(int(options.get("per_page", 30)), 100), int(options.get("page", 1))
            found = list(self.comments.values())[(page - 1) * size : page * size]
            more = len(self.comments) > page * size
            link = {"Link": f'<http://x{path}?page={page + 1}>; rel="next"'} if more else {}
            return 200, found, link
        if self.read_only and method in ("POST", "PATCH", "PUT"):
            return 403, {"message": "Resource not accessible by integration", "status": "403"}, {}
        if method == "POST" and listing:
            return 201, self._add(body["body"]), {}
        if method in ("PATCH", "PUT") and one:
            comment = self.comments[int(one.group(1) or one.group(2))]
            comment["body"] = body["body"]
            return 200, comment, {}
        return 404, {"message": "Not Found"}, {}


def _pytest_benchmark_file(path: Path, levels: dict[str, float], rng: random.Random) -> Path:
    """The real fixture's shape (pytest-benchmark-data.json), this run's numbers: each test's
    rounds (1 % noise) and their median."""
    doc = json.loads((FIXTURES / "pytest-benchmark-data.json").read_text())
    for bench in doc["benchmarks"]:
        level = levels[bench["name"]]
        data = [level * rng.lognormvariate(0, 0.01) for _ in range(5)]
        bench["stats"].update(data=data, median=statistics.median(data))
    path.write_text(json.dumps(doc))
    return path


def _pr_event(tmp_path: Path, base: str, head: str, fork: bool = False) -> Path:
    event = tmp_path / "event.json"
    repo = "someone/widgets" if fork else "acme/widgets"
    event.write_text(json.dumps({"number": 7, "pull_request": {
        "number": 7, "base": {"sha": base, "ref": "main", "repo": {"full_name": "acme/widgets"}},
        "head": {"sha": head, "ref": "fix", "repo": {"full_name": repo}}}}))  # fmt: skip
    return event


def test_a_pull_request_is_judged_where_it_branched_in_one_comment_updated_in_place(
    tmp_path: Path, pyz: Path
) -> None:
    """The issue's story, end to end: 40 main runs of a pytest-benchmark suite with their
    commits; a PR branched at run 30; a regression landed on main at run 35. A PR that changes
    nothing is "the same" everywhere (against main's newest level it would look faster); one
    that slows a benchmark names it, with an interval; a second push edits the comment; a
    fork's PR, with no secret, gets the same verdicts; the bundle exits as the script does."""
    with running_server(tmp_path / "data") as server:
        url, acc = server.url, new_account(server.url)
        repo = tmp_path / "repo"
        repo.mkdir()
        main, head = _main_and_a_pr(repo, 40, 30, "fix")
        names = [
            b["name"]
            for b in json.loads((FIXTURES / "pytest-benchmark-data.json").read_text())["benchmarks"]
        ]
        level = {n: 1e-6 * (i + 1) for i, n in enumerate(names)}
        rng = random.Random(3)
        post = [*client_args(url, acc.post), "--branch", "main"]
        for run in range(1, 41):
            if run == 35:  # main regresses: test_sort[1000] takes 30 % longer from now on
                level["test_sort[1000]"] *= 1.3
            made = _pytest_benchmark_file(tmp_path / f"main-{run}.json", level, rng)
            done = perfit_main(
                "post", "--format", "pytest-benchmark", str(made), *post, "--commit", main[run - 1]
            )
            assert done.returncode == 0, done.stderr
        board = account_doc(url, acc.admin)["board_id"]
        fast = {**level, "test_sort[1000]": level["test_sort[1000]"] / 1.3}  # main at run 30
        unchanged = _pytest_benchmark_file(tmp_path / "pr-same.json", fast, rng)
        slower = _pytest_benchmark_file(
            tmp_path / "pr-slow.json", {**fast, "test_join": fast["test_join"] * 1.25}, rng
        )
        forge = FakeForge(others=120)
        with forge.serve() as api:
            env = {
                **GITHUB,
                "GITHUB_EVENT_NAME": "pull_request",
                "GITHUB_HEAD_REF": "fix",
                "GITHUB_EVENT_PATH": str(_pr_event(tmp_path, main[-1], head)),
                "GITHUB_TOKEN": "ghs_fake",
                "GITHUB_API_URL": api,
                "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
                "GIT_DIR": str(repo / ".git"),
            }  # the checkout's history: where it branched; fmt: skip
            compare = [
                "compare",
                "--format",
                "pytest-benchmark",
                "--comment",
                *client_args(url, acc.post),
            ]
            os.chdir(repo)
            try:
                same = perfit_main(*compare, str(unchanged), env=env)
                assert same.returncode == 0, same.stdout + same.stderr
                assert "perfit: 5 the same\n" in same.stdout, same.stdout
                assert "improvement" not in same.stdout, "at the branch point, not main's newest"
                assert "commented on pull request #7" in same.stderr
                (comment,) = forge.ours()
                assert f"against main at [`{main[29][:7]}`]" in comment["body"]
                slow = perfit_main(*compare, str(slower), env=env)  # a second push
                assert slow.returncode == 3, slow.stdout + slow.stderr
                assert "updated the comment on pull request #7" in slow.stderr
                assert [c["id"] for c in forge.ours()] == [comment["id"]], "one comment, edited"
                body = forge.ours()[0]["body"]
                row = next(line for line in body.splitlines() if "test\\_join" in line)
                assert row.startswith("| 🔴 | [strings/test\\_join](")  # its group/name
                assert re.search(r"\| \+2\d\.\d % \| \+\d+\.\d % … \+\d+\.\d % \|$", row), row
                assert f"{url}/m/" in row and "?branch=fix" in row
                assert "1 regression, 4 the same" in body
                # A fork's pull request: no PerfIt token, a read-only GitHub token.
                forge.read_only = True
                fork_env = {
                    **env,
                    "GITHUB_EVENT_PATH": str(_pr_event(tmp_path, main[-1], head, fork=True)),
                }
                forked = perfit_main("compare", "--format", "pytest-benchmark", "--comment", "--board", board,
                                     "--server", url, str(slower), env=fork_env)  # fmt: skip
                assert forked.returncode == 3, forked.stderr
                assert (
                    "could not comment on pull request #7: 403 Resource not accessible by integration"
                    in forked.stderr
                )
                verdicts = [line.split()[0] for line in forked.stdout.splitlines()[1:-1]]
                assert verdicts == [line.split()[0] for line in slow.stdout.splitlines()[1:-1]]
                assert (tmp_path / "summary.md").read_text().count("### PerfIt:") == 3, (
                    "every run's table"
                )
                # The executable: the same exit codes as the script.
                bundled = subprocess.run([sys.executable, str(pyz), "compare", "--format", "pytest-benchmark",
                                          "--board", board, "--server", url, str(slower)],
                                         capture_output=True, text=True, env=clean_env(**fork_env), timeout=60)  # fmt: skip
                assert bundled.returncode == 3, bundled.stderr
            finally:
                os.chdir(HERE)
        sort = account_ids(url, acc)["fixtures/src/pytest/test_bench.py::test_sort[1000]"]
        check = subprocess.run([sys.executable, str(pyz), "metric", "check", "--server", url, "--metric", sort],
                               capture_output=True, text=True, env=clean_env(), timeout=60)  # fmt: skip
        assert check.returncode == 3 and "REGRESSED" in check.stdout, check.stdout + check.stderr
        ran = subprocess.run([sys.executable, str(pyz), "run", "--metric", "x", "--", "sh", "-c", "exit 7"],
                             capture_output=True, text=True, env=clean_env(), timeout=60)  # fmt: skip
        assert ran.returncode == 7


def test_the_readmes_sample_comment_is_what_compare_writes() -> None:
    """The README shows a PR comment: this renders it from a six-benchmark answer."""
    names = [
        "api/login",
        "api/search",
        "api/render",
        "db/insert",
        "db/select",
        "api/export",
        "db/scan",
    ]
    ids = {n: perfit.b64encode(bytes([i]) * 16) for i, n in enumerate(names)}
    sha = "3f2a9c1e7b0d5a6c8e9f00112233445566778899"

    def row(name: str, verdict: str, median: float | None, value: float, *change: float) -> dict:
        baseline = {
            "median": median,
            "n": 30 if median else 0,
            "spread": 0.4,
            "commit": median and sha,
        }
        return {"name": name, "metric_id": ids[name], "unit": "ms", "verdict": verdict, "value": value,
                "change": change[0] if change else None, "interval": list(change[1:]) or None,
                "baseline": baseline}  # fmt: skip

    doc = {
        "results": [
            row("api/search", "regression", 41.2, 47.9, 0.163, 0.121, 0.206),
            row("db/insert", "inconclusive", 8.03, 8.61, 0.072, 0.018, 0.129),
            row("api/login", "same", 12.4, 12.5, 0.006, -0.011, 0.023),
            row("api/render", "same", 96.1, 95.2, -0.009, -0.024, 0.006),
            row("db/select", "same", 1.84, 1.86, 0.011, -0.02, 0.043),
            row("api/export", "new", None, 230.0),
        ],
        "shift": {"change": 0.004, "interval": [-0.006, 0.014], "verdict": "same", "results": 5},
        "base": sha,
        "missing": [{"name": "db/scan", "metric_id": ids["db/scan"]}],
        "board": "B" * 22,
    }
    context = perfit.CiContext(
        branch="faster-search", commit_link="https://github.com/acme/widgets/commit/{}"
    )
    rendered = perfit._comparison_markdown(
        perfit._Comparison(doc, "https://perfit.example", context, [sha])
    )
    readme = (HERE / "README.md").read_text()
    shown = readme[readme.index("### What the comment says") :]
    assert f"```markdown\n{rendered}\n```" in shown


def _a_suite_to_comment_on(url: str, account: Account, prefix: str, tmp_path: Path) -> list[str]:
    """A suite's history on main, a PR's results of it, and the command that compares them
    and comments."""
    _suite_history(url, account, prefix, runs=12, size=6)
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps([{"name": f"bench_{i}", "unit": "ms", "value": 1 + i} for i in range(6)])
    )
    args = ["--format", "gab", "--prefix", prefix, "--comment", *client_args(url, account.post)]
    return ["compare", *args, str(results)]


def _on_a_pr(event: Path, api: str) -> dict[str, str]:
    """A GitHub Actions job's environment on a pull request, its API at `api`."""
    return {**GITHUB, "GITHUB_EVENT_PATH": str(event), "GITHUB_TOKEN": "t", "GITHUB_API_URL": api}


def test_two_workflows_keep_two_comments_and_gitlab_gets_a_note(
    tmp_path: Path, url: str, account: Account
) -> None:
    compare = _a_suite_to_comment_on(url, account, "notes", tmp_path)
    forge = FakeForge()
    with forge.serve() as api:
        env = _on_a_pr(_pr_event(tmp_path, "0" * 40, "1" * 40), api)
        for key in ("unit", "bench", "unit"):
            done = perfit_main(*compare, "--comment-key", key, env=env)
            assert done.returncode == 0, done.stderr
        assert sorted(c["body"].splitlines()[0] for c in forge.ours()) == [
            "<!-- perfit-comment: bench -->", "<!-- perfit-comment: unit -->"
        ]  # fmt: skip
        posted = [r for r in forge.requests if r[0] != "GET"]
        assert [r[0] for r in posted] == ["POST", "POST", "PATCH"]
        gitlab = {"GITLAB_CI": "true", "CI_MERGE_REQUEST_IID": "3", "CI_PROJECT_ID": "42",
                  "CI_API_V4_URL": f"{api}/api/v4", "PERFIT_GITLAB_TOKEN": "glpat-x"}  # fmt: skip
        for _ in range(2):
            assert perfit_main(*compare, env=gitlab).returncode == 0
        gitlab_calls = [r[0] for r in forge.requests if "/api/v4/" in r[1] and r[0] != "GET"]
        assert gitlab_calls == ["POST", "PUT"]
        nothing = perfit_main(*compare, env={**GITHUB, "GITHUB_EVENT_NAME": "push"})
        assert (
            nothing.returncode == 0
            and "no comment: this is not a pull request (push)" in nothing.stderr
        )


def test_a_comment_shows_hostile_names_as_text_and_fits_github_however_many_results() -> None:
    hostile = "[click](https://evil.example) <img src=x> `x` a|b <!--"
    rows = [{"name": hostile if i == 0 else f"bench_{i}", "metric_id": None, "unit": "s",
             "verdict": "new" if i < 2000 else "same", "value": 1.0, "change": None,
             "interval": None, "baseline": {"median": None, "n": 0, "spread": 0, "commit": None}}
            for i in range(3000)]  # fmt: skip
    doc = {"results": rows, "shift": None, "base": None, "board": "B" * 22,
           "missing": [{"name": "`gone` <b>", "metric_id": "C" * 22}]}  # fmt: skip
    text = perfit._comparison_markdown(
        perfit._Comparison(doc, "https://perfit.example", perfit.CiContext(), [])
    )
    assert len(text) <= 65_000, "GitHub refuses a comment over 65,536 characters"
    first = next(line for line in text.splitlines() if "evil" in line)
    assert "\\[click\\](https://evil.example) &lt;img src=x&gt; \\`x\\` a\\|b &lt;!--" in first
    assert (
        "<img" not in text
        and "<!--" not in text.replace("<!-- perfit", "")
        and "\\`gone\\` &lt;b&gt;" in text
    )
    assert text.count("left out to fit a comment") == 1 and "more results are left out" in text
    assert text.rstrip().endswith("Made by PerfIt.</sub>")


def test_a_forge_that_answers_oddly_never_changes_the_exit_code(
    tmp_path: Path, url: str, account: Account
) -> None:
    compare = _a_suite_to_comment_on(url, account, "odd", tmp_path)
    event = _pr_event(tmp_path, "0" * 40, "1" * 40)
    for answer in ([1, "x", {"no": "id"}], {"message": "rate limited"}, None):
        forge = FakeForge()
        forge.handle = lambda *args, answer=answer: (200, answer, {})  # type: ignore[method-assign]
        with forge.serve() as api:
            done = perfit_main(*compare, env=_on_a_pr(event, api))
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    # Someone else's comment with our marker: ours is made anew, not theirs edited.
    forge = FakeForge()
    forge._add("<!-- perfit-comment: perfit -->\nnot ours")["user"] = {
        "login": "mallory",
        "type": "User",
    }
    real = forge.handle
    forge.handle = lambda m, p, q, b: (
        (403, {"message": "Forbidden"}, {}) if m == "PATCH" else real(m, p, q, b)
    )  # type: ignore[method-assign]
    with forge.serve() as api:
        done = perfit_main(*compare, env=_on_a_pr(event, api))
    assert done.returncode == 0 and "commented on pull request #7" in done.stderr, done.stderr
    assert len(forge.ours()) == 2


def test_compare_sends_at_most_a_thousand_samples_a_result_keeping_their_median(
    url: str, account: Account, tmp_path: Path
) -> None:
    doc = json.loads((FIXTURES / "pytest-benchmark-data.json").read_text())
    bench = doc["benchmarks"][0]
    bench["stats"]["data"] = [1e-6 * (1 + i / 50_000) for i in range(50_001)]  # fast: many rounds
    bench["stats"]["median"] = statistics.median(bench["stats"]["data"])
    many = tmp_path / "many.json"
    many.write_text(json.dumps(doc))
    result = perfit.read_results(many.read_text(), "pytest-benchmark")[0]
    sent = perfit._fresh_json(result)
    assert len(sent["values"]) == 1000 and statistics.median(sent["values"]) == pytest.approx(
        result.value, rel=1e-4
    )
    done = perfit_main(
        "compare", "--format", "pytest-benchmark", str(many), *client_args(url, account.post)
    )
    assert done.returncode == 0, done.stderr


def test_check_fails_a_job_while_any_metric_of_the_suite_is_regressed(
    tmp_path: Path, url: str, account: Account
) -> None:
    _import_series(url, account, [1.0] * 30 + [1.5] * 10, name="checked/slow")
    _import_series(url, account, [1.0] * 30, name="checked/steady")
    _import_series(url, account, [1.0] * 30 + [1.5] * 10, name="other/slow")
    summary = tmp_path / "summary.md"
    both = perfit_main(
        "check", *client_args(url, account.post), env={"GITHUB_STEP_SUMMARY": str(summary)}
    )
    assert both.returncode == 3 and "REGRESSED: 2 of 3" in both.stdout
    assert "checked/slow: +50.0 %" in both.stdout and "other/slow" in both.stdout
    assert summary.read_text().startswith("### PerfIt: 2 of 3 metrics regressed")
    board = account_doc(url, account.admin)["board_id"]
    mine = perfit_main("check", "--board", board, "--prefix", "checked/", "--server", url)
    assert mine.returncode == 3 and "REGRESSED: 1 of 2 metric(s) under checked/" in mine.stdout
    slow = account_ids(url, account)["checked/slow"]
    assert perfit_main("metric", "accept", *client_args(url, account.admin, slow)).returncode == 0
    passed = perfit_main("check", "--board", board, "--prefix", "checked", "--server", url)
    assert passed.returncode == 0 and "ok: none of 2" in passed.stdout, "an accepted change passes"
    nothing = perfit_main("check", "--server", url)
    assert nothing.returncode == 2 and "--board" in nothing.stderr


# --------------------------------------------------------------------------------------------
# CLI: run
# Timing a CI step: the command's own exit code, its duration in the metric's unit, a cancel
# passed on, and never a failed job for a failed post.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("handles_it", [True, False])
def test_run_passes_sigterm_on_to_its_command_and_exits_as_it_did(
    url: str, account: Account, metric: str, handles_it: bool
) -> None:
    job = (
        "import signal, sys, time\n"
        + ("signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n" if handles_it else "")
        + "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    # The file alone, run as a script: as the CI job that gets cancelled runs it.
    command = [sys.executable, PERFIT, "run", *client_args(url, account.post, metric), "--",
               sys.executable, "-c", job]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=clean_env())  # fmt: skip
    try:
        assert run.stdout.readline().strip() == "ready"  # the job runs, its handler is set
        cancelled = time.monotonic()
        run.send_signal(signal.SIGTERM)  # what a CI runner does to a cancelled job
        _, err = run.communicate(timeout=30)
    finally:
        run.kill()
    assert time.monotonic() - cancelled < 10, "the job was left running"
    assert run.returncode == (42 if handles_it else 128 + signal.SIGTERM), err
    assert "SIGTERM" in err and "Traceback" not in err
    assert points(url, metric) == [], "a cancelled job's time was posted"


@pytest.mark.parametrize(
    "unit, low, high", [("s", 0.2, 10), ("ms", 200, 10_000), ("min", 0.2 / 60, 1)]
)
def test_run_posts_the_duration_in_the_metrics_own_unit(
    url: str, account: Account, unit: str, low: float, high: float
) -> None:
    mid = new_metric(url, account.admin, name="step", unit=unit)
    job = [sys.executable, "-c", "import time; time.sleep(0.2)"]
    proc = cli("run", *client_args(url, account.post, mid), "--", *job)
    assert proc.returncode == 0, proc.stderr
    [value] = values(url, mid)
    assert low <= value < high


def test_run_posts_the_commands_duration(url: str, account: Account, metric: str) -> None:
    proc = cli(
        "run",
        "--metadata",
        "job-1",
        *client_args(url, account.post, metric),
        "--",
        sys.executable,
        "-c",
        "import time; time.sleep(0.3); print('hello from the job')",
    )
    assert proc.returncode == 0, proc.stderr
    assert "hello from the job" in proc.stdout
    [point] = points(url, metric)
    assert 0.3 <= point["v"] < 10
    assert point["m"] == "job-1"


def test_run_keeps_the_commands_exit_code_and_skips_posting_failures(
    url: str, account: Account, metric: str
) -> None:
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    proc = cli("run", *client_args(url, account.post, metric), "--", *failing)
    assert proc.returncode == 3
    assert points(url, metric) == []
    proc = cli("run", "--send-on-failure", *client_args(url, account.post, metric), "--", *failing)
    assert proc.returncode == 3
    assert len(points(url, metric)) == 1


def test_run_does_not_fail_the_job_when_the_server_is_down() -> None:
    down = client_args(f"http://127.0.0.1:{free_port()}", random_token(), unknown_id())
    job = [sys.executable, "-c", "print('built')"]
    started = time.monotonic()
    proc = cli("run", "--timeout", "0.5", *down, "--", *job)
    assert time.monotonic() - started < 15
    assert proc.returncode == 0
    assert "built" in proc.stdout
    assert proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    proc = cli("run", "--timeout", "0.5", *down, "--", sys.executable, "-c", "raise SystemExit(5)")
    assert proc.returncode == 5
    proc = cli("run", "--timeout", "0.5", "--fail-on-send-failure", *down, "--", *job)
    assert proc.returncode == perfit.EXIT_UNREACHABLE
    assert "Traceback" not in proc.stderr


def test_a_skipped_or_failed_post_warns_on_the_github_run_page() -> None:
    """A fork PR has no secrets: the job stays green, but the run's page says why its chart
    stopped (a workflow command on stdout), not only a line lost in the log."""
    job = [sys.executable, "-c", "print('built')"]
    skipped = cli("run", "--", *job, env={"GITHUB_ACTIONS": "true"})
    assert skipped.returncode == 0
    assert "::warning title=PerfIt::no access token" in skipped.stdout, skipped.stdout
    down = client_args(f"http://127.0.0.1:{free_port()}", random_token(), unknown_id())
    failed = cli("run", "--timeout", "0.5", *down, "--", *job, env={"GITHUB_ACTIONS": "true"})
    assert failed.returncode == 0
    assert "::warning title=PerfIt::could not post the duration" in failed.stdout
    quiet = cli("run", "--", *job)  # not on GitHub Actions: stderr only
    assert "::warning" not in quiet.stdout and "will not be posted" in quiet.stderr


def test_run_does_not_fail_the_job_when_the_server_says_no(
    url: str, other: Account, metric: str
) -> None:
    proc = cli("run", *client_args(url, other.post, metric), "--", sys.executable, "-c", "pass")
    assert proc.returncode == 0
    assert proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert points(url, metric) == []
