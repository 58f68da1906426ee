"""PerfIt: a tiny self-hosted tracker of CI performance, in one file.

This module plays two roles:

* the server, ``perfit serve``: an append-only store with its index in memory, change-point
  detection, SVG charts and a small JSON/HTML web app;
* the client, every other subcommand: creates accounts, metrics and tokens, and posts data
  points, typically the wall time of a CI step (``perfit run -- make test``).

Import rule: the client half runs on a bare Python 3.9+ standard library (even under
``python -S``), so CI jobs can download this one file and run it. The server's third-party
dependencies (bottle, svgwrite, zstandard) are imported only inside the functions that need
them, never at module import.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import collections
import contextlib
import contextvars
import dataclasses
import functools
import html
import importlib
import io
import itertools
import json
import math
import operator
import os
import re
import struct
import sys
import threading
import time
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

# Modules that only some commands use are imported in the functions that use them: every CI
# job pays for this module's start, and `python -X importtime` says where it goes.
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:  # pragma: no cover - names for type hints only
    import urllib.error
    from typing import Any, Callable

    import bottle

__version__ = "0.3.0.dev0"
# The names a program may import, by section; every other top-level name starts with "_".
__all__ = [
    # errors
    *"PerfitError BadRequest Unauthorized Forbidden NotFound PayloadTooLarge RateLimited".split(),
    *"StoreError StoreLocked StoreCorrupt UsageError MissingDependency ServerSaidNo KeyInUse".split(),
    *"KeyReused".split(),
    "SendFailed",
    "Conflict",
    # shared helpers, and the constants callers use
    *"b64encode decode_id new_id new_token hash_token parse_duration parse_rfc3339".split(),
    *"format_time TIME_UNITS convert_time US SEAL_BYTES DAMAGED_DIR ROOT_TOKEN_FILE".split(),
    "MAX_RUN_POINTS",
    "MAX_ACCOUNT_METRICS",
    *"MAX_IMPORT_POINTS DEFAULT_CHANGE_THRESHOLD CHART_HEIGHT CHART_MARGIN BADGE_COLOURS".split(),
    *"ENV_SERVER ENV_ACCESS_TOKEN ENV_METRIC ENV_METADATA ENV_TIMEOUT ENV_LISTEN".split(),
    "ENV_PUBLIC_URL",
    *"ENV_COMMIT ENV_BRANCH ENV_BOARD ENV_BASE".split(),
    *"ENV_DATA ENV_ROOT_TOKEN EXIT_OK EXIT_REFUSED EXIT_USAGE EXIT_REGRESSED".split(),
    *"EXIT_UNREACHABLE EXIT_INTERRUPTED EXIT_STORE_FATAL".split(),
    # the store
    *"FRAME POINT REC_POINT LOG_MAGIC SEG_MAGIC Scan encode_record scan_file scan_bytes".split(),
    *"BATCHED pack_batch unpack_batch RunPoint RUN REC_RUN pack_run unpack_run Row".split(),
    *"Origin Origins origin_table pack_origin unpack_origin DEFAULT_MAIN_BRANCH".split(),
    "legacy_commit",
    *"pack_columns unpack_columns Zstd find_zstd need_zstd PointBatch Series Metric".split(),
    *"Principal Index DataFiles seal_log scan_directory replay repair_directory".split(),
    *"CheckReport check_directory backup_directory Log Sealer Store metric_names what_was_lost".split(),
    *"DataFile compaction_runs compact_segments TokenEntry token_id parse_keep keep_text".split(),
    # change points and charts
    *"Run Change detect_changes series_changes metric_changes standing Marks".split(),
    *"QueryOption CHART_OPTIONS ChartOptions".split(),
    *"Verdict Shift Baseline Fresh compare_results base_time MAX_COMPARE_RESULTS".split(),
    *"ChartSeries chart_document render_chart render_badge badge_state format_value".split(),
    "suspect_window",
    *"format_duration format_number nice_ticks value_ticks time_ticks".split(),
    # the web
    *"ServerConfig RateLimiter client_address base_url parse_chart_options json_response".split(),
    "not_permitted",
    *"points_json Route ROUTES openapi_document make_app HTTPServer make_server".split(),
    "branch_points",
    *"BoardRow board_rows openmetrics_text metadata_link Notifier regression_message".split(),
    *"alert_record alert_words webhook_address".split(),
    # the client, the executable and the command line
    "Client",
    "write_bundle",
    *"Result read_results detect_format read_gab_data_js CiContext ci_context".split(),
    "post_comment",
    "main",
]


class _LazyLog:
    """The "perfit" logger, made when first used: logging is an import that only the server
    needs (a client command starts without it)."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("perfit"), name)


_log = _LazyLog()


# ==============================================================================================
# Constants
# Limits, defaults and environment variable names: the numbers the contract (SPEC.md) fixes.
# ==============================================================================================

_ID_BYTES = 16  #: metric and account ids: 128 random bits, 22 chars of url-safe base64
_TOKEN_BYTES = 32  #: access tokens: 256 random bits, 43 chars of url-safe base64
_MAX_METADATA_BYTES = 256
_MAX_BODY_BYTES = 64 * 1024
_MAX_POINTS_BODY_BYTES = 4 << 20  #: body limit of a bulk import
_MAX_RUN_BODY_BYTES = 1 << 20  #: body limit of a CI run: 1,000 names of up to 200 bytes fit
MAX_IMPORT_POINTS = 10_000  #: points per bulk import request
_FUTURE_SLACK = 300.0  #: seconds an imported point may lie ahead of the server's clock
_MAX_DRAIN_BYTES = 16 << 20  #: a refused body up to this size is read (and dropped) before the 413
_DRAIN_SECONDS = 2.0  #: ... for at most this long
_MAX_NAME_BYTES = 200  #: metric name, chart title and axis labels
_MAX_UNIT_BYTES = 32
_MAX_DESCRIPTION_BYTES = 2000
_MIN_ROOT_TOKEN_CHARS = 16  #: an operator-chosen root token shorter than this is refused
_MAX_THRESHOLD = 10.0  #: the largest `threshold` of /changes (1000 %)
MAX_RUN_POINTS = 1_000  #: points in one CI run (POST /r/)
_MAX_KEEP_BYTES = 64  #: a metric's retention, as text ("400d")
MAX_ACCOUNT_METRICS = 10_000  #: metrics an account may have
MAX_COMPARE_RESULTS = 10_000  #: results of one suite comparison (POST /b/ID/compare)
_MAX_COMPARE_BODY_BYTES = 4 << 20  #: ... and its body's size, samples and all
_MAX_BASE_COMMITS = 100  #: commits of a comparison's base (a PR's base and its ancestors)
#: How long a write's Idempotency-Key is remembered (its answer replayed): a day, as Stripe's
#: are; the client retries for at most its --timeout, a restart takes seconds.
IDEMPOTENCY_KEEP = 24 * 3600
_MAX_KEY_BYTES = 255  #: an Idempotency-Key: printable ASCII, a UUID or the like
_KEY_HEADER = "Idempotency-Key"  #: the IETF draft's name (draft-ietf-httpapi-idempotency-key)

_BETTER_CHOICES = ("lower", "higher")

_DEFAULT_LISTEN = "127.0.0.1:5050"
_DEFAULT_DATA = "./perfit-data"
_DEFAULT_SERVER = "http://127.0.0.1:5050"
_DEFAULT_RATE_LIMIT = 20.0  #: requests per second per client address; bursts of twice that
_DEFAULT_TIMEOUT = 30.0  #: seconds a client command may spend, retries included
_AUTH_FAILURE_RATE = 1.0  #: failed authentications per second per address, always enforced
_AUTH_FAILURE_BURST = 30.0
_RATE_LIMITER_MAX_CLIENTS = 10_000  #: buckets kept in memory; the least recently seen go first
_SOCKET_TIMEOUT = 30.0  #: seconds a connection may stall before the server drops it
_HEADER_TIMEOUT = 10.0  #: seconds a client has to send its request line and headers, in all
_DEFAULT_MAX_CONNECTIONS = 256  #: connections served at once; more are answered 503 at once
ROOT_TOKEN_FILE = "root-token.sha256"  #: the hash of a generated root token, never the token

ENV_SERVER = "PERFIT_SERVER"
ENV_ACCESS_TOKEN = "PERFIT_ACCESS_TOKEN"
ENV_METRIC = "PERFIT_METRIC"
ENV_METADATA = "PERFIT_METADATA"
ENV_TIMEOUT = "PERFIT_TIMEOUT"
ENV_COMMIT = "PERFIT_COMMIT"
ENV_BRANCH = "PERFIT_BRANCH"
ENV_BOARD = "PERFIT_BOARD"
ENV_BASE = "PERFIT_BASE"
ENV_LISTEN = "PERFITD_LISTEN"
ENV_DATA = "PERFITD_DATA"
ENV_ROOT_TOKEN = "PERFITD_ROOT_ACCESS_TOKEN"
ENV_PUBLIC_URL = "PERFITD_PUBLIC_URL"

EXIT_OK = 0
EXIT_REFUSED = 1  #: the server (or the store) said no
EXIT_USAGE = 2
EXIT_REGRESSED = 3
EXIT_UNREACHABLE = 4  #: the server could not be reached, or kept failing, within --timeout
EXIT_INTERRUPTED = 130
EXIT_STORE_FATAL = 70  #: a failed fsync: exit and let recovery on restart sort it out


# ==============================================================================================
# Errors
# One base class; each subclass carries the HTTP status the server answers and the exit code
# the CLI returns. Only main() turns them into an exit.
# ==============================================================================================


class PerfitError(Exception):
    """An expected failure, told to the user as one line (HTTP message or stderr)."""

    status: int | None = None  #: the HTTP status, for the errors the server answers with
    exit_code = EXIT_REFUSED

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class BadRequest(PerfitError):
    status = 400
    exit_code = EXIT_USAGE


class Unauthorized(PerfitError):
    status = 401


class Forbidden(PerfitError):
    status = 403


class NotFound(PerfitError):
    status = 404


class Conflict(PerfitError):
    """The name is taken: the answer carries the id of the metric that has it."""

    status = 409

    def __init__(self, message: str, metric_id: str) -> None:
        super().__init__(message)
        self.metric_id = metric_id


class KeyInUse(PerfitError):
    """An Idempotency-Key whose request is still at work, or was stored without an answer."""

    status = 409


class KeyReused(PerfitError):
    """An Idempotency-Key sent again with another request."""

    status = 422


class PayloadTooLarge(PerfitError):
    status = 413


class RateLimited(PerfitError):
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(PerfitError):
    """The store cannot take the write (disk full, store failed); nothing was acknowledged."""

    status = 507


class StoreLocked(PerfitError):
    """Another server owns the data directory."""


class StoreCorrupt(PerfitError):
    """A bad record with good records after it: corruption, never a torn write."""


class UsageError(PerfitError):
    exit_code = EXIT_USAGE


class MissingDependency(UsageError):
    """A third-party module the server needs does not import; the message names the fix."""


class ServerSaidNo(PerfitError):
    """The server answered with a 4xx; its message is the error's."""


class SendFailed(PerfitError):
    """The server could not be reached (or kept failing) within the client's timeout."""

    exit_code = EXIT_UNREACHABLE


# ==============================================================================================
# Shared helpers
# Ids, tokens, times, durations and units of time, used by both the server and the client.
# ==============================================================================================


class _Regex:
    """A regular expression compiled when first used (re's cache keeps it): a dozen compiled
    at import would cost every CI job's start several milliseconds."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern, self.flags = pattern, flags

    def __getattr__(self, name: str) -> Any:  # match, fullmatch, search, sub, finditer...
        return getattr(re.compile(self.pattern, self.flags), name)


def b64encode(raw: bytes) -> str:
    """Url-safe base64 without padding, the encoding of every id and token."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_ID_RE = _Regex(r"[A-Za-z0-9_-]{22}")


def decode_id(text: str) -> bytes | None:
    """The 16 raw bytes of a well-formed id, or None."""
    if not _ID_RE.fullmatch(text):
        return None
    raw = base64.urlsafe_b64decode(text + "==")
    # 22 chars hold 132 bits; the last 4 must be zero or two spellings would name one id.
    return raw if b64encode(raw) == text else None


def _random_b64(size: int) -> bytes:
    # Draw again when the text would start with "-": argparse would take `--metric -x...` for
    # an option. That costs 0.02 bits of the 128 or 256, and saves every user that puzzle.
    while True:
        raw = os.urandom(size)  # what secrets.token_bytes does, without its imports
        if not b64encode(raw).startswith("-"):
            return raw


def new_id() -> bytes:
    return _random_b64(_ID_BYTES)


def new_token() -> str:
    return b64encode(_random_b64(_TOKEN_BYTES))


def hash_token(token: str) -> bytes:
    """What the server keeps of a token: SHA-256 of its text, never the text itself."""
    import hashlib

    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def token_id(token_hash: bytes) -> bytes:
    """A token's public name (to list and revoke it by), derived from its hash: tokens made
    before ids existed have one too, and it tells nothing of the token."""
    import hashlib

    return hashlib.sha256(b"perfit token id\0" + token_hash).digest()[:_ID_BYTES]


#: Words of a duration option (`start-rel=2 weeks`), in seconds. Not metric units: here "m"
#: is a minute and "mo" a month, where a metric's "m" would be metres (see TIME_UNITS).
_DURATION_WORDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400),
    **dict.fromkeys(("mo", "month", "months"), 2_629_746),  # a Gregorian month on average
    **dict.fromkeys(("y", "year", "years"), 31_556_952),
}
#: The grammar of a duration: parts like "90s" or "2 weeks", spaces anywhere between. ASCII
#: digits and lower-case words only, so that the OpenAPI document can state it exactly.
_DURATION_PART_RE = _Regex(r" *([0-9]+(?:\.[0-9]+)?) *([a-z]+) *")
_DURATION_PATTERN = (
    "^ *([0-9]+(\\.[0-9]+)? *("
    + "|".join(sorted(_DURATION_WORDS, key=len, reverse=True))
    + ") *)*$"
)
_MAX_DURATION = 1000 * 31_556_952.0


def parse_duration(text: str) -> float:
    """Seconds in a human duration such as ``90s``, ``15m``, ``2 weeks`` or ``1d 12h``."""
    parts = list(_DURATION_PART_RE.finditer(text))
    if not text.strip() or "".join(p.group(0) for p in parts) != text:
        raise ValueError(f"{text!r} is not a duration (try 90s, 15m, 12h, 3d, 2w or '1d 12h')")
    total = 0.0
    for part in parts:
        if part.group(2) not in _DURATION_WORDS:
            raise ValueError(f"unknown unit {part.group(2)!r} in {text!r}")
        total += float(part.group(1)) * _DURATION_WORDS[part.group(2)]
    if total > _MAX_DURATION:
        raise ValueError(f"{text!r} is longer than a thousand years")
    return total


_MIN_KEEP = 86400.0  #: the shortest retention: a metric keeps at least a day of points


def parse_keep(text: str) -> float:
    """A metric's retention (`keep`) in seconds: a duration of at least a day."""
    seconds = parse_duration(text)
    if seconds < _MIN_KEEP:
        raise ValueError(f"keep {text!r} is shorter than a day")
    return seconds


def keep_text(seconds: float) -> str:
    """A retention as the duration it was likely given as: 400d, 36h, 90m."""
    for size, suffix in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds % size == 0:
            return f"{int(seconds // size)}{suffix}"
    return f"{seconds:g}s"


#: Metric units that measure time, in nanoseconds: whole numbers, so that a conversion is one
#: correctly rounded operation. Values in these units are drawn as durations, and a duration
#: posted in any of them (`perfit run` posts seconds) is stored in the metric's own.
TIME_UNITS = {
    "ns": 1,
    **dict.fromkeys(("us", "µs"), 1_000),
    "ms": 1_000_000,
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1_000_000_000),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), 60_000_000_000),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3_600_000_000_000),
}


_TIME_UNIT_NAMES = ("ns", "us", "ms", "s", "min", "h")  #: the short names, for messages


def convert_time(value: float, unit: str, to: str) -> float:
    """A duration in one time unit as another: 1.5 s is 1500 ms."""
    have, want = TIME_UNITS[unit], TIME_UNITS[to]
    return value * (have // want) if have >= want else value / (want // have)


def _per_second(unit: str) -> bool:
    """Whether a unit is a rate (ops/s, MB/s, Hz): higher is better, a slower runner lowers it."""
    return unit.endswith(("/s", "/sec", "/second", "ps")) or unit in ("ops", "Hz")


#: ASCII's control characters as \xNN escapes (the rest of what is not ASCII, the codec
#: escapes): what a client sent, in a log, can hold no escape sequence for the operator's
#: terminal nor bytes that make the log "binary" to grep (a TLS hello to the plain-HTTP port).
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def _printable(text: str) -> str:
    """`text` with control and non-ASCII characters escaped, for a log line."""
    if text.isascii() and text.isprintable():
        return text
    return text.encode("ascii", "backslashreplace").decode("ascii").translate(_CONTROL_ESCAPES)


def _tidy(value: float, digits: int = 12) -> float:
    """A float without binary noise past `digits` significant digits: 219.621, not ...98."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def _median(values: Iterable[float]) -> float:
    """statistics.median, without its import (fractions, decimal) at every start."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no median of no values")
    mid = len(ordered) // 2
    # Halves first: the mean of two values near the largest float would overflow.
    return ordered[mid] if len(ordered) % 2 else ordered[mid - 1] / 2 + ordered[mid] / 2


def parse_rfc3339(text: str) -> float:
    """Unix seconds of an RFC 3339 time (``2026-11-01T00:00:00Z``); no offset means UTC."""
    import datetime

    cleaned = text.strip()
    if cleaned[-1:] in ("Z", "z"):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time like 2026-11-01T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def format_time(t: float) -> str:
    """RFC 3339 in UTC, to the second: how times are shown to people."""
    import datetime

    moment = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ==============================================================================================
# Store: record framing
# Every change is one record appended to a log file, framed so that a torn write (a crash in
# the middle of an append) is told apart from corruption (a bad record with good ones after);
# points travel in columns (PointBatch) between the web layer, the files and the index.
# ==============================================================================================

LOG_MAGIC = b"PERFITL1"  #: first 8 bytes of every log file (format version 1)
SEG_MAGIC = b"PERFITS1"  #: first 8 bytes of every sealed segment
_LOG_SUFFIX = ".log"
_SEG_SUFFIX = ".seg"
_TMP_SUFFIX = ".tmp"
DAMAGED_DIR = "damaged"  #: where `serve --repair` keeps the original of every file it rewrites
SEAL_BYTES = 4 << 20  #: an active log this large is sealed into a segment
_SEG_BLOCK_POINTS = 16384  #: points per compressed block of a segment (at most 4.5 MB raw)

# A record on disk, little-endian:
#
#   +-------------+-------------+-----------+--------------------+
#   | length: u32 | crc32: u32  | type: u8  | payload: length B  |
#   +-------------+-------------+-----------+--------------------+
#
# crc32 covers the type byte and the payload, so a flipped type is caught as well.
FRAME = struct.Struct("<IIB")
_MAX_RECORD_BYTES = 16 << 20  #: no valid record is larger; a bigger length field is garbage

_REC_ACCOUNT = 1  #: JSON {"id", "created"}
_REC_TOKEN = 2  #: JSON {"account", "type", "hash", "created"} (0.1's have no "created")
_REC_METRIC = 3  #: JSON {"id", "account", "created", "name", "unit", "description", "better"}
REC_POINT = 4  #: one live data point, see POINT
_REC_POINTS = 5  #: a batch of imported points, see pack_columns
_REC_SEG_CONTROL = 6  #: segments only: zstd of the sealed log's account/token/metric records
_REC_SEG_POINTS = 7  #: segments only: zstd of one metric's points, delta-encoded and shuffled
_REC_BOARD = 8  #: JSON {"account", "board"}: the account's board id, replacing any before
_REC_BATCH = 9  #: records that land together or not at all (a CI run: metrics, points), see BATCHED
_REC_MARK = 10  #: JSON {"metric", "kind": accept|dismiss|undismiss|exclude|include|notified,
#: "start", "end"}
_REC_WEBHOOK = 11  #: JSON {"account", "url"}: where new regressions are told (null: nowhere)
_REC_EDIT = 12  #: JSON {"id", and what changes of "name", "unit", "description", "better", "keep"}
_REC_DELETE = 13  #: JSON {"metric"}: a tombstone; the metric and its points are gone
#: JSON {"before": {metric id: µs}, "branches": {metric id: µs}}: points older are gone
#: (retention); "branches" is for the points of branches other than main (see Metric.branches)
_REC_EXPIRE = 14
_REC_REVOKE = 15  #: JSON {"token"}: a token id (see token_id); the token stops working
REC_RUN = 16  #: a CI run's points: one time, one origin, a value per metric; see RUN
_REC_SETTINGS = 17  #: JSON {"account", and what changes: "main_branch"}
#: JSON {"origin": n, "commit", "branch", "main", "m"}: in a segment's control block only, an
#: origin its point blocks name by n (so a run's origin is stored once a segment, not once a
#: metric); empty fields, and main when true, are left out
_REC_ORIGIN = 18
#: JSON {"account", "key", "request", "t"}: a write sent with an Idempotency-Key, landing in
#: one batch with what it wrote; then the same with "status" and "answer", what it answered.
#: "request" is a digest of the request, "t" when (Unix seconds); gone after IDEMPOTENCY_KEEP
_REC_KEY = 19
_CONTROL_TYPES = (
    *(_REC_ACCOUNT, _REC_TOKEN, _REC_METRIC, _REC_BOARD, _REC_MARK, _REC_WEBHOOK),
    *(_REC_EDIT, _REC_DELETE, _REC_EXPIRE, _REC_REVOKE, _REC_SETTINGS, _REC_ORIGIN, _REC_KEY),
)
_RECORD_TYPES = (
    *_CONTROL_TYPES,
    *(REC_POINT, _REC_POINTS, _REC_SEG_CONTROL, _REC_SEG_POINTS, _REC_BATCH, REC_RUN),
)

US = 1_000_000  #: times are kept as integer microseconds since the epoch

# A live data point's payload, little-endian; the metadata's length is what the frame leaves:
#
#   +------------------+------------+-------------+---------------------------+
#   | metric id: 16 B  | time: i64  | value: f64  | metadata: UTF-8, <= 256 B |
#   +------------------+------------+-------------+---------------------------+
#                        microseconds
POINT = struct.Struct("<16sqd")

# Where points came from (see Origins): the commit and branch of a CI run, and its metadata,
# little-endian; main is 1 when the points count as their account's main branch's:
#
#   +----------+-----------------+-------------+-----------------+--------------+---------------+------+
#   | main: u8 | commit len: u8  | commit: hex | branch len: u8  | branch: UTF-8 | meta len: u16 | meta |
#   +----------+-----------------+-------------+-----------------+--------------+---------------+------+
_META_LEN = struct.Struct("<H")

# A CI run (POST /r/, and POST /m/ID, a run of one): one time and one origin for all of its
# points, so they are stored once a run, not once a point:
#
#   +-----------------+----------------+--------------+-------------------------------------+
#   | time: i64, µs   | origin (above) | count n: u32 | n x (metric id: 16 B, value: f64)   |
#   +-----------------+----------------+--------------+-------------------------------------+
RUN = struct.Struct("<q")
_RUN_COUNT = struct.Struct("<I")
_RUN_POINT = struct.Struct("<16sd")

# Many points of one metric, column by column (_REC_POINTS, and inside _REC_SEG_POINTS):
#
#   +-----------------+-------------+-----------------+----------------+------------------+------+
#   | metric id: 16 B | count n: u32 | times: n x i64 | values: n x f64 | meta lens: n x u16 | meta |
#   +-----------------+-------------+-----------------+----------------+------------------+------+
#
# then, only when some of the points have an origin (PerfIt 0.3), their origins:
#
#   +------------+-----------------------+----------------------------------------------+
#   | k: u16     | k origins (above)     | refs: n x u16 (0: none; j: the j-th origin) |
#   +------------+-----------------------+----------------------------------------------+
#
# or, in a segment, k = 0 and refs: n x u32, numbers of the origins its control block defines
# (_REC_ORIGIN): a run's origin once a segment, not once for each of its 500 metrics.
#
# In segments the times are deltas from the previous time (the first from 0) and each column
# is byte-shuffled (all first bytes, then all second bytes...), so zstd sees long runs.
_COLUMNS = struct.Struct("<16sI")

# The records inside a batch, one after another; the batch's own CRC covers them all:
#
#   +----------+-------------+--------------------+
#   | type: u8 | length: u32 | payload: length B  |
#   +----------+-------------+--------------------+
#
# Unframed on purpose: a torn batch must read as a torn tail, and inner records with CRCs of
# their own would look like good records after bad bytes (corruption) to the scan.
BATCHED = struct.Struct("<BI")


def _record_crc(rtype: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes((rtype,))))


def encode_record(rtype: int, payload: bytes) -> bytes:
    return FRAME.pack(len(payload), _record_crc(rtype, payload), rtype) + payload


def _frame_at(data: bytes, offset: int) -> tuple[int, bytes] | None:
    """The (type, payload) of a valid record at offset, or None if there is none."""
    end = offset + FRAME.size
    if end > len(data):
        return None
    length, crc, rtype = FRAME.unpack_from(data, offset)
    if rtype not in _RECORD_TYPES or length > _MAX_RECORD_BYTES or end + length > len(data):
        return None
    payload = data[end : end + length]
    if _record_crc(rtype, payload) != crc:
        return None
    return rtype, payload


def _next_record(data: bytes, offset: int) -> int:
    """Where the next valid record starts after a bad one at offset (len(data): none)."""
    if not data[offset:].strip(b"\0"):
        return len(data)  # zeros: the file grew but its data never landed (the usual torn tail)
    for i in range(offset + 1, len(data) - FRAME.size):
        if _frame_at(data, i) is not None:
            return i
    return len(data)


@dataclasses.dataclass
class Scan:
    """What reading one log or segment found: its good records and its bad byte ranges."""

    path: str
    records: list[tuple[int, int, bytes]]  #: (offset, type, payload)
    bad: list[tuple[int, int]]  #: (start, end) of each run of bytes that is no record
    size: int

    @property
    def torn_tail(self) -> int | None:
        """Offset of a bad run that reaches the end with no good record after it."""
        if self.bad and self.bad[-1][1] == self.size:
            return self.bad[-1][0]
        return None

    def corruption(self, tail_may_tear: bool) -> list[tuple[int, int]]:
        """Bad runs that are corruption; a torn tail is not, where the file may tear."""
        return self.bad[:-1] if tail_may_tear and self.torn_tail is not None else self.bad


def scan_file(path: str, magic: bytes) -> Scan:
    """Read every record of a file, stepping over bad bytes to find the good ones after."""
    with open(path, "rb") as f:
        return scan_bytes(path, f.read(), magic)


def scan_bytes(path: str, data: bytes, magic: bytes) -> Scan:
    """Every record of a file's contents, and the runs of bad bytes between them."""
    if len(data) < len(magic):
        # A crash while the file was being created: nothing in it was ever acknowledged.
        return Scan(path, [], [(0, len(data))] if data else [], len(data))
    if data[: len(magic)] != magic:
        return Scan(path, [], [(0, len(data))], len(data))
    records, bad = [], []
    offset = len(magic)
    while offset < len(data):
        frame = _frame_at(data, offset)
        if frame is None:
            resume = _next_record(data, offset)
            bad.append((offset, resume))
            offset = resume
            continue
        records.append((offset, frame[0], frame[1]))
        offset += FRAME.size + len(frame[1])
    return Scan(path, records, bad, len(data))


def _shuffle(raw: bytes, width: int) -> bytes:
    """Byte-transpose fixed-width items: similar high bytes end up side by side."""
    return b"".join(raw[i::width] for i in range(width))


def _unshuffle(raw: bytes, width: int) -> bytes:
    out = bytearray(len(raw))
    n = len(raw) // width
    for i in range(width):
        out[i::width] = raw[i * n : (i + 1) * n]
    return bytes(out)


def pack_columns(
    metric_id: bytes,
    batch: PointBatch,
    compact: bool = False,
    numbering: dict[int, int] | None = None,
) -> bytes:
    """Points of one metric as columns; compact (for segments) delta-encodes and shuffles.
    With `numbering` (a segment's: origin -> its number there), origins are referred to by
    number, not carried along."""
    times = batch.times
    if compact:
        times = array("q", itertools.chain((times[0],), map(operator.sub, times[1:], times)))
    columns = [times.tobytes(), batch.values.tobytes(), batch.lens.tobytes()]
    if compact:
        columns = [_shuffle(c, w) for c, w in zip(columns, (8, 8, 2))]
    packed = _COLUMNS.pack(metric_id, len(batch)) + b"".join(columns) + batch.blob
    if batch.origins is None or not any(batch.origins):
        return packed
    if numbering is not None:
        refs = array("I", (numbering[g] if g else 0 for g in batch.origins)).tobytes()
        return packed + _META_LEN.pack(0) + (_shuffle(refs, 4) if compact else refs)
    table, refs = _local_origins(batch.origins)
    origins = b"".join(map(pack_origin, table))
    refs_raw = _shuffle(refs.tobytes(), 2) if compact else refs.tobytes()
    return packed + _META_LEN.pack(len(table)) + origins + refs_raw


def unpack_columns(
    payload: bytes, compact: bool = False, numbering: dict[int, int] | None = None
) -> tuple[bytes, PointBatch]:
    """The metric and points of a columns payload; `numbering`: the segment's origins (its
    number -> the process-wide one), for a block that refers to them."""
    metric_id, n = _COLUMNS.unpack_from(payload)
    cut = itertools.accumulate((_COLUMNS.size, 8 * n, 8 * n, 2 * n))
    a, b, c, d = cut
    raw = [payload[a:b], payload[b:c], payload[c:d]]
    if compact:
        raw = [_unshuffle(r, w) for r, w in zip(raw, (8, 8, 2))]
    times, values, lens = array("q", raw[0]), array("d", raw[1]), array("H", raw[2])
    if compact:
        times = array("q", itertools.accumulate(times))
    end = d + sum(lens)
    if len(times) != n or len(lens) != n or end > len(payload):
        raise ValueError("point columns do not add up")
    origins = None
    if end < len(payload):
        origins = _unpack_origin_refs(payload, end, n, compact, numbering)
    return metric_id, PointBatch(times, values, lens, payload[d:end], origins)


def pack_origin(origin: Origin) -> bytes:
    """An origin as records carry it (see the layout above)."""
    commit, branch, main, meta = origin
    name = branch.encode("utf-8")
    return (
        bytes((int(main), len(commit)))
        + commit.encode("ascii")
        + bytes((len(name),))
        + name
        + _META_LEN.pack(len(meta))
        + meta
    )


def unpack_origin(payload: bytes, offset: int) -> tuple[Origin, int]:
    """The origin at offset, and where what follows it starts."""
    try:
        main, size = payload[offset], payload[offset + 1]
        offset += 2
        commit = payload[offset : offset + size].decode("ascii")
        offset += size
        size = payload[offset]
        branch = payload[offset + 1 : offset + 1 + size].decode("utf-8")
        offset += 1 + size
        (size,) = _META_LEN.unpack_from(payload, offset)
    except (IndexError, struct.error):
        raise ValueError("an origin runs past its record") from None
    meta = bytes(payload[offset + 2 : offset + 2 + size])
    if offset + 2 + size > len(payload) or main > 1:
        raise ValueError("an origin runs past its record")
    return Origin(commit, branch, bool(main), meta), offset + 2 + size


def _local_origins(origins: array) -> tuple[list[Origin], array]:
    """The distinct origins of a batch's points (of the process-wide table), and each point's
    place among them (0: none): what a columns record holds."""
    table = origin_table()
    local: dict[int, int] = {}
    refs = array("H", (local.setdefault(g, len(local) + 1) if g else 0 for g in origins))
    if len(local) > 0xFFFF:
        raise ValueError("more origins than a record holds")  # an import has at most 10,000
    return [table[g] for g in local], refs


def _unpack_origin_refs(
    payload: bytes, offset: int, n: int, compact: bool, numbering: dict[int, int] | None
) -> array:
    """The origins of a columns record's points, as numbers of the process-wide table."""
    (k,) = _META_LEN.unpack_from(payload, offset)
    offset += 2
    if k == 0:  # numbers of the segment's origins
        raw = payload[offset:]
        if len(raw) != 4 * n:
            raise ValueError("point origins do not add up")
        refs = array("I", _unshuffle(raw, 4) if compact else raw)
        if numbering is None:
            raise ValueError("a block refers to origins outside a segment")
        try:
            return array("I", (numbering[r] if r else 0 for r in refs))
        except KeyError as e:
            raise ValueError(f"a point names origin {e}, which its segment does not") from None
    table, ids = origin_table(), [0]
    for _ in range(k):
        origin, offset = unpack_origin(payload, offset)
        ids.append(table.intern(origin))
    raw = payload[offset:]
    if len(raw) != 2 * n:
        raise ValueError("point origins do not add up")
    refs = array("H", _unshuffle(raw, 2) if compact else raw)
    if max(refs, default=0) > k:
        raise ValueError("a point names an origin that is not there")
    return array("I", map(ids.__getitem__, refs))


def pack_run(t: int, origin: Origin, points: Sequence[tuple[bytes, float]]) -> bytes:
    """A CI run's record payload: its time (µs), its origin, and a value for each metric."""
    head = RUN.pack(t) + pack_origin(origin) + _RUN_COUNT.pack(len(points))
    return head + b"".join(_RUN_POINT.pack(metric_id, value) for metric_id, value in points)


def _interned_run(payload: bytes) -> tuple[int, int, list[tuple[bytes, float]]]:
    """A run record's time, its origin's number in the process's table, and its points."""
    t, origin, points = unpack_run(payload)
    return t, origin_table().intern(origin), points


def unpack_run(payload: bytes) -> tuple[int, Origin, list[tuple[bytes, float]]]:
    (t,) = RUN.unpack_from(payload)
    origin, offset = unpack_origin(payload, RUN.size)
    (n,) = _RUN_COUNT.unpack_from(payload, offset)
    offset += _RUN_COUNT.size
    if len(payload) - offset != n * _RUN_POINT.size:
        raise ValueError("a run's points do not add up")
    return t, origin, list(_RUN_POINT.iter_unpack(payload[offset:]))


class Origin(tuple):
    """Where points came from: a CI run's commit (7-40 hex digits) and branch, whether they
    count as their account's main branch's (no branch, or the main one when they came), and
    the run's metadata (a job URL). Every point of a run shares one."""

    __slots__ = ()

    def __new__(cls, commit: str = "", branch: str = "", main: bool = True, meta: bytes = b""):
        return tuple.__new__(cls, (commit, branch, main, meta))

    commit = property(operator.itemgetter(0))
    branch = property(operator.itemgetter(1))
    main = property(operator.itemgetter(2))
    meta = property(operator.itemgetter(3))


class Origins:
    """Every origin in use, interned process-wide: a point holds its origin's number in a
    4-byte column (0: none), and the 500 points of a CI run share one entry, not 500 copies
    of its commit, branch and job URL. Entries are never dropped: one a CI run, a few hundred
    bytes each."""

    def __init__(self) -> None:
        self._table: list[Origin] = [Origin()]
        self._ids: dict[Origin, int] = {Origin(): 0}
        self._lock = threading.Lock()

    def intern(self, origin: Origin) -> int:
        found = self._ids.get(origin)
        if found is not None:
            return found
        with self._lock:
            found = self._ids.get(origin)
            if found is None:
                self._table.append(origin)  # before its number is handed out: readers index it
                found = self._ids[origin] = len(self._table) - 1
            return found

    def __getitem__(self, number: int) -> Origin:
        return self._table[number]

    def __len__(self) -> int:
        return len(self._table)


@functools.cache
def origin_table() -> Origins:
    """The process's table of origins, made when first needed (a client never needs it)."""
    return Origins()


#: A point as a tuple: (time µs, value, its own metadata, its origin's number).
Row = tuple

#: A commit at the start of a point's metadata, as PerfIt 0.2 stored it ("3f2a9c1e7b0d URL").
_LEGACY_COMMIT_RE = _Regex(rb"([0-9a-fA-F]{7,40})(?: |$)")


def legacy_commit(meta: bytes) -> tuple[str, bytes]:
    """(the commit that starts the metadata, the rest of it), or ("", meta) without one."""
    found = _LEGACY_COMMIT_RE.match(meta)
    if found is None:
        return "", meta
    return found.group(1).decode("ascii").lower(), meta[found.end() :]


@dataclasses.dataclass
class PointBatch:
    """Points in columns, as they travel between the web layer, the logs and the index."""

    times: array  #: 'q', microseconds
    values: array  #: 'd'
    lens: array  #: 'H', metadata length of each point, in bytes
    blob: bytes  #: the metadata, concatenated
    origins: array | None = None  #: 'I', each point's origin's number; None: none has one

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def of(cls, points: Sequence[Row]) -> PointBatch:
        """A batch of (time µs, value, metadata[, origin number]) tuples, in the order given."""
        origins = array("I", [p[3] if len(p) > 3 else 0 for p in points])
        return cls(
            array("q", [p[0] for p in points]),
            array("d", [p[1] for p in points]),
            array("H", [len(p[2]) for p in points]),
            b"".join(p[2] for p in points),
            origins if any(origins) else None,
        )

    def metas(self) -> list[bytes]:
        ends = list(itertools.accumulate(self.lens))
        return [self.blob[e - n : e] for e, n in zip(ends, self.lens)]

    def rows(self) -> list[Row]:
        """The points as (time µs, value, metadata, origin number) tuples."""
        origins = self.origins if self.origins is not None else itertools.repeat(0)
        return list(zip(self.times, self.values, self.metas(), origins))

    def split(self) -> tuple[PointBatch, PointBatch | None]:
        """(the points whose origin is main's, the others or None): a branch's points are
        kept apart from main's (see Metric.branches)."""
        table = origin_table()
        if self.origins is None or all(table[n].main for n in set(self.origins)):
            return self, None
        rows = self.rows()
        return (
            PointBatch.of([r for r in rows if table[r[3]].main]),
            PointBatch.of([r for r in rows if not table[r[3]].main]),
        )


# ==============================================================================================
# Store: compression
# Sealed segments are zstd: from the standard library where Python has it (compression.zstd,
# 3.14+; the same API as backports.zstd), else the zstandard package. With neither, the server
# still runs and its logs stay uncompressed; only reading existing segments needs zstd.
# ==============================================================================================

_SEAL_LEVEL = 9  #: zstd level of sealed segments: written once in the background, read often
#: Where zstd may come from, best first. A zstandard whose compiled backend is missing fails
#: to import like an absent one, and is passed over the same way.
_ZSTD_MODULES = ("compression.zstd", "backports.zstd", "zstandard")
_ZSTD_FIX = "pip install zstandard, or run on Python 3.14+, which has zstd built in"


@dataclasses.dataclass(frozen=True)
class Zstd:
    """The zstd of whichever module provides it: one-shot frames, checksummed."""

    name: str  #: e.g. "compression.zstd" or "zstandard 0.25.0"
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


def _zstd_of(name: str, module: Any) -> Zstd:
    if name != "zstandard":
        param = module.CompressionParameter
        options = {param.compression_level: _SEAL_LEVEL, param.checksum_flag: 1}
        return Zstd(name, lambda data: module.compress(data, options=options), module.decompress)

    def compress(data: bytes) -> bytes:
        # A compressor object is not thread-safe: one per call.
        return module.ZstdCompressor(level=_SEAL_LEVEL, write_checksum=True).compress(data)

    def decompress(data: bytes) -> bytes:
        # One output buffer of the size the frame records (every frame PerfIt writes does):
        # replay then leaves the heap less fragmented than a streaming read (2-3 B a point).
        # A frame that records no size (another writer's) is read as a stream.
        try:
            return module.ZstdDecompressor().decompress(data)
        except module.ZstdError:
            return module.ZstdDecompressor().decompressobj().decompress(data)

    return Zstd(f"zstandard {module.__version__}", compress, decompress)


@functools.cache
def find_zstd() -> tuple[Zstd | None, str]:
    """The best zstd that imports, or None and why none did (found once, then remembered)."""
    why = "no zstd module"
    for name in _ZSTD_MODULES:
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError) as e:
            if name == "zstandard":
                why = f"zstandard does not import ({e})"
            continue
        return _zstd_of(name, module), ""
    return None, why


def need_zstd() -> Zstd:
    """The zstd to read or write segments with; a MissingDependency naming the fix if none."""
    zstd, why = find_zstd()
    if zstd is None:
        raise MissingDependency(f"compressed segments need zstd, and {why}: {_ZSTD_FIX}")
    return zstd


def _zstd_decompress(data: bytes) -> bytes:
    """A zstd frame's contents; a damaged frame is a ValueError, whichever module reads it."""
    zstd = need_zstd()
    try:
        return zstd.decompress(data)
    except Exception as e:  # each module has its own error class; a bad frame is bad input
        raise ValueError(f"bad zstd frame: {e}") from e


# ==============================================================================================
# Store: files of the data directory
# Numbered logs and segments, written so that they appear whole or not at all, readable by
# their owner only; and sealing a full log into a compressed segment.
# ==============================================================================================


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _give_memory_back() -> None:
    """Return the heap's free pages to the system, after a request that used many."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _fsync_dir(path: str) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


#: Who gets the files this process creates, when not itself: set (for the whole process, as
#: the umask is) by a store command that root runs on a service's data directory.
_GIVE_TO: tuple[int, int] | None = None


def _give_away(file: str | int) -> None:
    """Give a file this process created (a path, or an open descriptor) to _GIVE_TO."""
    if _GIVE_TO:
        os.chown(file, *_GIVE_TO)


def _open_private(path: str, flags: int) -> int:
    """Open (maybe create) a file readable by its owner only, whatever the umask.

    Metric ids are read capabilities, and every log holds them: no other local user may read
    the data directory, nor a backup or a repaired copy of it.
    """
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # os.open's mode passes through the umask; this does not
        _give_away(fd)
    except OSError:
        os.close(fd)
        raise
    return fd


def _make_private_dir(path: str) -> None:
    """Create a directory (and its parents) that only its owner may enter, whatever the umask."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o700)  # also tightens a directory made by PerfIt 0.1, which was 0755
    _give_away(path)


def _write_durably(path: str, data: bytes) -> None:
    """Write a whole file so that it appears complete or not at all: temp, fsync, rename."""
    tmp = path + _TMP_SUFFIX
    fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def _create_log(directory: str, number: int) -> int:
    """A new, empty log file, durable with its directory entry; its fd, open for appending."""
    path = os.path.join(directory, _file_name(number, _LOG_SUFFIX))
    fd = _open_private(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
    try:
        _write_all(fd, LOG_MAGIC)
        os.fsync(fd)
        _fsync_dir(directory)
    except OSError:
        os.close(fd)
        raise
    return fd


def _reopen_log(scan: Scan) -> tuple[int | None, int]:
    """A log open for appending, its torn tail cut off: (fd, size). None: it tore before its
    magic was even whole, so nothing in it was ever acknowledged."""
    good_end = scan.torn_tail if scan.torn_tail is not None else scan.size
    if good_end < len(LOG_MAGIC):
        return None, 0
    fd = _open_private(scan.path, os.O_RDWR | os.O_APPEND)
    if good_end < scan.size:
        cut = scan.size - good_end
        _log.warning(
            "%s: cut off a torn tail at offset %d (%d bytes): a crash mid-write",
            scan.path,
            good_end,
            cut,
        )
        os.ftruncate(fd, good_end)
        os.fsync(fd)
    return fd, good_end


@dataclasses.dataclass(frozen=True)
class DataFile:
    """A log (00000007.log), the segment sealed from it (00000007.seg), or a segment that
    compaction made of several (00000001-00000007.seg: it holds logs 1 to 7)."""

    first: int  #: the first log it holds
    number: int  #: the last log it holds: files replay in this order
    kind: str  #: "log" or "seg"
    path: str


_DATA_NAME_RE = _Regex(r"([0-9]{8,})(?:-([0-9]{8,}))?\.(log|seg)")


@dataclasses.dataclass
class DataFiles:
    """The numbered files of a data directory: logs, the segments sealed from them, and the
    segments compacted from those. A segment covers every file whose numbers lie in its
    range: that file is stale (a crash came before compaction or sealing removed it)."""

    files: list[DataFile]

    @classmethod
    def list(cls, path: str) -> DataFiles:
        files = []
        for name in os.listdir(path):
            found = _DATA_NAME_RE.fullmatch(name)
            if found:
                first, last, kind = found.groups()
                number = int(last or first)
                files.append(DataFile(int(first), number, kind, os.path.join(path, name)))
        return cls(files)

    @property
    def logs(self) -> dict[int, str]:
        return {f.number: f.path for f in self.files if f.kind == "log"}

    @property
    def segments(self) -> dict[int, str]:
        return {f.number: f.path for f in self.files if f.kind == "seg"}

    def active(self) -> int:
        """The number of the log that is appended to (0: none yet, or the newest is a segment)."""
        newest = max(self.logs, default=0)
        return newest if newest > max(self.segments, default=0) else 0

    def _split(self) -> tuple[list[DataFile], list[DataFile]]:
        """(live, stale): a file is stale when a segment covers its range, a log when the
        segment sealed from it exists."""
        # By first number, the widest range first and a segment before a log of the same
        # range: whatever covers a file comes before it.
        ordered = sorted(self.files, key=lambda f: (f.first, -f.number, f.kind != "seg"))
        live, stale, reach = [], [], 0
        for f in ordered:
            if f.number <= reach:
                stale.append(f)
                continue
            live.append(f)
            if f.kind == "seg":
                reach = f.number
        return sorted(live, key=lambda f: f.number), stale

    def live(self) -> list[DataFile]:
        """The files to replay, in order."""
        return self._split()[0]

    def stale(self) -> list[DataFile]:
        """Files a segment holds all of: removed once that segment has replayed."""
        return self._split()[1]

    def covering(self, number: int) -> DataFile | None:
        """The live file that holds log `number` now."""
        return next((f for f in self.live() if f.first <= number <= f.number), None)


def _file_name(number: int, suffix: str, first: int | None = None) -> str:
    if first is not None and first != number:
        return f"{first:08d}-{number:08d}{suffix}"
    return f"{number:08d}{suffix}"


def _scan_data_file(kind: str, path: str) -> Scan:
    return scan_file(path, SEG_MAGIC if kind == "seg" else LOG_MAGIC)


def seal_log(log_path: str, seg_path: str) -> None:
    """Write the segment holding a (no longer written) log's records, complete or not at all.

    The log is removed by the caller only once the segment is durable, so a crash at any
    step leaves either the log, or the segment (and maybe the log, which replay then skips).
    """
    compress = need_zstd().compress
    scan = scan_file(log_path, LOG_MAGIC)
    if scan.bad:
        raise StoreCorrupt(f"{log_path}: bad bytes at offset {scan.bad[0][0]}; not sealing it")
    control: list[tuple[int, bytes]] = []
    points: dict[bytes, Series] = {}  # in columns, in the order replay would put them
    for rtype, payload in _flat_records((t, p) for _, t, p in scan.records):
        if rtype == _REC_KEY and _forgotten(json.loads(payload)):
            continue
        if rtype in _CONTROL_TYPES:
            control.append((rtype, payload))
        else:
            _gather_points(points, rtype, payload)
    _write_durably(seg_path, _segment_bytes(control, points.items(), compress))


def _forgotten(key: dict) -> bool:
    """Whether an Idempotency-Key's record is past IDEMPOTENCY_KEEP (sealing and compaction
    leave it out: a key is remembered for a day, not for ever)."""
    return key["t"] < time.time() - IDEMPOTENCY_KEEP


def _gather_points(points: dict[bytes, Series], rtype: int, payload: bytes) -> None:
    """Add a record's points to each metric's series in `points`, in the order of replay."""
    if rtype == REC_RUN:  # the usual record of a log, point by point: no batch for each
        t, number, run = _interned_run(payload)
        for metric_id, value in run:
            points.setdefault(metric_id, Series()).add_one(t, value, b"", number)
        return
    for metric_id, batch in _point_batches(rtype, payload):
        points.setdefault(metric_id, Series()).add(batch)


def _segment_bytes(
    control: Sequence[tuple[int, bytes]],
    points: Iterable[tuple[bytes, Series]],
    compress: Callable,
) -> bytes:
    """A segment: its control records and the origins of its points in one compressed block,
    then each metric's points in blocks of at most _SEG_BLOCK_POINTS."""
    points = list(points)
    numbering: dict[int, int] = {}  # an origin (of the process) -> its number in the segment
    for _, series in points:
        for number in set(series.origins or ()) - {0}:
            numbering.setdefault(number, len(numbering) + 1)
    table = origin_table()
    origins = [_json_record(_REC_ORIGIN, _origin_doc(n, table[g])) for g, n in numbering.items()]
    framed = b"".join(encode_record(rtype, payload) for rtype, payload in [*control, *origins])
    blocks = [SEG_MAGIC, encode_record(_REC_SEG_CONTROL, compress(framed))]
    for metric_id, series in points:
        for lo in range(0, len(series), _SEG_BLOCK_POINTS):
            batch = series.batch(lo, min(lo + _SEG_BLOCK_POINTS, len(series)))
            packed = pack_columns(metric_id, batch, compact=True, numbering=numbering)
            blocks.append(encode_record(_REC_SEG_POINTS, compress(packed)))
    return b"".join(blocks)


def _origin_doc(number: int, origin: Origin) -> dict[str, Any]:
    """A segment's _REC_ORIGIN record: what it says of an origin, only where it says something."""
    doc: dict[str, Any] = {"origin": number}
    fields = {"commit": origin.commit, "branch": origin.branch, "m": origin.meta.decode()}
    doc.update((k, v) for k, v in fields.items() if v)
    if not origin.main:
        doc["main"] = False
    return doc


def _origin_of_doc(doc: dict[str, Any]) -> Origin:
    meta = doc.get("m", "").encode("utf-8")
    return Origin(doc.get("commit", ""), doc.get("branch", ""), doc.get("main", True), meta)


def _point_batches(
    rtype: int, payload: bytes, numbering: dict[int, int] | None = None
) -> list[tuple[bytes, PointBatch]]:
    """The (metric id, points) a point-carrying record holds, decompressing if it must;
    `numbering`: the origins of the segment it is in (see unpack_columns)."""
    if rtype == REC_POINT:
        metric_id, t, value = POINT.unpack_from(payload)
        meta = payload[POINT.size :]
        return [(metric_id, PointBatch.of([(t, value, meta)]))]
    if rtype == REC_RUN:
        t, number, points = _interned_run(payload)
        return [(m, PointBatch.of([(t, value, b"", number)])) for m, value in points]
    if rtype == _REC_POINTS:
        return [unpack_columns(payload)]
    if rtype == _REC_SEG_POINTS:
        return [unpack_columns(_zstd_decompress(payload), compact=True, numbering=numbering)]
    raise ValueError(f"record type {rtype} holds no points")


def _control_records(payload: bytes) -> list[tuple[int, bytes]]:
    """The framed account/token/metric records inside a segment's control block."""
    return _framed_records(_zstd_decompress(payload) if payload else b"")


def _flat_records(records: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """Records with each batch opened into the records it holds, in their order."""
    for rtype, payload in records:
        if rtype == _REC_BATCH:
            yield from unpack_batch(payload)
        else:
            yield rtype, payload


def pack_batch(records: Iterable[tuple[int, bytes]]) -> bytes:
    """The payload of a batch record holding these (type, payload) records."""
    return b"".join(BATCHED.pack(rtype, len(payload)) + payload for rtype, payload in records)


def unpack_batch(payload: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset < len(payload):
        rtype, length = BATCHED.unpack_from(payload, offset)
        offset += BATCHED.size + length
        if rtype not in _RECORD_TYPES or rtype == _REC_BATCH or offset > len(payload):
            raise ValueError(f"bad record in a batch at offset {offset}")
        out.append((rtype, payload[offset - length : offset]))
    return out


def _framed_records(raw: bytes) -> list[tuple[int, bytes]]:
    """The records framed one after another in `raw` (a batch, a control block), all valid."""
    out, offset = [], 0
    while offset < len(raw):
        frame = _frame_at(raw, offset)
        if frame is None:
            raise ValueError(f"bad record at offset {offset} inside a block")
        out.append(frame)
        offset += FRAME.size + len(frame[1])
    return out


# ==============================================================================================
# Store: the in-memory index
# Accounts, token hashes and metrics in dicts; each metric's points in flat arrays: 16 bytes a
# point (time, value), plus its metadata only for metrics that have any.
# ==============================================================================================


class _SeriesReading:
    """What reads a Series without changing its points: spans, ranges, metadata, origins,
    batches for the files; and retention (what is served, what expires). Series holds the
    columns."""

    __slots__ = ()
    times: array
    values: array
    origins: array | None
    horizon: int
    keep: int
    _lock: threading.Lock
    _meta_ends: array | None
    _meta_blob: bytearray

    def span(self) -> tuple[int, int | None, int | None]:
        """How many points are served, and the first and last time (µs), without copying them."""
        with self._lock:
            first = bisect.bisect_left(self.times, self.served_from())
            if first == len(self.times):
                return 0, None, None
            return len(self.times) - first, self.times[first], self.times[-1]

    def served_from(self) -> int:
        """The oldest time (µs) a reader may see: retention counts back from now."""
        if not self.keep:
            return self.horizon
        return max(self.horizon, time.time_ns() // 1000 - self.keep)

    def expire(self, before: int) -> int:
        """Drop the points older than `before` (µs) for good; return how many went."""
        with self._lock:
            if before <= self.horizon:
                return 0
            self.horizon = before
            cut = bisect.bisect_left(self.times, before)
            if cut:
                if self._meta_ends is not None:
                    base = self._meta_ends[cut - 1]
                    self._meta_blob = self._meta_blob[base:]
                    self._meta_ends = array("Q", (e - base for e in self._meta_ends[cut:]))
                if self.origins is not None:
                    self.origins = self.origins[cut:]
                self.times, self.values = self.times[cut:], self.values[cut:]
            return cut

    def batch(self, lo: int, hi: int) -> PointBatch:
        """Points lo to hi (indexes) as a batch, to write to a file."""
        origins = self.origins[lo:hi] if self.origins is not None else None
        if self._meta_ends is None or lo == hi:
            lens = array("H", bytes(2 * (hi - lo)))
            return PointBatch(self.times[lo:hi], self.values[lo:hi], lens, b"", origins)
        base = self._meta_ends[lo - 1] if lo else 0
        ends = self._meta_ends[lo:hi]
        lens = array("H", map(operator.sub, ends, itertools.chain((base,), ends)))
        blob = bytes(self._meta_blob[base : ends[-1]])
        return PointBatch(self.times[lo:hi], self.values[lo:hi], lens, blob, origins)

    def own_metadata(self, i: int) -> bytes:
        """The point's own metadata (an imported point's), not its origin's."""
        if self._meta_ends is None:
            return b""
        start = self._meta_ends[i - 1] if i else 0
        return bytes(self._meta_blob[start : self._meta_ends[i]])

    def origin(self, i: int) -> Origin:
        """Where the point came from: its run's commit, branch and metadata."""
        return origin_table()[self.origins[i]] if self.origins is not None else _NO_ORIGIN

    def metadata_bytes(self, i: int) -> bytes:
        """The point's metadata: its own, else its run's."""
        return self.own_metadata(i) or self.origin(i).meta

    def metadata(self, i: int) -> str:
        return self.metadata_bytes(i).decode("utf-8")

    def row(self, i: int) -> Row:
        return (self.times[i], self.values[i], self.own_metadata(i), self.origin_number(i))

    def origin_number(self, i: int) -> int:
        return self.origins[i] if self.origins is not None else 0

    def where(self, keep: Callable[[int], bool]) -> Series:
        """A copy of the points whose index `keep` likes."""
        return Series.of([self.row(i) for i in range(len(self)) if keep(i)])

    def not_stored(self, batch: PointBatch) -> PointBatch:
        """The points of `batch` not stored yet, in its order: the same time, value, metadata
        (its own or its run's), commit and branch as a stored one (an exported file imported
        again is the same points).

        Counted as a multiset: a point sent twice and stored once is missing once.
        """
        if not len(batch):
            return batch
        with self._lock:
            # In microseconds: through float seconds, a time far from 1970 would not round-trip.
            lo = bisect.bisect_left(self.times, min(batch.times))
            rows = range(lo, bisect.bisect_right(self.times, max(batch.times), lo))
            if not rows:
                return batch  # the usual import: all of it later (or earlier) than what is here
            fresh = batch.rows()
            if (  # the same points again (a file imported twice), compared a column at a time
                self.times[rows.start : rows.stop] == batch.times
                and self.values[rows.start : rows.stop] == batch.values
                and [self._identity(self.row(i)) for i in rows] == list(map(self._identity, fresh))
            ):
                return PointBatch(array("q"), array("d"), array("H"), b"")
            stored = collections.Counter(self._identity(self.row(i)) for i in rows)
        new = []
        for point in fresh:
            key = self._identity(point)
            if stored[key]:
                stored[key] -= 1
            else:
                new.append(point)
        return batch if len(new) == len(batch) else PointBatch.of(new)

    @staticmethod
    def _identity(row: Row) -> tuple:
        """What makes two points the same point: (time, value, metadata, commit, branch); a
        commit as PerfIt 0.2 kept it, at the start of the metadata, counts as the commit, so
        a file imported by 0.2 and again now is the same points."""
        origin = origin_table()[row[3]]
        commit, meta = origin.commit, row[2] or origin.meta
        if not commit:
            commit, meta = legacy_commit(meta)
        return row[0], row[1], meta, commit[:12], origin.branch

    def index_range(self, start: float | None, end: float | None) -> range:
        """Indexes of the points served with start <= t <= end, in unix seconds (None:
        unbounded)."""
        lo = bisect.bisect_left(self.times, self.served_from())
        if start is not None:
            lo = max(lo, bisect.bisect_left(self.times, math.ceil(start * US)))
        hi = len(self) if end is None else bisect.bisect_right(self.times, math.floor(end * US))
        return range(lo, max(lo, hi))


_NO_ORIGIN = Origin()


class Series(_SeriesReading):
    """The points of one metric in time order (ties in arrival order), column by column.

    Writers hold the series' lock; readers take a snapshot() (a copy of a time range, made
    under the lock), so a chart never sees a column that another thread is still changing.

    Retention: points older than `keep` are never served (snapshot and span skip them, by the
    clock), and expire() drops them for good; points older than the horizon it leaves behind
    are not added again, so a replay ends where the live index did.
    """

    __slots__ = (
        *("_lock", "_meta_blob", "_meta_ends", "horizon", "keep", "origins", "times"),
        "values",
    )

    def __init__(self) -> None:
        self.times = array("q")  #: microseconds since the epoch
        self.values = array("d")
        self._meta_ends: array | None = None  #: 'Q' end of each point's metadata; None: none yet
        self._meta_blob = bytearray()
        #: 'I' each point's origin (see Origins): its CI run's commit, branch and metadata, 4
        #: bytes a point; None until a point has one
        self.origins: array | None = None
        self._lock = threading.Lock()
        self.keep = 0  #: µs of points served, counted back from now; 0: all of them
        self.horizon = 0  #: µs: points before it were expired, and stay gone

    def __len__(self) -> int:
        return len(self.times)

    def add(self, batch: PointBatch) -> int:
        """Add points as if each were inserted after every point with the same or earlier time;
        return how many were dropped as older than the horizon."""
        dropped = 0
        if self.horizon and len(batch) and min(batch.times) < self.horizon:
            kept = [p for p in batch.rows() if p[0] >= self.horizon]
            dropped, batch = len(batch) - len(kept), PointBatch.of(kept)
        if not len(batch):
            return dropped
        in_order = all(map(operator.le, batch.times, batch.times[1:]))
        with self._lock:
            if in_order and (not self.times or batch.times[0] >= self.times[-1]):
                self._extend(batch)  # the common case: new points come last
            else:
                self._merge(batch)
        return dropped

    def add_one(self, t: int, value: float, meta: bytes = b"", origin: int = 0) -> None:
        """Add one point: the hot path of a live post, which nearly always comes last."""
        if t < self.horizon:
            return
        with self._lock:
            if self.times and t < self.times[-1]:
                self._insert(t, value, meta, origin)
                return
            if self._has_metadata(meta):
                self._meta_blob += meta
                self._meta_ends.append(len(self._meta_blob))
            if self._has_origins(origin):
                self.origins.append(origin)
            self.values.append(value)
            self.times.append(t)

    def _insert(self, t: int, value: float, meta: bytes, origin: int) -> None:
        """One point among the others (after those with the same time): no full rebuild."""
        i = bisect.bisect_right(self.times, t)
        if self._has_metadata(meta):
            offset = self._meta_ends[i - 1] if i else 0
            self._meta_blob[offset:offset] = meta
            shifted = array("Q", (end + len(meta) for end in self._meta_ends[i:]))
            self._meta_ends[i:] = array("Q", [offset + len(meta)]) + shifted
        if self._has_origins(origin):
            self.origins.insert(i, origin)
        self.values.insert(i, value)
        self.times.insert(i, t)

    def _has_metadata(self, blob: bytes) -> bool:
        """Whether metadata is kept; the column starts (empty for earlier points) on first use."""
        if self._meta_ends is None and blob:
            self._meta_ends = array("Q", bytes(8 * len(self.times)))
        return self._meta_ends is not None

    def _has_origins(self, any_origin: int) -> bool:
        """Whether origins are kept; the column starts (0 for earlier points) on first use."""
        if self.origins is None and any_origin:
            self.origins = array("I", bytes(4 * len(self.times)))
        return self.origins is not None

    def _extend(self, batch: PointBatch) -> None:
        if self._has_metadata(batch.blob):
            ends = itertools.accumulate(batch.lens, initial=len(self._meta_blob))
            self._meta_ends.extend(itertools.islice(ends, 1, None))
            self._meta_blob += batch.blob
        if self._has_origins(batch.origins is not None and any(batch.origins)):
            if batch.origins is None:
                self.origins.extend(array("I", bytes(4 * len(batch))))
            else:
                self.origins.extend(batch.origins)
        self.values.extend(batch.values)
        self.times.extend(batch.times)

    def _merge(self, batch: PointBatch) -> None:
        # Rare (a backfill into the past): rebuild with a stable sort, so equal times keep
        # arrival order, exactly as inserting each point after its equals would.
        old = [self.row(i) for i in range(len(self))]
        merged = sorted(old + batch.rows(), key=operator.itemgetter(0))
        self.times, self.values = array("q"), array("d")
        self._meta_ends, self._meta_blob, self.origins = None, bytearray(), None
        self._extend(PointBatch.of(merged))

    def snapshot(
        self, start: float | None = None, end: float | None = None, last: int | None = None
    ) -> Series:
        """A copy of the points with start <= t <= end (unix seconds; None: unbounded).

        With `last`, only the newest `last` of them.
        """
        copy = Series()
        with self._lock:
            rows = self.index_range(start, end)
            if last is not None:
                rows = rows[max(0, len(rows) - last) :]
            copy.times = self.times[rows.start : rows.stop]
            copy.values = self.values[rows.start : rows.stop]
            if self.origins is not None:
                copy.origins = self.origins[rows.start : rows.stop]
            if self._meta_ends is not None and rows:
                base = self._meta_ends[rows.start - 1] if rows.start else 0
                ends = self._meta_ends[rows.start : rows.stop]
                copy._meta_blob = bytearray(self._meta_blob[base : ends[-1]])
                copy._meta_ends = array("Q", [e - base for e in ends]) if base else ends
        return copy

    @classmethod
    def of(cls, points: Sequence[Row]) -> Series:
        """A series of (time µs, value, metadata[, origin]) points, already in time order."""
        series = cls()
        series._extend(PointBatch.of(points))
        return series


class Marks:
    """What an admin said of a metric: changes accepted (intended) or dismissed (noise), spans
    of points excluded (a broken runner). Excluded points are kept and drawn, but detection,
    badges and comparisons leave them out; a later span says the last word for the points it
    covers. A change's mark is the time of the change when it was said (see metric_changes)."""

    __slots__ = ("accepted", "dismissed", "notified", "spans", "version")

    def __init__(self) -> None:
        self.accepted: set[int] = set()  #: times (unix seconds) of accepted change points
        self.dismissed: set[int] = set()  #: ... of change points dismissed as noise
        self.notified: set[int] = set()  #: ... of regressions the account's webhook was told of
        self.spans: list[tuple[bool, int, int]] = []  #: (excluded?, start µs, end µs), in order
        self.version = 0  #: changes with every mark: what caches of derived results key on

    def apply(self, kind: str, start: int, end: int) -> None:
        if kind == "notified":
            self.notified.add(start // US)
            return  # changes nothing derived: no version
        if kind == "accept":
            self.accepted.add(start // US)
        elif kind == "dismiss":
            self.dismissed.add(start // US)
        elif kind == "undismiss":
            self.dismissed.discard(start // US)
        else:
            self.spans.append((kind == "exclude", start, end))
        self.version += 1

    def within(self, kind: str, reach: tuple[int, int]) -> list[int]:
        """The marks of `kind` (accepted, dismissed, notified) said of a time within `reach`
        (unix seconds, inclusive): those that bind to a change (see metric_changes)."""
        lo, hi = reach
        return [t for t in getattr(self, kind) if lo <= t <= hi]

    def excluded(self, times: Sequence[int]) -> list[bool] | None:
        """For each time (µs), whether its point is excluded; None when none can be."""
        if not any(excluded for excluded, _, _ in self.spans):
            return None
        out = []
        for t in times:
            said = False
            for excluded, start, end in self.spans:
                if start <= t <= end:
                    said = excluded
            out.append(said)
        return out


_BRANCH_KEEP = 30 * 86400 * US  #: a branch's points are kept this long (µs)
DEFAULT_MAIN_BRANCH = "main"  #: an account's main branch until it says otherwise


def _branch_series() -> Series:
    series = Series()
    series.keep = _BRANCH_KEEP
    return series


@dataclasses.dataclass
class Metric:
    id: bytes
    account: bytes
    created: float
    name: str = ""
    unit: str = ""
    description: str = ""
    better: str = "lower"
    series: Series = dataclasses.field(default_factory=Series, repr=False)  #: main's points
    #: The points of other branches (a pull request's, a feature branch's), all of them in one
    #: series, told apart by their origins: kept BRANCH_KEEP, drawn over main's line when asked
    #: for, and never part of main's change points, checks, badge, board or baselines.
    branches: Series = dataclasses.field(default_factory=_branch_series, repr=False)
    marks: Marks = dataclasses.field(default_factory=Marks, repr=False)

    def kept(self, series: Series) -> Series:
        """A snapshot of this metric's points without those marked excluded."""
        mask = self.marks.excluded(series.times)
        return series if mask is None else series.where(lambda i: not mask[i])

    def series_of(self, origin: int) -> Series:
        """Where a point of this origin goes: main's series, or the branches'."""
        return self.series if origin_table()[origin].main else self.branches

    def to_json(self) -> dict[str, Any]:
        return {
            "metric_id": b64encode(self.id),
            "account_id": b64encode(self.account),
            "created": int(self.created),
            "name": self.name,
            "unit": self.unit,
            "description": self.description,
            "better": self.better,
            "keep": keep_text(self.series.keep / US) if self.series.keep else None,
        }


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a token speaks for: its account (None for root) and its type."""

    account: bytes | None
    type: str


@dataclasses.dataclass(frozen=True)
class TokenEntry:
    """What the index keeps of a token: its hash, whose it is, and since when."""

    hash: bytes
    principal: Principal
    created: float | None  #: None: made by PerfIt 0.1, which did not record it

    def to_json(self) -> dict[str, Any]:
        return {
            "token_id": b64encode(token_id(self.hash)),
            "type": self.principal.type,
            "created": None if self.created is None else int(self.created),
        }


#: What an Idempotency-Key's record says, as the index keeps it (a few hundred bytes): when
#: its request came (Unix seconds), the request's digest, the status and JSON answered (None
#: and None: stored, but not answered, a crash between the two).
_Kept = collections.namedtuple("_Kept", "t request status answer")


class _IndexRecords:
    """What the control records do to the index: accounts, tokens, metrics, boards, webhooks,
    settings, marks, and a metric's edits, expiries and deletion. Index, below, holds it."""

    accounts: dict[bytes, float]
    tokens: dict[bytes, Principal]
    token_ids: dict[bytes, TokenEntry]
    metrics: dict[bytes, Metric]
    by_account: dict[bytes, list[Metric]]
    names: dict[tuple[bytes, str], Metric]
    boards: dict[bytes, bytes]
    board_of: dict[bytes, bytes]
    webhooks: dict[bytes, str]
    main_branches: dict[bytes, str]
    segment_origins: dict[int, int]
    keys: OrderedDict[tuple[str, str], _Kept]
    deleted: set[bytes]
    garbage: int
    _metric: Callable[[bytes], Metric | None]

    def _apply_control(self, rtype: int, doc: dict) -> None:
        if rtype == _REC_ACCOUNT:
            self.accounts[_raw(doc["id"])] = doc["created"]
        elif rtype == _REC_TOKEN:
            digest, principal = (
                bytes.fromhex(doc["hash"]),
                Principal(_raw(doc["account"]), doc["type"]),
            )
            self.tokens[digest] = principal
            self.token_ids[token_id(digest)] = TokenEntry(digest, principal, doc.get("created"))
        elif rtype == _REC_REVOKE:
            entry = self.token_ids.pop(_raw(doc["token"]), None)
            if entry is not None:
                self.tokens.pop(entry.hash, None)
        elif rtype in (_REC_EDIT, _REC_DELETE, _REC_EXPIRE):
            self._apply_lifecycle(rtype, doc)
        elif rtype == _REC_METRIC:
            metric = Metric(
                id=_raw(doc["id"]),
                account=_raw(doc["account"]),
                created=doc["created"],
                name=doc.get("name", ""),
                unit=doc.get("unit", ""),
                description=doc.get("description", ""),
                better=doc.get("better", "lower"),
            )
            self.metrics[metric.id] = metric
            self.by_account.setdefault(metric.account, []).append(metric)
            if metric.name:
                self.names.setdefault((metric.account, metric.name), metric)
        elif rtype == _REC_ORIGIN:
            self.segment_origins[doc["origin"]] = origin_table().intern(_origin_of_doc(doc))
        elif rtype == _REC_SETTINGS:
            account = _raw(doc["account"])
            if "main_branch" in doc:
                self.main_branches[account] = doc["main_branch"]
        elif rtype == _REC_WEBHOOK:
            account = _raw(doc["account"])
            if doc["url"]:
                self.webhooks[account] = doc["url"]
            else:
                self.webhooks.pop(account, None)
        elif rtype == _REC_MARK:
            metric = self._metric(_raw(doc["metric"]))
            if metric is not None:
                metric.marks.apply(doc["kind"], doc["start"], doc["end"])
        elif rtype == _REC_BOARD:
            account, board = _raw(doc["account"]), _raw(doc["board"])
            self.boards.pop(self.board_of.get(account, b""), None)  # the old link stops working
            self.boards[board], self.board_of[account] = account, board
        elif rtype == _REC_KEY:
            self._remember_key(doc)

    def _remember_key(self, doc: dict) -> None:
        """A write's Idempotency-Key (and later its answer), kept IDEMPOTENCY_KEEP."""
        keys = self.keys
        where = (sys.intern(doc["account"]), doc["key"])
        answer = doc.get("answer")
        keys[where] = _Kept(
            doc["t"],
            doc["request"],
            doc.get("status"),
            None if answer is None else json.dumps(answer, separators=(",", ":")).encode(),
        )
        keys.move_to_end(where)
        horizon = time.time() - IDEMPOTENCY_KEEP
        while keys and next(iter(keys.values())).t < horizon:
            keys.popitem(last=False)

    def _apply_lifecycle(self, rtype: int, doc: dict) -> None:
        """A metric edited, deleted, or its oldest points expired."""
        if rtype == _REC_EXPIRE:
            for key, which in (("before", "series"), ("branches", "branches")):
                for text, before in doc.get(key, {}).items():
                    metric = self._metric(_raw(text))
                    if metric is not None:
                        self.garbage += getattr(metric, which).expire(before)
            return
        if rtype == _REC_DELETE:
            # A metric compaction has left out is known by its tombstone alone.
            metric_id = _raw(doc["metric"])
            self.deleted.add(metric_id)
            metric = self.metrics.pop(metric_id, None)
            if metric is not None:
                self.by_account[metric.account].remove(metric)
                self._unname(metric)
                self.garbage += len(metric.series) + len(metric.branches)
            return
        metric = self._metric(_raw(doc["id"]))
        if metric is None:
            return  # an edit that landed as the metric was deleted
        if "name" in doc:
            self._unname(metric)
            metric.name = doc["name"]
            if metric.name:
                self.names.setdefault((metric.account, metric.name), metric)
        for field in ("unit", "description", "better"):
            if field in doc:
                setattr(metric, field, doc[field])
        if "keep" in doc:
            metric.series.keep = round((doc["keep"] or 0) * US)

    def _unname(self, metric: Metric) -> None:
        """Free the metric's name; a 0.1 metric that shared it (see names) takes it over."""
        key = (metric.account, metric.name)
        if self.names.get(key) is metric:
            del self.names[key]
            twin = next(
                (
                    m
                    for m in self.by_account.get(metric.account, ())
                    if m.name == metric.name and m is not metric
                ),
                None,
            )
            if twin is not None:
                self.names[key] = twin


class Index(_IndexRecords):
    """What the records say, in memory: accounts, token hashes, and metrics with their points.

    Replay and live writes go through the same apply(), so a restart rebuilds exactly what
    was acknowledged.
    """

    def __init__(self) -> None:
        self.accounts: dict[bytes, float] = {}  #: account id -> created
        self.tokens: dict[bytes, Principal] = {}  #: SHA-256 of a token -> whose it is
        self.token_ids: dict[bytes, TokenEntry] = {}  #: token id -> the token, in creation order
        self.metrics: dict[bytes, Metric] = {}
        self.by_account: dict[bytes, list[Metric]] = {}  #: each account's, oldest first
        #: (account, name) -> metric. PerfIt 0.1 let two metrics share a name: the first
        #: keeps it here, the other is reached by its id.
        self.names: dict[tuple[bytes, str], Metric] = {}
        self.boards: dict[bytes, bytes] = {}  #: board id -> account
        self.board_of: dict[bytes, bytes] = {}  #: account -> its board id
        self.webhooks: dict[bytes, str] = {}  #: account -> the URL told of new regressions
        #: account -> the branch whose points are main's, when it is not DEFAULT_MAIN_BRANCH
        self.main_branches: dict[bytes, str] = {}
        #: the origins of the segment being replayed: its number -> the process-wide one
        self.segment_origins: dict[int, int] = {}
        self.last_t = 0  #: latest live arrival time (µs); live times never go backwards
        #: (account, Idempotency-Key) -> its _REC_KEY record, about oldest first (in the order
        #: written; see _remember_key)
        self.keys: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        #: Metrics deleted: records that still name them (in files not yet compacted, or
        #: written as the delete landed) are passed over.
        self.deleted: set[bytes] = set()
        #: Points deleted or expired since the files were last compacted (or found so by a
        #: replay): what compaction would reclaim.
        self.garbage = 0

    def apply(self, rtype: int, payload: bytes) -> None:
        """Update the index with one record."""
        if rtype == REC_POINT:
            metric_id, t, value = POINT.unpack_from(payload)
            metric = self._metric(metric_id)
            if metric is None:
                self.garbage += 1
            else:
                metric.series.add_one(t, value, payload[POINT.size :])
            self.last_t = max(self.last_t, t)
        elif rtype == REC_RUN:
            t, number, points = _interned_run(payload)
            for metric_id, value in points:
                metric = self._metric(metric_id)
                if metric is None:
                    self.garbage += 1
                else:
                    metric.series_of(number).add_one(t, value, b"", number)
            self.last_t = max(self.last_t, t)
        elif rtype in (_REC_POINTS, _REC_SEG_POINTS):
            for metric_id, batch in _point_batches(rtype, payload, self.segment_origins):
                metric = self._metric(metric_id)
                if metric is None:
                    self.garbage += len(batch)
                    continue
                main, others = batch.split()
                self.garbage += metric.series.add(main)
                if others is not None:
                    self.garbage += metric.branches.add(others)
        elif rtype == _REC_SEG_CONTROL:
            self.segment_origins = {}  # a new segment: its blocks name its own origins
            for inner_type, inner in _control_records(payload):
                self.apply(inner_type, inner)
        elif rtype == _REC_BATCH:
            for inner_type, inner in unpack_batch(payload):
                self.apply(inner_type, inner)
        else:
            self._apply_control(rtype, json.loads(payload))

    def _metric(self, metric_id: bytes) -> Metric | None:
        """The metric a record names; None if it was deleted (a KeyError if it never was)."""
        metric = self.metrics.get(metric_id)
        if metric is None and metric_id not in self.deleted:
            raise KeyError(f"no metric {b64encode(metric_id)}")
        return metric

    def main_branch(self, account: bytes) -> str:
        """The branch whose points are the account's main line (and baselines)."""
        return self.main_branches.get(account, DEFAULT_MAIN_BRANCH)


@dataclasses.dataclass(frozen=True)
class RunPoint:
    """One named result of a CI run (POST /r/)."""

    name: str
    value: float
    unit: str = ""  #: the value's unit; a new metric gets it
    better: str = "lower"  #: for a new metric


def _json_record(rtype: int, doc: dict[str, Any]) -> tuple[int, bytes]:
    return rtype, json.dumps(doc).encode()


def _token_doc(account: bytes, token_type: str) -> tuple[str, dict[str, str]]:
    """A new token, and its record, which keeps its hash (never the token)."""
    token = new_token()
    return token, {
        "account": b64encode(account),
        "type": token_type,
        "hash": hash_token(token).hex(),
        "created": int(time.time()),
    }


def _board_doc(account: bytes) -> dict[str, str]:
    """The record of a new board id for the account."""
    return {"account": b64encode(account), "board": b64encode(new_id())}


def _metric_doc(account: bytes, **fields: str) -> dict[str, Any]:
    """A new metric's record, with only the fields that differ from the defaults."""
    doc: dict[str, Any] = {"id": b64encode(new_id()), "account": b64encode(account)}
    doc["created"] = time.time()
    doc.update((k, v) for k, v in fields.items() if v and not (k == "better" and v == "lower"))
    return doc


def _raw(text: str) -> bytes:
    """The bytes of an id as a record spells it; a bad one makes the record unreadable."""
    raw = decode_id(text)
    if raw is None:
        raise ValueError(f"bad id {text!r}")
    return raw


# ==============================================================================================
# Store: recovery
# Reading a data directory back: replay into the index, `perfit store check`, `serve --repair`
# and `perfit store backup` all walk its files in order under one rule: only the active log may
# end in a torn write; any other bad byte is corruption, named with its file and offset.
# ==============================================================================================


@dataclasses.dataclass
class _FileScan:
    """One data file as read: its good records, and which of its bad bytes are corruption."""

    number: int
    kind: str  #: "log" or "seg"
    scan: Scan
    corrupt: list[tuple[int, int]]  #: (start, end) runs of bad bytes that are no torn tail
    active: bool  #: the log that is appended to


def scan_directory(path: str) -> Iterator[_FileScan]:
    """Every data file in replay order, read; safe while a server writes to the directory."""
    files = DataFiles.list(path)
    active, done = files.active(), 0
    for file in files.live():
        if file.number <= done:
            continue  # read already, inside a segment compacted while we looked
        try:
            scan = _scan_data_file(file.kind, file.path)
        except FileNotFoundError:
            # Sealed or compacted while we looked: read the segment that holds it now.
            now = DataFiles.list(path).covering(file.number)
            if now is None:
                raise
            file, scan = now, _scan_data_file(now.kind, now.path)
        done = file.number
        is_active = file.kind == "log" and file.number == active
        corrupt = scan.corruption(tail_may_tear=is_active)
        yield _FileScan(file.number, file.kind, scan, corrupt, is_active)


def replay(path: str, index: Index) -> Scan | None:
    """Rebuild the index from the directory's files; the scan of the active log, if any.

    Corruption raises StoreCorrupt naming the file and offset; a torn tail of the active log
    is left for the log to cut off when it reopens.
    """
    for name in os.listdir(path):
        if name.endswith(_TMP_SUFFIX):  # a segment whose sealing a crash cut short
            os.unlink(os.path.join(path, name))
    # Sealed or compacted, then a crash before the files it holds were removed: they go once
    # the segment that holds them has replayed cleanly, not before.
    stale = DataFiles.list(path).stale()
    tail = None
    for found in scan_directory(path):
        where = found.scan.path
        if found.corrupt:
            start, end = found.corrupt[0]
            lost = what_was_lost(found, start, end, lambda: metric_names(path))
            raise StoreCorrupt(
                f"{where}: corrupt bytes at offset {start} (lost: {lost}); see `perfit store "
                "check`, and `perfit serve --repair` to salvage the rest"
            )
        for offset, rtype, payload in found.scan.records:
            try:
                index.apply(rtype, payload)
            except (ValueError, KeyError, struct.error) as e:
                raise StoreCorrupt(f"{where}: unreadable record at offset {offset}: {e}") from e
        if found.active:
            tail = found.scan
    for file in stale:
        os.unlink(file.path)
    if stale:
        _fsync_dir(path)
    return tail


def repair_directory(path: str) -> None:
    """Rewrite each damaged file with the records that survive; keep its original aside."""
    names = functools.cache(lambda: metric_names(path))  # read again only if something was lost
    for found in list(scan_directory(path)):
        why = _readability([(t, p) for _, t, p in found.scan.records])
        records, salvaged = [], 0
        for (_, rtype, payload), bad in zip(found.scan.records, why):
            if bad is not None:
                payload = _without_origins(rtype, payload)
                if payload is None:
                    continue
                salvaged += 1
            records.append((rtype, payload))
        if not found.corrupt and not any(why):
            continue
        original = found.scan.path
        for start, end in found.corrupt:  # read before the file is rewritten
            lost = what_was_lost(found, start, end, names)
            _log.warning("repairing %s: lost at offset %d: %s", original, start, lost)
        damaged = os.path.join(path, DAMAGED_DIR)
        _make_private_dir(damaged)
        kept = os.path.join(damaged, f"{os.path.basename(original)}.{int(time.time())}")
        import shutil

        shutil.copy2(original, kept)
        os.chmod(kept, 0o600)
        _give_away(kept)
        magic = SEG_MAGIC if found.kind == "seg" else LOG_MAGIC
        _write_durably(original, magic + b"".join(encode_record(t, p) for t, p in records))
        skipped = len(found.scan.records) - len(records) + len(found.corrupt)
        _log.warning(
            "repaired %s: kept %d records, skipped %d bad places; original in %s",
            original,
            len(records),
            skipped,
            kept,
        )
        if salvaged:
            _log.warning(
                "repaired %s: %d blocks of points kept without their commit, branch and "
                "metadata, whose record was damaged (their points count as main's now)",
                original,
                salvaged,
            )


def _without_origins(rtype: int, payload: bytes) -> bytes | None:
    """A segment's block of points that names origins its control block no longer defines,
    made again without them: their times and values kept, their commit, branch and metadata
    lost. None: the block is damaged itself."""
    if rtype != _REC_SEG_POINTS:
        return None
    try:
        raw = _zstd_decompress(payload)
        metric_id, batch = unpack_columns(raw, True, collections.defaultdict(int))
    except (ValueError, struct.error):
        return None
    batch.origins = None
    return need_zstd().compress(pack_columns(metric_id, batch, compact=True))


def _readability(records: Sequence[tuple[int, bytes]]) -> list[str | None]:
    """Why each of a file's records, in order, cannot be read (None: it can). A segment's
    point blocks are read with the origins its control block defines."""
    numbering: dict[int, int] = {}
    found = []
    for rtype, payload in records:
        if rtype == _REC_SEG_CONTROL:
            numbering = {}
            with contextlib.suppress(Exception):  # a damaged block: _unreadable says why
                for inner_type, inner in _control_records(payload):
                    if inner_type == _REC_ORIGIN:
                        numbering[json.loads(inner)["origin"]] = 0
        found.append(_unreadable(rtype, payload, numbering))
    return found


def _unreadable(rtype: int, payload: bytes, numbering: dict[int, int] | None = None) -> str | None:
    """Why a record that passed its CRC cannot be read, or None: it can."""
    try:
        if rtype in _CONTROL_TYPES:
            json.loads(payload)
        elif rtype in (_REC_SEG_CONTROL, _REC_BATCH):
            opened = _control_records if rtype == _REC_SEG_CONTROL else unpack_batch
            for inner_type, inner_payload in opened(payload):
                why = _unreadable(inner_type, inner_payload)
                if why:
                    return why
        else:
            _point_batches(rtype, payload, numbering)
    except MissingDependency:
        raise  # not the record's fault: say what to install
    except Exception as e:  # whatever a damaged payload makes a decoder raise
        return str(e) or type(e).__name__
    return None


@dataclasses.dataclass
class CheckReport:
    """What `perfit store check` found in one file."""

    path: str
    records: int
    problems: list[str]
    notes: list[str]


def check_directory(path: str) -> list[CheckReport]:
    """Verify every record of a data directory, read-only: safe while a server writes to it."""
    names = functools.cache(lambda: metric_names(path))  # read again only if something was lost
    reports = [_check_file(found, names) for found in scan_directory(path)]
    for file in DataFiles.list(path).stale():
        why = "a newer segment holds all of it (sealing or compaction was cut short, or is at work)"
        reports.append(CheckReport(file.path, 0, [], [f"{why}: removed when a server opens it"]))
    return reports


def _check_file(found: _FileScan, names: Callable[[], dict[bytes, str]]) -> CheckReport:
    scan = found.scan
    report = CheckReport(scan.path, len(scan.records), [], [])
    for start, end in found.corrupt:
        lost = what_was_lost(found, start, end, names)
        report.problems.append(
            f"corrupt bytes at offset {start} ({end - start} bytes): lost {lost}"
        )
    if scan.torn_tail is not None and len(found.corrupt) < len(scan.bad):
        report.notes.append(f"torn tail at offset {scan.torn_tail}: cut off when a server opens it")
    why = _readability([(rtype, payload) for _, rtype, payload in scan.records])
    for (offset, _, _), bad in zip(scan.records, why):
        if bad is not None:
            report.problems.append(f"unreadable record at offset {offset}: {bad}")
    return report


@dataclasses.dataclass(frozen=True)
class _Held:
    """Some points of one metric that one record holds: how many, and from when to when."""

    metric: bytes
    points: int
    first: int  #: µs
    last: int  #: µs


def _held(rtype: int, payload: bytes, numbering: dict[int, int] | None = None) -> list[_Held]:
    """The points a record holds, metric by metric (none, for one that holds no points)."""
    if rtype == _REC_BATCH:
        return [h for inner in unpack_batch(payload) for h in _held(*inner)]
    if rtype in _CONTROL_TYPES or rtype == _REC_SEG_CONTROL:
        return []
    numbering = numbering if numbering is not None else collections.defaultdict(int)
    return [
        _Held(metric, len(batch), min(batch.times), max(batch.times))
        for metric, batch in _point_batches(rtype, payload, numbering)
        if len(batch)
    ]


def metric_names(path: str) -> dict[bytes, str]:
    """Each metric's name, as the readable records of a data directory say it."""
    names: dict[bytes, str] = {}
    for found in scan_directory(path):
        for _, rtype, payload in found.scan.records:
            inner = _control_records(payload) if rtype == _REC_SEG_CONTROL else [(rtype, payload)]
            for kind, doc in _flat_records(iter(inner)):
                if kind in (_REC_METRIC, _REC_EDIT):
                    with contextlib.suppress(ValueError, KeyError):  # a damaged one: no name
                        fields = json.loads(doc)
                        if "name" in fields or kind == _REC_METRIC:
                            names[_raw(fields["id"])] = fields.get("name", "")
    return names


def what_was_lost(
    found: _FileScan, start: int, end: int, names_of: Callable[[], dict[bytes, str]]
) -> str:
    """What a run of corrupt bytes held, as far as can be told: the metrics, how many of their
    points (or at most how many), and from when to when. `names_of()`: the metrics' names
    (see metric_names), asked for only here, where something was lost."""
    if found.kind == "seg" and start == len(SEG_MAGIC):
        return (
            "the segment's control records (accounts, tokens, metrics, marks, names and edits; "
            "a repair keeps its points, without their commits, branches and metadata)"
        )
    names = names_of()
    exact = _read_anyway(found.scan.path, start, end)
    if exact is not None:  # its bytes still decode: most likely what it held
        return "probably " + ("; ".join(_said(h, names) for h in exact) or "no points")
    # The nearest points on either side, decoding no more records than it takes to find them.
    records = found.scan.records
    prev = next((h for o, t, p in reversed(records) if o < start
                 for h in reversed(_held_or_not(t, p))), None)  # fmt: skip
    nxt = next((h for o, t, p in records if o >= end for h in _held_or_not(t, p)), None)
    if found.kind == "log":
        since = format_time(prev.last / US) if prev else "the log's start"
        until = format_time(nxt.first / US) if nxt else "its end"
        return f"records written between {since} and {until} (unknown which)"
    most = f"up to {_SEG_BLOCK_POINTS:,} points a block"
    if prev and nxt and nxt.metric == prev.metric:
        since, until = format_time(prev.last / US), format_time(nxt.first / US)
        return f"{most} of {_name_of(prev.metric, names)}, between {since} and {until}"
    sides = []
    if prev:
        sides.append(f"of {_name_of(prev.metric, names)} after {format_time(prev.last / US)}")
    if nxt:
        sides.append(f"of {_name_of(nxt.metric, names)} before {format_time(nxt.first / US)}")
    sides.append("of a metric none of whose points are left")  # a block between two metrics
    return f"{most}, " + ", or ".join(sides)


def _held_or_not(rtype: int, payload: bytes) -> list[_Held]:
    try:
        return _held(rtype, payload)
    except Exception:  # a record unreadable for another reason: tells nothing
        return []


def _read_anyway(path: str, start: int, end: int) -> list[_Held] | None:
    """The points a damaged record held, when its frame and payload still decode (a flipped
    bit in a value, say) into times that can be; None when they do not."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    except OSError:  # compacted away while a check read the directory
        return None
    if len(data) < FRAME.size:
        return None
    length, _, rtype = FRAME.unpack_from(data)
    if rtype not in _RECORD_TYPES or FRAME.size + length > len(data):
        return None
    try:
        held = _held(rtype, data[FRAME.size : FRAME.size + length])
    except Exception:  # whatever a damaged payload makes a decoder raise
        return None
    latest = (time.time() + 366 * 86400) * US  # a flipped bit in a time: no year 148165
    return held if all(0 <= h.first <= h.last <= latest for h in held) else None


def _said(held: _Held, names: dict[bytes, str]) -> str:
    """'12 points of "api/latency" (ID), 2026-01-02T... to 2026-01-09T...'."""
    how_many = f"{held.points:,} point{'s' * (held.points != 1)}"
    span = format_time(held.first / US)
    if held.last != held.first:
        span += f" to {format_time(held.last / US)}"
    return f"{how_many} of {_name_of(held.metric, names)}, {span}"


def _name_of(metric: bytes, names: dict[bytes, str]) -> str:
    name = names.get(metric)
    return f"{name!r} ({b64encode(metric)})" if name else f"metric {b64encode(metric)}"


def backup_directory(path: str, dest: str, attempts: int = 20) -> int:
    """Copy a live data directory consistently into dest (new or empty); return files copied.

    Segments never change, and a log is copied up to its last whole record. A log sealed and
    removed while we copy makes us start again, so the copy never misses what moved.
    """
    _make_private_dir(dest)
    if os.listdir(dest):
        raise UsageError(f"backup destination {dest} is not empty")
    for _ in range(attempts):
        try:
            copied = _copy_once(path, dest)
        except FileNotFoundError:
            for name in os.listdir(dest):
                os.unlink(os.path.join(dest, name))
            continue
        _fsync_dir(dest)
        return copied
    raise StoreError(f"{path} kept changing under the backup; try again")


def _copy_once(path: str, dest: str) -> int:
    copied = 0
    for file in DataFiles.list(path).live():
        with open(file.path, "rb") as f:
            data = f.read()
        if file.kind == "log":
            # The active log may be mid-append as we read it: keep its whole records only.
            scan = scan_bytes(file.path, data, LOG_MAGIC)
            good_end = scan.torn_tail if scan.torn_tail is not None else scan.size
            data = data[:good_end] if good_end >= len(LOG_MAGIC) else LOG_MAGIC
        _write_durably(os.path.join(dest, os.path.basename(file.path)), data)
        copied += 1
    token = os.path.join(path, ROOT_TOKEN_FILE)
    if os.path.exists(token):
        with open(token, "rb") as f:
            _write_durably(os.path.join(dest, ROOT_TOKEN_FILE), f.read())
        copied += 1
    return copied


# ==============================================================================================
# Store: the log
# Records appended to the active log file in batches, one write and one fsync a batch, so
# concurrent writers share the disk's slowest step (group commit); a new file once it is full.
# ==============================================================================================


class _LogFile:
    """The active log's file: started, resumed after a crash (its torn tail cut off), and
    fsynced, never again after a failure."""

    directory: str
    number: int
    exit_on_fatal: bool
    failed: str | None
    _fd: int | None
    _size: int

    def start(self, number: int) -> None:
        """Append to a new, empty log file with this number."""
        self._fd, self.number = _create_log(self.directory, number), number
        self._size = len(LOG_MAGIC)

    def resume(self, number: int, scan: Scan) -> int:
        """Append to an existing log, cutting off its torn tail; the bytes cut off."""
        fd, good_end = _reopen_log(scan)
        if fd is None:
            self.start(number)  # torn while being created: nothing in it was acknowledged
        else:
            self._fd, self.number, self._size = fd, number, good_end
        return scan.size - good_end

    def _fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as e:
            # After a failed fsync the kernel may have dropped the dirty pages: retrying could
            # "succeed" on data that is gone. Stop; replay on restart tells what is durable.
            self.failed = f"fsync failed: {e.strerror}"
            _log.critical("store failed: %s", self.failed)
            if self.exit_on_fatal:
                os._exit(EXIT_STORE_FATAL)
            raise StoreError("the data could not be made durable") from e


#: Records that land with the next record this request (its thread) appends, in one batch: an
#: Idempotency-Key is stored if, and only if, what it keyed is (see Log.append, _keyed).
_RIDERS: contextvars.ContextVar[list[tuple[int, bytes]]] = contextvars.ContextVar("riders")


def _with_riders(
    rtype: int, make_payload: Callable[[], bytes], riders: list[tuple[int, bytes]]
) -> Callable[[], bytes]:
    """The payload of a batch: the record make_payload makes (or its batch's), then riders."""

    def payload() -> bytes:
        own = make_payload()
        return (own if rtype == _REC_BATCH else pack_batch([(rtype, own)])) + pack_batch(riders)

    return payload


class Log(_LogFile):
    """The active log. It knows nothing of what its records mean.

    `on_durable(records)` runs for each batch once it is on disk (the store indexes it there,
    so nothing is readable before it is durable); `on_full()` runs when a file fills up and a
    new one starts (the store has the full one sealed).
    """

    def __init__(
        self,
        directory: str,
        seal_bytes: int,
        on_durable: Callable[[list[tuple[int, bytes]]], None],
        on_full: Callable[[], None],
    ) -> None:
        self.directory = directory
        self.seal_bytes = seal_bytes
        self.exit_on_fatal = False  #: set by `serve`: a failed fsync ends the process
        self.number = 0  #: the active log's file number
        self._on_durable = on_durable
        self._on_full = on_full
        self._lock = threading.Lock()  #: guards everything below, and on_durable's work
        self._durable = threading.Condition(self._lock)  #: notified after every fsync
        self._syncing = False  #: a leader is writing: its fd must stay open
        self._queue: list[tuple[int, bytes]] = []  #: records waiting for a leader to write them
        self._queued = 0  #: records ever queued; a record's number is its place in that count
        self._taken = 0  #: records a leader has taken from the queue (written, or lost)
        self._synced = 0  #: records durable and passed to on_durable
        self._lost: list[tuple[int, int, str]] = []  #: (first, last, why) of batches not written
        self.failed: str | None = None  #: why the log stopped taking writes (a failed fsync)
        self._fd: int | None = None
        self._size = 0
        self._next_rotation = seal_bytes

    def close(self) -> None:
        """Write what writers still wait for, then close the file."""
        with self._durable:
            while self._syncing:
                self._durable.wait()
            if self._queue and self._fd is not None and not self.failed:
                self._write_queue()
            if self._fd is not None:
                os.close(self._fd)
            self._fd = None

    def roll(self) -> None:
        """Start a new log now, if this one holds any record, so that it can be sealed."""
        with self._durable:
            while self._syncing:
                self._durable.wait()
            self._check_writable()
            if self._queue:
                self._write_queue()
            if self._size > len(LOG_MAGIC):
                self._rotate()

    # -- appending -----------------------------------------------------------------------------

    def append(self, rtype: int, make_payload: Callable[[], bytes]) -> None:
        """Queue one record; return once it is written, fsynced and passed to on_durable.

        Group commit: the first waiter becomes the leader and writes every queued record in
        one write and one fsync, then hands them to on_durable in order and wakes the others.
        The others make no system call of their own (each is a GIL hand-off on a busy server).
        make_payload runs under the lock, so a record's contents follow queue order. Riders
        (see _RIDERS) come along in one batch.
        """
        riders = _RIDERS.get(None)
        if riders:
            rtype, make_payload = _REC_BATCH, _with_riders(rtype, make_payload, riders[:])
            riders.clear()
        with self._durable:
            self._check_writable()
            self._queue.append((rtype, make_payload()))
            self._queued += 1
            seq = self._queued
            while self._synced < seq:
                for first, last, why in self._lost:
                    if first <= seq <= last:
                        raise StoreError(why)
                self._check_writable()
                if self._syncing:
                    self._durable.wait()
                else:
                    self._write_queue()

    def _check_writable(self) -> None:
        # Never write again after a failed fsync (it could "succeed" on lost data).
        if self.failed or self._fd is None:
            raise StoreError(f"the store is not writable: {self.failed or 'closed'}")

    def _write_queue(self) -> None:
        """As leader (lock held, no other leader): write, fsync and hand on the queue."""
        batch, self._queue = self._queue, []
        first, last = self._taken + 1, self._taken + len(batch)
        self._taken = last
        data = b"".join(encode_record(rtype, payload) for rtype, payload in batch)
        fd, offset = self._fd, self._size
        self._syncing = True
        self._lock.release()  # records queue up while the disk works
        try:
            try:
                _write_all(fd, data)
            except OSError as e:
                os.ftruncate(fd, offset)  # no partial record: the next write starts on a boundary
                lost = f"cannot write to the data directory: {e.strerror}"
            else:
                lost = ""
                self._fsync(fd)
        finally:
            self._lock.acquire()
            self._syncing = False
            self._durable.notify_all()
        if lost:
            self._lost = [*self._lost[-15:], (first, last, lost)]
            return
        self._size += len(data)
        self._on_durable(batch)
        self._synced = last
        if self._size >= self._next_rotation:
            self._rotate()

    def _rotate(self) -> None:
        """Start the next log file (lock held, as leader, all written is durable)."""
        old_fd = self._fd
        try:
            self.start(self.number + 1)
        except OSError as e:
            self._fd = old_fd  # keep writing the old log; try again a little later
            self._next_rotation = self._size + self.seal_bytes // 4
            _log.warning("cannot start a new log (%s); will retry", e.strerror)
            return
        self._next_rotation = self.seal_bytes
        os.close(old_fd)
        self._on_full()


# ==============================================================================================
# Store: the sealer
# Full logs become compressed segments in a background thread: written whole or not at all,
# and only then is the log removed, so a crash at any step loses and doubles nothing.
# ==============================================================================================


class Sealer:
    """Seals every log older than the active one (normally one; more after a crash, or after
    running without zstd), then compacts the segments if that is due (see compaction_runs),
    one pass at a time, in a background thread."""

    def __init__(
        self, directory: str, zstd: Zstd | None, active: Callable[[], int], index: Index
    ) -> None:
        self.directory = directory
        self.zstd = zstd  #: None: no zstd, and full logs stay as they are
        self._active = active  #: the active log's number, which is never sealed
        self._index = index  #: what is deleted and expired, which compaction leaves out
        self._running = threading.Lock()  #: held by the pass at work
        #: Guards _closing and starting a thread: once close() has said so, none starts, and
        #: one made before has been started (a thread not started yet is not "alive").
        self._state = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        #: seal big logs in a child process (the server's choice): see _seal_in_child
        self.in_child = False

    def wake(self) -> None:
        """Start a pass, unless one is at work (it looks again before it ends)."""
        with self._state:
            if self.zstd is None or self._closing or not self._running.acquire(blocking=False):
                return
            self._thread = threading.Thread(target=self._run, name="perfit-sealer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Let the pass at work finish; start no more."""
        with self._state:
            self._closing = True
        while (thread := self._thread) is not None and thread.is_alive():
            thread.join()

    def _pending(self) -> list[int]:
        active = self._active()
        live = DataFiles.list(self.directory).live()
        return [f.number for f in live if f.kind == "log" and f.number < active]

    def run_now(self, everything: bool = True) -> list[tuple[list[DataFile], DataFile]]:
        """Seal, then compact (everything: every segment, dropping all that is deleted and
        expired), in this thread, once a pass at work has finished; what was compacted."""
        need_zstd()
        with self._running:
            while pending := self._pending():
                self._seal(pending[0])
            return self._compact(everything)

    def _run(self) -> None:
        finished = False
        try:
            while pending := self._pending():
                self._seal(pending[0])
            self._compact(self._garbage_due())
            finished = True
        except Exception as e:  # anything: a thread traceback on stderr would help nobody
            # The files stay as they are and replay fine; the next pass tries again.
            _log.error("sealing or compaction failed: %s; the files stay as they are", e)
        finally:
            self._running.release()
            _give_memory_back()  # a pass holds a log's points in memory at once
        if finished and self._pending():
            self.wake()  # a log filled up as we finished, and found us still at work

    def _garbage_due(self) -> bool:
        """Whether deleted and expired points are worth rewriting every segment for."""
        total = sum(len(m.series) for m in list(self._index.metrics.values()))
        return self._index.garbage >= max(_COMPACT_GARBAGE_MIN, _COMPACT_GARBAGE * total)

    def _compact(self, everything: bool) -> list[tuple[list[DataFile], DataFile]]:
        if everything:
            self._index.garbage = 0  # counted afresh: what is deleted from now on
        segments = [f for f in DataFiles.list(self.directory).live() if f.kind == "seg"]
        done = []
        for run in compaction_runs(segments, everything):
            if self._closing:
                break  # what is left stays as it is: every file replays as well as before
            started = time.monotonic()
            made = compact_segments(self.directory, run, self._index)
            done.append((run, made))
            took = time.monotonic() - started
            _log.info("compacted %d segment(s) into %s in %.2fs", len(run), made.path, took)
        return done

    def _seal(self, number: int) -> None:
        log_path = os.path.join(self.directory, _file_name(number, _LOG_SUFFIX))
        seg_path = os.path.join(self.directory, _file_name(number, _SEG_SUFFIX))
        started = time.monotonic()
        child = self.in_child and os.path.getsize(log_path) >= _SEAL_CHILD_BYTES
        if child:
            _seal_in_child(log_path, seg_path)
            _give_away(seg_path)  # the child is a new interpreter: it knows no _GIVE_TO
        else:
            seal_log(log_path, seg_path)
        os.unlink(log_path)
        _fsync_dir(self.directory)
        took, name = time.monotonic() - started, os.path.basename(seg_path)
        _log.info("sealed %s in %.2fs%s", name, took, " (in a child process)" * child)


_SEAL_CHILD_BYTES = 1 << 20  #: a log this big is sealed in a child process, by a server


def _seal_in_child(log_path: str, seg_path: str) -> None:
    """seal_log, in a child Python: what it holds for a moment (every record of a log, every
    metric's columns) would leave the server's heap in pieces that stay resident, tens of
    bytes a point; a child gives all of it back when it ends."""
    import subprocess

    # The directory this module was imported from, or the .pyz holding it, first on the
    # path (before the working directory, which may hold another perfit.py): the child
    # imports this very perfit, with the same flags (-S in a bare bundle) and environment.
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import perfit; perfit.seal_log(*sys.argv[2:])"
    )
    flags = ["-S"] if sys.flags.no_site else []
    done = subprocess.run(
        [sys.executable, *flags, "-c", code, here, log_path, seg_path],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise StoreError(f"sealing {log_path} in a child process failed: {why}")


# ==============================================================================================
# Store: compaction
# Sealed segments merged into fewer, bigger ones without the points of deleted metrics and
# those past a metric's keep. The new segment is durable before the files it holds go, and
# replay skips files a segment covers, so a crash at any step loses and doubles nothing.
# ==============================================================================================

_COMPACT_BYTES = 16 << 20  #: compaction writes segments of about this size at most
_COMPACT_FILES = 4  #: this many small segments (under half that size) in a row are merged
_COMPACT_GARBAGE = 0.05  #: every segment is rewritten once deleted and expired points are this
_COMPACT_GARBAGE_MIN = 1000  #: ... share of all points, and at least this many
_MAINTENANCE_SECONDS = 3600.0  #: how often a server expires old points and looks at compaction


def compaction_runs(segments: Sequence[DataFile], everything: bool) -> list[list[DataFile]]:
    """Runs of consecutive segments that each become one segment: small ones in a row,
    or (everything) every segment, so that what is deleted and expired goes."""
    runs: list[list[DataFile]] = []
    run: list[DataFile] = []
    size = 0
    sizes = {segment.path: os.path.getsize(segment.path) for segment in segments}
    for segment in segments:
        n = sizes[segment.path]
        takes = everything or n < _COMPACT_BYTES // 2
        if run and (size + n > _COMPACT_BYTES or not takes):
            runs.append(run)
            run, size = [], 0
        if takes:
            run.append(segment)
            size += n
    if run:
        runs.append(run)
    if everything:
        return runs
    tiered = [_without_big_head(r, sizes) for r in runs]
    return [r for r in tiered if len(r) >= _COMPACT_FILES]


def _without_big_head(run: list[DataFile], sizes: dict[str, int]) -> list[DataFile]:
    """The run less its first segments while each is as big as all after it: merging four
    of a size at a time (size-tiered) rewrites each point a few times, where merging every
    new segment into one ever-growing segment would rewrite it again and again."""
    while len(run) > 1 and sizes[run[0].path] >= sum(sizes[f.path] for f in run[1:]):
        run = run[1:]
    return run


def _main_and_branches(series: Series) -> tuple[Series, Series]:
    """A metric's points as a segment holds them, split into main's and the branches' (which
    expire apart)."""
    main, others = series.batch(0, len(series)).split()
    branches = Series()
    if others is not None:
        branches.add(others)
    return (series if others is None else Series.of(main.rows())), branches


def _record_metric(rtype: int, doc: dict) -> bytes | None:
    """The metric a control record is about, if it is about one."""
    field = {_REC_METRIC: "id", _REC_EDIT: "id", _REC_MARK: "metric", _REC_DELETE: "metric"}
    return _raw(doc[field[rtype]]) if rtype in field else None


def compact_segments(directory: str, run: Sequence[DataFile], index: Index) -> DataFile:
    """Write one segment holding what the run's segments hold, less the points of deleted
    metrics and those past each metric's horizon; then remove the run's files.

    What `index` says is newer than the run, and that is sound: a delete is for ever, a
    horizon only moves forward. Their records come along (the tombstones and the horizons,
    at the front), so files after the run replay the same: a point for a deleted metric is
    passed over, an expired one not added.
    """
    compress = need_zstd().compress
    deleted = frozenset(index.deleted)
    control: list[tuple[int, bytes]] = []
    points: dict[bytes, Series] = {}
    gone: set[bytes] = set()  #: deleted metrics the run names
    named: set[bytes] = set()  #: metrics it names that are not deleted
    for segment in run:
        scan = _scan_data_file("seg", segment.path)
        if scan.bad:
            raise StoreCorrupt(
                f"{segment.path}: bad bytes at offset {scan.bad[0][0]}; not compacting it"
            )
        numbering: dict[int, int] = {}  # the segment's origins, numbered again in the new one
        for _, rtype, payload in scan.records:
            if rtype == _REC_SEG_CONTROL:
                for inner_type, inner in _control_records(payload):
                    doc = json.loads(inner)
                    if inner_type == _REC_ORIGIN:
                        numbering[doc["origin"]] = origin_table().intern(_origin_of_doc(doc))
                        continue
                    if inner_type == _REC_KEY and _forgotten(doc):
                        continue
                    if inner_type == _REC_EXPIRE:
                        # The horizons of now are written below, for all the run names.
                        for key in ("before", "branches"):
                            named.update(_raw(m) for m in doc.get(key, ()))
                        continue
                    about = _record_metric(inner_type, doc)
                    if about in deleted:
                        gone.add(about)
                        continue
                    control.append((inner_type, inner))
                    if about is not None:
                        named.add(about)
                continue
            for metric_id, batch in _point_batches(rtype, payload, numbering):
                if metric_id in deleted:
                    gone.add(metric_id)
                else:
                    points.setdefault(metric_id, Series()).add(batch)
                    named.add(metric_id)
    control += [_json_record(_REC_DELETE, {"metric": b64encode(m)}) for m in sorted(gone)]
    horizons: dict[str, dict[str, int]] = {"before": {}, "branches": {}}
    kept: list[tuple[bytes, Series]] = []
    for metric_id in sorted(named - deleted):
        metric = index.metrics.get(metric_id)
        parts = _main_and_branches(points.get(metric_id, Series()))
        for key, part, now in zip(
            horizons, parts, (metric.series, metric.branches) if metric else ()
        ):
            if now.horizon:
                horizons[key][b64encode(metric_id)] = now.horizon
                part.expire(now.horizon)
        kept += [(metric_id, part) for part in parts if len(part)]
    if horizons["before"] or horizons["branches"]:
        doc = {key: found for key, found in horizons.items() if found}
        control.append(_json_record(_REC_EXPIRE, doc))
    first, last = run[0].first, run[-1].number
    path = os.path.join(directory, _file_name(last, _SEG_SUFFIX, first))
    _write_durably(path, _segment_bytes(control, kept, compress))
    for segment in run:
        if segment.path != path:
            os.unlink(segment.path)
    _fsync_dir(directory)
    return DataFile(first, last, "seg", path)


# ==============================================================================================
# Store: the store
# The data directory as one object: its lock, the index replayed from its files, the log that
# new records go to, and the sealer; and the operations the web layer and the tests use.
# ==============================================================================================


class _Operations:
    """What the web layer asks a store to write: accounts, tokens, boards, metrics (by name
    too), points, CI runs and marks, each made into records and appended through the log.
    Store, below, provides what these use."""

    log: Log
    index: Index
    metrics: dict[bytes, Metric]
    _import_lock: threading.Lock
    _naming_lock: threading.Lock

    def origin(self, account: bytes, commit: str = "", branch: str = "", meta: str = "") -> Origin:
        """Where points posted to the account now come from; main's when they have no branch
        or the account's main branch (decided now, and kept with them)."""
        main = not branch or branch == self.index.main_branch(account)
        return Origin(commit, branch, main, meta.encode("utf-8"))


class _MetricOperations(_Operations):
    """Metrics: made (by name too, and by a CI run), changed, deleted, expired, marked."""

    def create_metric(self, account: bytes, **fields: str) -> Metric:
        """A new metric; a name its account already uses is a Conflict naming that metric."""
        with self._naming_lock:
            taken = self.index.names.get((account, fields.get("name", "")))
            if taken is not None:
                raise Conflict(f"the name {taken.name!r} is taken", b64encode(taken.id))
            self._check_room(account, 1)
            doc = _metric_doc(account, **fields)
            self.log.append(_REC_METRIC, lambda: json.dumps(doc).encode())
        return self.metrics[_raw(doc["id"])]

    def _check_room(self, account: bytes, new: int) -> None:
        count = len(self.index.by_account.get(account, ()))
        if count + new > MAX_ACCOUNT_METRICS:
            raise Forbidden(
                f"the account has {count} metrics and this would add {new}; "
                f"an account may have at most {MAX_ACCOUNT_METRICS:,}"
            )

    def post_run(
        self,
        account: bytes,
        points: Sequence[RunPoint],
        metadata: str,
        fit: Callable[[Metric, RunPoint], float],
        commit: str = "",
        branch: str = "",
    ) -> tuple[int, dict[str, bytes]]:
        """Store a CI run: its points all at one arrival time, metrics missing by name
        created in `account`; one record, so all of it or none. Returns the time (µs) and the
        metric id of each name. `fit(metric, point)` is the value to store in an existing
        metric (its unit may differ from the point's).

        Only one writer at a time creates metrics (the naming lock), so two runs that both
        find a name missing cannot both create it; a run that creates nothing never waits.
        """
        names = self.index.names
        creates = any((account, p.name) not in names for p in points)
        with self._naming_lock if creates else contextlib.nullcontext():
            # Looked up once: a metric deleted from now on just loses the run's point.
            existing = {p.name: names.get((account, p.name)) for p in points}
            docs = {
                p.name: _metric_doc(account, name=p.name, unit=p.unit, better=p.better)
                for p in points
                if existing[p.name] is None
            }
            self._check_room(account, len(docs))
            ids, values = {}, []
            for p in points:
                if p.name in docs:
                    ids[p.name] = _raw(docs[p.name]["id"])
                    values.append(p.value)
                else:
                    metric = existing[p.name]
                    ids[p.name] = metric.id
                    values.append(fit(metric, p))
            creations = [_json_record(_REC_METRIC, d) for d in docs.values()]
            origin = self.origin(account, commit, branch, metadata)
            stamp = [0]

            def payload() -> bytes:
                stamp[0] = t = self._arrival_time()
                run = pack_run(t, origin, [(ids[p.name], v) for p, v in zip(points, values)])
                return pack_batch([*creations, (REC_RUN, run)]) if creations else run

            self.log.append(_REC_BATCH if creations else REC_RUN, payload)
        return stamp[0], ids

    def edit_metric(self, metric: Metric, changes: dict[str, Any]) -> None:
        """Change a metric's name, unit, description, better or keep (seconds; None: all).
        A new keep expires the older points at once, in the same record."""
        with self._naming_lock:
            name = changes.get("name")
            taken = self.index.names.get((metric.account, name)) if name else None
            if taken is not None and taken is not metric:
                raise Conflict(f"the name {name!r} is taken", b64encode(taken.id))
            records = [_json_record(_REC_EDIT, {"id": b64encode(metric.id), **changes})]
            if changes.get("keep"):
                before = time.time_ns() // 1000 - round(changes["keep"] * US)
                records.append(
                    _json_record(_REC_EXPIRE, {"before": {b64encode(metric.id): before}})
                )
            self.log.append(_REC_BATCH, lambda: pack_batch(records))

    def delete_metric(self, metric: Metric) -> int:
        """Delete a metric and its points (their space comes back when the files holding them
        are compacted); return how many points went."""
        count = len(metric.series)
        with self._naming_lock:  # no run may be creating a metric of this name meanwhile
            doc = {"metric": b64encode(metric.id)}
            self.log.append(_REC_DELETE, lambda: json.dumps(doc).encode())
        return count

    def expire_points(self) -> int:
        """Write the expiry of every point past its metric's keep, and of branches' points
        past BRANCH_KEEP; return how many went."""
        now = time.time_ns() // 1000
        doc: dict[str, dict[str, int]] = {"before": {}, "branches": {}}
        count = 0
        for metric in list(self.metrics.values()):
            for key, series in zip(doc, (metric.series, metric.branches)):
                keep, times = series.keep, series.times
                if keep and times and times[0] < now - keep:
                    doc[key][b64encode(metric.id)] = now - keep
                    count += bisect.bisect_left(times, now - keep)
        if count:
            doc = {key: found for key, found in doc.items() if found}
            self.log.append(_REC_EXPIRE, lambda: json.dumps(doc).encode())
        return count

    def mark(self, metric_id: bytes, kind: str, start: int, end: int) -> None:
        """Accept a change (start: its time, µs), or exclude or include points (µs, inclusive)."""
        doc = {"metric": b64encode(metric_id), "kind": kind, "start": start, "end": end}
        self.log.append(_REC_MARK, lambda: json.dumps(doc).encode())


class _AccountOperations(_Operations):
    """Accounts, their tokens (made, listed, revoked), boards and webhooks."""

    def create_account(self) -> tuple[bytes, str]:
        """A new account, its board, and its first admin token."""
        account = new_id()
        doc = {"id": b64encode(account), "created": time.time()}
        token, token_doc = _token_doc(account, "admin")
        records = (
            _json_record(_REC_ACCOUNT, doc),
            _json_record(_REC_BOARD, _board_doc(account)),
            _json_record(_REC_TOKEN, token_doc),
        )
        self.log.append(_REC_BATCH, lambda: pack_batch(records))
        return account, token

    def create_token(self, account: bytes, token_type: str) -> str:
        token, doc = _token_doc(account, token_type)
        self.log.append(_REC_TOKEN, lambda: json.dumps(doc).encode())
        return token

    def tokens_of(self, account: bytes) -> list[TokenEntry]:
        """The account's tokens that work, oldest first."""
        return [e for e in self.index.token_ids.values() if e.principal.account == account]

    def revoke_token(self, account: bytes, raw_id: bytes) -> None:
        """Make one of the account's tokens stop working; never its last admin token, which
        would leave nobody able to manage it."""
        with self._naming_lock:
            entry = self.index.token_ids.get(raw_id)
            if entry is None or entry.principal.account != account:
                raise NotFound(f"the account has no token with id {b64encode(raw_id)!r}")
            admins = [e for e in self.tokens_of(account) if e.principal.type == "admin"]
            if admins == [entry]:
                raise Forbidden(
                    "this is the account's last admin token; make another one "
                    "(PUT /t/ with type admin) before revoking it"
                )
            doc = {"token": b64encode(raw_id)}
            self.log.append(_REC_REVOKE, lambda: json.dumps(doc).encode())

    def replace_board(self, account: bytes) -> bytes:
        """A new board id for the account; links with the old one stop working."""
        doc = _board_doc(account)
        self.log.append(_REC_BOARD, lambda: json.dumps(doc).encode())
        return _raw(doc["board"])

    def _give_boards(self) -> None:
        """A board for each account of a data directory from before boards (PerfIt 0.1)."""
        boardless = [a for a in self.index.accounts if a not in self.index.board_of]
        if boardless:
            records = [_json_record(_REC_BOARD, _board_doc(a)) for a in boardless]
            self.log.append(_REC_BATCH, lambda: pack_batch(records))

    def set_main_branch(self, account: bytes, branch: str) -> None:
        """Name the account's main branch: points posted from now on with it are main's."""
        doc = {"account": b64encode(account), "main_branch": branch}
        self.log.append(_REC_SETTINGS, lambda: json.dumps(doc).encode())

    def keep_answer(self, doc: dict[str, Any]) -> None:
        """What a write sent with an Idempotency-Key answered (see _Keys)."""
        self.log.append(_REC_KEY, lambda: json.dumps(doc).encode())

    def set_webhook(self, account: bytes, url: str | None) -> None:
        doc = {"account": b64encode(account), "url": url}
        self.log.append(_REC_WEBHOOK, lambda: json.dumps(doc).encode())


class _PointOperations(_Operations):
    """Points: posted live (timed by the server), added and imported with their own times."""

    def add_point(
        self, metric_id: bytes, value: float, metadata: str = "", commit: str = "", branch: str = ""
    ) -> int:
        """Record a point at the server's arrival time (a run of one); return that time (µs)
        once durable."""
        origin = self.origin(self.metrics[metric_id].account, commit, branch, metadata)
        stamp = [0]

        def payload() -> bytes:
            stamp[0] = self._arrival_time()
            return pack_run(stamp[0], origin, [(metric_id, value)])

        self.log.append(REC_RUN, payload)
        return stamp[0]

    def _arrival_time(self) -> int:
        """Now, in µs, for a live point (under the log's lock, so in the log's order). Arrival
        times never go backwards, even if the wall clock does."""
        self.index.last_t = max(time.time_ns() // 1000, self.index.last_t)
        return self.index.last_t

    def add_points(self, metric_id: bytes, batch: PointBatch) -> int:
        """Add points at the times they carry: one record, all or nothing, durable."""
        if len(batch):
            self.log.append(_REC_POINTS, lambda: pack_columns(metric_id, batch))
        return len(batch)

    def import_points(self, metric_id: bytes, batch: PointBatch) -> tuple[int, int, int]:
        """Add the points not stored yet; (added, already there, older than the metric keeps).
        Importing a file twice adds it once. One import at a time, so two of the same file
        cannot both find it missing."""
        with self._import_lock:
            metric, rows = self.metrics[metric_id], []
            existing = 0
            for part, series in zip(batch.split(), (metric.series, metric.branches)):
                if part is None:
                    continue
                fresh = series.not_stored(part)
                existing += len(part) - len(fresh)
                rows += [p for p in fresh.rows() if p[0] >= series.served_from()]
            rows.sort(key=operator.itemgetter(0))  # stable: ties keep the order they came in
            added = self.add_points(metric_id, PointBatch.of(rows))
            return added, existing, len(batch) - existing - added


class Store(_AccountOperations, _MetricOperations, _PointOperations):
    """A data directory, replayed into memory. Use ``Store.open(path)``, which takes the
    directory's lock: one process owns it."""

    def __init__(self, path: str, seal_bytes: int = SEAL_BYTES) -> None:
        self.path = path
        self.index = Index()
        self.metrics = self.index.metrics  #: by id; each with its points
        self.root_token_hash: bytes | None = None  #: set by `serve`
        self.torn_bytes_cut = 0  #: bytes of torn tail cut off when opening
        self.zstd, self.zstd_missing = find_zstd()  #: why there is none, when there is none
        self.log = Log(path, seal_bytes, self._index_durable, self._sealer_wake)
        self.sealer = Sealer(path, self.zstd, lambda: self.log.number, self.index)
        self._lock_fd: int | None = None
        self._import_lock = threading.Lock()  #: one import at a time: see import_points
        #: One writer at a time of what must be checked against the index: new metrics and
        #: names (see post_run), deletes, revocations.
        self._naming_lock = threading.Lock()
        self._stopping = threading.Event()  #: set by close: the maintenance thread ends
        self._maintenance: threading.Thread | None = None

    @classmethod
    def open(cls, path: str, repair: bool = False, seal_bytes: int = SEAL_BYTES) -> Store:
        """Open (or create) a data directory; corruption raises StoreCorrupt unless repair."""
        store = cls(path, seal_bytes)
        try:
            _make_private_dir(path)
            store._take_lock()
            if store.zstd is None and DataFiles.list(path).segments:
                need_zstd()  # segments it cannot read: stop here, with the fix in one line
            if repair:
                repair_directory(path)
            tail = replay(path, store.index)
            if tail is None:
                files = DataFiles.list(path)
                store.log.start(max([*files.logs, *files.segments], default=0) + 1)
            else:
                store.torn_bytes_cut = store.log.resume(DataFiles.list(path).active(), tail)
        except PermissionError:
            store.close()
            raise  # the CLI names the file, its owner and the fix (see not_permitted)
        except OSError as e:
            store.close()
            raise StoreError(f"cannot open the data directory {path}: {e.strerror}") from e
        except PerfitError:
            store.close()
            raise
        store.sealer.wake()  # logs a crash (or a run without zstd) left unsealed
        store._give_boards()
        return store

    def close(self) -> None:
        self._stopping.set()
        if self._maintenance is not None:
            self._maintenance.join()
        self.sealer.close()
        self.log.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def exit_on_fatal(self) -> bool:
        return self.log.exit_on_fatal

    @exit_on_fatal.setter
    def exit_on_fatal(self, value: bool) -> None:
        self.log.exit_on_fatal = value

    def writable(self) -> bool:
        return self.log.failed is None and os.access(self.path, os.W_OK)

    def _take_lock(self) -> None:
        import fcntl  # POSIX only, and only the server needs it

        fd = _open_private(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StoreLocked(
                f"the data directory {self.path} is in use by another perfit server (pid {owner})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def start_maintenance(self, every: float = _MAINTENANCE_SECONDS) -> None:
        """Expire points past their metric's keep, then seal and compact what is due: now,
        and every `every` seconds, in a background thread (the server's)."""

        def run() -> None:
            while not self._stopping.is_set():
                try:
                    self.expire_points()
                except StoreError as e:
                    _log.error("expiring old points failed: %s; will try again", e)
                self.sealer.wake()
                self._stopping.wait(every)

        self._maintenance = threading.Thread(target=run, name="perfit-maintenance", daemon=True)
        self._maintenance.start()

    def compact(self) -> list[tuple[list[DataFile], DataFile]]:
        """Expire, seal (the active log too) and compact every segment now, leaving out all
        that is deleted and expired; what became what."""
        self.expire_points()
        self.log.roll()
        return self.sealer.run_now(everything=True)

    def _index_durable(self, records: list[tuple[int, bytes]]) -> None:
        for rtype, payload in records:
            self.index.apply(rtype, payload)

    def _sealer_wake(self) -> None:
        self.sealer.wake()

    def authenticate(self, token: str) -> Principal | None:
        import hmac

        digest = hash_token(token)
        if self.root_token_hash is not None and hmac.compare_digest(digest, self.root_token_hash):
            return Principal(None, "root")
        # The dict is keyed by SHA-256: timing reveals bytes of a hash, never of a token.
        return self.index.tokens.get(digest)


# ==============================================================================================
# Change points
# Where a metric's typical level steps or drifts, told apart from CI noise and slow outliers.
# Pure standard library: it runs on the server's tiny VPS, and in `perfit metric check` too.
# ==============================================================================================

DEFAULT_CHANGE_THRESHOLD = 0.05  #: relative steps smaller than this are not reported
_CHANGE_MIN_SEGMENT = 10  #: points a level needs before (and after) a step to count as one
_CHANGE_SIGNIFICANCE = 0.001  #: how unlikely a split must be under "no change" (Pettitt's p)
_CHANGE_REFINE = 12  #: points around a found split searched for its best position
_CHANGE_WINDOW = 5000  #: change points are sought among this many newest points of a range
_PARTITION_PENALTY = 2.0  #: the optimal partition's price of a change, times ln(points)
_PARTITION_CLIP = 3.0  #: a point costs at most this many noise SDs: slow runs buy no level
_CANDIDATE_FLOOR = 2.0  #: a window step this many noise SDs tall is a candidate change
_MAX_CANDIDATES = 24  #: the tallest window steps the partition considers
_TAIL_MIN = 4  #: newest runs that can name a new level before the rank test can (provisional)
_TAIL_SIGMAS = 2.0  #: how far beyond the level's noise each of them must lie
_TAIL_BASELINE = 60  #: points of the level before it that set its median and noise
_TAIL_SPREAD = 3.0  #: ... and their spread (MAD) at most this times the level's
#: residuals whose lag-1 autocorrelation is over this have memory: changes cost more
_MEMORY_FLOOR = 0.2
_MEMORY_SDS = 3.0  #: ... and rho is memory only this many of its SDs (1/sqrt(n)) above chance
_TAIL_MEMORY = 0.4  #: ... and, over this, the newest runs name no level (see detect_changes)
_DRIFT_PRICE = 2.0  #: a drift fits better than its steps by this many ln(n) noise variances
_DRIFT_MIN_RUNS = 10  #: a move over fewer runs than this is a step
_MARK_REACH = 5  #: runs a change may move as runs arrive and keep what was said of it


#: A run at either side of a change: (unix seconds, its commit or "").
Run = tuple[int, str]


@dataclasses.dataclass(frozen=True)
class Change:
    """A move of a metric's typical level: a step, or a drift over many runs."""

    index: int  #: the first point of the new level (of a drift: its first point off the old)
    t: int  #: its time, unix seconds
    before: float  #: median of the level before
    after: float  #: median of the level after (of a drift still going: the level reached)
    #: relative: after / before - 1 (0.25 is +25 %); infinite from a level of 0, NaN across 0
    #: (-2 to 3): JSON's null, which _percent words
    change: float
    kind: str  #: "regression" or "improvement", by the metric's `better`
    accepted: bool = False  #: an admin said it was meant (`metric check` passes it)
    provisional: bool = False  #: the new level is still short (under twice the minimum)
    shape: str = "step"  #: "step", or "drift" where the level moved steadily over many runs
    runs: int = 1  #: how many runs the move took (1 for a step)
    dismissed: bool = False  #: an admin said it was noise: no regression for anyone
    last_good: Run | None = None  #: the last run of the old level
    first_bad: Run | None = None  #: the first run off it
    compare_url: str | None = None  #: the commits between the two, where the job URL tells
    #: the times (unix seconds, inclusive) whose marks bind to this change (metric_changes)
    reach: tuple[int, int] | None = dataclasses.field(default=None, compare=False)
    until: int | None = None  #: unix seconds of its first run at the new level (metric_changes)

    @property
    def alarming(self) -> bool:
        """A regression nobody said was meant or noise: what fails `metric check`."""
        return self.kind == "regression" and not self.accepted and not self.dismissed

    def to_json(self) -> dict[str, Any]:
        # Medians of two points are their mean: 219.62099999999998 reads as 219.621, and a
        # relative change to a millionth is more than any CI measurement carries.
        doc = dataclasses.asdict(self)
        doc["before"], doc["after"] = _tidy(self.before), _tidy(self.after)
        # From a level of 0 the change is infinite, and JSON has no infinity.
        doc["change"] = round(self.change, 6) if math.isfinite(self.change) else None
        for side in ("last_good", "first_bad"):
            run = getattr(self, side)
            doc[side] = run and {"t": run[0], **({"commit": run[1]} if run[1] else {})}
        if self.compare_url is None:
            del doc["compare_url"]
        del doc["reach"], doc["until"]
        return doc


def detect_changes(
    values: Sequence[float],
    times: Sequence[int] | None = None,
    better: str = "lower",
    threshold: float = DEFAULT_CHANGE_THRESHOLD,
) -> list[Change]:
    """The change points of a series, oldest first.

    Candidates come from binary segmentation with Pettitt's rank test (a split is kept when
    the ranks on its two sides differ more than chance allows, p < 0.001) and from every place
    where the medians of the ten points before and after differ by two noise SDs (which finds
    the short bumps binary segmentation misses). An optimal partition then picks among them:
    the fewest levels whose points sit closest to their medians, each point's cost clipped at
    three noise SDs (so slow runs buy no level of their own) and each change priced by the
    series' length, and by its memory where its points follow each other (see _partition).
    Each level is summarised by its median, steps under `threshold` are merged away, smallest
    first, each step is placed to the run (see _settle), a new level still too short for all
    this is named by the newest runs (see _tail_change), and steps the same way in a row that
    one straight move explains better are one drift (see _moves).
    """
    xs = list(values)
    slow = 1 if better == "lower" else -1  # the side slow runs lie on
    splits = _partition(xs)
    bounds = _settle(xs, _merge_small_steps(xs, sorted(splits), threshold), slow)
    bounds = _merge_small_steps(xs, bounds, threshold)  # a settled step may have shrunk
    # The newest runs speak for a new level only where runs do not follow each other (CI's
    # noise): in a series with memory the last few points lie together beyond the level by
    # themselves. Measured before the newest runs, which may be a new level not found yet.
    history = len(xs) - 2 * _CHANGE_MIN_SEGMENT
    before = [b for b in bounds if b < history]
    memory = _residual_memory(xs[:history], before)[0]
    tail = None if memory > _TAIL_MEMORY else _tail_change(xs, bounds, threshold, slow)
    if tail is not None:
        # Named where its runs began, as close as TAIL_MIN to the level before it: the tail
        # test needs ten points of that level, a step may come sooner.
        bounds.append(_refine(xs, bounds[-1] if bounds else 0, len(xs), tail, _TAIL_MIN, slow))
    changes = []
    # A level still provisional (see metric_changes) is a step until it has lasted.
    settled = sum(b <= history for b in bounds)
    moves = _moves(xs, bounds, settled, slow)
    for first, reached, before, after in moves:
        worse = after > before if better == "lower" else after < before
        # Across 0 (a level of -2 then 3) a ratio means nothing.
        relative = math.nan if _across_zero(before, after) else _relative(before, after)
        t = int(times[first]) if times is not None else first
        changes.append(
            Change(
                first,
                t,
                before,
                after,
                relative,
                "regression" if worse else "improvement",
                shape="drift" if reached > first else "step",
                runs=max(reached - first, 1),
            )
        )
    return changes


class _Sums:
    """Prefix sums of y, y² and i·y: the least-squares cost of any level or ramp in O(1)."""

    def __init__(self, ys: Sequence[float]) -> None:
        self.ys = ys
        self.s1, self.s2, self.si = [0.0], [0.0], [0.0]
        for i, y in enumerate(ys):
            self.s1.append(self.s1[-1] + y)
            self.s2.append(self.s2[-1] + y * y)
            self.si.append(self.si[-1] + i * y)

    def flat(self, a: int, b: int) -> float:
        """The squared error of xs[a:b] about its mean."""
        total = self.s1[b] - self.s1[a]
        return self.s2[b] - self.s2[a] - total * total / (b - a)

    def ramp(self, lo: int, s: int, e: int, hi: int) -> tuple[float, float, float]:
        """The least squared error of xs[lo:hi] as a level, a straight move from s to e, and a
        level again (both levels fitted), with the two levels."""
        n, width = hi - lo, e - s
        su = (width - 1) / 2 + (hi - e)
        suu = (width - 1) * (2 * width - 1) / (6 * width) + (hi - e)
        sy, syy = self.s1[hi] - self.s1[lo], self.s2[hi] - self.s2[lo]
        syu = (self.si[e] - self.si[s] - s * (self.s1[e] - self.s1[s])) / width
        syu += self.s1[hi] - self.s1[e]
        det = n * suu - su * su
        if det <= 0:
            return math.inf, 0.0, 0.0
        a = (sy * suu - su * syu) / det
        d = (n * syu - su * sy) / det
        return syy - a * sy - d * syu, a, a + d


def _moves(
    xs: list[float], bounds: list[int], settled: int, slow: int
) -> list[tuple[int, int, float, float]]:
    """Each change as (its first run off the old level, its first run at the new one, the two
    levels): the same run for a step. Changes the same way in a row that one straight move
    explains better (a cache that grows, a dataset that grows) become one drift; a drift from
    the series' first runs has no level before it and is no change. A drift starts at one of
    the first `settled` bounds: a new level named by the newest few runs is a step until it
    has lasted (or it carries on a drift already under way)."""
    n = len(xs)
    if not bounds:
        return []
    # Fitted in units of the largest value: squares of times near the ends of float range
    # would overflow (and a NaN cost would compare as a good fit).
    scale = max(map(abs, xs)) or 1.0
    sigma = _noise_sigma(xs) / scale
    sums = _Sums([y / scale for y in _winsorized(xs, sigma * scale, slow)])
    edges = [0, *bounds, n]
    levels = [_median(xs[a:b]) for a, b in zip(edges, edges[1:])]
    up = [b > a for a, b in zip(levels, levels[1:])]
    moves, k = [], 0
    while k < len(bounds):
        j = k
        while k < settled and j + 1 < len(bounds) and up[j + 1] == up[k]:
            j += 1
        # The longest run from k that one straight move explains (a creep that speeds up is
        # straight only in parts), down to k alone; the rest of the run goes on from there.
        lo, drift = edges[k], None
        while k < settled and drift is None and j >= k:
            hi = edges[j + 2]
            drift = _drift(sums, lo, bounds[k : j + 1], hi, sigma)
            j -= drift is None
        j = max(j, k)
        if drift is None:
            moves.append((bounds[k], bounds[k], levels[k], levels[k + 1]))
        elif drift[0] - lo >= _CHANGE_MIN_SEGMENT or lo > 0:
            s, e, reached = drift
            after = _median(xs[e:hi]) if hi - e >= _TAIL_MIN else reached * scale
            moves.append((s, e, _median(xs[lo:s]), after))
        k = j + 1
    return moves


def _drift(
    sums: _Sums, lo: int, steps: list[int], hi: int, sigma: float
) -> tuple[int, int, float] | None:
    """(where it starts, where it ends, the level reached) of the straight move of xs[lo:hi]
    that covers `steps`, if it explains them better than they do by DRIFT_PRICE ln n noise
    variances; None if they are steps.

    The move starts after a level of at least half DRIFT_MIN_RUNS points (or at the series'
    start: a trend from the first run, which the caller names no change) and ends before one
    as long, or where the stretch ends.
    """
    edges = [lo, *steps, hi]
    staircase = sum(sums.flat(a, b) for a, b in zip(edges, edges[1:]))
    first, last, flat = steps[0], steps[-1], _DRIFT_MIN_RUNS // 2
    starts = range(lo + 1 if lo == 0 else lo + flat, first + 1)
    ends = [*range(last + 1, hi - flat + 1), hi]
    grid = max(1, (hi - lo) // 40)
    coarse = min(
        ((sums.ramp(lo, s, e, hi)[0], s, e) for s in starts[::grid] for e in ends[::grid]),
        default=None,
    )
    if coarse is None:
        return None  # no level before it to start from
    _, s0, e0 = coarse
    best = min(
        (sums.ramp(lo, s, e, hi)[0], s, e)
        for s in starts
        if abs(s - s0) <= grid
        for e in ends
        if abs(e - e0) <= grid
    )
    cost, s, e = best
    price = math.log(hi - lo) * sigma * sigma
    if e - s < _DRIFT_MIN_RUNS or staircase - cost < _DRIFT_PRICE * price:
        return None
    _, start, reached = sums.ramp(lo, s, e, hi)
    # A straight move's runs lie between its levels; a step fitted as one (slow runs beside
    # it, a noisy edge) has them at either level.
    low, high = sorted((start, reached))
    margin = (high - low) / 5
    between = sum(low + margin < y < high - margin for y in sums.ys[s:e])
    # ... and no step within it makes half of it (a slow rise, then a jump, is a step).
    w, ys = flat, sums.ys
    jump = max(
        (abs(_median(ys[t : t + w]) - _median(ys[t - w : t])) for t in range(s + w, e - w + 1)),
        default=0.0,
    )
    return (s, e, reached) if 3 * between >= e - s and 2 * jump < high - low else None


def _partition(xs: list[float]) -> list[int]:
    """Where the levels of xs change, before each step is placed exactly and weighed.

    Binary segmentation and the window steps propose; the optimal partition picks. Where the
    points left about their levels still follow each other (a trend, a swell, a random walk:
    each point's deviation carries on into the next), they carry less evidence than their
    number says, and the partition is asked again with each change priced by that memory,
    (1 + rho) / (1 - rho) times, and the noise measured about the levels, not between
    neighbours: a slow curve is not a staircase. CI noise has no memory; steps are unmoved.
    """
    splits: list[int] = []
    _split(xs, 0, len(xs), splits)
    if len(xs) < 2 * _CHANGE_MIN_SEGMENT:
        return splits
    # In units of the largest value: running sums near the ends of float range overflow.
    scale = max(map(abs, xs)) or 1.0
    xs = [x / scale for x in xs]
    sigma = _noise_sigma(xs)
    candidates = {*_strongest(xs, splits, _MAX_CANDIDATES), *_window_steps(xs, sigma)}
    penalty = _PARTITION_PENALTY * math.log(len(xs))
    levels = _Levels(xs)
    bounds = _optimal_partition(levels, candidates, sigma, penalty)
    for _ in range(3):  # the memory left by fewer levels is longer: ask again, a few times
        rho, scale = _residual_memory(xs, bounds)
        if rho <= _MEMORY_FLOOR:
            break
        fewer = _optimal_partition(levels, candidates, scale, penalty * (1 + rho) / (1 - rho))
        if fewer == bounds:
            break
        bounds = fewer
    return bounds


def _strongest(xs: list[float], splits: list[int], limit: int) -> list[int]:
    """The `limit` splits with the tallest steps between the ten points either side: a ramp
    cut by binary segmentation has dozens, and the partition's cost grows with their square."""
    if len(splits) <= limit:
        return splits
    w = _CHANGE_MIN_SEGMENT

    def height(t: int) -> float:
        return abs(_median(xs[t : t + w]) - _median(xs[max(0, t - w) : t]))

    return sorted(splits, key=height, reverse=True)[:limit]


def _residual_memory(xs: list[float], bounds: list[int]) -> tuple[float, float]:
    """How much each point's deviation from its level carries over to the next one (the lag-1
    autocorrelation of the residuals, each clipped at three robust SDs), and their robust SD.

    Points within CHANGE_MIN_SEGMENT of a change or an end are left out: a step the partition
    could not place there (it keeps ten points a side) leaves a run of same-signed deviations
    that is a misplaced step, not memory.
    """
    edges = [0, *bounds, len(xs)]
    residuals: list[list[float]] = []
    for a, b in zip(edges, edges[1:]):
        inner = xs[a + _CHANGE_MIN_SEGMENT : b - _CHANGE_MIN_SEGMENT]
        if inner:
            middle = _median(xs[a:b])
            residuals.append([x - middle for x in inner])
    if sum(map(len, residuals)) < 2 * _CHANGE_MIN_SEGMENT:
        return 0.0, 1e-12  # too few points to tell memory from chance
    flat = [r for level in residuals for r in level]
    scale = 1.4826 * _median(abs(r) for r in flat) or 1e-12
    top = 3 * scale
    clipped = [[max(-top, min(top, r)) for r in level] for level in residuals]
    lagged = sum(a * b for level in clipped for a, b in zip(level, level[1:]))
    total = sum(r * r for level in clipped for r in level) or 1e-300
    rho = min(max(lagged / total, 0.0), 0.99)
    # Memory only where chance can't make it: rho of independent points has an SD of 1/sqrt(n).
    return (rho if rho * math.sqrt(len(flat)) > _MEMORY_SDS else 0.0), scale


def _winsorized(xs: Sequence[float], sigma: float, slow: int) -> list[float]:
    """xs for a least-squares fit: each point kept within three noise SDs of the fair level
    around it, and a slow run (beyond that on the slow side: `slow` 1 where higher is slower)
    replaced by that level, as it tells nothing of it. The fair level is the third of the nine
    points around, counted from the fast side: where a busy runner makes every other run slow,
    their median is a slow run too."""
    out = []
    for i, x in enumerate(xs):
        around = sorted(xs[max(0, i - 4) : i + 5])
        fair = around[len(around) // 3] if slow > 0 else around[-1 - len(around) // 3]
        if (x - fair) * slow > 3 * sigma:
            x = fair
        out.append(min(max(x, fair - 3 * sigma), fair + 3 * sigma))
    return out


def _mad(xs: Sequence[float]) -> float:
    """The median absolute deviation from the median."""
    middle = _median(xs)
    return _median(abs(x - middle) for x in xs)


def _noise_sigma(xs: Sequence[float]) -> float:
    """The noise's standard deviation: the MAD of first differences (steps barely count)."""
    diffs = [b - a for a, b in zip(xs, xs[1:])]
    middle = _median(diffs)
    return 1.4826 * _median(abs(d - middle) for d in diffs) / math.sqrt(2) or 1e-12


def _window_steps(xs: Sequence[float], sigma: float) -> list[int]:
    """Where the medians of the ten points before and after differ most, by two SDs or more."""
    w, n = _CHANGE_MIN_SEGMENT, len(xs)
    height = [0.0] * (n + 1)
    for t in range(w, n - w + 1):
        height[t] = abs(_median(xs[t : t + w]) - _median(xs[t - w : t])) / sigma
    peaks = [
        t
        for t in range(w, n - w + 1)
        if height[t] >= _CANDIDATE_FLOOR and height[t] == max(height[max(w, t - 5) : t + 6])
    ]
    # The tallest only: a series with no noise (a ramp, a sawtooth) peaks everywhere, and
    # the partition's cost grows with the square of its candidates.
    return sorted(sorted(peaks, key=height.__getitem__, reverse=True)[:_MAX_CANDIDATES])


def _optimal_partition(
    levels: _Levels, candidates: set[int], sigma: float, penalty: float
) -> list[int]:
    """The candidates that split xs best: least clipped absolute deviation from each level's
    median (in noise SDs), plus `penalty` a change; exact, by dynamic programming over the
    candidates (few: the series' own steps, not its points)."""
    n = len(levels.xs)
    edges = [
        0,
        *sorted(c for c in candidates if _CHANGE_MIN_SEGMENT <= c <= n - _CHANGE_MIN_SEGMENT),
        n,
    ]
    best, previous = [-penalty] + [math.inf] * (len(edges) - 1), [0] * len(edges)
    for b in range(1, len(edges)):
        for a in range(b):
            if edges[b] - edges[a] >= _CHANGE_MIN_SEGMENT and best[a] < math.inf:
                total = best[a] + levels.cost(edges[a], edges[b], sigma) + penalty
                if total < best[b]:
                    best[b], previous[b] = total, a
    chosen, b = [], len(edges) - 1
    while (b := previous[b]) > 0:
        chosen.append(edges[b])
    return sorted(chosen)


class _Levels:
    """The cost of any stretch of xs as one level: the sum of its points' distances from its
    median in noise SDs, each at most PARTITION_CLIP. Each stretch is sorted once, with
    running sums, so the cost at another noise SD (the partition asked again) is two bisects."""

    def __init__(self, xs: list[float]) -> None:
        self.xs = xs
        self._sorted: dict[tuple[int, int], tuple[list[float], list[float], float]] = {}

    def cost(self, a: int, b: int, sigma: float) -> float:
        found = self._sorted.get((a, b))
        if found is None:
            ordered = sorted(self.xs[a:b])
            found = self._sorted[a, b] = (
                ordered,
                [0.0, *itertools.accumulate(ordered)],
                _median(ordered),
            )
        ordered, sums, median = found
        reach = _PARTITION_CLIP * sigma
        low, middle = (
            bisect.bisect_left(ordered, median - reach),
            bisect.bisect_left(ordered, median),
        )
        high = bisect.bisect_right(ordered, median + reach)
        # Within reach: |x - median| summed from the running sums; beyond it: the clip each.
        within = (middle - low) * median - (sums[middle] - sums[low])
        within += (sums[high] - sums[middle]) - (high - middle) * median
        return within / sigma + _PARTITION_CLIP * (len(ordered) - (high - low))


def _tail_change(xs: list[float], bounds: list[int], threshold: float, slow: int) -> int | None:
    """Where a new level starts among the newest points, while it is too short for the rank
    test (under twice its minimum): None if nothing has changed there.

    A tail of at least TAIL_MIN points counts when its points lie on the same side of the
    level before, beyond TAIL_SIGMAS of its noise (1.4826 MAD, robust to the slow outliers in
    it) and nearer their own median than that level, their median differs by the threshold or
    more, and they scatter no more than TAIL_SPREAD times the level does, relative to their
    size (slow runs scatter; a new level does not). One slow run in twenty makes four in a row
    beyond the noise once in 2.8e5 checks; a real step of 10 % in 3 % noise shows in four runs
    two times in three. The longest such tail is taken.
    """
    n, last = len(xs), (bounds[-1] if bounds else 0)
    for k in range(
        min(n - last - _CHANGE_MIN_SEGMENT, 2 * _CHANGE_MIN_SEGMENT - 1), _TAIL_MIN - 1, -1
    ):
        start = n - k
        baseline, tail = xs[max(last, start - _TAIL_BASELINE) : start], xs[start:]
        level, spread = _median(baseline), _mad(baseline)
        noise, middle = _TAIL_SIGMAS * 1.4826 * spread, _median(tail)
        side = 1 if middle > level else -1
        # Beyond the noise, and nearer the new level than the old: a last fair run that lies
        # low at the edge of a step is not its first run.
        fits = [(x - level) * side > noise and abs(x - middle) < abs(x - level) for x in tail]
        # A slow run among the new level's (beyond both levels on the slow side, `slow` 1
        # where higher is slower) may break the run of fits after its first, one in two
        # beyond TAIL_MIN.
        slow_runs = [
            not fit and min(x - middle, x - level) * slow > noise for x, fit in zip(tail, fits)
        ]
        if (
            fits[0]
            and all(fit or was_slow for fit, was_slow in zip(fits, slow_runs))
            and sum(slow_runs) <= (k - _TAIL_MIN) // 2
            and abs(_relative(level, middle)) >= threshold
            # A new level is as steady as the old one, relative to its size (CI noise is a
            # share of the time taken); slow runs scatter (1.3-2x).
            and _mad(tail) * abs(level or 1) <= _TAIL_SPREAD * spread * abs(middle or 1)
        ):
            return start
    return None


def series_changes(series: Series, better: str, threshold: float) -> list[Change]:
    """The change points among the newest CHANGE_WINDOW points of a series (a snapshot of a
    range), indexed within the whole of it, as /json of the same range lists the points."""
    skipped = max(0, len(series) - _CHANGE_WINDOW)
    times = [t // US for t in series.times[skipped:]]
    found = detect_changes(series.values[skipped:], times, better, threshold)
    return [dataclasses.replace(c, index=c.index + skipped) for c in found]


def metric_changes(metric: Metric, series: Series, threshold: float) -> list[Change]:
    """The change points of a snapshot of `metric`: its excluded points left out (indexes
    still count them), each with what an admin said of it (accepted, dismissed), whether it
    is provisional, and its suspect window: the last run of the old level and the first off
    it, with their commits, and the commits between them where the job URL names a repository.

    What was said binds to the change, not to its exact time: a change point found four runs
    in may settle a run or two off as more come, and a mark within MARK_REACH runs of it (and
    nearer it than its neighbours) still holds.
    """
    mask = metric.marks.excluded(series.times)
    kept = range(len(series))
    if mask is not None:
        kept = [i for i, excluded in enumerate(mask) if not excluded]
        series = metric.kept(series)
    found = series_changes(series, metric.better, threshold)
    seconds = [t // US for t in series.times]
    out = []
    for k, c in enumerate(found):
        first, last = _mark_reach(found, k, len(series))
        reach = (seconds[first], seconds[last])
        good, bad = series.origin(c.index - 1), series.origin(c.index)
        out.append(
            dataclasses.replace(
                c,
                index=kept[c.index],
                accepted=bool(metric.marks.within("accepted", reach)),
                dismissed=bool(metric.marks.within("dismissed", reach)),
                reach=reach,
                until=seconds[min(c.index + c.runs, len(seconds) - 1)],
                provisional=len(kept) - c.index < 2 * _CHANGE_MIN_SEGMENT,
                last_good=(seconds[c.index - 1], good.commit),
                first_bad=(c.t, bad.commit),
                compare_url=_compare_url(series.metadata(c.index), good, bad),
            )
        )
    return out


def standing(found: Sequence[Change]) -> Change | None:
    """The newest change point not dismissed as noise: the one that says whether a metric is
    regressed (a dismissed one leaves the level where it was)."""
    return next((c for c in reversed(found) if not c.dismissed), None)


def _mark_reach(found: Sequence[Change], k: int, n: int) -> tuple[int, int]:
    """The points whose marks bind to change k: MARK_REACH runs either side of its move, and
    nearer it than its neighbours."""
    c = found[k]
    first, last = c.index - _MARK_REACH, c.index + c.runs - 1 + _MARK_REACH
    if k:
        before = found[k - 1]
        first = max(first, (before.index + before.runs - 1 + c.index) // 2 + 1)
    if k + 1 < len(found):
        last = min(last, (c.index + c.runs - 1 + found[k + 1].index) // 2)
    return max(first, 0), min(last, n - 1)


#: Where a CI job's URL names its repository (GitHub's, and GitHub Enterprise's, Actions runs;
#: GitLab's jobs and pipelines), and how that repository shows a commit and the commits
#: between two.
_REPOSITORY_URLS = (
    (
        _Regex(r"(https?://[^/\s]+/[^/\s]+/[^/\s]+)/actions/runs/"),
        {"compare": "{repo}/compare/{good}...{bad}", "commit": "{repo}/commit/{commit}"},
    ),
    (
        _Regex(r"(https?://\S+?)/-/(?:jobs|pipelines)/"),
        {"compare": "{repo}/-/compare/{good}...{bad}", "commit": "{repo}/-/commit/{commit}"},
    ),
)


def _repository_page(
    meta: str, page: str, commit: str = "", good: str = "", bad: str = ""
) -> str | None:
    """The repository's page of a commit ("commit") or of the commits between two
    ("compare"), where the job URL in `meta` names a GitHub or GitLab repository."""
    for pattern, templates in _REPOSITORY_URLS:
        found = pattern.search(meta)
        if found:
            return templates[page].format(repo=found.group(1), commit=commit, good=good, bad=bad)
    return None


def _compare_url(meta: str, good: Origin, bad: Origin) -> str | None:
    """The page of the commits from `good` to `bad`, where the job URL in `meta` names a
    GitHub or GitLab repository and both commits are known."""
    if not (good.commit and bad.commit) or good.commit == bad.commit:
        return None
    return _repository_page(meta, "compare", good=good.commit, bad=bad.commit)


def _across_zero(before: float, after: float) -> bool:
    """Whether two levels have opposite signs (a product would underflow for tiny ones)."""
    return (before < 0 < after) or (after < 0 < before)


def _relative(before: float, after: float) -> float:
    if before == 0:
        return 0.0 if after == 0 else math.copysign(math.inf, after)
    return (after - before) / abs(before)


def _split(xs: list[float], lo: int, hi: int, out: list[int]) -> None:
    """Find the most significant split of xs[lo:hi], keep it, and look on both sides."""
    if hi - lo < 2 * _CHANGE_MIN_SEGMENT:
        return
    best = _pettitt(xs[lo:hi])
    if best is None:
        return
    at = _refine(xs, lo, hi, lo + best)
    out.append(at)
    _split(xs, lo, at, out)
    _split(xs, at, hi, out)


def _pettitt(segment: list[float]) -> int | None:
    """The split of `segment` where its ranks change most, if that is significant.

    U(t) = 2·(sum of the first t ranks) - t·(n+1) measures how far the points before t rank
    below (or above) the ones after; K = max |U(t)| has p ≈ 2·exp(-6K² / (n³ + n²)).
    """
    n = len(segment)
    ranks = _ranks(segment)
    best_u, best_t, total = -1.0, None, 0.0
    for t in range(1, n - _CHANGE_MIN_SEGMENT + 1):
        total += ranks[t - 1]
        u = abs(2 * total - t * (n + 1))
        if t >= _CHANGE_MIN_SEGMENT and u > best_u:
            best_u, best_t = u, t
    if best_t is None:
        return None
    p = 2 * math.exp(-6 * best_u * best_u / (n**3 + n**2))
    return best_t if p < _CHANGE_SIGNIFICANCE else None


def _ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _refine(
    xs: list[float], lo: int, hi: int, at: int, margin: int = _CHANGE_MIN_SEGMENT, slow: int = 0
) -> int:
    """Move a split to where the two sides sit closest to their medians (least L1 cost), at
    least `margin` points from lo and hi; with `slow` (1 where higher is slower, -1 where
    lower), a run far beyond both medians on the slow side adds nothing.

    The medians are taken once, at the split as found: moving it a few points barely moves
    them, so the cost of each nearby position is a running sum over the points it passes.
    """
    first = max(lo + margin, at - _CHANGE_REFINE)
    last = min(hi - margin, at + _CHANGE_REFINE)
    left, right = _median(xs[lo:at]), _median(xs[at:hi])
    # (Beyond half the step and three noise SDs: fair runs of a level scatter that far.)
    noise = 3 * 1.4826 * _mad(xs[max(lo, at - _TAIL_BASELINE) : at])
    reach = max(abs(right - left) / 2, noise) if slow else math.inf
    best, best_key, cost = first, (0.0, abs(first - at)), 0.0
    for t in range(first + 1, last + 1):
        x = xs[t - 1]  # moves from the right side to the left as the split passes it
        # A slow run far beyond both levels tells nothing of which one it belongs to.
        if min((x - left) * slow, (x - right) * slow) <= reach:
            cost += abs(x - left) - abs(x - right)
        key = (cost, abs(t - at))
        if key < best_key:
            best, best_key = t, key
    return best


def _settle(xs: list[float], bounds: list[int], slow: int) -> list[int]:
    """Move each change to its best place between its final neighbours.

    A split found in a long stretch leans towards the stretch's middle (the rank statistic
    grows with the points on the far side), and its first refinement still saw the other
    steps; between its final neighbours the least-L1 position is the true one. It may lie as
    close as TAIL_MIN runs to either end (the partition's ten would push a step at run 12 of
    20 to run 10), and a slow run (`slow`: 1 where higher is slower) casts no vote on it.
    """
    for k, at in enumerate(bounds):
        lo = bounds[k - 1] if k else 0
        hi = bounds[k + 1] if k + 1 < len(bounds) else len(xs)
        while True:
            moved = _refine(xs, lo, hi, at, _TAIL_MIN, slow)
            if moved == at or abs(moved - at) < _CHANGE_REFINE:
                break
            at = moved  # it hit the edge of the search window: look further that way
        bounds[k] = moved
    return bounds


def _merge_small_steps(xs: list[float], bounds: list[int], threshold: float) -> list[int]:
    """Drop the smallest step while it is under the threshold; the levels around it merge."""
    while bounds:
        edges = [0, *bounds, len(xs)]
        medians = [_median(xs[a:b]) for a, b in zip(edges, edges[1:])]
        steps = [abs(_relative(a, b)) for a, b in zip(medians, medians[1:])]
        smallest = min(range(len(steps)), key=steps.__getitem__)
        if steps[smallest] >= threshold:
            break
        del bounds[smallest]
    return bounds


# ==============================================================================================
# Comparisons
# A pull request's results against main's level where the PR branched: a change with its 95 %
# interval, and a verdict that can say "unsure"; a suite's shared shift (the runner's) taken out.
# ==============================================================================================

_BASELINE_POINTS = 30  #: a comparison's baseline: at most this many of main's points
_BASELINE_MIN = 10  #: ... and a step among its newest this many makes them the baseline
_SUITE_MIN = 5  #: results compared at once that make a suite, whose shared shift is taken out
_NOISE_MIN = 3  #: baseline points that tell its noise: with fewer, a change is never sure
_USUAL_SHIFT_SIGMAS = 2.5  #: a run's shift beyond this many SDs of main's runs' is unusual
_RUN_MIN = 3  #: points of one main run (one time) that measure that run's shift
_SUITE_FALSE_ALARMS = 0.02  #: the chance that a suite that changed nothing gets a verdict
_VERDICT_SIGMAS = 3.0  #: ... and at least this many standard errors, however small the suite
_WINSOR_SIGMAS = 3.0  #: a baseline point's residual counts at most this many robust SDs
_BASE_SCAN = 1000  #: main's newest points searched for a base commit, per metric
_BASE_SCAN_METRICS = 20  #: ... in at most this many of the metrics compared


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Main's points a comparison measures against: at most BASELINE_POINTS up to the base
    (excluded points left out), and the commit of the newest, when it is known."""

    values: list[float]
    times: list[int]  #: µs: the points of one CI run share their time
    commit: str | None = None

    @classmethod
    def of(cls, metric: Metric, before: int | None, threshold: float) -> Baseline:
        """Main's level at `before` (µs; None: now): the newest BASELINE_POINTS points up to it,
        or only the newest BASELINE_MIN of them when they stepped away from the rest by the
        threshold and beyond the noise (a change just before the base)."""
        end = None if before is None else before / US
        found = metric.kept(metric.series.snapshot(end=end, last=2 * _BASELINE_POINTS))
        values = found.values[-_BASELINE_POINTS:].tolist()
        cut = len(found) - len(values)
        if len(values) >= 2 * _BASELINE_MIN and _stepped(values, threshold):
            cut = len(found) - _BASELINE_MIN
            values = values[-_BASELINE_MIN:]
        commit = _point_commit(found, len(found) - 1) if len(found) else None
        return cls(values, found.times[cut:].tolist(), commit or None)


def _stepped(values: list[float], threshold: float) -> bool:
    """Whether the newest BASELINE_MIN values sit on a level of their own."""
    old, new = values[:-_BASELINE_MIN], values[-_BASELINE_MIN:]
    before, after = _median(old), _median(new)
    noise = 1.4826 * _mad(old) * math.sqrt(1 / len(new) + 1 / len(old))
    return abs(_relative(before, after)) >= threshold and abs(after - before) > 3 * noise


def _point_commit(series: Series, i: int) -> str:
    """The commit a point measured: its origin's, else a commit that starts its metadata (as
    PerfIt 0.2 stored it: "3f2a9c1e7b0d https://ci/job/7")."""
    return series.origin(i).commit or legacy_commit(series.metadata_bytes(i))[0]


def base_time(metrics: Sequence[Metric], commits: Sequence[str]) -> tuple[int, str] | None:
    """When main measured the first of `commits` (newest first: a PR's base, then its
    ancestors) that any of the metrics has a point of: (that point's time in µs, the commit).
    None: none of them is stored (among the newest BASE_SCAN points of BASE_SCAN_METRICS of
    the metrics: a suite's runs are shared by its metrics)."""
    seen: dict[str, list[tuple[str, int]]] = {}  # by its first 7 digits: (commit, newest time)
    for metric in [m for m in metrics if len(m.series)][:_BASE_SCAN_METRICS]:
        recent = metric.series.snapshot(last=_BASE_SCAN)
        for i in range(len(recent)):
            commit = _point_commit(recent, i)
            if commit:
                seen.setdefault(commit[:7], []).append((commit, recent.times[i]))
    for wanted in commits:
        wanted = wanted.lower()
        times = [
            t for c, t in seen.get(wanted[:7], ()) if c.startswith(wanted) or wanted.startswith(c)
        ]
        if times:
            return max(times), wanted
    return None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Fresh results (a PR's) against main's baseline: nothing is stored."""

    median: float | None  #: of the baseline; None: main has no points
    n: int  #: baseline points
    spread: float  #: the baseline's noise, a standard deviation in its unit
    value: float  #: the median of the fresh values
    change: float | None  #: relative (0.25 is +25 %), the suite's shift taken out
    interval: tuple[float, float] | None  #: the 95 % interval of the change
    verdict: str  #: regression, improvement, same, inconclusive; new without a baseline
    commit: str | None = None  #: the commit of the baseline's newest point

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": {
                "median": None if self.median is None else _tidy(self.median),
                "n": self.n,
                "spread": _tidy(self.spread) if math.isfinite(self.spread) else None,
                "commit": self.commit,
            },
            "value": _tidy(self.value),
            "change": _finite_round(self.change),
            "interval": None if self.interval is None else [*map(_finite_round, self.interval)],
            "verdict": self.verdict,
        }


@dataclasses.dataclass(frozen=True)
class Shift:
    """What a whole suite's run shares: its median change against main (a slower runner, or
    a change every benchmark feels), taken out of each benchmark's before it is judged."""

    change: float  #: relative
    interval: tuple[float, float]
    verdict: str  #: same, or inconclusive: a runner and a change everything shares look alike
    results: int  #: the results it was measured on

    def to_json(self) -> dict[str, Any]:
        return {
            "change": _finite_round(self.change),
            "interval": [*map(_finite_round, self.interval)],
            "verdict": self.verdict,
            "results": self.results,
        }


def _finite_round(x: float | None) -> float | None:
    """A relative change for JSON: six decimals, and None where it is not finite."""
    return round(x, 6) if x is not None and math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class Fresh:
    """One result to compare: a PR run's values (its samples) in the metric's unit, main's
    baseline (None: main has no such metric), which way is better, and the metric's unit."""

    values: Sequence[float]
    baseline: Baseline | None
    better: str = "lower"
    unit: str = "s"

    @property
    def runner(self) -> int:
        """How a slower runner moves it: +1 a duration, -1 a rate (per second), 0 neither (a
        count, a size): only the first two measure the run's shared shift, and have it taken
        out."""
        if self.unit in TIME_UNITS:
            return 1
        return -1 if _per_second(self.unit) else 0


@dataclasses.dataclass
class _Scaled:
    """One result in the scale it is judged on: logarithms of positive values (a change is
    a ratio), else values relative to the baseline's median."""

    baseline: list[float]
    fresh: list[float]
    times: list[int]
    log: bool
    runner: int  #: see Fresh.runner; 0 outside the log scale
    level: float = 0.0  #: the baseline's level, in the scale
    noise: float = 0.0  #: the baseline's standard deviation around it, in the scale

    @property
    def raw(self) -> float:
        """The fresh median's offset from the level, the run's shift not taken out."""
        return _median(self.fresh) - self.level


def compare_results(
    fresh: Sequence[Fresh], threshold: float = DEFAULT_CHANGE_THRESHOLD
) -> tuple[list[Verdict], Shift | None]:
    """Each result's fresh values (a PR run's samples) against its baseline; and, for a suite
    (SUITE_MIN results or more that a runner moves), the run's shared shift.

    In the log scale (a change is a ratio): each baseline's noise is the winsorized standard
    deviation of its points, each main run's shift (the median over the suite of its points'
    offsets from their levels, durations and rates alike) taken out first, so a slow runner
    in main's history does not count as noise. The fresh run's own shift is taken out the
    same way. The change's 95 % interval is Student's t on the difference of levels: the
    baseline's noise (and the fresh samples' own scatter when larger), the uncertainty of the
    baseline's median and of the run's shift. A change counts (regression, improvement) when
    it is at least the threshold and beyond the noise of a suite of its size (t above the
    quantile that leaves SUITE_FALSE_ALARMS for the whole suite, and at least VERDICT_SIGMAS)
    and, where the whole run moved more than main's runs do, the change as measured agrees; a
    change at least the threshold that does not count is "inconclusive"; one under it "same".
    """
    scaled = [_scale(f) for f in fresh]
    judged = [s for s in scaled if s is not None]
    moved = [s for s in judged if s.runner]
    shift = shift_se = 0.0
    limit = math.log1p(threshold)
    usual = limit  #: a run's shift beyond this is unusual: the run, or a change, moved all
    if len(moved) >= _SUITE_MIN:
        history = _take_out_main_runs(moved)
        shift = _median(s.runner * s.raw for s in moved)
        shift_se = 1.2533 * _median(s.noise for s in moved) / math.sqrt(len(moved))
        if len(history) >= _SUITE_MIN:
            usual = max(limit, _USUAL_SHIFT_SIGMAS * 1.4826 * _mad(history))
    for s in judged:
        if not (len(moved) >= _SUITE_MIN and s.runner):
            _settle_level(s, {})
    verdicts = []
    for f, s in zip(fresh, scaled):
        if s is None:
            verdicts.append(_judge_unscaled(f, limit))
        else:
            taken = (s.runner * shift, shift_se * abs(s.runner), usual)
            verdicts.append(_judge(s, f, taken, limit, len(judged)))
    if len(moved) < _SUITE_MIN:
        return verdicts, None
    t95 = _t_quantile(0.975, len(moved) - 1)
    low, high = (_expm1(shift + k * t95 * shift_se) for k in (-1, 1))
    kind = "same" if abs(shift) < limit else "inconclusive"
    return verdicts, Shift(_expm1(shift), (low, high), kind, len(moved))


def _scale(f: Fresh) -> _Scaled | None:
    """A result in the scale it is judged on; None when there is none (see _judge_unscaled)."""
    base = f.baseline
    if base is None or not base.values or not f.values:
        return None
    if min(f.values) > 0 and min(base.values) > 0:
        logs = [*map(math.log, base.values)], [*map(math.log, f.values)]
        return _Scaled(*logs, base.times, True, f.runner)
    middle = abs(_median(base.values))
    if middle == 0:
        return None  # a level of zero: no relative change to speak of
    relative = [x / middle for x in base.values], [x / middle for x in f.values]
    return _Scaled(*relative, base.times, False, 0)


def _take_out_main_runs(moved: list[_Scaled]) -> list[float]:
    """Set each result's level and noise, each of main's runs' shared shift taken out first
    where a run (one time) has RUN_MIN points among them; those shifts."""
    offsets: dict[int, list[float]] = {}
    for s in moved:
        level = _median(s.baseline)
        for t, x in zip(s.times, s.baseline):
            offsets.setdefault(t, []).append(s.runner * (x - level))
    shifts = {t: _median(found) for t, found in offsets.items() if len(found) >= _RUN_MIN}
    for s in moved:
        _settle_level(s, shifts)
    return list(shifts.values())


def _settle_level(s: _Scaled, shifts: dict[int, float]) -> None:
    """The level and noise of a result's baseline, each main run's shift taken out."""
    residuals = [x - s.runner * shifts.get(t, 0.0) for t, x in zip(s.times, s.baseline)]
    s.level = _median(residuals)
    s.noise = _winsorized_sd([r - s.level for r in residuals])


def _winsorized_sd(residuals: list[float]) -> float:
    """A standard deviation that a wild point moves little: residuals clipped at WINSOR_SIGMAS
    robust SDs (1.4826 MAD) first. Nearly as exact as the plain one on clean noise."""
    if len(residuals) < 2:
        return 0.0
    bound = _WINSOR_SIGMAS * 1.4826 * _mad(residuals) or math.inf
    clipped = [min(max(r, -bound), bound) for r in residuals]
    mean = sum(clipped) / len(clipped)
    return math.sqrt(sum((r - mean) ** 2 for r in clipped) / (len(clipped) - 1))


def _judge(
    s: _Scaled, f: Fresh, taken: tuple[float, float, float], limit: float, suite: int
) -> Verdict:
    """One result's change, interval and verdict (see compare_results): `taken`, the run's
    shift taken out of it, that shift's standard error, and the shift that is unusual."""
    shift, shift_se, usual = taken
    n, k = len(s.baseline), len(s.fresh)
    own = 1.2533 * 1.4826 * _mad(s.fresh) / math.sqrt(k) if k >= 3 else 0.0
    change = s.raw - shift
    se = math.sqrt(max(s.noise, own) ** 2 + math.pi / 2 * s.noise**2 / n + shift_se**2) or 1e-12
    freedom = max(n - 1, 1)
    half = _t_quantile(0.975, freedom) * se
    needed = max(_VERDICT_SIGMAS, _t_quantile(1 - _SUITE_FALSE_ALARMS / max(suite, 1), freedom))
    # Where the whole run moved more than main's runs do (and by the threshold), a runner and
    # a change the whole suite shares are told apart by nothing: a verdict must hold either
    # way, the change as measured saying it too. With most of a suite 10 % slower, the rest
    # are not "10 % faster".
    agrees = abs(shift) < usual or (abs(s.raw) >= limit and (s.raw > 0) == (change > 0))
    verdict = "same" if abs(change) < limit or change == 0 else "inconclusive"
    if verdict != "same" and abs(change) >= needed * se and n >= _NOISE_MIN and agrees:
        worse = change > 0 if f.better == "lower" else change < 0
        verdict = "regression" if worse else "improvement"
    back = _expm1 if s.log else float
    median = _median(f.baseline.values)
    spread = median * _expm1(s.noise) if s.log else abs(median) * s.noise
    interval = (back(change - half), back(change + half)) if n >= _NOISE_MIN else None
    value = _median(f.values)
    return Verdict(median, n, spread, value, back(change), interval, verdict, f.baseline.commit)


def _judge_unscaled(f: Fresh, limit: float) -> Verdict:
    """A result with no scale to judge a change on: no baseline ("new"), or a baseline of
    zero (0 allocs/op), which a change from is either certain or not known."""
    value = _median(f.values) if f.values else 0.0
    base = f.baseline
    if base is None or not base.values:
        return Verdict(None, 0, 0.0, value, None, None, "new", base and base.commit)
    n, spread = len(base.values), 1.4826 * _mad(base.values)
    if value == 0:
        return Verdict(0.0, n, spread, value, 0.0, (0.0, 0.0), "same", base.commit)
    verdict = "inconclusive"
    if spread == 0 and n >= _NOISE_MIN:  # always exactly zero until now: a change for sure
        worse = value > 0 if f.better == "lower" else value < 0
        verdict = "regression" if worse else "improvement"
    return Verdict(0.0, n, spread, value, None, None, verdict, base.commit)


def _expm1(x: float) -> float:
    """math.expm1, infinite where it would overflow (a change JSON then calls null)."""
    try:
        return math.expm1(x)
    except OverflowError:
        return math.inf


def _t_quantile(p: float, freedom: int) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom, the Cornish-Fisher
    expansion from the normal quantile beyond (within 0.5 % from 3 on)."""
    if freedom == 1:
        return math.tan(math.pi * (p - 0.5))
    if freedom == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    import statistics  # server side: fractions and decimal are no cost at every client start

    z = statistics.NormalDist().inv_cdf(p)
    v = float(freedom)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


# ==============================================================================================
# Charts
# Points in, SVG text out: axes people read at a glance, one coloured line per metric, min/max
# clamping, tooltips, dark mode, and big series reduced to what the pixels can show.
# svgwrite is imported inside the renderers, so the client never pays for it.
# ==============================================================================================

_CHART_WIDTH = 800
CHART_HEIGHT = 400
CHART_MARGIN = {"left": 76, "right": 24, "top": 44, "bottom": 56}
_PHONE_TICK_PX = 22  #: the text size of a chart at phone width (see _CHART_CSS), in chart units
_TICK_PX = 12  #: ... and at any other width
_MAX_OVERLAY = 8  #: metrics in one chart
#: Okabe-Ito, the colour-blind-safe palette; a lighter twin of each for dark backgrounds.
#: The light ones are darkened where needed to keep 3:1 contrast on white (WCAG, graphics).
_SERIES_COLOURS = [
    ("#0072B2", "#56B4E9"),
    ("#D55E00", "#F0A35E"),
    ("#00805E", "#3DD9A8"),
    ("#B0527F", "#E6A5CB"),
    ("#A86800", "#F5C451"),
    ("#2A7FB8", "#9AD3F5"),
    ("#882255", "#D46A9F"),
    ("#444444", "#C9D1D9"),
]

_CHART_CSS = """
svg { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; font-size: 12px; }
.bg { fill: #ffffff; }
.frame, .tick { stroke: #6b7280; stroke-width: 1; fill: none; }
.grid { stroke: #e5e7eb; stroke-width: 1; }
.label, .ticklabel, .legend { fill: #374151; }
.note { fill: #6b7280; font-size: 11px; }
.title { fill: #111827; font-size: 16px; font-weight: 600; }
.empty { fill: #6b7280; font-size: 16px; }
.clamped { stroke: #111827; stroke-width: 1.5; }
a .point { cursor: pointer; }
.change line { stroke-width: 1.5; stroke-dasharray: 5 4; }
.change text { font-size: 11px; font-weight: 600; stroke: none; }
.change rect { stroke: none; opacity: .08; }
.change.accepted line { stroke-dasharray: 2 4; opacity: .6; } .change.accepted text { opacity: .7; }
.change.dismissed line { stroke: #9ca3af; stroke-dasharray: 2 4; } .change.dismissed text { fill: #9ca3af; }
.regression line { stroke: #c62828; } .regression text, .regression rect { fill: #c62828; }
.improvement line { stroke: #2e7d32; } .improvement text, .improvement rect { fill: #2e7d32; }
@media (prefers-color-scheme: dark) {
  .bg { fill: #0d1117; }
  .frame, .tick { stroke: #8b949e; }
  .grid { stroke: #30363d; }
  .label, .ticklabel, .legend { fill: #c9d1d9; }
  .note { fill: #8b949e; }
  .title { fill: #f0f6fc; }
  .empty { fill: #8b949e; }
  .clamped { stroke: #f0f6fc; }
  .regression line { stroke: #ff7b72; } .regression text, .regression rect { fill: #ff7b72; }
  .improvement line { stroke: #56d364; } .improvement text, .improvement rect { fill: #56d364; }
}
.narrow-only { display: none; }  /* before the phone's rules, which show it */
@media (max-width: 600px) {
  /* Shown at phone width the chart shrinks to about 0.45x: keep its text readable. */
  svg { font-size: 22px; }  /* PHONE_TICK_PX */
  .title { font-size: 28px; }
  .note, .change text { font-size: 22px; }
  .wide-only { display: none; }
  .narrow-only { display: inline; }
}
"""


def _series_css() -> str:
    light = "".join(
        f".s{i} {{ stroke: {c}; fill: {c}; }}\n" for i, (c, _) in enumerate(_SERIES_COLOURS)
    )
    dark = "".join(
        f"  .s{i} {{ stroke: {c}; fill: {c}; }}\n" for i, (_, c) in enumerate(_SERIES_COLOURS)
    )
    # After the colours, and more specific, so a line is never filled in.
    shapes = (
        "polyline.line { fill: none; stroke-width: 2; stroke-linejoin: round; }\n"
        "polyline.line.branch { stroke-dasharray: 6 4; }\n"
        "polygon.band { stroke: none; fill-opacity: .28; }\n"
        "circle.ghost { fill-opacity: 0; stroke: none; pointer-events: all; }\n"
        "circle.excluded { fill-opacity: 0; stroke-width: 1.5; }\n"
    )
    return f"{light}@media (prefers-color-scheme: dark) {{\n{dark}}}\n{shapes}"


@dataclasses.dataclass(frozen=True)
class QueryOption:
    """A query option of the web views: what it is, and what it sets."""

    name: str  #: in the query string, kebab-case as in the original PerfIt
    kind: str  #: "text", "time" (RFC 3339), "duration" (before now), "number", ...
    help: str  #: what it does, for people (the OpenAPI document says it)
    field: str = ""  #: the ChartOptions field a chart option sets
    label: str = ""  #: in the metric page's form
    placeholder: str = ""
    example: str = ""
    required: bool = False


#: The options of every chart view (`GET /m/ID...`), in the order the page's form shows them.
#: The ChartOptions dataclass, the parser, the form and the OpenAPI parameters all come from it.
CHART_OPTIONS = (
    QueryOption("title", "text", "The chart's title.", field="title", label="Title"),
    QueryOption("y-label", "text", "The value axis' label.", field="y_label", label="Y label"),
    QueryOption("x-label", "text", "The time axis' label.", field="x_label", label="X label"),
    QueryOption(
        "start-rel",
        "duration",
        "Start of the range, as a duration before now (90s, 15m, 12h, 3d, 2w, '2 weeks', "
        "'1d 12h'); wins over start-fixed.",
        field="start",
        label="Start, relative",
        placeholder="e.g. 30d",
        example="30d",
    ),
    QueryOption(
        "end-rel",
        "duration",
        "End of the range, as a duration before now; wins over end-fixed.",
        field="end",
        label="End, relative",
        placeholder="e.g. 1h",
        example="1h",
    ),
    QueryOption(
        "start-fixed",
        "time",
        "Start of the range, RFC 3339 (no offset means UTC).",
        field="start",
        label="Start, fixed",
        placeholder="2026-11-01T00:00:00Z",
        example="2026-11-01T00:00:00Z",
    ),
    QueryOption(
        "end-fixed",
        "time",
        "End of the range, RFC 3339 (no offset means UTC).",
        field="end",
        label="End, fixed",
        placeholder="2026-11-30T00:00:00Z",
        example="2026-11-30T00:00:00Z",
    ),
    QueryOption(
        "min",
        "number",
        "Lower edge of the value axis: values below are drawn as markers on it, out of the "
        "line. Less than max.",
        field="min",
        label="Min value",
    ),
    QueryOption(
        "max",
        "number",
        "Upper edge of the value axis: values above are drawn as markers on it.",
        field="max",
        label="Max value",
    ),
)

#: The chart options parsed and checked: text fields default to "", the others to None.
ChartOptions = dataclasses.make_dataclass(
    "ChartOptions",
    [
        (o.field, object, dataclasses.field(default="" if o.kind == "text" else None))
        for o in {o.field: o for o in CHART_OPTIONS}.values()
    ],
)


@dataclasses.dataclass
class ChartSeries:
    """One metric's points as a chart draws them: times in seconds, maybe reduced."""

    name: str
    unit: str
    times: list[float]
    values: list[float]
    metadata: list[str]
    total: int  #: points in the range before reduction
    #: when reduced: (time, lowest, median, highest) of each pixel column that has points
    columns: list[tuple[float, float, float, float]] = dataclasses.field(default_factory=list)
    #: change points to mark, with the exact time (seconds) where each new level starts
    #: (where it starts, the change, where its move ends), times in unix seconds
    changes: list[tuple[float, Change, float]] = dataclasses.field(default_factory=list)
    excluded: frozenset[float] = frozenset()  #: times (seconds) of points marked excluded
    colour: int | None = None  #: its slot of SERIES_COLOURS; None: its place in the chart
    branch: str = ""  #: a branch's points, drawn dashed over main's line

    def css(self, place: int) -> str:
        """Its colour's class."""
        return f"s{(place if self.colour is None else self.colour) % len(_SERIES_COLOURS)}"


# -- numbers, durations and ticks ----------------------------------------------------------------

_XML_ILLEGAL = _Regex("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\ud800-\\udfff\\ufffe\\uffff]")


def _xml_safe(text: str) -> str:
    """Text that XML 1.0 can carry: control characters become U+FFFD, not a broken image.

    Applied once to each finished SVG, so no title, label, unit or metadata can slip past.
    """
    return _XML_ILLEGAL.sub("\ufffd", text)


def format_number(value: float) -> str:
    """A value as people write it: 12.5, 0.003, 1.2e+09, no float noise."""
    return "0" if value == 0 else f"{value:.6g}"


def format_duration(seconds: float) -> str:
    """A duration as people say it: 40 ns, 2.5 µs, 350 ms, 12.5 s, 1m 30s, 2h 5m, 3d 4h."""
    sign, s = ("-" if seconds < 0 else ""), abs(seconds)
    if s == 0:
        return "0 s"
    if s < 1e-6:
        return f"{sign}{format_number(round(s * 1e9, 3))} ns"
    if s < 1e-3:
        return f"{sign}{format_number(round(s * 1e6, 3))} µs"
    if s < 1:
        return f"{sign}{format_number(round(s * 1000, 3))} ms"
    if s < 60:
        return f"{sign}{format_number(round(s, 2))} s"
    if s >= 1e9:
        return f"{sign}{format_number(s)} s"  # over 30 years: no step takes that; a plain number
    parts: list[tuple[int, str]] = []
    for size, suffix in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        whole, s = divmod(s, size)
        if whole or parts:
            parts.append((int(whole), suffix))
        if len(parts) == 2:
            break
    return sign + " ".join(f"{n}{unit}" for n, unit in parts if n or (n, unit) == parts[0])


def _percent(change: float | None, before: float = 0.0, after: float = 0.0) -> str:
    """A relative change as a percentage; None (or not finite) is a change across 0 (from
    `before` to `after` of opposite signs), or else from a level of 0 (or all but 0)."""
    if change is not None and math.isfinite(change):
        return f"{change * 100:+.1f} %"
    return "across 0" if _across_zero(before, after) else "from 0"


def suspect_window(change: dict[str, Any]) -> str:
    """A change's suspect window as a line reads it (from its JSON: the webhook's text and
    `metric check` say it): the last good run and the first bad one, their commits, and the
    page of the commits between them where it is known."""
    runs = []
    for word in ("last_good", "first_bad"):
        run = change.get(word)
        if run:
            commit = f" {run['commit'][:12]}" if run.get("commit") else ""
            runs.append(f"{word.replace('_', ' ')} {format_time(run['t'])}{commit}")
    url = change.get("compare_url")
    return ", ".join(runs) + (f" ({url})" if url else "")


def format_value(value: float, unit: str) -> str:
    """A value with its unit; durations (s, ms) as durations, 90 s as 1m 30s; from ten
    thousand on, with an SI prefix, as harnesses print them (63.6M ops/sec, 24.78 MB)."""
    if unit in TIME_UNITS:
        return format_duration(convert_time(value, unit, "s"))
    shown = float(f"{value:.4g}") if math.isfinite(value) else value
    if not 1e4 <= abs(shown) < 1e21:
        return f"{format_number(value)} {unit}".rstrip()
    thousands = int(math.log10(abs(shown)) // 3)
    scaled, prefix = f"{shown / 1000**thousands:.4g}", "kMGTPE"[thousands - 1]
    if unit in ("B", "bytes"):
        return f"{scaled} {prefix}{unit}"
    return f"{scaled}{prefix} {unit}".rstrip()


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values on 1-2-5 steps covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw_step = (hi - lo) / count
    if not (math.isfinite(raw_step) and raw_step > 0):
        return [lo, hi]
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    return _ticks_from(lo, hi, step)


def _ticks_from(lo: float, hi: float, step: float) -> list[float]:
    if not (math.isfinite(step) and step > 0) or (hi - lo) / step > 1000:
        return [lo, hi]  # spans at the edges of float64: plain ends beat a crash
    first = math.ceil(lo / step - 1e-9) * step
    count = int((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) for i in range(max(count, 0))]


#: Steps for duration axes, in seconds: round seconds, minutes and hours, not 1-2-5 seconds.
_DURATION_STEPS = [
    10,
    15,
    20,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
]


def value_ticks(lo: float, hi: float, unit: str, count: int = 6) -> list[float]:
    """Ticks for the y axis: whole minutes and hours for durations of a minute or more."""
    scale = convert_time(1.0, unit, "s") if unit in TIME_UNITS else None
    if scale is None or (hi - lo) * scale < 120:
        return nice_ticks(lo, hi, count)
    raw = (hi - lo) * scale / count
    step = next((s for s in _DURATION_STEPS if s >= raw), None)
    if step is None:
        return nice_ticks(lo, hi, count)
    return _ticks_from(lo, hi, step / scale)


# Time tick steps in seconds, each with the strftime format its labels use.
_TIME_STEPS = [
    (1, "%H:%M:%S"),
    (2, "%H:%M:%S"),
    (5, "%H:%M:%S"),
    (10, "%H:%M:%S"),
    (15, "%H:%M:%S"),
    (30, "%H:%M:%S"),
    (60, "%H:%M"),
    (120, "%H:%M"),
    (300, "%H:%M"),
    (600, "%H:%M"),
    (900, "%H:%M"),
    (1800, "%H:%M"),
    (3600, "%H:%M"),
    (2 * 3600, "%H:%M"),
    (3 * 3600, "%H:%M"),
    (6 * 3600, "%H:%M"),
    (12 * 3600, "%H:%M"),
    (86400, "%b %d"),
    (2 * 86400, "%b %d"),
    (7 * 86400, "%b %d"),
    (14 * 86400, "%b %d"),
]
_MONTH_STEPS = [1, 2, 3, 6, 12, 24, 60, 120, 240, 600, 1200, 2400, 6000, 12000]


def time_ticks(start: float, end: float, count: int = 7) -> list[tuple[float, str]]:
    """(time, label) ticks at round times (minutes, hours, days, months, years) in UTC."""
    try:
        return _time_ticks(start, end, count)
    except (ValueError, OverflowError, OSError):
        return []  # a range reaching past year 1 or 9999: an axis without labels, not an error


def _time_ticks(start: float, end: float, count: int) -> list[tuple[float, str]]:
    span = max(end - start, 1.0)
    for step, fmt in _TIME_STEPS:
        if span / step <= count:
            first = math.ceil(start / step) * step
            ticks = [first + i * step for i in range(int((end - first) // step) + 1)]
            return [(t, _time_label(t, fmt, step)) for t in ticks]
    return _month_ticks(start, end, count)


def _time_label(t: float, fmt: str, step: float) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    if step < 86400 and moment.hour == 0 and moment.minute == 0 and moment.second == 0:
        return moment.strftime("%b %d")  # midnight ticks name the day, so days can be told apart
    return moment.strftime(fmt)


def _month_ticks(start: float, end: float, count: int) -> list[tuple[float, str]]:
    import datetime

    utc = datetime.timezone.utc
    first = datetime.datetime.fromtimestamp(start, utc)
    months_span = max((end - start) / 2_629_746, 1)
    step = next((m for m in _MONTH_STEPS if months_span / m <= count), _MONTH_STEPS[-1])
    index = first.year * 12 + first.month - 1
    index = -(-index // step) * step  # round up to a multiple of the step
    fmt = "%Y" if step >= 12 else "%b %Y"
    ticks = []
    while True:
        moment = datetime.datetime(index // 12, index % 12 + 1, 1, tzinfo=utc)
        t = moment.timestamp()
        if t > end:
            return ticks
        if t >= start:
            ticks.append((t, moment.strftime(fmt)))
        index += step


# -- choosing what to draw -------------------------------------------------------------------------


def _chart_series(metric: Metric, series: Series, t0: float, t1: float) -> ChartSeries:
    """The metric's points in the options' range, reduced when they outnumber the pixels.

    A series with more points than two per pixel column keeps, in each column, its lowest and
    its highest point (in time order), and the column's median: drawn as a band with a line
    through it, the shape and every spike survive at a fraction of the size.
    """
    rows = range(len(series))  # a snapshot of the options' range
    columns = _CHART_WIDTH - CHART_MARGIN["left"] - CHART_MARGIN["right"]
    stats: list[tuple[float, float, float, float]] = []
    if len(rows) <= 2 * columns or t1 <= t0:
        keep: Sequence[int] = rows
    else:
        keep, stats = _reduce_per_column(series, rows, t0, t1, columns)
    mask = metric.marks.excluded(series.times)
    excluded = frozenset(series.times[i] / US for i in keep if mask and mask[i])
    return ChartSeries(
        excluded=excluded,
        name=metric.name or b64encode(metric.id),
        unit=metric.unit,
        times=[series.times[i] / US for i in keep],
        values=[series.values[i] for i in keep],
        metadata=[series.metadata(i) for i in keep],
        total=len(rows),
        columns=stats,
    )


def _reduce_per_column(
    series: Series, rows: range, t0: float, t1: float, columns: int
) -> tuple[list[int], list[tuple[float, float, float, float]]]:
    keep, stats = [], []
    lo = rows.start
    for column in range(1, columns + 1):
        edge = math.floor((t0 + (t1 - t0) * column / columns) * US)
        hi = (
            rows.stop
            if column == columns
            else bisect.bisect_right(series.times, edge, lo, rows.stop)
        )
        if hi > lo:
            chunk = series.values[lo:hi]  # min(), index() and sorted() run in C on the slice
            low, high = lo + chunk.index(min(chunk)), lo + chunk.index(max(chunk))
            keep.extend(sorted({low, high}))
            middle = t0 + (t1 - t0) * (column - 0.5) / columns
            stats.append((middle, min(chunk), _median(chunk), max(chunk)))
        lo = hi
    return keep, stats


def _chart_range(snapshots: Sequence[Series], opts: ChartOptions) -> tuple[float, float]:
    """The time span the x axis shows: the options' bounds, else the data's."""
    firsts = [s.times[0] / US for s in snapshots if len(s)]
    lasts = [s.times[-1] / US for s in snapshots if len(s)]
    t0 = opts.start if opts.start is not None else min(firsts, default=0.0)
    t1 = opts.end if opts.end is not None else max(lasts, default=0.0)
    if t1 - t0 < 1:
        t0, t1 = t0 - 60, t1 + 60  # one point, or all in one second: show a two-minute window
    return t0, t1


def _value_range(values: Sequence[float], opts: ChartOptions) -> tuple[float, float]:
    """The y-axis range: the options' min/max where given, else the data padded by 5 %."""
    data_lo, data_hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (data_hi - data_lo) * 0.05 or abs(data_hi) * 0.1 or 1.0
    lo = opts.min if opts.min is not None else data_lo - pad
    hi = opts.max if opts.max is not None else data_hi + pad
    if opts.min is None and data_lo >= 0 > lo:
        lo = 0.0  # durations never go below zero: draw no negative space for them
    if hi <= lo:
        # Every point lies beyond one clamped edge: keep a visible band on the other side.
        hi, lo = (lo + (abs(lo) or 1.0), lo) if opts.max is None else (hi, hi - (abs(hi) or 1.0))
    if not math.isfinite(hi - lo):
        lo, hi = max(lo, -1e307), min(hi, 1e307)  # keep the span itself finite
    return lo, hi


#: A link in a point's metadata: all of it, or its last word ("3f2a9c1e7b0d https://ci/job/7",
#: as `perfit run` writes in CI).
_URL_RE = _Regex(r"(?:\A|.*\s)(https?://[^\s<>\"']+)\Z", re.DOTALL)


def metadata_link(meta: str) -> str | None:
    """The URL a point's metadata ends with, if any: where a chart or table links it."""
    found = _URL_RE.match(meta)
    return found.group(1) if found else None


# -- drawing ------------------------------------------------------------------------------------


def render_chart(
    series: Sequence[ChartSeries], opts: ChartOptions, t0: float, t1: float, empty: str = ""
) -> str:
    """Metrics' points as one standalone SVG document: axes, a line and markers per metric."""
    import svgwrite  # server side only

    units = sorted({s.unit for s in series if s.unit})
    unit = units[0] if len(units) == 1 else ""
    values = [v for s in series for v in s.values]
    v0, v1 = _value_range(values, opts) if values else (0.0, 1.0)
    y_ticks = [(v, _tick_label(v, unit)) for v in value_ticks(v0, v1, unit) if v0 <= v <= v1]
    left = _left_margin([label for _, label in y_ticks] if values else [])
    right = _CHART_WIDTH - CHART_MARGIN["right"]
    top, bottom = CHART_MARGIN["top"], CHART_HEIGHT - CHART_MARGIN["bottom"]
    dwg = svgwrite.Drawing(size=(_CHART_WIDTH, CHART_HEIGHT), debug=False)
    dwg.viewbox(0, 0, _CHART_WIDTH, CHART_HEIGHT)
    dwg.attribs["role"] = "img"
    dwg.defs.add(dwg.style(_CHART_CSS + _series_css()))
    dwg.add(dwg.rect((0, 0), (_CHART_WIDTH, CHART_HEIGHT), class_="bg"))
    title = opts.title or (series[0].name if len(series) == 1 else "")
    dwg.set_desc(title=title or "PerfIt chart")
    if opts.title:
        dwg.add(
            dwg.text(title, insert=(_CHART_WIDTH / 2, 24), class_="title", text_anchor="middle")
        )
    if len(series) > 1:
        _draw_legend(dwg, series, left, 38 if opts.title else 22)
    y_label = opts.y_label or ("duration" if unit in TIME_UNITS else ", ".join(units))
    if y_label:
        y_mid = (top + bottom) / 2
        dwg.add(
            dwg.text(
                y_label,
                insert=(16, y_mid),
                class_="label",
                text_anchor="middle",
                transform=f"rotate(-90 16 {y_mid})",
            )
        )
    x_label = opts.x_label or "time (UTC)"
    dwg.add(
        dwg.text(
            x_label,
            insert=((left + right) / 2, CHART_HEIGHT - 10),
            class_="label",
            text_anchor="middle",
        )
    )
    dwg.add(dwg.rect((left, top), (right - left, bottom - top), class_="frame"))

    if not values:
        message = empty or (
            "No data points in this range" if opts.start or opts.end else "No data points yet"
        )
        dwg.add(
            dwg.text(
                message,
                insert=((left + right) / 2, (top + bottom) / 2),
                class_="empty",
                text_anchor="middle",
            )
        )
        return _xml_safe(dwg.tostring())

    def x_of(t: float) -> float:
        return round(left + (t - t0) / (t1 - t0) * (right - left), 1)

    def y_of(v: float) -> float:
        return round(bottom - (min(max(v, v0), v1) - v0) / (v1 - v0) * (bottom - top), 1)

    for v, label in y_ticks:
        y = y_of(v)
        dwg.add(dwg.line((left, y), (right, y), class_="grid"))
        dwg.add(dwg.text(label, insert=(left - 6, y + 4), class_="ticklabel", text_anchor="end"))
    ticks = [(x_of(t), label) for t, label in time_ticks(t0, t1)]
    # Labels that fit the chart's width without touching: at the size it is drawn at, and at
    # the size a phone shows (PHONE_TICK_PX), where the ones left out are hidden by the CSS.
    wide = _labels_that_fit(ticks, range(len(ticks)), _TICK_PX)
    narrow = _labels_that_fit(ticks, wide, _PHONE_TICK_PX)
    for i in wide:
        x, label = ticks[i]
        dwg.add(dwg.line((x, bottom), (x, bottom + 5), class_="tick"))
        shown = "ticklabel" + ("" if i in narrow else " wide-only")
        dwg.add(dwg.text(label, insert=(x, bottom + 18), class_=shown, text_anchor="middle"))
    overlay = len(series) > 1
    for i, s in enumerate(series):
        # Alone, a change is coloured by its kind; in an overlay, by its metric (the label and
        # the tooltip still say which kind), its label a line lower than the metric's before.
        colour = s.css(i) if overlay else ""
        for at, change, until in s.changes:
            label_y = top + 14 + (20 * (i % 4) if overlay else 0)
            x = (x_of(at), x_of(until))
            _draw_change(dwg, change, s, x, top, bottom, colour, label_y, overlay)
    for i, s in enumerate(series):
        _draw_series(dwg, s, s.css(i), opts, len(series) > 1, x_of, y_of)
    reduced = [s for s in series if s.total > len(s.times)]
    if reduced:
        shown = sum(len(s.times) for s in series)
        total = sum(s.total for s in series)
        note = f"{total:,} points, reduced to {shown:,}: band = lowest to highest, line = median"
        dwg.add(dwg.text(note, insert=(right, top - 6), class_="note wide-only", text_anchor="end"))
        short = f"{total:,} points: {shown:,} shown"  # what a phone has room for
        dwg.add(
            dwg.text(short, insert=(right, top - 6), class_="note narrow-only", text_anchor="end")
        )
    return _xml_safe(dwg.tostring())


def _labels_that_fit(
    ticks: list[tuple[float, str]], among: Iterable[int], size: float
) -> list[int]:
    """Which of the ticks `among` to label at font `size`: every k-th of them for the least k
    (every month, then every 3rd, then 12th...) whose labels neither touch each other nor
    leave the chart."""
    among = list(among)
    for k in range(1, len(among) + 1):
        kept = []
        for i in among[::k]:
            x, label = ticks[i]
            half = _text_width(label, size) / 2
            if x - half >= 0 and x + half <= _CHART_WIDTH:
                kept.append((i, x - half, x + half))
        gap = size / 2
        if all(b[1] - a[2] >= gap for a, b in zip(kept, kept[1:])):
            return [i for i, _, _ in kept]
    return []


def _tick_label(v: float, unit: str) -> str:
    """A y-axis label: durations as durations, but zero as a plain 0 ("0 ms" beside "1m")."""
    return format_value(v, unit) if unit in TIME_UNITS and v else format_number(v)


def _left_margin(labels: Sequence[str]) -> float:
    """Room left of the plot for the y labels at their largest (the phone size), and the
    axis title beside them; never less than the usual margin."""
    widest = max((_text_width(label, _PHONE_TICK_PX) for label in labels), default=0.0)
    return max(CHART_MARGIN["left"], round(_PHONE_TICK_PX * 1.5 + widest))


def _draw_series(
    dwg: Any,
    s: ChartSeries,
    colour: str,
    opts: ChartOptions,
    named: bool,
    x_of: Callable[[float], float],
    y_of: Callable[[float], float],
) -> None:
    reduced = bool(s.columns)
    if reduced:
        upper = [(x_of(t), y_of(high)) for t, _, _, high in s.columns]
        lower = [(x_of(t), y_of(low)) for t, low, _, _ in reversed(s.columns)]
        dwg.add(dwg.polygon(upper + lower, class_=f"band {colour}"))
        line = [(x_of(t), y_of(median)) for t, _, median, _ in s.columns]
    else:
        line = []
    markers = dwg.g(class_=colour)
    for t, v, meta in zip(s.times, s.values, s.metadata):
        clamped = (opts.min is not None and v < opts.min) or (opts.max is not None and v > opts.max)
        x, y = x_of(t), y_of(v)
        excluded = t in s.excluded
        if not clamped and not reduced and not excluded:
            line.append((x, y))  # a clamped point is not where the line would put it: skip it
        kind = "point clamped" if clamped else "point ghost" if reduced else "point"
        if excluded:
            kind += " excluded"  # drawn hollow: kept, but left out of detection
        marker = dwg.circle((x, y), r=4 if clamped else 2.5, class_=kind)
        tip = (f"{s.name}\n" if named else "") + f"{format_time(t)}\n{format_value(v, s.unit)}"
        if excluded:
            tip += " (excluded)"
        if meta:
            tip += f"\n{meta}"
        marker.set_desc(title=tip)
        url = metadata_link(meta)
        if url:
            link = dwg.a(href=url, target="_blank")
            link.attribs["rel"] = "noopener noreferrer"
            link.add(marker)
            markers.add(link)
        else:
            markers.add(marker)
    if len(line) > 1:
        dwg.add(dwg.polyline(line, class_=f"line {colour}" + (" branch" if s.branch else "")))
    dwg.add(markers)


def _draw_change(
    dwg: Any,
    change: Change,
    s: ChartSeries,
    xs: tuple[float, float],
    top: float,
    bottom: float,
    colour: str,
    label_y: float,
    named: bool,
) -> None:
    """A dashed line where a new level starts (over a drift, a faint band to where it ends),
    labelled with its relative change; its tooltip tells the suspect window, and a click opens
    the commits in it where they are known."""
    x, until = xs
    said = " accepted" if change.accepted else " dismissed" if change.dismissed else ""
    group = dwg.g(class_=f"change {colour or change.kind}{said}")
    group.attribs["data-kind"] = change.kind
    finite = math.isfinite(change.change)
    size = (
        f"{change.change * 100:+.0f} %" if finite else _percent(None, change.before, change.after)
    )
    label = (size if finite else change.kind) + " drift" * (change.shape == "drift") + said
    unit = s.unit
    lines = [
        (f"{s.name}: " if named else "")
        + f"{change.kind} of {size} from {format_time(change.t)}"
        + (f", a drift over {change.runs} runs" if change.shape == "drift" else "")
        + (" (accepted as intended)" if change.accepted else "")
        + (" (dismissed as noise)" if change.dismissed else ""),
        f"{format_value(change.before, unit)} → {format_value(change.after, unit)} (medians)",
    ]
    window = suspect_window(change.to_json())
    group.set_desc(title="\n".join([*lines, window] if window else lines))
    if change.shape == "drift" and until > x:
        group.add(dwg.rect((x, top), (round(until - x, 1), bottom - top)))
    group.add(dwg.line((x, top), (x, bottom)))
    group.add(dwg.text(label, insert=(x + 3, label_y)))
    if change.compare_url:
        link = dwg.a(href=change.compare_url, target="_blank")
        link.attribs["rel"] = "noopener noreferrer"
        link.add(group)
        group = link
    dwg.add(group)


def _draw_legend(dwg: Any, series: Sequence[ChartSeries], left: float, y: float) -> None:
    x = left
    for i, s in enumerate(series):
        colour = s.css(i)
        dwg.add(dwg.rect((x, y - 9), (14, 4), class_=colour))
        name = s.name[:40]
        dwg.add(dwg.text(name, insert=(x + 18, y - 4), class_="legend"))
        x += 18 + _text_width(name, _PHONE_TICK_PX) + 16  # room for its phone size (22 px)


def chart_document(
    metrics: Sequence[Metric],
    opts: ChartOptions,
    changes: _ChangeCache | None = None,
    branch: str = "",
) -> str:
    """The SVG chart of one or more metrics over the options' range, with their changes
    (found again, or taken from `changes`, the web layer's cache); with `branch`, that
    branch's points of the (one) metric drawn over main's line in a colour of their own."""
    snapshots = [m.series.snapshot(opts.start, opts.end) for m in metrics]
    others = [branch_points(m, branch, opts.start, opts.end) for m in metrics if branch]
    t0, t1 = _chart_range([*snapshots, *others], opts)
    series = [_chart_series(m, s, t0, t1) for m, s in zip(metrics, snapshots)]
    for metric, snapshot, drawn in zip(metrics, snapshots, series):
        if changes is None:
            found = metric_changes(metric, snapshot, DEFAULT_CHANGE_THRESHOLD)
        else:
            found = changes.get(metric, snapshot, DEFAULT_CHANGE_THRESHOLD)
        drawn.changes = [(snapshot.times[c.index] / US, c, c.until or c.t) for c in found]
    for place, (metric, points) in enumerate(zip(metrics, others)):
        drawn = _chart_series(metric, points, t0, t1)
        # Alone, in the next colour; over several, in its metric's colour (and dashed).
        drawn.name, drawn.branch = f"{drawn.name} @ {branch}", branch
        drawn.colour, drawn.excluded = (1 if len(metrics) == 1 else place), frozenset()
        series.append(drawn)
    return render_chart(series, opts, t0, t1)


def branch_points(
    metric: Metric, branch: str, start: float | None = None, end: float | None = None
) -> Series:
    """A branch's points of the metric (those of the last BRANCH_KEEP), in a time range."""
    found = metric.branches.snapshot(start, end)
    return found.where(lambda i: found.origin(i).branch == branch)


# -- badges -------------------------------------------------------------------------------------

#: Average advance of Verdana's glyphs at 11 px, by kind: enough to size a badge's halves.
_NARROW, _WIDE = set("fijlrtI.,:;!|' "), set("mwMWOQGDHNU@%")


def _text_width(text: str, size: float = 11) -> float:
    units = sum(0.33 if c in _NARROW else 0.9 if c in _WIDE else 0.62 for c in text)
    return units * size


BADGE_COLOURS = {
    "good": "#2e7d32",
    "warn": "#8a6d00",
    "bad": "#c62828",
    "neutral": "#0063b1",
    "none": "#6b6b6b",
}


def badge_state(values: Sequence[float], better: str) -> str:
    """How the latest value compares with the median of the ones before (up to 20)."""
    if not values:
        return "none"
    recent = values[-21:-1]
    if not recent:
        return "neutral"
    median = _median(recent)
    if median <= 0:
        return "neutral"
    ratio = values[-1] / median
    worse = ratio if better == "lower" else (1 / ratio if ratio > 0 else math.inf)
    return "good" if worse <= 1.05 else "warn" if worse <= 1.2 else "bad"


def render_badge(label: str, message: str, state: str) -> str:
    """A shields-style badge: grey label on the left, coloured message on the right."""
    import svgwrite

    label, message = label[:60], message[:60]
    lw, mw = _text_width(label) + 12, _text_width(message) + 12
    dwg = svgwrite.Drawing(size=(round(lw + mw), 20), debug=False)
    dwg.attribs["role"] = "img"
    dwg.set_desc(title=f"{label}: {message}")
    dwg.add(dwg.rect((0, 0), (lw, 20), fill="#555", rx=3))
    dwg.add(dwg.rect((lw - 4, 0), (mw + 4, 20), fill=BADGE_COLOURS[state], rx=3))
    dwg.add(dwg.rect((lw - 4, 0), (4, 20), fill="#555"))
    text = dwg.g(fill="#fff", font_family="Verdana,Geneva,DejaVu Sans,sans-serif", font_size=11)
    text.add(dwg.text(label, insert=(lw / 2, 14), text_anchor="middle"))
    text.add(dwg.text(message, insert=(lw + mw / 2 - 2, 14), text_anchor="middle"))
    dwg.add(text)
    return _xml_safe(dwg.tostring())


# ==============================================================================================
# Web: request helpers
# What a request carries (token, body, options, client address) made into checked values, and
# the per-address token buckets that rate-limit it. Every bad input is a 4xx naming what is bad.
# ==============================================================================================


@dataclasses.dataclass
class ServerConfig:
    """What `perfit serve` was told; make_app reads it."""

    rate_limit: float = _DEFAULT_RATE_LIMIT  #: requests/s per client address; 0 turns it off
    trust_proxy: int = 0  #: reverse proxies in front whose X-Forwarded-For entries we believe
    auth_failure_rate: float = _AUTH_FAILURE_RATE
    auth_failure_burst: float = _AUTH_FAILURE_BURST
    #: webhooks may call loopback, link-local, private and unspecified addresses (a server of
    #: one's own, inside one's network); off: a tenant's webhook never calls inside the network
    webhook_allow_private: bool = False
    #: where people reach the server (https://perfit.example): the base of every absolute
    #: link it makes; "": the request's own (see base_url)
    public_url: str = ""


def base_url(environ: dict, config: ServerConfig) -> str:
    """The base of the absolute links a request's answer makes: --public-url; else its Host
    (and scheme), or a proxy's X-Forwarded-Host and -Proto when --trust-proxy believes it.
    Never a client's own X-Forwarded-Host: it would make a webhook link anywhere."""
    if config.public_url:
        return config.public_url
    scheme = environ.get("wsgi.url_scheme", "http")
    server = environ.get("SERVER_NAME", "localhost")
    server = f"[{server}]" if ":" in server else server  # an IPv6 address
    host = environ.get("HTTP_HOST") or f"{server}:{environ.get('SERVER_PORT', '80')}"
    if config.trust_proxy > 0:
        scheme = _forwarded(environ, "HTTP_X_FORWARDED_PROTO", config.trust_proxy) or scheme
        host = _forwarded(environ, "HTTP_X_FORWARDED_HOST", config.trust_proxy) or host
    if scheme not in ("http", "https") or not _HOST_RE.fullmatch(host):
        return f"http://{server}:{environ.get('SERVER_PORT', '80')}"  # not a link to anywhere
    return f"{scheme}://{host}"


#: A Host (or X-Forwarded-Host) that can stand in a link: a name or address, and a port.
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")


def _forwarded(environ: dict, header: str, trust_proxy: int) -> str:
    """A forwarded header's entry `trust_proxy` hops from the right (see client_address).
    Proxies append to X-Forwarded-For, but most set -Host and -Proto whole: believe those
    only from a proxy that drops a client's own (the README's nginx block; Caddy does)."""
    hops = [h.strip() for h in environ.get(header, "").split(",") if h.strip()]
    return (hops[-trust_proxy] if len(hops) >= trust_proxy else hops[0]) if hops else ""


class RateLimiter:
    """Token buckets keyed by client address: `rate` per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float, max_clients: int = _RATE_LIMITER_MAX_CLIENTS):
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_time(self, key: str, cost: float = 1.0, now: float | None = None) -> float:
        """Take `cost` from key's bucket; 0 if allowed, else the seconds until it would be."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, seen = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - seen) * self.rate)
            wait = 0.0
            if tokens >= cost:
                tokens -= cost
            else:
                wait = (cost - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)  # the longest-idle address; its bucket refilled
            return wait


def client_address(environ: dict, trust_proxy: int) -> str:
    """The socket's peer, or the X-Forwarded-For entry `trust_proxy` hops from the right."""
    peer = environ.get("REMOTE_ADDR", "")
    if trust_proxy <= 0:
        return peer
    # Each trusted proxy appends the address it saw; anything left of them is client-supplied.
    return _forwarded(environ, "HTTP_X_FORWARDED_FOR", trust_proxy) or peer


def _bearer_token(environ: dict) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# -- the body -------------------------------------------------------------------------------------


def _read_json_body(environ: dict, limit: int = _MAX_BODY_BYTES) -> Any:
    """The request's JSON body (None when empty), checked against `limit` before reading."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        raw = _read_chunked(environ, limit)
    else:
        raw = _read_sized(environ, limit)
    if not raw.strip():
        return None  # no body: for the routes whose body is optional, as good as {}
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid UTF-8") from None
    except ValueError as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("the body's JSON is nested too deeply") from None
    if body is None:
        raise BadRequest("the body is null: send an object, an array, or nothing")
    return body


def _read_sized(environ: dict, limit: int) -> bytes:
    """A body of Content-Length bytes; the length is checked before a byte is read."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadRequest("Content-Length is not a number") from None
    if length < 0:
        raise BadRequest("Content-Length is negative")
    if length > limit:
        _discard(environ, min(length, _MAX_DRAIN_BYTES))
        raise PayloadTooLarge(f"the body is {length} bytes; at most {limit} bytes are accepted")
    raw = environ["wsgi.input"].read(length) if length else b""
    if len(raw) < length:
        raise BadRequest("the body ended before Content-Length bytes arrived")
    return raw


def _read_chunked(environ: dict, limit: int) -> bytes:
    """A chunked body, read only up to `limit` bytes: memory stays flat whatever is sent."""
    stream = environ["wsgi.input"]
    body = bytearray()
    while True:
        line = stream.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest("malformed chunked body") from None
        if size < 0:
            raise BadRequest("malformed chunked body")
        if size == 0:
            while stream.readline(8192).strip():
                pass  # trailer fields: read past them, keep none
            return bytes(body)
        if len(body) + size > limit:
            _discard(environ, _MAX_DRAIN_BYTES)
            raise PayloadTooLarge(f"the body is over {limit} bytes; at most {limit} are accepted")
        chunk = stream.read(size)
        if len(chunk) < size or stream.readline(3).strip():
            raise BadRequest("the chunked body ended early or is malformed")
        body += chunk


def _discard(environ: dict, length: int) -> None:
    """Read and drop (some of) a refused body, so the client reads the 413, not a reset.

    Bounded in bytes and in time: a client that sends nothing more gets its answer in a second.
    """
    connection = environ.get("perfit.connection")
    if connection is not None:
        connection.settimeout(_DRAIN_SECONDS / 2)
    deadline = time.monotonic() + _DRAIN_SECONDS
    with contextlib.suppress(OSError):
        while length > 0 and time.monotonic() < deadline:
            chunk = environ["wsgi.input"].read(min(length, 65536))
            if not chunk:
                return
            length -= len(chunk)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


# -- checking what the body says ------------------------------------------------------------------


def _check_value(value: object, what: str = "value") -> float:
    """A data point's value: a finite JSON number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{what} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise BadRequest(f"{what} is too large for a 64-bit float") from None
    if not math.isfinite(number):
        raise BadRequest(f"{what} must be finite")
    return number


def _check_text(value: object, what: str, max_bytes: int) -> str:
    """A string field measured in UTF-8 bytes, as it will be stored."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid UTF-8") from None
    if size > max_bytes:
        raise BadRequest(f"{what} is {size} bytes long; at most {max_bytes} bytes are allowed")
    return value


def _body_object(body: Any, allowed: Sequence[str], where: str = "the body") -> dict:
    """A JSON object with only known fields (None, an empty body, counts as {})."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise BadRequest(f"{where} must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) or "no fields"
        raise BadRequest(f"{where}: unknown field {unknown[0]!r}; expected {expected}")
    return body


def _points_array(value: Any, limit: int, expected: str) -> list:
    """An array of points, at most `limit` of them (more is a 413); else a 400 saying `expected`."""
    if not isinstance(value, list):
        raise BadRequest(expected)
    if len(value) > limit:
        raise PayloadTooLarge(f"{len(value)} points; at most {limit} in one request")
    return value


_IMPORT_SHAPE = (
    'the body must be a JSON array like [{"t": 1767225600, "v": 12.5}], or columns like '
    '{"t": [1767225600], "v": [12.5], "m": ["sha"]}'
)
_IMPORT_TEXTS = ("m", "commit", "branch")  #: a point's text fields, besides its t and v


def _parse_import(body: Any, now: float, origin_of: Callable[[str, str], int]) -> PointBatch:
    """A bulk import body as a batch sorted by time (stable): rows `[{"t", "v", "m", "commit",
    "branch"}, ...]`, or the same as columns `{"t": [...], "v": [...], "m": [...]}` (what
    `metric import` sends: a tenth of the objects to decode). Whole columns are checked at
    once; only a body that fails that is gone through point by point, to say which point is
    wrong. `origin_of(commit, branch)` numbers a point's origin."""
    if isinstance(body, dict):
        columns, rows = _import_columns(body), None
    else:
        rows = _points_array(body, MAX_IMPORT_POINTS, _IMPORT_SHAPE)
        columns = _columns_of_rows(rows)
    batch = _checked_columns(columns, now, origin_of) if columns is not None else None
    if batch is not None:
        return batch
    if rows is None:  # columns that failed: as rows, to name the point that is wrong
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    return _parse_import_rows(rows, now, origin_of)


def _import_columns(body: dict) -> dict[str, list]:
    """The columns of a columnar import body, their shape checked (not their values)."""
    _body_object(body, ("t", "v", *_IMPORT_TEXTS))
    columns = {k: body[k] for k in ("t", "v", *_IMPORT_TEXTS) if k in body}  # null: not a column
    if not {"t", "v"} <= set(columns) or not all(isinstance(c, list) for c in columns.values()):
        raise BadRequest(_IMPORT_SHAPE)
    if len({len(c) for c in columns.values()}) > 1:
        raise BadRequest(f"columns {', '.join(columns)} must have the same length")
    if len(columns["t"]) > MAX_IMPORT_POINTS:
        count = len(columns["t"])
        raise PayloadTooLarge(f"{count} points; at most {MAX_IMPORT_POINTS} in one request")
    return columns


def _columns_of_rows(rows: list) -> dict[str, list] | None:
    """Rows `[{"t", "v", "m"}]` as columns, or None if any row is not such an object."""
    try:
        columns = {"t": [row["t"] for row in rows], "v": [row["v"] for row in rows]}
    except (TypeError, KeyError):
        return None
    fields = {"t", "v", *_IMPORT_TEXTS}
    if any(type(row) is not dict or not row.keys() <= fields for row in rows):
        return None
    for name in _IMPORT_TEXTS:
        if any(name in row for row in rows):
            columns[name] = [row.get(name, "") for row in rows]
    return columns


def _checked_columns(
    columns: dict[str, list], now: float, origin_of: Callable[[str, str], int]
) -> PointBatch | None:
    """The batch of valid columns, sorted by time (stable); None if any value is not."""
    t, v, m = columns["t"], columns["v"], columns.get("m")
    if not {type(x) for x in t} | {type(x) for x in v} <= {int, float}:
        return None  # a bool, a string, null...
    try:
        times, values = array("d", t), array("d", v)
    except OverflowError:
        return None
    if not all(map(math.isfinite, times)) or not all(map(math.isfinite, values)):
        return None
    if times and not (min(times) >= 0 and max(times) <= now + _FUTURE_SLACK):
        return None
    blobs = [b""] * len(t)  # no metadata
    if m is not None:
        if {*map(type, m)} - {str}:
            return None
        try:
            blobs = list(map(str.encode, m))  # UTF-8
        except UnicodeEncodeError:
            return None
        if blobs and max(map(len, blobs)) > _MAX_METADATA_BYTES:
            return None
    try:
        origins = _origin_column(columns, origin_of)
    except BadRequest:
        return None
    micros = array("q", [round(x * US) for x in times])
    if not all(map(operator.le, micros, micros[1:])):
        order = sorted(range(len(micros)), key=micros.__getitem__)  # stable
        micros = array("q", [micros[i] for i in order])
        values = array("d", [values[i] for i in order])
        blobs = [blobs[i] for i in order]
        origins = origins and array("I", [origins[i] for i in order])
    return PointBatch(micros, values, array("H", map(len, blobs)), b"".join(blobs), origins)


def _origin_column(columns: dict[str, list], origin_of: Callable[[str, str], int]) -> array | None:
    """Each point's origin number, from its commit and branch (None: no point has either)."""
    if "commit" not in columns and "branch" not in columns:
        return None
    blank = [""] * len(columns["t"])
    if any({*map(type, columns.get(name, ()))} - {str} for name in ("commit", "branch")):
        raise BadRequest("commit and branch must be strings")
    found: dict[tuple[str, str], int] = {}
    numbers = array("I")
    for commit, branch in zip(columns.get("commit", blank), columns.get("branch", blank)):
        key = (commit, branch)
        if key not in found:
            found[key] = origin_of(_check_commit(commit), _check_branch(branch))
        numbers.append(found[key])
    return numbers


def _parse_import_rows(items: list, now: float, origin_of: Callable[[str, str], int]) -> PointBatch:
    """Rows, point by point: the first wrong one is named in the 400."""
    rows = []
    for i, item in enumerate(items):
        where = f"points[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object with t, v and optionally m")
        _body_object(item, ("t", "v", *_IMPORT_TEXTS), where)
        for field in ("t", "v"):
            if field not in item:
                raise BadRequest(f"{where}: missing field {field!r}")
        t = _check_value(item["t"], f"{where}.t")
        if not 0 <= t <= now + _FUTURE_SLACK:
            raise BadRequest(f"{where}.t must be unix seconds between 1970 and now")
        value = _check_value(item["v"], f"{where}.v")
        meta = _check_text(item.get("m", ""), f"{where}.m", _MAX_METADATA_BYTES)
        commit = _check_commit(item.get("commit", ""), f"{where}.commit")
        branch = _check_branch(item.get("branch", ""), f"{where}.branch")
        rows.append((round(t * US), value, meta.encode("utf-8"), origin_of(commit, branch)))
    rows.sort(key=operator.itemgetter(0))  # stable: equal times keep the order they were sent in
    return PointBatch.of(rows)


#: A commit: 7 to 40 hex digits (an abbreviated or a full SHA-1); "" is none.
_COMMIT_PATTERN = "^([0-9a-fA-F]{7,40})?$"
_COMMIT_RE = _Regex(_COMMIT_PATTERN)


def _check_commit(value: object, what: str = "commit") -> str:
    """A commit id: 7 to 40 hex digits, kept in lower case; "" is none."""
    if not isinstance(value, str) or not _COMMIT_RE.fullmatch(value):
        shown = repr(value)[:60]
        raise BadRequest(f"{what} {shown} is not a commit id: 7 to 40 hex digits")
    return value.lower()


def _check_branch(value: object, what: str = "branch") -> str:
    """A branch's name: at most 200 bytes, no control characters, no space at either end;
    "" is none."""
    return _check_name(value, what)


def _origin_fields(fields: dict, where: str = "") -> tuple[str, str, str]:
    """The metadata, commit and branch a post or a run carries for all of its points."""
    metadata = _check_text(fields.get("metadata", ""), f"{where}metadata", _MAX_METADATA_BYTES)
    commit = _check_commit(fields.get("commit", ""), f"{where}commit")
    branch = _check_branch(fields.get("branch", ""), f"{where}branch")
    return metadata, commit, branch


def _in_metric_unit(value: float, unit: str, metric: Metric) -> float:
    """A posted value, said to be in `unit`, in the metric's own unit.

    A duration converts between units of time (`perfit run` posts seconds; a metric may keep
    ms). A metric without a unit takes the value as it comes.
    """
    if unit == metric.unit or not metric.unit:
        return value
    if unit not in TIME_UNITS:
        raise BadRequest(
            f"unit: {unit!r} is not a unit of time ({', '.join(_TIME_UNIT_NAMES)})"
            f" nor the metric's own ({metric.unit!r})"
        )
    if metric.unit not in TIME_UNITS:
        raise BadRequest(
            f"unit: this metric is in {metric.unit!r}, not a unit of time: "
            f"a value in {unit!r} cannot be stored in it"
        )
    converted = _tidy(convert_time(value, unit, metric.unit), 15)
    if not math.isfinite(converted):
        raise BadRequest(f"value: {value:g} {unit} is too large in {metric.unit}")
    return converted


def _duration_checked(value: float, metric: Metric) -> float:
    """A value for `metric`: one that counts time takes no negative one (a clock gone back, a
    sign lost: never a time something took)."""
    if value < 0 and metric.unit in TIME_UNITS:
        name = metric.name or b64encode(metric.id)
        raise BadRequest(
            f"value: {value:g} {metric.unit} is a negative duration, and {name!r} counts time"
        )
    return value


#: A metric's name: no control characters (C0, DEL, C1), no space at either end; "" is none.
_NAME_PATTERN = "^([^\x00-\x1f\x7f-\x9f ]([^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f ])?)?$"
_NAME_RE = _Regex(_NAME_PATTERN)


def _check_name(value: object, what: str = "name") -> str:
    """A metric's name: text of at most 200 bytes, no control characters, no space at either
    end; "" is no name."""
    name = _check_text(value, what, _MAX_NAME_BYTES)
    if not _NAME_RE.match(name):
        raise BadRequest(f"{what} {name!r}: no control characters, and no space at either end")
    return name


def _parse_run(body: Any) -> tuple[list[RunPoint], tuple[str, str, str]]:
    """A CI run's body, `{"metadata", "commit", "branch", "points": [{"name", "value", "unit",
    "better"}]}`: its points, and the metadata, commit and branch they share."""
    if body is None:
        raise BadRequest(
            'the body must be a JSON object like {"points": [{"name": "build", "value": 1.5}]}'
        )
    fields = _body_object(body, ("metadata", "commit", "branch", "points"))
    items = _points_array(
        fields.get("points"),
        MAX_RUN_POINTS,
        "points must be an array of {name, value, unit, better}",
    )
    if not items:
        raise BadRequest("points is empty: a run has at least one")
    points = []
    for i, item in enumerate(items):
        where = f"points[{i}]"
        item = _body_object(item, ("name", "value", "unit", "better"), where)
        for field in ("name", "value"):
            if field not in item:
                raise BadRequest(f"{where}: missing field {field!r}")
        name = _check_name(item["name"], f"{where}.name")
        if not name:
            raise BadRequest(f"{where}.name is empty")
        better = item.get("better", "lower")
        if better not in _BETTER_CHOICES:
            raise BadRequest(f"{where}.better must be 'lower' or 'higher'")
        unit = _check_text(item.get("unit", ""), f"{where}.unit", _MAX_UNIT_BYTES)
        points.append(RunPoint(name, _check_value(item["value"], f"{where}.value"), unit, better))
    return points, _origin_fields(fields)


_MAX_UNIX = 253402300799  #: 9999-12-31T23:59:59Z: the latest time a mark may name


def _unix_field(fields: dict, name: str) -> int:
    """A time field of a body: whole unix seconds."""
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UNIX:
        raise BadRequest(f"{name} must be whole unix seconds (as /json and /changes give them)")
    return value


def _parse_span(body: Any) -> tuple[int, int]:
    """The points a mark covers, `{"t"}` (one second) or `{"start", "end"}`, in µs, inclusive."""
    fields = _body_object(body, ("t", "start", "end"))
    if "t" in fields and len(fields) == 1:
        start = end = _unix_field(fields, "t")
    elif set(fields) == {"start", "end"}:
        start, end = sorted((_unix_field(fields, "start"), _unix_field(fields, "end")))
    else:
        raise BadRequest('the body must be {"t": SECONDS} or {"start": SECONDS, "end": SECONDS}')
    return start * US, end * US + US - 1


def _parse_compare(body: Any, metric: Metric) -> tuple[list[float], list[str]]:
    """A comparison's body, `{"values": [n, ...], "unit", "base"}`: the values in the
    metric's unit, and the base commits (newest first)."""
    if body is None:
        raise BadRequest('the body must be a JSON object like {"values": [12.5]}')
    fields = _body_object(body, ("values", "unit", "base"))
    return _fresh_values(fields, "", metric), _parse_base(fields.get("base"))


def _fresh_values(fields: dict, where: str, metric: Metric | None) -> list[float]:
    """A result's `value` or `values` (a run's samples), in the metric's unit when it has one."""
    if "value" in fields and "values" not in fields:
        items = [fields["value"]]
        what = f"{where}value"
    else:
        what = f"{where}values"
        items = _points_array(
            fields.get("values"), MAX_RUN_POINTS, f"{what} must be an array of numbers"
        )
        if not items:
            raise BadRequest(f"{what} is empty: compare at least one")
    values = [_check_value(v, f"{what}[{i}]") for i, v in enumerate(items)]
    if "unit" in fields:
        unit = _check_text(fields["unit"], f"{where}unit", _MAX_UNIT_BYTES)
        if metric is not None:
            values = [_in_metric_unit(v, unit, metric) for v in values]
    return values


def _parse_base(value: object) -> list[str]:
    """`base`: a commit, or commits newest first (a PR's base and its ancestors)."""
    if value is None:
        return []
    commits = [value] if isinstance(value, str) else value
    if not isinstance(commits, list) or len(commits) > _MAX_BASE_COMMITS:
        raise BadRequest(f"base must be a commit or a list of at most {_MAX_BASE_COMMITS} commits")
    checked = [_check_commit(c, f"base[{i}]") for i, c in enumerate(commits)]
    if "" in checked:
        raise BadRequest("base: a commit is empty")
    return checked


def _parse_suite_compare(body: Any) -> tuple[list[dict], list[str]]:
    """A suite comparison's body, `{"results": [{"name", "value" or "values", "unit"}], "base"}`:
    the results (their values checked, not yet converted) and the base commits."""
    if body is None:
        raise BadRequest(
            'the body must be a JSON object like {"results": [{"name": "x", "value": 1.5}]}'
        )
    fields = _body_object(body, ("results", "base"))
    items = fields.get("results")
    if not isinstance(items, list) or not items:
        raise BadRequest("results must be a non-empty array of {name, value or values, unit}")
    if len(items) > MAX_COMPARE_RESULTS:
        raise PayloadTooLarge(f"{len(items)} results; at most {MAX_COMPARE_RESULTS} in one request")
    results = []
    for i, item in enumerate(items):
        where = f"results[{i}]"
        item = _body_object(item, ("name", "value", "values", "unit"), where)
        if "name" not in item or ("value" in item) == ("values" in item):
            raise BadRequest(f"{where}: give name, and value or values")
        name = _check_name(item["name"], f"{where}.name")
        if not name:
            raise BadRequest(f"{where}.name is empty")
        _fresh_values(item, f"{where}.", None)  # checked now: a 400 names the result
        results.append({**item, "name": name, "where": f"{where}."})
    return results, _parse_base(fields.get("base"))


# -- query options ------------------------------------------------------------------------------

#: The option of /m/ID/changes; and the one of the open form (GET /m/?metric-id=).
_THRESHOLD = QueryOption(
    "threshold",
    "threshold",
    f"changes only: the smallest relative step reported (default {DEFAULT_CHANGE_THRESHOLD}, 5 %).",
)
_METRIC_ID = QueryOption(
    "metric-id",
    "link",
    "A metric's id, or any PerfIt link to a metric "
    "(its page, chart, badge or data); the link's chart options are kept.",
    required=True,
)
#: The option of the views that draw or list points: a branch's, over main's.
_BRANCH = QueryOption(
    "branch",
    "branch",
    "A branch whose points (of the last 30 days) are drawn over main's line, dashed, or "
    "listed with main's points.",
    example="my-feature",
)
_QUERY_OPTIONS = {o.name: o for o in (*CHART_OPTIONS, _THRESHOLD, _METRIC_ID, _BRANCH)}


def parse_chart_options(query: dict[str, str], now: float) -> ChartOptions:
    """Chart options from a query string; a bad one is a 400 naming it.

    Every option given is checked, and for each field the one that wins is used: a relative
    bound wins over a fixed one, as in the original PerfIt.
    """
    given = [o for o in CHART_OPTIONS if query.get(o.name, "").strip()]
    values = {}
    for option in sorted(given, key=lambda o: o.kind == "duration"):  # the winner comes last
        values[option.field] = _option_value(option, query[option.name], now)
    opts = ChartOptions(**values)
    if opts.start is not None and opts.end is not None and opts.start > opts.end:
        raise BadRequest("start-rel/start-fixed: the start is after the end")
    if opts.min is not None and opts.max is not None and opts.min >= opts.max:
        raise BadRequest("min: must be less than max")
    return opts


def _option_value(option: QueryOption, text: str, now: float) -> Any:
    """One option's value; whatever is wrong with it is a 400 that starts with its name."""
    if option.kind == "text":
        return _check_text(text, option.name, _MAX_NAME_BYTES)
    if option.kind == "number":
        return _query_number(option.name, text)
    try:
        if option.kind == "duration":
            return now - parse_duration(text.strip())
        return parse_rfc3339(text)
    except (ValueError, OverflowError, OSError) as e:
        raise BadRequest(f"{option.name}: {e}") from None


#: A number in a query option, as JSON writes one (what the OpenAPI document's "number" means):
#: no "1_000", no "nan", no spaces, which Python's float() would take.
_NUMBER_RE = _Regex(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _query_number(name: str, text: str) -> float:
    """A finite number from a query option; anything else is a 400 naming the option."""
    if not _NUMBER_RE.fullmatch(text):
        raise BadRequest(f"{name}: {text!r} is not a number")
    number = float(text)
    if not math.isfinite(number):
        raise BadRequest(f"{name} must be a finite number")
    return number


def _parse_threshold(text: str) -> float:
    """The `threshold` option of /changes: the smallest relative step reported (0.05 = 5 %)."""
    if not text.strip():
        return DEFAULT_CHANGE_THRESHOLD
    value = _query_number("threshold", text)
    if not 0 <= value <= _MAX_THRESHOLD:
        raise BadRequest(f"threshold: must be between 0 and {_MAX_THRESHOLD} (0.05 means 5 %)")
    return value


_LINKED_IDS_RE = _Regex(r"/m/([A-Za-z0-9_-]{22}(?:,[A-Za-z0-9_-]{22})*)(?:[./?#]|$)")


def _metric_link(text: str) -> tuple[list[str], dict[str, str]]:
    """The metric ids, and the chart options, of what was typed into the open form.

    That is an id, or any PerfIt link to a metric: its page, chart, badge or data, with or
    without options (https://perfit.example/m/ID.svg?start-rel=30d keeps its 30 days).
    """
    import urllib.parse

    text = text.strip()
    if decode_id(text) is not None:
        return [text], {}
    parts = urllib.parse.urlsplit(text)
    found = _LINKED_IDS_RE.search(parts.path)
    if found is None:
        raise NotFound(
            f"no metric id in {text[:100]!r}: paste an id (22 characters) or a "
            "link to a metric's page or chart"
        )
    chart = {o.name for o in CHART_OPTIONS}
    options = {k: v for k, v in urllib.parse.parse_qsl(parts.query) if k in chart and v.strip()}
    return list(dict.fromkeys(found.group(1).split(","))), options


# ==============================================================================================
# Web: boards
# What an account's board shows of each metric (latest value, its change against the recent
# level, the newest change point), computed once for the page, its JSON and OpenMetrics forms.
# ==============================================================================================

_BOARD_WINDOW = 250  #: a board looks for change points among this many newest points a metric
_SPARK_POINTS = 48  #: points a sparkline draws
_RECENT_LEVEL = 20  #: the latest value is compared with the median of this many before it
_ALERT_DAYS = 90  #: the alert record (GET /a/, the board) counts the regressions this recent
_ALERT_FRESH = 60.0  #: seconds a kept alert record serves while points arrive (_AlertRecords)
_OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_MEASURE_SUFFIX_RE = _Regex(r" \([^()]*\)$")  #: " (B/op)": what a harness measured besides time


class _ChangeCache:
    """Change points already found, per metric and (range, points, threshold).

    A chart is viewed far more often than its data changes, and eight readers of a busy chart
    wait for one computation instead of running eight.
    """

    def __init__(self, per_metric: int = 16) -> None:
        self.per_metric = per_metric
        self._found: dict[bytes, dict[tuple, list[Change]]] = {}
        self._locks: dict[bytes, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, metric: Metric, series: Series, threshold: float) -> list[Change]:
        edges = (series.times[0], series.times[-1]) if len(series) else ()
        key = (len(series), edges, threshold, metric.marks.version)
        with self._lock:
            metric_lock = self._locks.setdefault(metric.id, threading.Lock())
        with metric_lock:
            found = self._found.setdefault(metric.id, {})
            if key not in found:
                if len(found) >= self.per_metric:
                    found.clear()  # keys of old data and other ranges: start afresh
                found[key] = metric_changes(metric, series, threshold)
            return found[key]


@dataclasses.dataclass
class BoardRow:
    """One metric as a board shows it."""

    metric: Metric
    points: int  #: how many it has
    recent: list[float]  #: its newest values (the sparkline's), oldest first
    latest_t: int | None  #: unix seconds of the newest point
    latest_meta: str
    level: float | None  #: median of the RECENT_LEVEL values before the newest
    newest: Change | None  #: its newest change point, indexed within all its points

    @property
    def name(self) -> str:
        return self.metric.name or b64encode(self.metric.id)

    @property
    def group(self) -> str:
        """What its name has before the last "/": boards list metrics grouped by it. A "/"
        in a measure's unit ("BenchmarkJoin (B/op)") does not count."""
        return _MEASURE_SUFFIX_RE.sub("", self.metric.name).rpartition("/")[0]

    @property
    def short_name(self) -> str:
        """Its name within its group."""
        name = self.metric.name
        return name[len(self.group) + 1 :] if self.group else name or b64encode(self.metric.id)

    @property
    def latest(self) -> float | None:
        return self.recent[-1] if self.recent else None

    @property
    def change(self) -> float | None:
        """The newest value against the recent level (0.1 is +10 %); None without one, from a
        level of 0 or across it, or beyond what a float holds."""
        if self.latest is None or self.level is None or _across_zero(self.level, self.latest):
            return None
        change = _relative(self.level, self.latest)
        return change if math.isfinite(change) else None

    @property
    def state(self) -> str:
        """regression or improvement (the newest change point's kind), steady, or empty."""
        if not self.points:
            return "empty"
        return self.newest.kind if self.newest else "steady"

    def to_json(self) -> dict[str, Any]:
        m = self.metric
        latest = None
        if self.latest is not None:
            latest = {"t": self.latest_t, "v": self.latest}
            if self.latest_meta:
                latest["m"] = self.latest_meta
        return {
            "metric_id": b64encode(m.id),
            "name": m.name,
            "unit": m.unit,
            "better": m.better,
            "points": self.points,
            "latest": latest,
            "level": None if self.level is None else _tidy(self.level),
            "change": None if self.change is None else round(self.change, 6),
            "state": self.state,
            "newest_change": self.newest.to_json() if self.newest else None,
        }


def board_rows(metrics: Sequence[Metric], changes: _ChangeCache) -> list[BoardRow]:
    """A board's rows: groups with a regression first, then by name; in each group the
    regressed metrics first, then by name."""
    rows = [_board_row(m, changes) for m in metrics]
    regressed_groups = {r.group for r in rows if r.state == "regression"}
    return sorted(
        rows,
        key=lambda r: (
            r.group not in regressed_groups,
            not r.group,
            r.group,
            r.state != "regression",
            r.name,
        ),
    )


def _board_row(metric: Metric, changes: _ChangeCache) -> BoardRow:
    count = len(metric.series)
    window = metric.series.snapshot(last=_BOARD_WINDOW)
    values = window.values
    found = changes.get(metric, window, DEFAULT_CHANGE_THRESHOLD) if len(window) else []
    newest = standing(found)
    if newest is not None:
        newest = dataclasses.replace(newest, index=newest.index + count - len(window))
    before = metric.kept(window).values[-_RECENT_LEVEL - 1 : -1]
    return BoardRow(
        metric=metric,
        points=count,
        recent=values[-_SPARK_POINTS:].tolist(),
        latest_t=window.times[-1] // US if len(window) else None,
        latest_meta=window.metadata(len(window) - 1) if len(window) else "",
        level=_median(before) if before else None,
        newest=newest,
    )


def alert_record(metrics: Iterable[Metric], changes: _ChangeCache, now: float) -> dict[str, int]:
    """How the regressions PerfIt named in the last ALERT_DAYS fared: said to be meant
    (accepted), said to be noise (dismissed), or neither (real, as far as anyone said).

    Among each metric's newest BOARD_WINDOW points of those days, as the board looks: a
    public page is not made to run the detector over 5,000 points a metric (and a metric
    with at least that many recent points shares the board's cached answer).
    """
    named = accepted = dismissed = 0
    for metric in metrics:
        recent = metric.series.snapshot(now - _ALERT_DAYS * 86400, last=_BOARD_WINDOW)
        found = changes.get(metric, recent, DEFAULT_CHANGE_THRESHOLD) if len(recent) else []
        for c in found:
            if c.kind == "regression":
                named += 1
                dismissed += c.dismissed
                accepted += c.accepted and not c.dismissed
    return {"named": named, "accepted": accepted, "dismissed": dismissed}


class _AlertRecords:
    """Each account's alert record, kept: made again at once when an admin says something of a
    change (or a metric comes or goes), and when points arrive only once the kept one is
    ALERT_FRESH seconds old. GET /a/ follows every `perfit post`, and the board is public:
    neither may run the detector over every metric each time."""

    def __init__(self) -> None:
        self._kept: dict[bytes, tuple[float, tuple, tuple, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def get(self, metrics: Sequence[Metric], changes: _ChangeCache) -> dict[str, int]:
        """The record of an account's `metrics` (none: an account without any)."""
        account, now = (metrics[0].account if metrics else b""), time.time()
        said = tuple((m.id, m.marks.version) for m in metrics)
        data = tuple(len(m.series) for m in metrics)
        with self._lock:
            kept = self._kept.get(account)
        if kept and kept[1] == said and (kept[2] == data or now - kept[0] < _ALERT_FRESH):
            return kept[3]
        record = alert_record(metrics, changes, now)
        with self._lock:
            self._kept[account] = (now, said, data, record)
        return record


def alert_words(alerts: dict[str, int]) -> str:
    """The alert record as the board says it."""
    named, meant, noise = alerts["named"], alerts["accepted"], alerts["dismissed"]
    real = named - meant - noise
    return (
        f"{named} regression{'s' * (named != 1)} named in {_ALERT_DAYS} days: "
        f"{real} real, {meant} meant, {noise} dismissed as noise"
    )


def openmetrics_text(rows: Sequence[BoardRow]) -> str:
    """The board as OpenMetrics text: a gauge family each for the latest value, its recent
    change and whether the metric is regressed, labelled with the metric's id, name, unit."""
    families = (
        ("perfit_value", "The newest value of the metric, in its unit.", lambda r: r.latest),
        (
            "perfit_recent_change",
            f"The newest value against the median of the {_RECENT_LEVEL} before it (0.1 is +10 %).",
            lambda r: r.change,
        ),
        (
            "perfit_regressed",
            "1 while the newest change point is a regression, else 0.",
            lambda r: float(r.state == "regression") if r.points else None,
        ),
    )
    lines = []
    for family, help_text, value_of in families:
        lines += [f"# TYPE {family} gauge", f"# HELP {family} {help_text}"]
        for row in rows:
            value = value_of(row)
            if value is not None:
                lines.append(f"{family}{{{_openmetrics_labels(row.metric)}}} {value!r}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _openmetrics_labels(metric: Metric) -> str:
    labels = {"metric_id": b64encode(metric.id), "name": metric.name, "unit": metric.unit}
    return ",".join(f'{k}="{_openmetrics_escape(v)}"' for k, v in labels.items())


def _openmetrics_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ==============================================================================================
# Web: webhooks
# Each account may name a URL that hears of every new regression: one JSON POST a change point
# (Slack-compatible), sent by a background thread with retries, so no post ever waits for it.
# ==============================================================================================

_WEBHOOK_TIMEOUT = 10.0  #: seconds a webhook has to answer one attempt
_WEBHOOK_RETRIES = 3  #: attempts after the first, after 1, 4 and 16 seconds
_MAX_WEBHOOK_BYTES = 2000  #: of a webhook's URL
#: A webhook: http(s), a host, no space or control character (the same rule in the OpenAPI).
_WEBHOOK_PATTERN = "^https?://[^\\x00-\\x20/]+[^\\x00-\\x20]*$"


class Notifier:
    """Finds the regressions that writes made, and tells their accounts' webhooks.

    `written(metric_ids, base_url)` queues the metrics a request wrote to (nothing to do for
    accounts without a webhook); one thread looks for a newest change point that is a
    regression nobody accepted or was told of, records that it tells (so a restart does not
    tell again), and POSTs it. A webhook that fails is retried, then logged and let be.
    """

    def __init__(self, store: Store, backoff: float = 1.0, allow_private: bool = False) -> None:
        self.store = store
        self.allow_private = allow_private  #: see ServerConfig.webhook_allow_private
        self.backoff = backoff  #: seconds before the first retry; each next one waits 4x
        import queue

        self._queue: queue.Queue[tuple[bytes, str] | None] = queue.Queue()
        self._pending: set[bytes] = set()  #: queued metrics: many writes, one look
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def written(self, metric_ids: Iterable[bytes], base_url: str) -> None:
        webhooks = self.store.index.webhooks
        for metric_id in metric_ids:
            metric = self.store.metrics.get(metric_id)
            if metric is None or metric.account not in webhooks:
                continue
            with self._lock:
                if metric_id in self._pending:
                    continue
                self._pending.add(metric_id)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="perfit-webhooks", daemon=True
                    )
                    self._thread.start()
            self._queue.put((metric_id, base_url))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            with self._lock:
                self._pending.discard(item[0])
            try:
                self._look(*item)
            except Exception as e:  # anything: a thread traceback would help nobody
                _log.error("webhook: %s", _printable(str(e)))

    def _look(self, metric_id: bytes, base_url: str) -> None:
        metric = self.store.metrics.get(metric_id)
        if metric is None:
            return  # deleted since
        url = self.store.index.webhooks.get(metric.account)
        snapshot = metric.series.snapshot(last=_CHANGE_WINDOW)
        found = metric_changes(metric, snapshot, DEFAULT_CHANGE_THRESHOLD)
        newest = standing(found)
        if url is None or newest is None or not newest.alarming:
            return
        # Told already: what was said of a change binds to it as it settles (its reach), and a
        # webhook's telling is said of it too.
        if metric.marks.within("notified", newest.reach or (newest.t, newest.t)):
            return
        self.store.mark(metric.id, "notified", newest.t * US, newest.t * US)
        self._send(url, regression_message(metric, newest, base_url))

    def _send(self, url: str, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        headers = {"Content-Type": "application/json", "User-Agent": f"perfit/{__version__}"}
        import http.client
        import urllib.request

        for attempt in range(_WEBHOOK_RETRIES + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                # Resolved now and connected to just that address: DNS that answered a public
                # address when the URL was set cannot make it a local one at send time.
                address = webhook_address(url, self.allow_private)
                with _opener(address).open(request, timeout=_WEBHOOK_TIMEOUT) as answer:
                    answer.read()
                return
            except (OSError, http.client.HTTPException, PerfitError) as e:
                failure = e
            if attempt < _WEBHOOK_RETRIES:
                time.sleep(self.backoff * 4**attempt)
        tries, why = _WEBHOOK_RETRIES + 1, _printable(str(failure))
        _log.warning("webhook %s failed %d times: %s", _printable(url), tries, why)


def webhook_address(url: str, allow_private: bool = False) -> str:
    """The address a webhook's URL resolves to, checked: a loopback, link-local, private
    (unique-local too) or unspecified one is a BadRequest unless `allow_private`."""
    import ipaddress
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(parts.hostname or "", port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as e:
        raise BadRequest(f"webhook: cannot resolve {parts.hostname!r} ({e})") from None
    addresses = [info[4][0] for info in found]
    for text in addresses:
        ip = ipaddress.ip_address(text.partition("%")[0])
        ip = getattr(ip, "ipv4_mapped", None) or ip
        local = ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified
        if local and not allow_private:
            raise BadRequest(
                f"webhook: {parts.hostname} is {ip}, an address inside the server's network "
                "(loopback, link-local, private or unspecified); the operator allows those with "
                "`perfit serve --webhook-allow-private`"
            )
    return addresses[0]


def regression_message(metric: Metric, change: Change, base_url: str) -> dict[str, Any]:
    """What a webhook hears of a regression: Slack's `text`, and the change as /changes has it."""
    page = f"{base_url}/m/{b64encode(metric.id)}"
    name = metric.name or b64encode(metric.id)
    before, after = (
        format_value(change.before, metric.unit),
        format_value(change.after, metric.unit),
    )
    doc = change.to_json()
    drift = f", a drift over {change.runs} runs" if change.shape == "drift" else ""
    text = (
        f"PerfIt: regression in {name}: {_percent(change.change, change.before, change.after)} "
        f"(median {before} -> {after}) since {format_time(change.t)}{drift}; "
        f"{suspect_window(doc)}: {page}"
    )
    return {
        "text": text,
        "metric": {"metric_id": b64encode(metric.id), "name": metric.name, "unit": metric.unit},
        "change": doc,
        "links": {"page": page, "chart": f"{page}.svg", "changes": f"{page}/changes"},
    }


# ==============================================================================================
# Web: pages
# The index and metric pages: inline CSS and a few lines of JavaScript, no CDN, so they work
# offline and behind any firewall.
# ==============================================================================================

_PAGE_CSS = """
:root { color-scheme: light dark; --fg: #111827; --muted: #4b5563; --bg: #ffffff;
        --card: #f9fafb; --border: #d1d5db; --accent: #1d4ed8; --on-accent: #ffffff;
        --error: #b91c1c; --good: #15803d; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #f0f6fc; --muted: #9ca3af; --bg: #0d1117; --card: #161b22;
          --border: #30363d; --accent: #58a6ff; --on-accent: #0d1117; --error: #f85149;
          --good: #3fb950; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 960px; padding: 1.5rem 1rem; background: var(--bg);
       color: var(--fg); font: 16px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; overflow-wrap: break-word; }
.options-box > summary { cursor: pointer; font-weight: 600; margin: 1rem 0 .5rem; }
p.lead, .muted { color: var(--muted); }
a { color: var(--accent); }
.chart svg { width: 100%; height: auto; border: 1px solid var(--border); border-radius: 6px; }
form.open input { width: min(100%, 34rem); }
form.options { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr));
               gap: .75rem; background: var(--card); border: 1px solid var(--border);
               border-radius: 6px; padding: 1rem; margin: 1rem 0; }
label { display: flex; flex-direction: column; font-size: .9rem; color: var(--muted); }
input, select { font: inherit; padding: .35rem .5rem; border: 1px solid var(--border);
                border-radius: 4px; background: var(--bg); color: var(--fg); }
button { font: inherit; padding: .4rem 1rem; border-radius: 4px; border: 1px solid var(--accent);
         background: var(--accent); color: var(--on-accent); cursor: pointer; }
.error { color: var(--error); min-height: 1.25em; margin: .25rem 0; }
code { background: var(--card); padding: .1rem .3rem; border-radius: 3px; }
nav.formats a { margin-right: 1rem; }
h2 { font-size: 1.15rem; margin: 1.5rem 0 .5rem; }
h1, h2 { overflow-wrap: anywhere; }
.embed textarea { width: 100%; min-height: 6em; font: .85rem/1.4 ui-monospace, SFMono-Regular, Menlo, monospace;
                  padding: .4rem; border: 1px solid var(--border); border-radius: 4px;
                  background: var(--card); color: var(--fg); resize: vertical; margin-bottom: .5rem; }
table.latest { border-collapse: collapse; width: 100%; font-size: .9rem; }
table.latest th, table.latest td { text-align: left; padding: .3rem .5rem; vertical-align: top;
                                   border-bottom: 1px solid var(--border); }
table.latest td:nth-child(-n+2) { white-space: nowrap; }
table.latest td:last-child { overflow-wrap: break-word; }
.plot { position: relative; }
.tip { position: absolute; z-index: 1; max-width: min(22rem, 90%); padding: .4rem .6rem;
       background: var(--card); color: var(--fg); border: 1px solid var(--border);
       border-radius: 6px; box-shadow: 0 2px 8px rgba(0,0,0,.25); font-size: .9rem;
       overflow-wrap: break-word; }
.tip[hidden] { display: none; }
.tip strong { display: block; }
table.board { border-collapse: collapse; width: 100%; font-size: .9rem; margin-bottom: .5rem;
              table-layout: fixed; }
/* The same columns in every group's table: name, trend, latest, vs recent, newest change. */
table.board th:nth-child(1) { width: 32%; } table.board th:nth-child(2) { width: 136px; }
table.board th:nth-child(3) { width: 16%; } table.board th:nth-child(4) { width: 11%; }
table.board th, table.board td { text-align: left; padding: .3rem .5rem; vertical-align: middle;
                                 border-bottom: 1px solid var(--border); }
table.board td.num, table.board th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.board td.name { overflow-wrap: anywhere; }
svg.spark { width: 120px; height: 28px; display: block; color: var(--accent); }
tr.regression svg.spark, .kind.regression { color: var(--error); }
tr.improvement svg.spark, .kind.improvement { color: var(--good); }
.kind { font-weight: 600; }
.when { white-space: nowrap; }
input[type=search] { width: min(100%, 24rem); }
@media (max-width: 600px) {
  /* A board row: name across, then trend, latest value and change side by side. */
  table.board thead { display: none; }
  table.board tr { display: grid; grid-template-columns: auto 1fr auto; column-gap: .75rem;
                   border-bottom: 1px solid var(--border); padding: .4rem 0; }
  table.board td { border: 0; padding: 0 .25rem; }
  table.board td.name, table.board td.newest { grid-column: 1 / -1; }
  table.board td.newest:empty { display: none; }
  /* A row per point is too narrow for three columns: time and value, metadata below. */
  table.latest thead { display: none; }
  table.latest tr { display: grid; grid-template-columns: auto 1fr; column-gap: .75rem;
                    border-bottom: 1px solid var(--border); padding: .3rem 0; }
  table.latest td { border: 0; padding: 0 .25rem; }
  table.latest td:nth-child(2) { text-align: right; }
  table.latest td:last-child { grid-column: 1 / -1; }
  table.latest td:last-child:empty { display: none; }
}
"""

#: The form that opens a metric: on the index page, and again on the page saying it is unknown.
_OPEN_FORM = """<form action="{action}" method="get" class="open">
  <label for="metric-id">Open a metric by its id, or paste any PerfIt link to it</label>
  <p><input id="metric-id" name="metric-id" required placeholder="metric id or chart URL"
     value="{value}" autocomplete="off" spellcheck="false"> <button type="submit">Open</button></p>
</form>"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="{favicon}">
<title>{title}</title><style>{css}</style></head>
<body><main>
{main}</main>{script}
</body></html>
"""

_INDEX_MAIN = """<h1>PerfIt</h1>
<p class="lead">A tiny self-hosted tracker of CI performance: CI jobs post how long their steps
take, and PerfIt keeps the numbers and draws them.</p>
{open_form}
<p class="muted">Feed it from CI with the one-file client:
<code>python perfit.py run -- make test</code>. PerfIt {version}.</p>
"""

_ERROR_MAIN = """<h1>{title}</h1>
<p class="error" role="alert">{message}</p>
{extra}<p><a href="{home}">PerfIt home</a>{more_links}</p>
"""

_METRIC_MAIN = """<h1>{heading}</h1>
<p class="muted">{subtitle}</p>
<div class="plot"><div class="chart" id="chart" aria-live="polite">{svg}</div>
<div class="tip" id="tip" role="status" hidden></div></div>
<p class="error" id="error" role="alert"></p>
<nav class="formats" aria-label="this view as data">View as:
  <a id="link-svg" href="{base}/svg{query}">SVG</a>
  <a id="link-json" href="{base}/json{query}">JSON</a>
  {csv_link}</nav>
<details class="options-box" id="options-box" open><summary>Chart options</summary>
<form class="options" id="options" method="get" action="">
{fields}
  <div><button type="submit">Redraw</button></div>
</form></details>
<section class="embed" aria-labelledby="embed-heading">
<h2 id="embed-heading">Embed this chart</h2>
<label for="embed-markdown">Markdown (README, wiki)</label>
<textarea id="embed-markdown" readonly rows="4">{embed_markdown}</textarea>
<label for="embed-html">HTML</label>
<textarea id="embed-html" readonly rows="4">{embed_html}</textarea>
</section>
{latest}
"""

_METRIC_SCRIPT = """
<script>
(function () {{
  // Redraw the chart as the user types: fetch the SVG of the same view, no page reload.
  var base = location.pathname.replace(/\\/(html)?$/, "");
  var ids = {ids_json}, name = {name_json};
  var form = document.getElementById("options");
  // On a phone the nine fields would fill the screen before the chart's data: folded there.
  if (window.matchMedia("(max-width: 600px)").matches) {{
    document.getElementById("options-box").open = false;
  }}
  var chart = document.getElementById("chart");
  var error = document.getElementById("error");
  var timer = null, latest = 0;
  function query() {{
    var q = new URLSearchParams();
    new FormData(form).forEach(function (v, k) {{ if (String(v).trim()) q.set(k, String(v).trim()); }});
    var s = q.toString();
    return s ? "?" + s : "";
  }}
  function update(q) {{
    ["svg", "json", "csv"].forEach(function (f) {{
      var link = document.getElementById("link-" + f);
      if (link) link.href = base + "/" + f + q; }});
    var url = location.origin + base + ".svg" + q, alt = name.replace(/[\\[\\]<>"&]/g, "");
    var md = "![" + alt + "](" + url + ")", tag = '<img src="' + url + '" alt="' + alt + '">';
    if (ids.length === 1) {{
      var badge = location.origin + base + "/badge.svg";
      md += "\\n![" + alt + " badge](" + badge + ")";
      tag += '\\n<img src="' + badge + '" alt="' + alt + ' badge">';
    }}
    document.getElementById("embed-markdown").value = md;
    document.getElementById("embed-html").value = tag;
  }}
  function redraw() {{
    var q = query(), mine = ++latest;
    fetch(base + "/svg" + q).then(function (r) {{
      return r.text().then(function (body) {{
        if (mine !== latest) return;  // a newer request is on its way
        if (!r.ok) {{ error.textContent = JSON.parse(body).message; return; }}
        error.textContent = "";
        chart.innerHTML = body;
        hideTip();
        update(q);
        history.replaceState(null, "", location.pathname + q);
      }});
    }}).catch(function (e) {{ error.textContent = "Could not redraw: " + e; }});
  }}
  // Tap (or click) near a point: its time, value and metadata in a box, a link clickable.
  // SVG tooltips (<title>) need a mouse; a finger gets this, within 24 px of the point.
  var tip = document.getElementById("tip");
  function hideTip() {{ tip.hidden = true; }}
  function nearest(e) {{
    var best = null, bestDistance = 24 * 24;
    chart.querySelectorAll("circle.point").forEach(function (c) {{
      var m = c.getScreenCTM();
      if (!m) return;
      var cx = c.cx.baseVal.value, cy = c.cy.baseVal.value;
      var dx = m.a * cx + m.c * cy + m.e - e.clientX, dy = m.b * cx + m.d * cy + m.f - e.clientY;
      var d = dx * dx + dy * dy;
      if (d < bestDistance) {{ best = c; bestDistance = d; }}
    }});
    return best;
  }}
  function showTip(point) {{
    var title = point.querySelector("title");
    var lines = title ? title.textContent.split("\\n") : [];
    var name = ids.length > 1 ? lines.shift() : "";
    var meta = lines.slice(2).join("\\n");
    tip.textContent = "";
    [name, lines[0], lines[1]].forEach(function (text, i) {{
      if (!text) return;
      var line = document.createElement(i === 2 ? "strong" : "div");
      line.textContent = text;
      tip.appendChild(line);
    }});
    if (meta) {{
      // Metadata ending in a URL ("3f2a9c1e7b0d https://ci/job/7"): the URL is a link.
      var found = /^([\\s\\S]*?)(https?:\\/\\/[^\\s<>"']+)$/.exec(meta);
      var text = found ? found[1] : meta, url = found ? found[2] : "";
      var shown = document.createElement("div");
      if (text) shown.appendChild(document.createTextNode(text));
      if (url) {{
        var link = document.createElement("a");
        url.split(new RegExp({url_breaks})).forEach(function (part, i) {{
          if (i) link.appendChild(document.createElement("wbr"));
          link.appendChild(document.createTextNode(part));
        }});
        link.href = url; link.rel = "nofollow noopener"; link.target = "_blank";
        shown.appendChild(link);
      }}
      tip.appendChild(shown);
    }}
    var box = tip.parentNode.getBoundingClientRect(), at = point.getBoundingClientRect();
    tip.hidden = false;
    var left = at.left - box.left + at.width / 2 - tip.offsetWidth / 2;
    tip.style.left = Math.max(0, Math.min(left, box.width - tip.offsetWidth)) + "px";
    var top = at.top - box.top - tip.offsetHeight - 8;
    tip.style.top = (top < 0 ? at.bottom - box.top + 8 : top) + "px";
  }}
  chart.addEventListener("click", function (e) {{
    var point = nearest(e);
    if (!point) {{ hideTip(); return; }}
    e.preventDefault();  // a point that links somewhere: the box holds the link instead
    showTip(point);
  }});
  document.addEventListener("keydown", function (e) {{ if (e.key === "Escape") hideTip(); }});
  document.addEventListener("click", function (e) {{
    if (!chart.contains(e.target) && !tip.contains(e.target)) hideTip();
  }});
  form.addEventListener("input", function () {{ clearTimeout(timer); timer = setTimeout(redraw, 250); }});
  form.addEventListener("submit", function (e) {{ e.preventDefault(); redraw(); }});
  update(query());
}})();
</script>"""


def _html_page(title: str, main: str, script: str = "") -> str:
    """A whole page: the shared head (inline CSS, nothing from elsewhere), main, a script."""
    full_title = f"{title} · PerfIt" if title else "PerfIt"
    return _PAGE.format(
        title=html.escape(full_title), css=_PAGE_CSS, main=main, script=script, favicon=_FAVICON
    )


#: The pages' icon, inline (no page asks for /favicon.ico): a rising line on blue.
_FAVICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Crect width='16' height='16' rx='3' fill='%231d4ed8'/%3E%3Cpolyline points='3,12 7,8 "
    "9,10 13,4' fill='none' stroke='white' stroke-width='2'/%3E%3C/svg%3E"
)


def _render_metric_page(
    metrics: Sequence[Metric], query: dict[str, str], svg: str, nested: bool
) -> str:
    """The page of one metric, or of an overlay; `nested` when served at /m/ID/html."""
    import urllib.parse

    esc = html.escape
    fields = []
    for option in CHART_OPTIONS:
        name, kind = option.name, ("number" if option.kind == "number" else "text")
        step = ' step="any"' if kind == "number" else ""
        fields.append(
            f'  <label for="f-{name}">{option.label}<input id="f-{name}" name="{name}" '
            f'type="{kind}"{step} value="{esc(query.get(name, ""))}" '
            f'placeholder="{esc(option.placeholder)}"></label>'
        )
    fields.append(_branch_picker(metrics, query.get("branch", "")))
    ids = [b64encode(m.id) for m in metrics]
    names = [m.name or f"metric {i}" for m, i in zip(metrics, ids)]
    if len(metrics) == 1:
        metric = metrics[0]
        details = [f"unit: {metric.unit}" if metric.unit else "", f"{metric.better} is better"]
        keep = metric.to_json()["keep"]
        details.append(f"keeps {keep} of points" if keep else "")
        subtitle = " · ".join(d for d in [metric.description, *details] if d)
    else:
        subtitle = f"{len(metrics)} metrics in one chart"
    kept = {k: v for k, v in query.items() if v}
    qs = "?" + urllib.parse.urlencode(kept) if kept else ""
    base = ("../" if nested else "") + ",".join(ids)  # relative, so a path prefix in a proxy works
    svg_url = f"{base}.svg{qs}"
    csv_link = f'<a id="link-csv" href="{esc(base)}/csv{esc(qs)}">CSV</a>' if len(ids) == 1 else ""
    main = _METRIC_MAIN.format(
        heading=" · ".join(_breakable(name, _NAME_BREAKS_RE) for name in names),
        subtitle=esc(subtitle),
        svg=svg,
        base=esc(base),
        query=esc(qs),
        csv_link=csv_link,
        fields="\n".join(fields),
        embed_markdown=esc(f"![{names[0]}]({svg_url})"),
        embed_html=esc(f'<img src="{svg_url}" alt="{names[0]}">'),
        latest=_latest_points(metrics[0]) if len(metrics) == 1 else "",
    )
    script = _METRIC_SCRIPT.format(
        ids_json=_script_json(ids),
        url_breaks=_script_json(_URL_BREAKS),
        name_json=_script_json(" · ".join(names)),
    )
    return _html_page(" · ".join(names), main, script)


_MAX_PICKED_BRANCHES = 50  #: branches the page offers to draw, newest first


def _branch_picker(metrics: Sequence[Metric], chosen: str) -> str:
    """The form's choice of a branch to draw over main's line: those with points of the last
    30 days, newest first (the one in the link too, even without points)."""
    found: dict[str, None] = {}
    for metric in metrics:
        others = metric.branches.snapshot()
        for i in reversed(range(len(others))):
            found.setdefault(others.origin(i).branch, None)
    branches = [b for b in found if b][:_MAX_PICKED_BRANCHES]
    if chosen and chosen not in branches:
        branches.insert(0, chosen)
    options = ['<option value="">none</option>']
    for branch in branches:
        picked = " selected" if branch == chosen else ""
        options.append(
            f'<option value="{html.escape(branch)}"{picked}>{html.escape(branch)}</option>'
        )
    disabled = "" if branches else " disabled"
    return (
        f'  <label for="f-branch">A branch over main<select id="f-branch" name="branch"'
        f"{disabled}>{''.join(options)}</select></label>"
    )


_BOARD_MAIN = """<h1>{heading}</h1>
<p class="muted">{summary}</p>
<p><label for="filter">Filter by name</label>
<input id="filter" type="search" placeholder="e.g. pytest/ or sort" autocomplete="off"></p>
<nav class="formats" aria-label="this board as data">View as:
  <a href="{board}/json">JSON</a> <a href="{board}/metrics">OpenMetrics</a></nav>
{groups}
<p class="muted" id="none" hidden>No metric's name has that in it.</p>
"""

_BOARD_EMPTY = """<p>No metrics yet. Post a CI run and each result gets a metric by name:
<code>perfit post --format auto results.json</code> (pytest-benchmark, hyperfine, Go, Google
Benchmark, Catch2, criterion, JMH, BenchmarkDotNet, benchmark.js, asv ...).</p>"""

_BOARD_GROUP = """<section class="group" aria-labelledby="{anchor}"><h2 id="{anchor}">{title}</h2>
<table class="board"><thead><tr><th scope="col">metric</th><th scope="col">trend</th>
<th scope="col" class="num">latest</th><th scope="col" class="num">vs recent</th>
<th scope="col">newest change</th></tr></thead><tbody>
{rows}</tbody></table></section>"""

_BOARD_SCRIPT = """
<script>
(function () {
  // Show only the metrics whose name holds what is typed; a group with none shown hides.
  var filter = document.getElementById("filter"), none = document.getElementById("none");
  function apply() {
    var wanted = filter.value.trim().toLowerCase(), shown = 0;
    document.querySelectorAll("section.group").forEach(function (group) {
      var left = 0;
      group.querySelectorAll("tbody tr").forEach(function (row) {
        var match = row.getAttribute("data-name").toLowerCase().indexOf(wanted) >= 0;
        row.hidden = !match;
        if (match) left++;
      });
      group.hidden = !left;
      shown += left;
    });
    none.hidden = shown > 0;
  }
  filter.addEventListener("input", apply);
  apply();  // a filter the browser kept across a reload
})();
</script>"""


def _render_board_page(rows: Sequence[BoardRow], board_id: str, alerts: dict[str, int]) -> str:
    """The board: one table per name group, a row per metric; a box filters them by name."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row.group, []).append(_board_table_row(row))
    sections = [
        _BOARD_GROUP.format(
            anchor=f"g{i}",
            title=html.escape(group or "(no group)"),
            rows="".join(lines),
        )
        for i, (group, lines) in enumerate(groups.items())
    ]
    regressed = sum(r.state == "regression" for r in rows)
    summary = f"{len(rows)} metric(s) · {regressed} regressed · {alert_words(alerts)}"
    newest = max((r.latest_t for r in rows if r.latest_t is not None), default=None)
    if newest is not None:
        summary += f" · newest point {format_time(newest)}"
    main = _BOARD_MAIN.format(
        heading="Board",
        summary=html.escape(summary),
        board=html.escape(board_id),
        groups="\n".join(sections) or _BOARD_EMPTY,
    )
    return _html_page("Board", main, _BOARD_SCRIPT)


def _board_table_row(row: BoardRow) -> str:
    esc = html.escape
    metric = row.metric
    short = row.short_name
    latest = format_value(row.latest, metric.unit) if row.latest is not None else "no data"
    newest = ""
    if row.newest is not None:
        c = row.newest
        newest = (
            f'<span class="kind {c.kind}">{c.kind}</span> {_percent(c.change, c.before, c.after)}'
            + (f" drift over {c.runs} runs" if c.shape == "drift" else "")
            + f' <span class="muted when" title="{format_time(c.t)}">{format_time(c.t)[:10]}</span>'
        )
    return (
        f'<tr class="{row.state}" data-name="{esc(row.name)}">'
        f'<td class="name"><a href="../m/{b64encode(metric.id)}">{esc(short)}</a></td>'
        f"<td>{_sparkline(row.recent)}</td>"
        f'<td class="num">{esc(latest)}</td>'
        f'<td class="num">{_percent(row.change) if row.change is not None else ""}</td>'
        f'<td class="newest">{newest}</td></tr>\n'
    )


def _sparkline(values: Sequence[float], width: int = 240, height: int = 56) -> str:
    """A tiny line of the newest values, drawn by hand: a board draws hundreds of them.

    Whole numbers in a viewBox twice the size it is shown at: as sharp, and half the bytes.
    """
    if not values:
        return ""
    low, high = min(values), max(values)
    # In units of the largest value: near the ends of float range a difference overflows.
    scale = max(abs(low), abs(high)) or 1.0
    lo, hi = low / scale, high / scale
    # At least 10 % of the level from bottom to top: noise of 1 % is a ripple, not a saw.
    span = max(hi - lo, abs(hi + lo) / 2 * 0.1) or 1.0
    bottom = (lo + hi - span) / 2
    step = (width - 8) / max(1, len(values) - 1)
    points = [
        (round(4 + i * step), round(height - 6 - (v / scale - bottom) / span * (height - 12)))
        for i, v in enumerate(values)
    ]
    line = " ".join(f"{x},{y}" for x, y in points)
    x, y = points[-1]
    label = f"the newest {len(values)} values, from {format_number(low)} to {format_number(high)}"
    return (
        f'<svg class="spark" viewBox="0 0 {width} {height}" role="img" aria-label="{label}">'
        f'<polyline points="{line}" fill="none" stroke="currentColor" stroke-width="3"/>'
        f'<circle cx="{x}" cy="{y}" r="5" fill="currentColor"/></svg>'
    )


def _render_error_page(
    err: PerfitError, status: int, path: str, query: str, typed: str = ""
) -> str:
    """What a browser shows for an error: the message, and a way back.

    Links are relative, so they work behind a proxy that serves PerfIt under a path prefix.
    A bad chart option links to the same view without options; an unknown metric asked for
    through the open form gets the form again, holding what was typed.
    """
    import http
    import urllib.parse

    esc = html.escape
    home = "../" * (path.count("/") - 1) or "./"
    # "./" first and quoted: a path segment such as "javascript:..." stays a relative link.
    here = "./" + urllib.parse.quote(path.rsplit("/", 1)[-1], safe=",.-_~")
    more, extra = "", ""
    if isinstance(err, BadRequest) and query:
        more = f' · <a href="{esc(here)}">the same view with its default options</a>'
    if isinstance(err, NotFound) and path.endswith("/m/"):
        extra = _OPEN_FORM.format(action="", value=esc(typed)) + "\n"
    try:
        title = f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        title = str(status)
    main = _ERROR_MAIN.format(
        title=esc(title), message=esc(err.message), home=esc(home), more_links=more, extra=extra
    )
    return _html_page(title, main)


def _prefers_html(accept: str) -> bool:
    """Whether an Accept header (a browser's) ranks an HTML page at least as high as JSON."""
    weights: dict[str, float] = {}
    for part in accept.split(","):
        media, _, params = part.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        weights[media] = max(q, weights.get(media, 0.0))
    wanted = weights.get("text/html", 0.0)
    return wanted > 0 and wanted >= weights.get("application/json", 0.0)


#: Where a long URL may wrap: after a slash (not inside //) or a hyphen (where a browser wraps
#: anyway), before ? & # = . _ ; never inside a word. Also used by the page's script.
_URL_BREAKS = r"(?<=[/-])(?!/)|(?=[?&#=._])"
_URL_BREAKS_RE = _Regex(_URL_BREAKS)


#: Where a name may wrap: after "/", "::" and "." (a suite, a test, a method).
_NAME_BREAKS_RE = _Regex(r"(?<=/)|(?<=::)|(?<=\.)")


def _breakable(text: str, breaks: _Regex = _URL_BREAKS_RE) -> str:
    """Text (a URL, by default: see URL_BREAKS), escaped, with <wbr> where it may wrap."""
    return "<wbr>".join(html.escape(part) for part in breaks.split(text))


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script>: no "</script>" can end it early."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _latest_points(metric: Metric, count: int = 10) -> str:
    """A table of the newest points, saying how many there are in all and where the rest are;
    metadata that is a URL becomes a link, and so does a commit where the job URL names its
    repository."""
    series = metric.series.snapshot(last=count)
    if not len(series):
        return ""
    rows = []
    for i in reversed(range(len(series))):
        meta = series.metadata(i)
        shown = html.escape(meta)
        url = metadata_link(meta)
        if url:
            text = html.escape(meta[: len(meta) - len(url)])
            shown = (
                f'{text}<a href="{html.escape(url)}" rel="nofollow noopener">{_breakable(url)}</a>'
            )
        commit = series.origin(i).commit
        page = _repository_page(meta, "commit", commit) if commit else None
        sha = html.escape(commit[:12])
        sha = (
            f'<a href="{html.escape(page)}" rel="nofollow noopener"><code>{sha}</code></a>'
            if page
            else f"<code>{sha}</code>"
            if sha
            else ""
        )
        value = html.escape(format_value(series.values[i], metric.unit))
        rows.append(
            f"<tr><td>{format_time(series.times[i] / US)}</td><td>{value}</td><td>{sha}</td>"
            f"<td>{shown}</td></tr>"
        )
    total = len(metric.series)
    more = (
        f'<p class="muted">The newest {len(series)} of {total:,} points; '
        f'<a href="{b64encode(metric.id)}/csv">all of them as CSV</a>.</p>'
        if total > len(series)
        else ""
    )
    return (
        '<section aria-labelledby="latest-heading"><h2 id="latest-heading">Latest points</h2>'
        '<table class="latest"><thead><tr><th scope="col">time (UTC)</th><th scope="col">value</th>'
        '<th scope="col">commit</th><th scope="col">metadata</th></tr></thead><tbody>'
        + "".join(rows)
        + f"</tbody></table>{more}</section>"
    )


# ==============================================================================================
# Web: handlers
# What each route does, as plain functions of the state they share (_Web) and of what their
# route declares: the caller, when it needs a token, and the JSON body, when it takes one.
# ==============================================================================================

_SVG_TYPE = "image/svg+xml; charset=utf-8"
_HTML_TYPE = "text/html; charset=utf-8"
_OVERLAY_VIEWS = ("html", "svg", "json")  #: the views that draw several metrics at once
#: The fields of PUT /m/ that are text, with their limits in UTF-8 bytes.
_METRIC_TEXT_FIELDS = {
    "name": _MAX_NAME_BYTES,
    "unit": _MAX_UNIT_BYTES,
    "description": _MAX_DESCRIPTION_BYTES,
}


class _MemoryGiver:
    """Gives the heap's free pages back to the system a second after a request that used many
    (an import): once for a burst of them, as a trim costs milliseconds on a big heap."""

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def give_back_soon(self) -> None:
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.delay, self._give_back)
                self._timer.daemon = True
                self._timer.start()

    def _give_back(self) -> None:
        with self._lock:
            self._timer = None
        _give_memory_back()


_KEY_WAIT = 30.0  #: seconds a repeat waits for the first request of its key to finish
_SECRET = "access_token"  #: the answer field that is shown once and kept nowhere


class _Keys:
    """Writes sent with an Idempotency-Key: each done once, its answer given to every repeat.

    The first request of a key writes a _REC_KEY record in one batch with what it writes (see
    _RIDERS), so the key is stored if and only if the write is; then another with its answer.
    A repeat while the first is at work waits for it. The records replay, so keys outlive a
    restart; the index forgets them after IDEMPOTENCY_KEEP.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._working: dict[tuple[str, str], threading.Event] = {}

    def once(self, store: Store, where: tuple[str, str], request: str, write: Callable) -> Any:
        """write()'s answer, or (for a key seen before) the answer its first request got."""
        while True:
            with self._lock:
                # At work first: its key is in the index before its answer is.
                working = self._working.get(where)
                done = None if working else store.index.keys.get(where)
                if working is None and done is None:
                    mine = self._working[where] = threading.Event()
                    break
            if working is None:
                return _replayed(where, done, request)
            if not working.wait(_KEY_WAIT):
                raise KeyInUse(f"the request sent with this {_KEY_HEADER} is still at work")
        try:
            return self._first(store, where, request, write)
        finally:
            with self._lock:
                del self._working[where]
            mine.set()

    @staticmethod
    def _first(store: Store, where: tuple[str, str], request: str, write: Callable) -> Any:
        account, key = where
        doc = {"account": account, "key": key, "request": request, "t": round(time.time(), 3)}
        riders = [_json_record(_REC_KEY, doc)]
        riding = _RIDERS.set(riders)
        try:
            answer = write()
        except PerfitError as err:
            if riders:  # it stored nothing: a repeat may try again
                raise
            # A write, then a refusal (a 507 on its second record): the repeat hears the same.
            refused = {"status": err.status or 500, "answer": {"message": err.message}}
            store.keep_answer({**doc, **refused})
            raise
        finally:
            _RIDERS.reset(riding)
        kept = json.loads(answer.body)
        if isinstance(kept, dict) and _SECRET in kept:  # a token is shown once, never kept
            kept = {"withheld": kept.get("token_id", ""), "account_id": kept.get("account_id")}
        store.keep_answer({**doc, "status": answer.status_code, "answer": kept})
        return answer


@dataclasses.dataclass
class _Web:
    """What the handlers share: the store, the server's settings and limiters, the caches."""

    store: Store
    config: ServerConfig
    limiter: RateLimiter | None  #: None: no rate limit
    auth_failures: RateLimiter  #: failed authentications, limited whatever the rate limit
    changes: _ChangeCache
    notifier: Notifier
    memory: _MemoryGiver
    alerts: _AlertRecords = dataclasses.field(default_factory=_AlertRecords)
    keys: _Keys = dataclasses.field(default_factory=_Keys)

    @classmethod
    def of(cls, store: Store, config: ServerConfig | None = None) -> _Web:
        config = config or ServerConfig()
        # Bursts of twice the rate, and at least one request: a bucket under 1 would never serve.
        burst = max(1.0, 2 * config.rate_limit)
        limiter = RateLimiter(config.rate_limit, burst) if config.rate_limit else None
        failures = RateLimiter(config.auth_failure_rate, config.auth_failure_burst)
        notifier = Notifier(store, allow_private=config.webhook_allow_private)
        return cls(store, config, limiter, failures, _ChangeCache(), notifier, _MemoryGiver())

    def address(self) -> str:
        return client_address(_request().environ, self.config.trust_proxy)

    def written(self, *metric_ids: bytes) -> None:
        """Tell the notifier what a request wrote to, with the base of its links."""
        if self.store.index.webhooks:  # else nobody to tell
            self.notifier.written(metric_ids, self.base_url())

    def base_url(self) -> str:
        return base_url(_request().environ, self.config)


def _replayed(where: tuple[str, str], done: _Kept, request: str) -> Any:
    """The answer a key's first request got, for a repeat of that request."""
    if done.request != request:
        raise KeyReused(
            f"this {_KEY_HEADER} came with another request before; send each request with a "
            "key of its own"
        )
    if done.status is None or done.answer is None:
        raise KeyInUse(
            f"the request sent with this {_KEY_HEADER} was stored, but the server stopped "
            "before it answered; it is not stored again"
        )
    if done.answer.startswith(b'{"withheld":'):
        withheld = json.loads(done.answer)
        if not where[0]:  # root's: a new account, whose token nobody else can revoke
            raise KeyInUse(
                f"the request sent with this {_KEY_HEADER} made account "
                f"{withheld['account_id']}, whose admin token only its first answer showed; "
                "if that answer was lost, make another account"
            )
        raise KeyInUse(
            f"the request sent with this {_KEY_HEADER} made a token, which only its first "
            f"answer showed; if that answer was lost, revoke token {withheld['withheld']} "
            "(DELETE /t/TOKEN_ID) and make another"
        )
    headers = {"Content-Type": "application/json", "Idempotent-Replayed": "true"}
    return _answer(done.answer, done.status, headers)


def _idempotently(web: _Web, route: Route, params: dict[str, Any]) -> Any:
    """The route's handler, once for each Idempotency-Key (without one: every time)."""
    import hashlib

    call = functools.partial(route.handler, web, **params)
    request = _request()
    # From the environ: bottle's get_header fails on a byte that is not UTF-8.
    key = request.environ.get("HTTP_IDEMPOTENCY_KEY") if route.writes else None
    if key is None:
        return call()
    if not 0 < len(key) <= _MAX_KEY_BYTES or not (key.isascii() and key.isprintable()):
        raise BadRequest(
            f"{_KEY_HEADER}: 1 to {_MAX_KEY_BYTES} printable ASCII characters (a UUID, say)"
        )
    caller = params.get("caller")
    account = b64encode(caller.account) if caller and caller.account else ""
    fingerprint = json.dumps(
        [request.method, request.path, request.query_string, params.get("body")], sort_keys=True
    )
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    return web.keys.once(web.store, (account, key), digest, call)


def _request() -> Any:
    import bottle  # server side only (make_app has imported it)

    return bottle.request


def _answer(body: Any, status: int = 200, headers: dict | None = None) -> Any:
    import bottle

    return bottle.HTTPResponse(body, status, headers)


def json_response(doc: Any, status: int = 200, headers: dict | None = None) -> Any:
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return _answer(body, status, {**(headers or {}), "Content-Type": "application/json"})


def _error_response(err: PerfitError) -> Any:
    """The answer to a failed request: JSON {"message"}, or a small page for a browser."""
    status = err.status or 500
    headers = {}
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    request = _request()
    if not _prefers_html(request.environ.get("HTTP_ACCEPT", "")):
        doc = {"message": err.message}
        if isinstance(err, Conflict):
            doc["metric_id"] = err.metric_id
        return json_response(doc, status, headers)
    typed = request.query.getunicode("metric-id", "") or ""
    page = _render_error_page(err, status, request.path, request.query_string, typed)
    return _answer(page, status, {**headers, "Content-Type": _HTML_TYPE})


def _limit_rate(web: _Web) -> None:
    if web.limiter is not None:
        wait = web.limiter.wait_time(web.address())
        if wait:
            raise RateLimited("too many requests; slow down", wait)


def _authenticate(web: _Web, allowed: Sequence[str]) -> Principal:
    """The caller, who must hold a token of one of the `allowed` types."""
    token = _bearer_token(_request().environ)
    principal = web.store.authenticate(token) if token else None
    if principal is None:
        wait = web.auth_failures.wait_time(web.address())
        if wait:
            raise RateLimited("too many failed authentications; slow down", wait)
        if token is None:
            raise Unauthorized("missing access token: send 'Authorization: Bearer <token>'")
        raise Unauthorized("unknown access token")
    if principal.type not in allowed:
        raise Forbidden(f"a {principal.type} token cannot do this; it needs {' or '.join(allowed)}")
    return principal


def _request_query() -> dict[str, str]:
    """The query options as text; one that is not UTF-8 is a 400, not silently dropped."""
    options = {}
    for key, value in _request().query.allitems():  # bottle keeps them as latin-1
        try:
            options[key.encode("latin1").decode()] = value.encode("latin1").decode()
        except UnicodeError:
            raise BadRequest(f"{key!r}: the query option is not valid UTF-8") from None
    return options


def _metric_or_404(web: _Web, text: str) -> Metric:
    raw = decode_id(text)
    metric = web.store.metrics.get(raw) if raw else None
    if metric is None:
        raise NotFound(f"no metric with id {text!r}")
    return metric


def _owned_metric(web: _Web, text: str, caller: Principal) -> Metric:
    """A metric of the caller's account: any other is a 403, whatever the token type."""
    metric = _metric_or_404(web, text)
    if metric.account != caller.account:
        raise Forbidden("this token belongs to another account than the metric")
    return metric


def _view_request(
    web: _Web, ids: str, view: str
) -> tuple[list[Metric], ChartOptions, dict[str, str]]:
    """The metrics a view shows (several only where it can draw them), its options and query."""
    names = list(dict.fromkeys(ids.split(",")))
    if len(names) > _MAX_OVERLAY:
        raise BadRequest(f"{len(names)} metrics; at most {_MAX_OVERLAY} fit in one chart")
    metrics = [_metric_or_404(web, name) for name in names]
    if len(metrics) > 1 and view not in _OVERLAY_VIEWS:
        raise NotFound(f"{view} shows one metric; several go in {', '.join(_OVERLAY_VIEWS)}")
    query = _request_query()
    return metrics, parse_chart_options(query, time.time()), query


def _view_branch(query: dict[str, str]) -> str:
    """The `branch` option of a view: its points drawn (and listed) with main's."""
    return _check_branch(query.get("branch", "").strip(), "branch")


def _cached(body: str, content_type: str, query: dict[str, str]) -> Any:
    """An answer with an ETag and a Cache-Control fitting its range; 304 if unchanged."""
    import hashlib

    data = body.encode("utf-8")
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": _cache_control(query, time.time())}
    wanted = _request().environ.get("HTTP_IF_NONE_MATCH", "")
    if wanted.strip() == "*" or etag in {t.strip().removeprefix("W/") for t in wanted.split(",")}:
        return _answer(None, 304, headers)
    return _answer(data, 200, {**headers, "Content-Type": content_type})


def _cache_control(query: dict[str, str], now: float) -> str:
    """Long caching only for a range that is over; anything relative to now ages in a minute."""
    relative = any(query.get(k, "").strip() for k in ("start-rel", "end-rel"))
    end = query.get("end-fixed", "").strip()
    if not relative and end and parse_rfc3339(end) < now - 3600:
        return "public, max-age=86400"
    return "public, max-age=60"


def points_json(metric: Metric, opts: ChartOptions, branch: str = "") -> list[dict[str, Any]]:
    """Main's points in the options' range (and a branch's, when asked for), oldest first:
    {"t", "v"} and, where they are set, "m", "commit" and "branch"."""
    points = []
    for series, i in _points_read(metric, opts, branch):
        point: dict[str, Any] = {"t": series.times[i] // US, "v": series.values[i]}
        meta, origin = series.metadata(i), series.origin(i)
        if meta:
            point["m"] = meta
        if origin.commit:
            point["commit"] = origin.commit
        if origin.branch:
            point["branch"] = origin.branch
        points.append(point)
    return points


def _points_read(metric: Metric, opts: ChartOptions, branch: str) -> list[tuple[Series, int]]:
    """(series, index) of each point a read gives: main's in the range, and the branch's."""
    parts = [metric.series.snapshot(opts.start, opts.end)]
    if branch:
        parts.append(branch_points(metric, branch, opts.start, opts.end))
    found = [(part, i) for part in parts for i in range(len(part))]
    if branch:
        found.sort(key=lambda p: p[0].times[p[1]])  # stable: main's first at the same time
    return found


# -- administration -----------------------------------------------------------------------------


def _create_account(web: _Web, caller: Principal, body: Any) -> Any:
    """Create an account and its first admin token (shown this once)."""
    _body_object(body, ())
    account, token = web.store.create_account()
    return json_response(_credentials(account, token))


def _credentials(account: bytes, token: str) -> dict[str, str]:
    """A new token as it is shown, this once: with its id, to list and revoke it by."""
    return {
        "account_id": b64encode(account),
        "access_token": token,
        "token_id": b64encode(token_id(hash_token(token))),
    }


def _create_token(web: _Web, caller: Principal, body: Any) -> Any:
    """Create a token for the caller's account (shown this once)."""
    token_type = _body_object(body, ("type",)).get("type", "post")
    if token_type not in ("post", "admin"):
        raise BadRequest("type must be 'post' or 'admin'")
    token = web.store.create_token(caller.account, token_type)
    return json_response(_credentials(caller.account, token))


def _list_tokens(web: _Web, caller: Principal) -> Any:
    """The account's tokens that work: id, type, when made (never the tokens themselves)."""
    entries = web.store.tokens_of(caller.account)
    doc = {"account_id": b64encode(caller.account), "tokens": [e.to_json() for e in entries]}
    return json_response(doc)


def _revoke_token(web: _Web, caller: Principal, token_id: str) -> Any:
    """Revoke one of the account's tokens: it stops working at once (not the last admin)."""
    raw = decode_id(token_id)
    if raw is None:
        raise NotFound(f"the account has no token with id {token_id!r}")
    web.store.revoke_token(caller.account, raw)
    return json_response({"token_id": token_id, "revoked": True})


def _create_metric(web: _Web, caller: Principal, body: Any) -> Any:
    """Create a metric in the caller's account; a name it already has is a 409."""
    fields = _body_object(body, (*_METRIC_TEXT_FIELDS, "better"))
    texts = {k: _check_text(fields[k], k, n) for k, n in _METRIC_TEXT_FIELDS.items() if k in fields}
    if "name" in texts:
        texts["name"] = _check_name(texts["name"])
    better = fields.get("better", "lower")
    if better not in _BETTER_CHOICES:
        raise BadRequest("better must be 'lower' or 'higher'")
    return json_response(web.store.create_metric(caller.account, better=better, **texts).to_json())


def _change_metric(web: _Web, caller: Principal, body: Any, metric_id: str) -> Any:
    """Change a metric's name, unit (a label: values stay), description, better, or keep:
    points older than keep (400d) are no longer served, and go at the next compaction."""
    metric = _owned_metric(web, metric_id, caller)
    fields = _body_object(body, (*_METRIC_TEXT_FIELDS, "better", "keep"))
    if not fields:
        raise BadRequest("say what changes: name, unit, description, better or keep")
    changes: dict[str, Any] = {
        k: _check_text(fields[k], k, n) for k, n in _METRIC_TEXT_FIELDS.items() if k in fields
    }
    if "name" in changes:
        changes["name"] = _check_name(changes["name"])
    if "better" in fields:
        if fields["better"] not in _BETTER_CHOICES:
            raise BadRequest("better must be 'lower' or 'higher'")
        changes["better"] = fields["better"]
    if "keep" in fields:
        changes["keep"] = _parse_keep_field(fields["keep"])
    web.store.edit_metric(metric, changes)
    return json_response(metric.to_json())


def _parse_keep_field(value: object) -> float | None:
    if value is None:
        return None  # keep every point again (those expired already stay gone)
    try:
        return parse_keep(_check_text(value, "keep", _MAX_KEEP_BYTES))
    except ValueError as e:
        raise BadRequest(f"keep: {e}") from None


def _delete_metric(web: _Web, caller: Principal, metric_id: str) -> Any:
    """Delete a metric and all its points, for good; its name is free again."""
    metric = _owned_metric(web, metric_id, caller)
    points = web.store.delete_metric(metric)
    return json_response({"metric_id": b64encode(metric.id), "deleted": points})


# -- writing points -----------------------------------------------------------------------------


def _post_point(web: _Web, caller: Principal, body: Any, metric_id: str) -> Any:
    """Post one data point, timed by the server; answered once it is on disk."""
    metric = _owned_metric(web, metric_id, caller)
    if body is None:
        raise BadRequest('the body must be a JSON object like {"value": 12.5}')
    fields = _body_object(body, ("value", "metadata", "unit", "commit", "branch"))
    if "value" not in fields:
        raise BadRequest("missing field 'value'")
    value = _check_value(fields["value"])
    if "unit" in fields:
        value = _in_metric_unit(value, _check_text(fields["unit"], "unit", _MAX_UNIT_BYTES), metric)
    value = _duration_checked(value, metric)
    metadata, commit, branch = _origin_fields(fields)
    t = web.store.add_point(metric.id, value, metadata, commit, branch)
    web.written(metric.id)
    return json_response({"t": t // US, **_off_main(web, metric.account, branch)})


def _import_points(web: _Web, caller: Principal, body: Any, metric_id: str) -> Any:
    """Import points with their own times, all or nothing; those already stored are skipped."""
    metric = _owned_metric(web, metric_id, caller)

    def origin_of(commit: str, branch: str) -> int:
        return origin_table().intern(web.store.origin(metric.account, commit, branch))

    batch = _parse_import(body, time.time(), origin_of)
    _duration_checked(min(batch.values, default=0.0), metric)
    added, existing, expired = web.store.import_points(metric.id, batch)
    web.written(metric.id)
    web.memory.give_back_soon()  # its body took megabytes, which the allocator would keep
    answer = {"added": added, "existing": existing}
    if expired:
        answer["expired"] = expired  # older than the metric keeps: not stored
    return json_response(answer)


def _post_run(web: _Web, caller: Principal, body: Any) -> Any:
    """Post a CI run: a point for each name, one time, metrics missing by name created."""
    points, (metadata, commit, branch) = _parse_run(body)

    def fit(metric: Metric, point: RunPoint) -> float:
        value = _in_metric_unit(point.value, point.unit, metric) if point.unit else point.value
        return _duration_checked(value, metric)

    t, ids = web.store.post_run(caller.account, points, metadata, fit, commit, branch)
    web.written(*ids.values())
    doc = {"t": t // US, "metrics": {n: b64encode(i) for n, i in ids.items()}}
    return json_response({**doc, **_off_main(web, caller.account, branch)})


def _off_main(web: _Web, account: bytes, branch: str) -> dict[str, Any]:
    """What a post answers of a branch that is not the account's main one: that its points
    are kept apart from main's (a repository whose main is "master" says so at once)."""
    main = web.store.index.main_branch(account)
    return {} if not branch or branch == main else {"main": False, "main_branch": main}


# -- accounts and boards ------------------------------------------------------------------------


def _show_account(web: _Web, caller: Principal) -> Any:
    """The caller's account: its board and its metrics."""
    index = web.store.index
    owned = list(index.by_account.get(caller.account, ()))
    metrics = [
        {"metric_id": b64encode(m.id), "name": m.name, "unit": m.unit, "better": m.better}
        for m in owned
    ]
    return json_response(
        {
            "account_id": b64encode(caller.account),
            "board_id": b64encode(index.board_of[caller.account]),
            "webhook": index.webhooks.get(caller.account),
            "main_branch": index.main_branch(caller.account),
            "alerts": web.alerts.get(owned, web.changes),
            "metrics": metrics,
        }
    )


def _change_account(web: _Web, caller: Principal, body: Any) -> Any:
    """Set the account's webhook (null: none) or its main branch."""
    fields = _body_object(body, ("webhook", "main_branch"))
    if not fields:
        raise BadRequest(
            'the body must say what changes: {"webhook": "https://..."} (or null), '
            '{"main_branch": "main"}'
        )
    if "main_branch" in fields:
        branch = _check_branch(fields["main_branch"], "main_branch")
        if not branch:
            raise BadRequest("main_branch is empty: name the branch whose points are main's")
        web.store.set_main_branch(caller.account, branch)
    if "webhook" in fields:
        url = fields["webhook"]
        if url is not None:
            url = _check_text(url, "webhook", _MAX_WEBHOOK_BYTES)
            if not re.fullmatch(_WEBHOOK_PATTERN, url):
                raise BadRequest("webhook: an http:// or https:// URL, or null")
            webhook_address(url, web.config.webhook_allow_private)
        web.store.set_webhook(caller.account, url)
    index = web.store.index
    return json_response(
        {
            "account_id": b64encode(caller.account),
            "webhook": index.webhooks.get(caller.account),
            "main_branch": index.main_branch(caller.account),
        }
    )


def _replace_board(web: _Web, caller: Principal, body: Any) -> Any:
    """Give the account a new board id: links with the old one stop working."""
    _body_object(body, ())
    return json_response({"board_id": b64encode(web.store.replace_board(caller.account))})


def _board_or_404(web: _Web, board_id: str) -> list[Metric]:
    raw = decode_id(board_id)
    account = web.store.index.boards.get(raw) if raw else None
    if account is None:
        raise NotFound(f"no board with id {board_id!r}")
    return list(web.store.index.by_account.get(account, ()))


def _show_board(web: _Web, board_id: str) -> Any:
    """The board: every metric of the account, its trend and its newest change."""
    metrics = _board_or_404(web, board_id)
    rows = board_rows(metrics, web.changes)
    alerts = web.alerts.get(metrics, web.changes)
    page = _render_board_page(rows, board_id, alerts)
    return _answer(page, headers={"Content-Type": _HTML_TYPE})


def _show_board_json(web: _Web, board_id: str) -> Any:
    """The board's data: each metric's latest value, recent change and newest change point."""
    metrics = _board_or_404(web, board_id)
    rows = board_rows(metrics, web.changes)
    doc = {
        "board_id": board_id,
        "base_url": web.base_url(),
        "alerts": web.alerts.get(metrics, web.changes),
        "metrics": [row.to_json() for row in rows],
    }
    return _cached(json.dumps(doc, separators=(",", ":")), "application/json", {})


def _show_board_metrics(web: _Web, board_id: str) -> Any:
    """The board as OpenMetrics text, for Prometheus to scrape."""
    rows = board_rows(_board_or_404(web, board_id), web.changes)
    return _answer(openmetrics_text(rows), headers={"Content-Type": _OPENMETRICS_TYPE})


def _show_metric_metrics(web: _Web, ids: str) -> Any:
    """The metric as OpenMetrics text, as the board's /metrics has it."""
    rows = board_rows([_metric_or_404(web, ids)], web.changes)
    return _answer(openmetrics_text(rows), headers={"Content-Type": _OPENMETRICS_TYPE})


# -- marking: accepted changes, excluded points --------------------------------------------------


def _accept_change(web: _Web, caller: Principal, body: Any, metric_id: str) -> Any:
    """Accept a change point as intended: `metric check` passes it."""
    return _say_of_change(web, caller, body, metric_id, "accept")


def _dismiss_change(web: _Web, caller: Principal, body: Any, metric_id: str) -> Any:
    """Dismiss a change point as noise: no regression for checks, the board or webhooks."""
    return _say_of_change(web, caller, body, metric_id, "dismiss")


def _undismiss_change(web: _Web, caller: Principal, body: Any, metric_id: str) -> Any:
    """Take a dismissal back."""
    return _say_of_change(web, caller, body, metric_id, "undismiss")


def _say_of_change(web: _Web, caller: Principal, body: Any, metric_id: str, kind: str) -> Any:
    """Record what an admin says of the change point at `t` (as /changes lists it); answer
    the change as it now reads."""
    metric = _owned_metric(web, metric_id, caller)
    t = _unix_field(_body_object(body, ("t",)), "t")
    reach = _change_at(web, metric, t).reach or (t, t)
    # A dismissal said when the change sat a run or two away is taken back too.
    said = metric.marks.within("dismissed", reach) if kind == "undismiss" else [t]
    for mark in said:
        web.store.mark(metric.id, kind, mark * US, mark * US)
    return json_response(_change_at(web, metric, t).to_json())


def _change_at(web: _Web, metric: Metric, t: int) -> Change:
    """The change point at `t` (its time as /changes lists it)."""
    found = web.changes.get(metric, metric.series.snapshot(), DEFAULT_CHANGE_THRESHOLD)
    for c in found:
        if c.t == t:
            return c
    raise NotFound(f"the metric has no change point at t={t}; GET /m/ID/changes lists them")


def _exclude_points(web: _Web, caller: Principal, body: Any, metric_id: str) -> Any:
    """Mark points as bad (a broken runner): kept and drawn, left out of detection, badge
    and comparisons."""
    return _mark_span(web, caller, body, metric_id, "exclude")


def _include_points(web: _Web, caller: Principal, body: Any, metric_id: str) -> Any:
    """Take points back in that were excluded."""
    return _mark_span(web, caller, body, metric_id, "include")


def _mark_span(web: _Web, caller: Principal, body: Any, metric_id: str, kind: str) -> Any:
    metric = _owned_metric(web, metric_id, caller)
    start, end = _parse_span(body)
    web.store.mark(metric.id, kind, start, end)
    covered = len(metric.series.snapshot(start / US, end / US))
    return json_response({"points": covered})


# -- reading ------------------------------------------------------------------------------------


def _find_metric(web: _Web) -> Any:
    """Open a metric by its id, or by any link to it (the index page's form)."""
    import urllib.parse

    ids, options = _metric_link(_request_query().get("metric-id", ""))
    for text in ids:
        _metric_or_404(web, text)
    query = "?" + urllib.parse.urlencode(options) if options else ""
    return _answer(None, 303, {"Location": ",".join(ids) + query})  # relative: proxies keep it


def _show_page(web: _Web, ids: str) -> Any:
    """The page of a metric, or of several overlaid: the chart, a form for its options."""
    metrics, opts, query = _view_request(web, ids, "html")
    nested = _request().path.endswith("/html")
    svg = chart_document(metrics, opts, web.changes, _view_branch(query))
    return _answer(
        _render_metric_page(metrics, query, svg, nested), headers={"Content-Type": _HTML_TYPE}
    )


def _show_chart(web: _Web, ids: str) -> Any:
    """The chart of a metric, or of several overlaid (the link READMEs embed)."""
    metrics, opts, query = _view_request(web, ids, "svg")
    branch = _view_branch(query)
    return _cached(chart_document(metrics, opts, web.changes, branch), _SVG_TYPE, query)


def _show_points(web: _Web, ids: str) -> Any:
    """The points: of one metric, or of each of several, by id."""
    metrics, opts, query = _view_request(web, ids, "json")
    branch = _view_branch(query)
    if len(metrics) == 1:
        doc: Any = points_json(metrics[0], opts, branch)
    else:
        doc = {b64encode(m.id): points_json(m, opts, branch) for m in metrics}
    return _cached(json.dumps(doc, separators=(",", ":")), "application/json", query)


def _show_csv(web: _Web, ids: str) -> Any:
    """The points as CSV: t,v,m after a header line."""
    (metric,), opts, query = _view_request(web, ids, "csv")
    out = io.StringIO()
    import csv

    writer = csv.writer(out, lineterminator="\n")
    found = _points_read(metric, opts, _view_branch(query))
    origins = [series.origin(i) for series, i in found]
    # The columns of 0.3 only where they say something: a file of 0.2's points keeps t,v,m.
    where = any(o.commit or o.branch for o in origins)
    writer.writerow(("t", "v", "m", "commit", "branch") if where else ("t", "v", "m"))
    for (series, i), origin in zip(found, origins):
        row = (series.times[i] // US, repr(series.values[i]), series.metadata(i))
        writer.writerow((*row, origin.commit, origin.branch) if where else row)
    return _answer(out.getvalue(), headers={"Content-Type": "text/csv; charset=utf-8"})


def _show_badge(web: _Web, ids: str) -> Any:
    """A badge: the metric's name and its latest value, coloured by its trend."""
    (metric,), opts, query = _view_request(web, ids, "badge.svg")
    # The newest 21 kept points: all of the range only when some points are excluded.
    last = None if metric.marks.spans else 21
    recent = metric.kept(metric.series.snapshot(opts.start, opts.end, last)).values[-21:].tolist()
    message = format_value(recent[-1], metric.unit) if recent else "no data"
    state = badge_state(recent, metric.better)
    return _cached(
        render_badge(opts.title or metric.name or "perfit", message, state), _SVG_TYPE, query
    )


def _show_changes(web: _Web, ids: str) -> Any:
    """The change points: where the metric's typical level steps."""
    (metric,), opts, query = _view_request(web, ids, "changes")
    threshold = _parse_threshold(query.get("threshold", ""))
    found = web.changes.get(metric, metric.series.snapshot(opts.start, opts.end), threshold)
    return _cached(
        json.dumps([c.to_json() for c in found], separators=(",", ":")), "application/json", query
    )


def _compare(web: _Web, body: Any, metric_id: str) -> Any:
    """Compare fresh values with main's level where a PR branched (or its newest); stores
    nothing."""
    metric = _metric_or_404(web, metric_id)
    values, base = _parse_compare(body, metric)
    threshold = _parse_threshold(_request_query().get("threshold", ""))
    found = base_time([metric], base) if base else None
    baseline = _baseline_at(metric, base, found, threshold)
    (verdict,), _ = compare_results(
        [Fresh(values, baseline, metric.better, metric.unit)], threshold
    )
    return json_response(verdict.to_json())


def _compare_suite(web: _Web, body: Any, board_id: str) -> Any:
    """Compare a suite's fresh results, by name, with main's metrics of the board's account
    where a PR branched: no token (a fork's PR has none), nothing stored."""
    metrics = _board_or_404(web, board_id)
    results, base = _parse_suite_compare(body)
    threshold = _parse_threshold(_request_query().get("threshold", ""))
    by_name = {m.name: m for m in reversed(metrics) if m.name}  # the oldest of a name wins
    matched = [by_name.get(r["name"]) for r in results]
    found = base_time([m for m in matched if m is not None], base) if base else None
    fresh = []
    for result, metric in zip(results, matched):
        values = _fresh_values(result, result["where"], metric)
        if metric is None:
            fresh.append(Fresh(values, None, "lower", result.get("unit", "")))
        else:
            baseline = _baseline_at(metric, base, found, threshold)
            fresh.append(Fresh(values, baseline, metric.better, metric.unit))
    verdicts, shift = compare_results(fresh, threshold)
    answers = []
    for result, metric, f, verdict in zip(results, matched, fresh, verdicts):
        doc = {"name": result["name"], "metric_id": metric and b64encode(metric.id)}
        doc.update(verdict.to_json(), unit=f.unit)
        answers.append(doc)
    doc = {
        "results": answers,
        "shift": shift and shift.to_json(),
        "base": found and found[1],
        "missing": _missing_from(metrics, matched, [f.baseline for f in fresh]),
        "base_url": web.base_url(),
    }
    return json_response(doc)


def _baseline_at(
    metric: Metric, base: Sequence[str], found: tuple[int, str] | None, threshold: float
) -> Baseline:
    """Main's baseline at the base commit found; with a base none of which is stored, the
    newest level, its commit said to be none (null)."""
    baseline = Baseline.of(metric, found and found[0], threshold)
    return dataclasses.replace(baseline, commit=None) if base and found is None else baseline


def _missing_from(
    metrics: Sequence[Metric],
    matched: Sequence[Metric | None],
    baselines: Sequence[Baseline | None],
) -> list[dict[str, str]]:
    """Main's metrics that its run at the baseline measured along with those compared, but
    that the fresh results lack: a benchmark the PR lost (or renamed)."""
    newest = collections.Counter(b.times[-1] for b in baselines if b is not None and b.times)
    if not newest:
        return []
    run = newest.most_common(1)[0][0]
    compared = {m.id for m in matched if m is not None}
    lost = []
    for metric in metrics:
        times = metric.series.times
        i = bisect.bisect_left(times, run)
        if metric.id not in compared and i < len(times) and times[i] == run:
            lost.append({"name": metric.name, "metric_id": b64encode(metric.id)})
    return lost


def _show_info(web: _Web, ids: str) -> Any:
    """What the metric is, and how many points it holds, from when to when."""
    (metric,), _, query = _view_request(web, ids, "info")
    count, first, last = metric.series.span()
    doc = {k: v for k, v in metric.to_json().items() if k != "account_id"}
    doc.update(
        points=count,
        first=None if first is None else first // US,
        last=None if last is None else last // US,
    )
    return _cached(json.dumps(doc, separators=(",", ":")), "application/json", query)


def _show_index(web: _Web) -> Any:
    """The index page: what PerfIt is, and a form to open a metric."""
    form = _OPEN_FORM.format(action="m/", value="")
    page = _html_page("", _INDEX_MAIN.format(version=__version__, open_form=form))
    return _answer(page, headers={"Content-Type": _HTML_TYPE})


def _show_health(web: _Web) -> Any:
    """Whether the store is writable, and what compresses it."""
    store = web.store
    health: dict[str, Any] = {"ok": store.writable()}
    health["compression"] = store.zstd.name if store.zstd else None
    if not health["ok"]:
        health["message"] = "the store is not writable"
    elif store.zstd is None:
        health["message"] = f"logs stay uncompressed: {store.zstd_missing}; {_ZSTD_FIX}"
    return json_response(health, 200 if health["ok"] else 503)


def _show_openapi(web: _Web) -> Any:
    """This document: an OpenAPI 3.0 description of the API."""
    return json_response(openapi_document())


# ==============================================================================================
# Web: the route table
# Every route once: bottle routes it, its endpoint enforces what it declares (token, body,
# limits), and the OpenAPI document is derived from the same entry, so neither can drift.
# ==============================================================================================


@dataclasses.dataclass(frozen=True)
class _Answer:
    """What a route answers when all goes well, as the OpenAPI document describes it."""

    content: dict[str, Any]  #: media type -> schema (none for a 303)
    status: int = 200
    headers: tuple[str, ...] = ()  #: names of _HEADERS it carries


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


_CACHING = ("ETag", "Cache-Control")  #: the headers of a cached answer (see _cached)
_STRING = {"type": "string"}


def _json_answer(*schemas: str, cached: bool = False) -> _Answer:
    """JSON of one of these schemas; with an ETag and Cache-Control when cached."""
    refs = [_ref(s) for s in schemas]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return _Answer({"application/json": schema}, headers=_CACHING if cached else ())


_SVG_ANSWER = _Answer({"image/svg+xml": _STRING}, headers=_CACHING)
_HTML_ANSWER = _Answer({"text/html": _STRING})
_OPENMETRICS_ANSWER = _Answer({"application/openmetrics-text": _STRING})


@dataclasses.dataclass(frozen=True)
class Route:
    """One route of the app. Its summary is its handler's docstring."""

    method: str
    rule: str  #: bottle's; <board_id> a board's id, <token_id> a token's, any other a metric's
    handler: Callable[..., Any]  #: handler(web, [caller=], [body=], **path params)
    answer: _Answer
    auth: tuple[str, ...] = ()  #: the token types that may call it; () is anyone
    body: str = ""  #: the schema of the JSON body it takes, if any
    body_limit: int = _MAX_BODY_BYTES
    query: tuple[str, ...] = ()  #: its options, by name in _QUERY_OPTIONS
    overlay: bool = False  #: its path may name up to _MAX_OVERLAY metrics, not just one
    also: tuple[int, ...] = ()  #: statuses it answers besides those its declaration implies
    stores: bool = True  #: a PUT or POST that stores nothing (compare) says False

    @property
    def writes(self) -> bool:
        """Whether it stores something (so a full disk is a 507): every PUT, POST, PATCH and
        DELETE but those that say they store nothing."""
        return self.method in ("PUT", "POST", "PATCH", "DELETE") and self.stores

    @property
    def body_required(self) -> bool:
        """A POST posts something, a PATCH says what changes; the PUTs of administration may
        send nothing."""
        return self.method in ("POST", "PATCH")

    @property
    def ids(self) -> str:
        """What its path names: "" nothing, "one" metric, an "overlay" of several, a "board",
        a "token"."""
        if "<" not in self.rule:
            return ""
        if "<board_id>" in self.rule:
            return "board"
        if "<token_id>" in self.rule:
            return "token"
        return "overlay" if self.overlay else "one"

    @property
    def cached(self) -> bool:
        """Whether its answers carry an ETag, so that If-None-Match gets a 304."""
        return "ETag" in self.answer.headers

    @property
    def summary(self) -> str:
        return (self.handler.__doc__ or "").strip().splitlines()[0]

    @property
    def name(self) -> str:
        """Its operationId: the handler's name in camelCase (showChart), the rule telling two
        routes of one handler apart (showChartSvg)."""
        first, *rest = self.handler.__name__.lstrip("_").split("_")
        name = first + "".join(word.title() for word in rest)
        if self.rule.endswith(("/svg", "/html")):
            name += self.rule.rsplit("/", 1)[1].title()
        return name


def _view_route(rule: str, handler: Callable, answer: _Answer, *query: str) -> Route:
    """A view of one metric (GET /m/ID...): it takes the chart options, and maybe more."""
    return Route("GET", rule, handler, answer, query=(*_VIEW_QUERY, *query))


def _overlay_route(rule: str, handler: Callable, answer: _Answer) -> Route:
    """A view that also draws several metrics at once (GET /m/A,B,C...), and a branch's
    points over one metric's."""
    return Route("GET", rule, handler, answer, query=(*_VIEW_QUERY, "branch"), overlay=True)


_VIEW_QUERY = tuple(o.name for o in CHART_OPTIONS)
#: A metric id in a POST route's path: not ending in .svg, so POST /m/ID.svg is no post to a
#: metric "ID.svg" (a 404) but a method the chart's path does not take (a 405).
_ID = "<metric_id:re:[^/]+(?<!\\.svg)>"
_POINTS_ANSWER = _json_answer("Points", "PointsByMetric", cached=True)

_ANY_TOKEN = ("admin", "post")  #: of the account: the root token has none
_ADMIN_ROUTES = (
    Route("PUT", "/a/", _create_account, _json_answer("Credentials"), ("root",), "Empty"),
    Route("GET", "/a/", _show_account, _json_answer("Account"), _ANY_TOKEN),
    Route(
        "PATCH", "/a/", _change_account, _json_answer("AccountChanged"), ("admin",), "AccountChange"
    ),
    Route("PUT", "/t/", _create_token, _json_answer("Credentials"), ("admin",), "NewToken"),
    Route("GET", "/t/", _list_tokens, _json_answer("Tokens"), ("admin",)),
    Route("DELETE", "/t/<token_id>", _revoke_token, _json_answer("Revoked"), ("admin",)),
    Route("PUT", "/b/", _replace_board, _json_answer("NewBoard"), ("admin",), "Empty"),
    Route(
        "PUT", "/m/", _create_metric, _json_answer("Metric"), ("admin",), "NewMetric", also=(409,)
    ),
    Route("POST", f"/m/{_ID}", _post_point, _json_answer("Posted"), _ANY_TOKEN, "NewPoint"),
    Route(
        "PATCH",
        f"/m/{_ID}",
        _change_metric,
        _json_answer("Metric"),
        ("admin",),
        "MetricChange",
        also=(409,),
    ),
    Route("DELETE", f"/m/{_ID}", _delete_metric, _json_answer("Deleted"), ("admin",)),
    Route("POST", f"/m/{_ID}/accept", _accept_change, _json_answer("Change"), ("admin",), "Accept"),
    Route(
        "POST", f"/m/{_ID}/dismiss", _dismiss_change, _json_answer("Change"), ("admin",), "Accept"
    ),
    Route(
        "POST",
        f"/m/{_ID}/undismiss",
        _undismiss_change,
        _json_answer("Change"),
        ("admin",),
        "Accept",
    ),
    Route("POST", f"/m/{_ID}/exclude", _exclude_points, _json_answer("Marked"), ("admin",), "Span"),
    Route("POST", f"/m/{_ID}/include", _include_points, _json_answer("Marked"), ("admin",), "Span"),
    Route(
        "POST",
        f"/m/{_ID}/compare",
        _compare,
        _json_answer("Comparison"),
        body="Compare",
        query=("threshold",),
        stores=False,
    ),
    Route(
        "POST",
        "/b/<board_id>/compare",
        _compare_suite,
        _json_answer("SuiteComparison"),
        body="SuiteCompare",
        body_limit=_MAX_COMPARE_BODY_BYTES,
        query=("threshold",),
        stores=False,
    ),
    Route(
        "POST",
        "/r/",
        _post_run,
        _json_answer("Run"),
        _ANY_TOKEN,
        "NewRun",
        body_limit=_MAX_RUN_BODY_BYTES,
    ),
    Route(
        "POST",
        f"/m/{_ID}/points",
        _import_points,
        _json_answer("Added"),
        ("admin",),
        "Import",
        body_limit=_MAX_POINTS_BODY_BYTES,
    ),
)
_VIEW_ROUTES = (
    Route("GET", "/m/", _find_metric, _Answer({}, 303, ("Location",)), query=("metric-id",)),
    # Before /m/<ids>: bottle tries routes in order, and this one must win for "ID.svg".
    _overlay_route("/m/<ids:re:[^/.]+>.svg", _show_chart, _SVG_ANSWER),
    _overlay_route("/m/<ids>", _show_page, _HTML_ANSWER),
    _overlay_route("/m/<ids>/html", _show_page, _HTML_ANSWER),
    _overlay_route("/m/<ids>/svg", _show_chart, _SVG_ANSWER),
    _overlay_route("/m/<ids>/json", _show_points, _POINTS_ANSWER),
    _view_route("/m/<ids>/csv", _show_csv, _Answer({"text/csv": _STRING}), "branch"),
    _view_route("/m/<ids>/badge.svg", _show_badge, _SVG_ANSWER),
    _view_route(
        "/m/<ids>/changes", _show_changes, _json_answer("Changes", cached=True), "threshold"
    ),
    _view_route("/m/<ids>/info", _show_info, _json_answer("Info", cached=True)),
    Route("GET", "/m/<ids>/metrics", _show_metric_metrics, _OPENMETRICS_ANSWER),
)
_BOARD_ROUTES = (
    Route("GET", "/b/<board_id>", _show_board, _HTML_ANSWER),
    Route("GET", "/b/<board_id>/json", _show_board_json, _json_answer("BoardData", cached=True)),
    Route("GET", "/b/<board_id>/metrics", _show_board_metrics, _OPENMETRICS_ANSWER),
)
_SITE_ROUTES = (
    Route("GET", "/", _show_index, _HTML_ANSWER),
    Route("GET", "/healthz", _show_health, _json_answer("Health"), also=(503,)),
    Route("GET", "/openapi.json", _show_openapi, _Answer({"application/json": _STRING})),
)

ROUTES = (*_ADMIN_ROUTES, *_VIEW_ROUTES, *_BOARD_ROUTES, *_SITE_ROUTES)


# ==============================================================================================
# Web: the OpenAPI document
# Derived from ROUTES: security from `auth`, error answers from what a route can meet (a token,
# a body, options, a metric id, a write), limits from the constants. Served at /openapi.json.
# ==============================================================================================


def _text(max_bytes: int, what: str = "") -> dict[str, Any]:
    """A text field limited in UTF-8 bytes. maxLength counts characters, so it is an upper
    bound; the description gives the real rule."""
    about = f"{what} At most {max_bytes} bytes of UTF-8.".strip()
    return {"type": "string", "maxLength": max_bytes, "description": about}


def _object(
    properties: dict[str, Any], required: Sequence[str] = (), closed: bool = False, **more: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "object", "properties": properties, **more}
    if required:
        doc["required"] = list(required)
    if closed:
        doc["additionalProperties"] = False
    return doc


def _number(about: str = "") -> dict[str, Any]:
    """A finite float64 (a JSON number beyond it is refused)."""
    largest = sys.float_info.max
    return {"type": "number", "minimum": -largest, "maximum": largest, "description": about}


_ID_PATTERN = "[A-Za-z0-9_-]{21}[AQgw]"  #: 22 characters whose last 4 bits are zero
_UNIX = {"type": "integer", "description": "Unix seconds."}
_BETTER = {"type": "string", "enum": list(_BETTER_CHOICES), "default": "lower"}
_METRIC_FIELDS = {
    "metric_id": _ref("Id"),
    "name": {"type": "string"},
    "unit": {"type": "string"},
    "description": {"type": "string"},
    "better": _BETTER,
    "created": _UNIX,
    "keep": {
        "type": "string",
        "nullable": True,
        "description": "Retention: points older are not served (400d); null: all are kept.",
    },
}
_NAME = {
    **_text(
        _MAX_NAME_BYTES,
        "Unique within the account; '/' groups names (pytest/test_sort). No control characters, "
        "no space at either end.",
    ),
    "pattern": _NAME_PATTERN,
}
_COMMIT = {
    "type": "string",
    "pattern": _COMMIT_PATTERN,
    "description": "The commit measured: 7 to 40 hex digits (kept in lower case); '' is none.",
}
_BRANCH_FIELD = {
    **_NAME,
    "description": "The branch measured; none, or the account's main_branch, is main's line. "
    "Another branch's points are kept 30 days, drawn over main's when asked for (?branch=), "
    "and never move main's change points, checks, badge, board or baselines.",
}
#: What a post answers when its branch is not the account's main branch.
_OFF_MAIN = {
    "main": {
        "type": "boolean",
        "enum": [False],
        "description": "Only when the branch is not the account's main branch: the points are "
        "kept apart from main's, 30 days.",
    },
    "main_branch": {"type": "string", "description": "The account's main branch, then."},
}
_POINT = _object(
    {
        "t": _UNIX,
        "v": {"type": "number"},
        "m": {"type": "string", "description": "Metadata."},
        "commit": {"type": "string", "description": "The commit measured, when it was said."},
        "branch": {"type": "string", "description": "The branch measured, when it was said."},
    },
    ["t", "v"],
)
_BASE_URL = {
    "type": "string",
    "description": "Where the server is reached (serve --public-url, or the request's host): "
    "the base of links to its pages, such as BASE_URL/m/METRIC_ID.",
}
_ALERTS = _object(
    {
        "named": {"type": "integer", "minimum": 0, "description": "Regressions named."},
        "accepted": {"type": "integer", "minimum": 0, "description": "... said to be meant."},
        "dismissed": {"type": "integer", "minimum": 0, "description": "... said to be noise."},
    },
    ["named", "accepted", "dismissed"],
    description=f"The regressions named among the points of the last {_ALERT_DAYS} days.",
)
_SUSPECT_RUN = _object({"t": _UNIX, "commit": _COMMIT}, ["t"])
_CHANGE = _object(
    {
        "t": {**_UNIX, "description": "Unix seconds of the first point of the new level."},
        "index": {"type": "integer", "description": "That point's place in the range's points."},
        "before": {"type": "number", "description": "Median of the level before."},
        "after": {"type": "number", "description": "Median of the level after."},
        "change": {
            **_number("Relative: 0.25 is +25 %; null from a level of 0, or across 0."),
            "nullable": True,
        },
        "kind": {"type": "string", "enum": ["regression", "improvement"]},
        "accepted": {"type": "boolean", "description": "An admin said it was meant."},
        "dismissed": {"type": "boolean", "description": "An admin said it was noise."},
        "provisional": {"type": "boolean", "description": "The new level is still short."},
        "shape": {
            "type": "string",
            "enum": ["step", "drift"],
            "description": "drift: the level moved steadily over `runs` runs.",
        },
        "runs": {"type": "integer", "minimum": 1, "description": "Runs the move took."},
        "last_good": {
            **_SUSPECT_RUN,
            "nullable": True,
            "description": "The last run of the old level.",
        },
        "first_bad": {**_SUSPECT_RUN, "nullable": True, "description": "The first run off it."},
        "compare_url": {
            "type": "string",
            "description": "The commits between the two, where the job URL (metadata) names a "
            "GitHub or GitLab repository.",
        },
    },
    "t index before after change kind accepted dismissed provisional shape runs last_good "
    "first_bad".split(),
)
_NEW_POINT = {
    "value": _number("A finite number; not negative for a metric that counts time."),
    "metadata": _text(_MAX_METADATA_BYTES, "Typically a job URL."),
    "commit": _COMMIT,
    "branch": _BRANCH_FIELD,
    "unit": {
        "type": "string",
        "maxLength": _MAX_UNIT_BYTES,
        "description": "The value's unit: the metric's own (whatever it is), or a unit of time ("
        + ", ".join(sorted(TIME_UNITS))
        + ") for a metric in one, converted to it. Any other is a 400: which units a metric "
        "takes depends on its own, which a schema cannot say.",
    },
}
_HEALTH = {
    "ok": {"type": "boolean"},
    "compression": {
        "type": "string",
        "nullable": True,
        "description": "The zstd that seals full logs; null: none imports.",
    },
    "message": {"type": "string", "description": "What is wrong, if anything."},
}

_NEW_RUN_POINT = _object(
    {
        "name": {**_NAME, "minLength": 1},
        "value": _number("A finite number; not negative for a metric that counts time."),
        "unit": _text(
            _MAX_UNIT_BYTES,
            "The value's unit: a new metric gets it; a duration is "
            "stored in an existing metric's own unit of time.",
        ),
        "better": {**_BETTER, "description": "For a new metric."},
    },
    ["name", "value"],
    closed=True,
)
_BOARD_METRIC = _object(
    {
        "metric_id": _ref("Id"),
        "name": {"type": "string"},
        "unit": {"type": "string"},
        "better": _BETTER,
        "points": {"type": "integer", "minimum": 0},
        "latest": {**_POINT, "nullable": True, "description": "The newest point; null: none."},
        "level": {
            **_number(f"Median of the {_RECENT_LEVEL} values before the newest."),
            "nullable": True,
        },
        "change": {
            **_number("The newest value against the level (0.1 is +10 %)."),
            "nullable": True,
        },
        "state": {"type": "string", "enum": ["regression", "improvement", "steady", "empty"]},
        "newest_change": {**_CHANGE, "nullable": True},
    },
    [
        "metric_id",
        "name",
        "unit",
        "better",
        "points",
        "latest",
        "level",
        "change",
        "state",
        "newest_change",
    ],
)

_WEBHOOK = {
    "type": "string",
    "nullable": True,
    "maxLength": _MAX_WEBHOOK_BYTES,
    "pattern": _WEBHOOK_PATTERN,
    "description": "An http(s) URL told of each new regression (one JSON POST, Slack's text "
    "field and the change); null: none.",
}
_MARK_TIME = {"type": "integer", "minimum": 0, "maximum": _MAX_UNIX, "description": "Unix seconds."}
_MAIN_BRANCH = {
    **_NAME,
    "description": "The branch whose points are main's (points with no branch are too): the "
    "others' are kept 30 days and never move main's change points, checks, badge, board or "
    "baselines. Points posted from the moment it changes follow it.",
}

_IMPORT_TIME = {
    "type": "number",
    "minimum": 0,
    "description": f"Unix seconds, at most {_FUTURE_SLACK:g} s from now.",
}
_IMPORT_META = _text(_MAX_METADATA_BYTES, "Metadata.")

_SCHEMAS = {
    "Error": _object({"message": {"type": "string"}}, ["message"]),
    "Conflict": _object(
        {"message": {"type": "string"}, "metric_id": _ref("Id")},
        ["message"],
        "metric_id: the metric that has the name, when the conflict is a name.",
    ),
    "Id": {"type": "string", "pattern": f"^{_ID_PATTERN}$", "description": "128 random bits."},
    "Token": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$", "description": "256 bits."},
    "Duration": {
        "type": "string",
        "pattern": _DURATION_PATTERN,
        "description": "90s, 15m, 12h, 3d, 2w, 2 weeks, 1d 12h: at most a thousand years.",
    },
    "Empty": _object({}, closed=True, maxProperties=0, description="Nothing, or {}."),
    "NewToken": _object({"type": {"type": "string", "enum": ["post", "admin"]}}, closed=True),
    "Credentials": _object(
        {"account_id": _ref("Id"), "access_token": _ref("Token"), "token_id": _ref("Id")},
        ["account_id", "access_token", "token_id"],
    ),
    "NewMetric": _object(
        {
            "name": _NAME,
            "unit": _text(_MAX_UNIT_BYTES, f"{', '.join(_TIME_UNIT_NAMES)} draw as durations."),
            "description": _text(_MAX_DESCRIPTION_BYTES),
            "better": _BETTER,
        },
        closed=True,
    ),
    "Metric": _object(
        {**_METRIC_FIELDS, "account_id": _ref("Id")}, [*_METRIC_FIELDS, "account_id"]
    ),
    "NewPoint": _object(_NEW_POINT, ["value"], closed=True),
    "Posted": _object({"t": _UNIX, **_OFF_MAIN}, ["t"]),
    "Added": _object(
        {
            "added": {"type": "integer", "minimum": 0},
            "existing": {"type": "integer", "minimum": 0},
            "expired": {
                "type": "integer",
                "minimum": 1,
                "description": "Points older than the metric keeps (see keep): not stored.",
            },
        },
        ["added", "existing"],
    ),
    "Points": {"type": "array", "items": _POINT, "description": "Time order, ties by arrival."},
    "PointsByMetric": _object({}, additionalProperties=_ref("Points")),
    "Changes": {"type": "array", "items": _CHANGE, "description": "Oldest first."},
    "Info": _object(
        {
            **_METRIC_FIELDS,
            "points": {"type": "integer", "minimum": 0},
            "first": {**_UNIX, "nullable": True},
            "last": {**_UNIX, "nullable": True},
        },
        [*_METRIC_FIELDS, "points", "first", "last"],
    ),
    "Health": _object(_HEALTH, ["ok", "compression"]),
    # Times may lie up to _FUTURE_SLACK seconds beyond the server's clock: a bound that moves,
    # which a document cannot state; the description does.
    "Import": {
        "oneOf": [
            {
                "type": "array",
                "maxItems": MAX_IMPORT_POINTS,
                "items": _object(
                    {
                        "t": _IMPORT_TIME,
                        "v": _number("A finite number."),
                        "m": _IMPORT_META,
                        "commit": _COMMIT,
                        "branch": _BRANCH_FIELD,
                    },
                    ["t", "v"],
                    closed=True,
                ),
            },
            _object(
                {
                    "t": {"type": "array", "maxItems": MAX_IMPORT_POINTS, "items": _IMPORT_TIME},
                    "v": {"type": "array", "maxItems": MAX_IMPORT_POINTS, "items": _number()},
                    "m": {"type": "array", "maxItems": MAX_IMPORT_POINTS, "items": _IMPORT_META},
                    "commit": {"type": "array", "maxItems": MAX_IMPORT_POINTS, "items": _COMMIT},
                    "branch": {
                        "type": "array",
                        "maxItems": MAX_IMPORT_POINTS,
                        "items": _BRANCH_FIELD,
                    },
                },
                ["t", "v"],
                closed=True,
                description="The same points as columns, of one length (what `metric import` "
                "sends).",
            ),
        ]
    },
}

_FRESH_VALUES = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_RUN_POINTS,
    "items": _number("A finite number."),
    "description": "A run's samples (or one value); their median is compared, their scatter "
    "widens the interval when it is larger than main's noise.",
}
_FRESH_UNIT = _text(
    _MAX_UNIT_BYTES,
    "The values' unit: a duration is converted into the metric's unit of time; the metric's "
    "own unit is taken as it is.",
)
_BASE = {
    "oneOf": [
        {**_COMMIT, "minLength": 7},
        {"type": "array", "maxItems": _MAX_BASE_COMMITS, "items": {**_COMMIT, "minLength": 7}},
    ],
    "description": "Where the PR branched: a commit, or commits newest first (its ancestors). "
    "The baseline is main's level at the newest point of the first one stored.",
}
_RESULT_NAME = {**_NAME, "minLength": 1}
_INTERVAL = {
    "type": "array",
    "items": {"type": "number", "nullable": True},
    "minItems": 2,
    "maxItems": 2,
    "nullable": True,
    "description": "The 95 % interval of the change (Student's t on the log ratio).",
}
_COMPARISON = {
    "baseline": _object(
        {
            "median": {**_number("Of main's baseline points."), "nullable": True},
            "n": {"type": "integer", "minimum": 0},
            "spread": {
                **_number("Their noise: a standard deviation, in the metric's unit."),
                "nullable": True,
            },
            "commit": {
                "type": "string",
                "nullable": True,
                "description": "The commit of the baseline's newest point; null when a base was "
                "given and none of it is stored (the newest level is used), or it is unknown.",
            },
        },
        ["median", "n", "spread", "commit"],
    ),
    "value": _number("The median of the values sent."),
    "change": {
        **_number("Relative: 0.25 is +25 %; in a suite, the run's shift taken out."),
        "nullable": True,
    },
    "interval": _INTERVAL,
    "verdict": {
        "type": "string",
        "enum": ["regression", "improvement", "same", "inconclusive", "new"],
        "description": "regression or improvement: at least the threshold and beyond the "
        "noise; inconclusive: at least the threshold, within the noise; same: under the "
        "threshold; new: main has no point to compare with.",
    },
}
_SUITE_RESULT = {
    "name": {"type": "string"},
    "metric_id": {**_ref("Id"), "nullable": True},
    "unit": {"type": "string"},
    **_COMPARISON,
}

#: The schemas of runs, accounts, boards, marks and comparisons (the benchmark-suite routes).
_SUITE_SCHEMAS = {
    "NewRun": _object(
        {
            "metadata": _text(_MAX_METADATA_BYTES, "Kept with every point of the run."),
            "commit": _COMMIT,
            "branch": _BRANCH_FIELD,
            "points": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_RUN_POINTS,
                "items": _NEW_RUN_POINT,
                "description": "Metrics missing by name are created; a name may come more "
                "than once (each value is a point).",
            },
        },
        ["points"],
        closed=True,
    ),
    "Run": _object(
        {"t": _UNIX, "metrics": _object({}, additionalProperties=_ref("Id")), **_OFF_MAIN},
        ["t", "metrics"],
    ),
    "Account": _object(
        {
            "account_id": _ref("Id"),
            "board_id": _ref("Id"),
            "webhook": _WEBHOOK,
            "main_branch": _MAIN_BRANCH,
            "alerts": _ALERTS,
            "metrics": {
                "type": "array",
                "items": _object(
                    {k: _METRIC_FIELDS[k] for k in ("metric_id", "name", "unit", "better")},
                    ["metric_id", "name", "unit", "better"],
                ),
            },
        },
        ["account_id", "board_id", "webhook", "main_branch", "alerts", "metrics"],
    ),
    "NewBoard": _object({"board_id": _ref("Id")}, ["board_id"]),
    "AccountChange": _object(
        {"webhook": _WEBHOOK, "main_branch": {**_MAIN_BRANCH, "minLength": 1}},
        closed=True,
        minProperties=1,
    ),
    "AccountChanged": _object(
        {"account_id": _ref("Id"), "webhook": _WEBHOOK, "main_branch": _MAIN_BRANCH},
        ["account_id", "webhook", "main_branch"],
    ),
    "Accept": _object({"t": _MARK_TIME}, ["t"], closed=True),
    "Span": {
        "oneOf": [
            _object({"t": _MARK_TIME}, ["t"], closed=True),
            _object({"start": _MARK_TIME, "end": _MARK_TIME}, ["start", "end"], closed=True),
        ],
        "description": "One second's points, or those from start to end (inclusive).",
    },
    "Marked": _object(
        {"points": {"type": "integer", "minimum": 0, "description": "Points in the span."}},
        ["points"],
    ),
    "Change": _CHANGE,
    "Compare": _object(
        {"values": _FRESH_VALUES, "unit": _FRESH_UNIT, "base": _BASE}, ["values"], closed=True
    ),
    "Comparison": _object(_COMPARISON, list(_COMPARISON)),
    "SuiteCompare": _object(
        {
            "results": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_COMPARE_RESULTS,
                "items": {
                    "oneOf": [
                        _object(
                            {"name": _RESULT_NAME, "value": _number(), "unit": _FRESH_UNIT},
                            ["name", "value"],
                            closed=True,
                        ),
                        _object(
                            {"name": _RESULT_NAME, "values": _FRESH_VALUES, "unit": _FRESH_UNIT},
                            ["name", "values"],
                            closed=True,
                        ),
                    ]
                },
                "description": "A suite's results by name, as a CI run posts them (POST /r/).",
            },
            "base": _BASE,
        },
        ["results"],
        closed=True,
    ),
    "SuiteComparison": _object(
        {
            "results": {
                "type": "array",
                "items": _object(_SUITE_RESULT, list(_SUITE_RESULT)),
                "description": "In the order sent.",
            },
            "shift": {
                **_object(
                    {
                        "change": {**_number("Relative."), "nullable": True},
                        "interval": _INTERVAL,
                        "verdict": {"type": "string", "enum": ["same", "inconclusive"]},
                        "results": {"type": "integer", "minimum": 1},
                    },
                    ["change", "interval", "verdict", "results"],
                ),
                "nullable": True,
                "description": "What the whole run shares (a slower runner, or a change every "
                f"benchmark feels), taken out of each change; null under {_SUITE_MIN} results.",
            },
            "base": {
                "type": "string",
                "nullable": True,
                "description": "The base commit the baselines are at; null: none was stored (or "
                "none given), and the baselines are main's newest levels.",
            },
            "missing": {
                "type": "array",
                "items": _object(
                    {"name": {"type": "string"}, "metric_id": _ref("Id")}, ["name", "metric_id"]
                ),
                "description": "Main's benchmarks of the same run that the results lack.",
            },
            "base_url": _BASE_URL,
        },
        ["results", "shift", "base", "missing", "base_url"],
    ),
    "BoardData": _object(
        {
            "board_id": _ref("Id"),
            "base_url": _BASE_URL,
            "alerts": _ALERTS,
            "metrics": {"type": "array", "items": _BOARD_METRIC},
        },
        ["board_id", "base_url", "alerts", "metrics"],
    ),
}


#: Every error answer, by status: what it means. The body is always Error.
#: The schemas of tokens listed and revoked, metrics changed and deleted.
_LIFECYCLE_SCHEMAS = {
    "Tokens": _object(
        {
            "account_id": _ref("Id"),
            "tokens": {
                "type": "array",
                "description": "Oldest first.",
                "items": _object(
                    {
                        "token_id": _ref("Id"),
                        "type": {"type": "string", "enum": ["admin", "post"]},
                        "created": {**_UNIX, "nullable": True, "description": "null: before 0.2."},
                    },
                    ["token_id", "type", "created"],
                ),
            },
        },
        ["account_id", "tokens"],
    ),
    "Revoked": _object(
        {"token_id": _ref("Id"), "revoked": {"type": "boolean", "enum": [True]}},
        ["token_id", "revoked"],
    ),
    "MetricChange": _object(
        {
            "name": _NAME,
            "unit": _text(_MAX_UNIT_BYTES, "A new label: the values stay as they are."),
            "description": _text(_MAX_DESCRIPTION_BYTES),
            "better": _BETTER,
            "keep": {
                "type": "string",
                "nullable": True,
                "maxLength": _MAX_KEEP_BYTES,
                "pattern": _DURATION_PATTERN.removesuffix("*$") + "+$",  # not empty
                "description": "Retention, at least a day (400d, 2y); null: keep every point.",
            },
        },
        closed=True,
        minProperties=1,
    ),
    "Deleted": _object(
        {"metric_id": _ref("Id"), "deleted": {"type": "integer", "minimum": 0}},
        ["metric_id", "deleted"],
    ),
}

_ERROR_ANSWERS = {
    400: "Malformed input: the message names what is wrong.",
    401: "Missing or unknown access token.",
    403: "The token's type, or its account, does not allow this; or the account would have "
    f"more than {MAX_ACCOUNT_METRICS:,} metrics, or no admin token left.",
    404: "Unknown metric, board or token (or, to accept, change point).",
    409: "The name is taken: metric_id is the metric that has it. Or the request sent first "
    "with this Idempotency-Key is still at work, or was stored but not answered (a crash).",
    422: "This Idempotency-Key came with another request before.",
    413: f"The body is over {_MAX_BODY_BYTES >> 10} KiB ({_MAX_POINTS_BODY_BYTES >> 20} MiB for "
    f"/points and /b/ID/compare, {_MAX_RUN_BODY_BYTES >> 20} MiB for /r/), or an import has "
    f"more than {MAX_IMPORT_POINTS:,} points, a run more than {MAX_RUN_POINTS:,}, a suite "
    f"comparison more than {MAX_COMPARE_RESULTS:,} results.",
    429: "Too many requests, or failed authentications, from this address.",
    503: "The store is not writable.",
    507: "The store cannot take the write; nothing was stored.",
}
_HEADERS = {
    "ETag": "A strong validator of the body; send it back in If-None-Match.",
    "Cache-Control": "A day for a range that is over, a minute otherwise.",
    "Retry-After": "Seconds to wait before trying again.",
    "Location": "Where the metric's page is, relative to /m/.",
}


def _openapi_path(rule: str) -> str:
    """A bottle rule as an OpenAPI path: {board_id}, {token_id}, or {id} for a metric's id
    (or ids)."""
    named = rule.replace("<board_id>", "{board_id}").replace("<token_id>", "{token_id}")
    return re.sub(r"<[^>]+>", "{id}", named)


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 description of ROUTES, served at /openapi.json."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(_openapi_path(route.rule), {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "PerfIt",
            "version": __version__,
            "license": {"name": "MIT"},
            "description": _OPENAPI_INTRO,
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {**_SCHEMAS, **_SUITE_SCHEMAS, **_LIFECYCLE_SCHEMAS},
            "headers": {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in _HEADERS.items()
            },
            "responses": {
                f"E{status}": {"description": text, "content": _error_content(status)}
                for status, text in _ERROR_ANSWERS.items()
            },
        },
    }


def _error_content(status: int) -> dict[str, Any]:
    """An error's body: JSON (a 409 names the metric that has the name), or a browser's page."""
    schema = _ref("Conflict" if status == 409 else "Error")
    return {"application/json": {"schema": schema}, "text/html": {"schema": {"type": "string"}}}


_OPENAPI_INTRO = (
    "Records and plots metrics, typically how long the steps of CI pipelines take. A metric id "
    "is an unguessable read capability: anyone holding it may read the metric. Writing needs a "
    "bearer token of the owning account: root (creates accounts), admin (creates metrics and "
    "tokens of its account, and posts) or post (posts to its account's metrics only). Every "
    'error is JSON {"message": "..."}, or a small HTML page when the Accept header prefers '
    "text/html (a browser's)."
)


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.name, "summary": route.summary}
    parameters = [_query_parameter(_QUERY_OPTIONS[name]) for name in route.query]
    if route.ids:
        parameters.insert(0, _id_parameter(route.ids))
    if route.writes:
        parameters.append(_KEY_PARAMETER)
    if parameters:
        operation["parameters"] = parameters
    if route.auth:
        operation["security"] = [{"bearer": []}]
        operation["description"] = f"Needs a token of type {' or '.join(route.auth)}."
    if route.body:
        content = {"application/json": {"schema": _ref(route.body)}}
        operation["requestBody"] = {"required": route.body_required, "content": content}
    answer = route.answer
    responses: dict[str, Any] = {
        str(answer.status): {
            "description": route.summary,
            "content": {media: {"schema": schema} for media, schema in answer.content.items()},
            "headers": {h: {"$ref": f"#/components/headers/{h}"} for h in answer.headers},
        }
    }
    if route.cached:
        responses["304"] = {
            "description": "If-None-Match named the current ETag.",
            "headers": responses[str(answer.status)]["headers"],
        }
    links = _links(route)
    if links:
        responses[str(answer.status)]["links"] = links
    for status in _route_errors(route):
        responses.setdefault(str(status), {"$ref": f"#/components/responses/E{status}"})
    operation["responses"] = responses
    return operation


#: What a PUT's answer names, by its schema: the field, and the routes (by Route.ids) whose
#: path takes it. OpenAPI links: a client (or schemathesis's stateful run) follows a PUT to what
#: can be done with the thing it made.
_CREATED = {
    "Metric": ("metric_id", ("one", "overlay")),
    "NewBoard": ("board_id", ("board",)),
    "Credentials": ("token_id", ("token",)),
}


def _links(route: Route) -> dict[str, Any]:
    """The OpenAPI links from what `route` creates to the routes that take its id."""
    made = route.answer.content.get("application/json", {}).get("$ref", "").rsplit("/", 1)[-1]
    if route.method != "PUT" or made not in _CREATED or "root" in route.auth:
        return {}  # a new account's token is no thing the root token can act on
    field, kinds = _CREATED[made]
    return {
        target.name: {
            "operationId": target.name,
            "parameters": {_id_parameter(target.ids)["name"]: f"$response.body#/{field}"},
        }
        for target in ROUTES
        if target.ids in kinds
    }


_KEY_PARAMETER = {
    "name": _KEY_HEADER,
    "in": "header",
    "required": False,
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": _MAX_KEY_BYTES,
        "pattern": "^[!-~]([ -~]*[!-~])?$",
    },
    "description": "Any unique text (a UUID): the request sent again with it within "
    f"{IDEMPOTENCY_KEEP // 3600} hours is not done again, but answered as the first was "
    "(with Idempotent-Replayed: true). perfit's client sends one with every write.",
}


def _id_parameter(ids: str) -> dict[str, Any]:
    """The id in a path (see Route.ids): a board's, a metric's, or up to _MAX_OVERLAY of them."""
    pattern, name, about = _ID_PATTERN, "id", "A metric's id."
    if ids == "overlay":
        pattern += f"(,{_ID_PATTERN}){{0,{_MAX_OVERLAY - 1}}}"
        about = f"A metric's id, or up to {_MAX_OVERLAY} separated by commas."
    elif ids == "board":
        name, about = "board_id", "A board's id (see GET /a/)."
    elif ids == "token":
        name, about = "token_id", "A token's id (see GET /t/): not the token."
    schema = {"type": "string", "pattern": f"^{pattern}$"}
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": about}


def _route_errors(route: Route) -> list[int]:
    """The error statuses a route can answer, from what it declares."""
    statuses = {429, *route.also}  # a rate limit applies to every route
    if route.auth:
        statuses |= {401, 403}
    if route.body:
        statuses |= {400, 413}
    if route.query or route.ids == "overlay":
        statuses.add(400)  # a bad option; more metrics than a chart holds
    if route.ids or "metric-id" in route.query:
        statuses.add(404)  # it names a metric
    if route.writes:
        statuses |= {400, 409, 422, 507}  # 400, 409, 422: an Idempotency-Key's
    return sorted(statuses)


_UNSET = {"type": "string", "maxLength": 0}  #: an empty option is an option not given

#: The schema of each kind of query option.
_KIND_SCHEMAS = {
    "text": _text(_MAX_NAME_BYTES),
    "time": {"anyOf": [{"type": "string", "format": "date-time"}, _UNSET]},
    "duration": _ref("Duration"),
    "number": {"anyOf": [{"type": "number"}, _UNSET]},
    "threshold": {"anyOf": [{"type": "number", "minimum": 0, "maximum": _MAX_THRESHOLD}, _UNSET]},
    "link": {"type": "string"},
    "branch": {"type": "string", "maxLength": _MAX_NAME_BYTES, "pattern": _NAME_PATTERN},
}


def _query_parameter(option: QueryOption) -> dict[str, Any]:
    parameter = {
        "name": option.name,
        "in": "query",
        "required": option.required,
        "description": option.help,
        "schema": _KIND_SCHEMAS[option.kind],
    }
    if option.example:
        parameter["example"] = option.example
    return parameter


# ==============================================================================================
# Web: the app
# make_app(store, config) builds the bottle app from ROUTES: each endpoint applies the rate
# limit and what its route declares, then calls the handler; every error is an answer.
# ==============================================================================================


def make_app(store: Store, config: ServerConfig | None = None) -> bottle.Bottle:
    """The WSGI app serving `store`."""
    import bottle

    web = _Web.of(store, config)
    app = bottle.Bottle(catchall=True)
    for route in ROUTES:
        app.route(route.rule, route.method, _endpoint(web, route), name=route.name)
    app.default_error_handler = _bottle_error
    return app


def _endpoint(web: _Web, route: Route) -> Callable[..., Any]:
    """What bottle calls for a route: the rate limit, the caller's token (when the route needs
    one), the JSON body (when it takes one, within its limit), then the handler."""

    def endpoint(**params: Any) -> Any:
        try:
            _limit_rate(web)
            if route.auth:
                params["caller"] = _authenticate(web, route.auth)
            if route.body:
                params["body"] = _read_json_body(_request().environ, route.body_limit)
            return _idempotently(web, route, params)
        except PerfitError as err:
            return _error_response(err)

    return endpoint


#: The views of a metric (/m/ID/VIEW), for the message of a 404 that names none of them.
_VIEWS = [r.rule.rsplit("/", 1)[1] for r in ROUTES if r.rule.startswith("/m/<ids>/")]


def _bottle_error(res: Any) -> Any:
    """The errors bottle raises itself (no route, wrong method, a bug), answered like ours."""
    import bottle

    message = {404: "no such route", 405: "method not allowed"}.get(res.status_code)
    if res.status_code == 404 and re.fullmatch(r"/m/[^/]+/[^/]+", bottle.request.path):
        view = bottle.request.path.rsplit("/", 1)[1]
        message = f"no view {view!r} of a metric; try {', '.join(_VIEWS)}"
    err = PerfitError(message or "internal server error")
    err.status = res.status_code
    answer = _error_response(err)
    bottle.response.content_type = answer.content_type
    return answer.body


# ==============================================================================================
# Web: the HTTP server
# The standard library's WSGI server with a thread per connection, so one slow client never
# blocks the others, and the two bounds a public server needs; SIGTERM stops it cleanly.
# ==============================================================================================


def _parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:5050) into a bindable (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen: {text!r} is not HOST:PORT (like 127.0.0.1:5050)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


_BUSY_BODY = b'{"message":"the server is busy; retry shortly"}'
_BUSY_ANSWER = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


@functools.cache
def _http_server_class() -> type:
    """The server's class, made when first used: wsgiref and socketserver are imports that
    only the server pays for, so a client command starts without them."""
    import http
    import socket
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class _RequestHandler(WSGIRequestHandler):
        """One connection: the header deadline is watched, malformed requests answered in JSON."""

        timeout = _SOCKET_TIMEOUT  # a stalled client loses its connection, not a thread forever
        # Buffered: wsgiref writes the status line, each header line and the body separately;
        # unbuffered, each is a system call of its own (and a GIL hand-off). The body's write
        # flushes them all as one, and a body larger than the buffer goes straight through.
        wbufsize = 1 << 16
        server: Any  # the HTTPServer below

        def setup(self) -> None:
            super().setup()
            self.server.watch(self.connection)

        def parse_request(self) -> bool:
            ok = super().parse_request()
            self.server.unwatch(self.connection)  # headers are in: the deadline is met
            return ok

        def get_environ(self) -> dict:
            environ = super().get_environ()
            environ["perfit.connection"] = self.connection  # to bound reads of refused bodies
            return environ

        def address_string(self) -> str:
            return self.client_address[0]  # no reverse DNS per request

        def log_message(self, format: str, *args: Any) -> None:
            # The request line and status only: headers (Authorization) are never logged; and
            # what the client sent escaped (_printable).
            _log.info("%s %s", self.address_string(), _printable(format % args))

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            # http.server answers malformed requests with an HTML page; ours are JSON.
            body = json.dumps({"message": message or http.HTTPStatus(code).phrase}).encode()
            if self.request_version == "HTTP/0.9":
                self.request_version = "HTTP/1.0"  # nobody speaks 0.9: answer with a status line
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    class HTTPServer(socketserver.ThreadingMixIn, WSGIServer):
        """A thread per connection, at most `max_connections` at once (more get a 503 straight
        away), and `header_timeout` seconds for a request's headers (a slowloris is cut off)."""

        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

        def __init__(
            self, host: str, port: int, app: Callable, max_connections: int, header_timeout: float
        ) -> None:
            self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.header_timeout = header_timeout
            self._slots = threading.BoundedSemaphore(max(1, max_connections))
            self._deadlines: dict[socket.socket, float] = {}
            self._deadlines_lock = threading.Lock()
            self._closed = threading.Event()
            self._active = 0  #: connections being served
            self._idle = threading.Condition()  #: notified as each of them ends
            super().__init__((host, port), _RequestHandler)
            self.set_app(app)
            threading.Thread(target=self._reap, name="perfit-reaper", daemon=True).start()

        def server_bind(self) -> None:
            # HTTPServer.server_bind calls getfqdn(), which can stall for seconds without DNS.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.server_address[:2]
            self.setup_environ()

        def server_close(self) -> None:
            self._closed.set()  # the reaper stops with the server
            super().server_close()

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self._slots.acquire(blocking=False):
                with contextlib.suppress(OSError):
                    request.settimeout(1)
                    request.sendall(_BUSY_ANSWER)
                self.shutdown_request(request)
                return
            with self._idle:
                self._active += 1
            super().process_request(request, client_address)

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.unwatch(request)
                self._slots.release()
                with self._idle:
                    self._active -= 1
                    self._idle.notify_all()

        def drain(self, seconds: float) -> int:
            """Wait up to `seconds` for the requests at work to end (a stop lets a write
            that is stored also answer, and record its answer); how many are left."""
            with self._idle:
                self._idle.wait_for(lambda: self._active == 0, seconds)
                return self._active

        def watch(self, connection: socket.socket) -> None:
            with self._deadlines_lock:
                self._deadlines[connection] = time.monotonic() + self.header_timeout

        def unwatch(self, connection: socket.socket) -> None:
            with self._deadlines_lock:
                self._deadlines.pop(connection, None)

        def _reap(self) -> None:
            """Cut off connections whose headers did not arrive in time (slowloris)."""
            while not self._closed.wait(min(0.5, self.header_timeout / 4)):
                now = time.monotonic()
                with self._deadlines_lock:
                    late = [c for c, deadline in self._deadlines.items() if deadline < now]
                    for connection in late:
                        del self._deadlines[connection]
                for connection in late:
                    with contextlib.suppress(OSError):
                        connection.shutdown(socket.SHUT_RDWR)

        def handle_error(self, request: Any, client_address: Any) -> None:
            error = _printable(str(sys.exc_info()[1]))
            _log.info("connection from %s failed: %s", client_address[0], error)

    return HTTPServer


def __getattr__(name: str) -> Any:
    """`perfit.HTTPServer`, made when first asked for (see _http_server_class)."""
    if name == "HTTPServer":
        return _http_server_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_server(
    host: str,
    port: int,
    app: Callable,
    max_connections: int = _DEFAULT_MAX_CONNECTIONS,
    header_timeout: float = _HEADER_TIMEOUT,
) -> Any:
    """A threaded WSGI server (HTTPServer) bound to host:port (port 0 picks a free one)."""
    return _http_server_class()(host, port, app, max_connections, header_timeout)


# ==============================================================================================
# Client
# HTTP calls to a PerfIt server with the standard library only: JSON in and out, retries with
# backoff on failed connections, 5xx and 429, all within one total timeout.
# ==============================================================================================


def _opener(address: str = "") -> Any:
    """A urllib opener that refuses redirects: urllib would turn a POST into a GET and take
    the token to any host. With `address`, it connects there whatever the URL's host resolves
    to (TLS still checks the host's name). (urllib.request is imported here: a command that
    sends nothing starts without it.)"""
    import http.client
    import urllib.request

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(
            self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
        ) -> None:
            raise ServerSaidNo(
                f"{req.get_full_url()} redirects to {newurl}: set --server to that URL"
            )

    if not address:
        return urllib.request.build_opener(NoRedirects)
    import socket

    def pinned(base: type) -> type:
        class Pinned(base):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                self._create_connection = lambda where, *more: socket.create_connection(
                    (address, where[1]), *more
                )
                super().connect()

        return Pinned

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(pinned(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(pinned(http.client.HTTPSConnection), req, context=self._context)

    return urllib.request.build_opener(NoRedirects, Http, Https)


#: Statuses after which a write is sent again: nothing was stored (429, 503, 507), or the
#: proxy in front lost the server (502, 504), and the write's Idempotency-Key makes a repeat
#: of one that was stored answer without storing it twice. A 500 is a bug: it would recur.
_RETRIED_WRITES = (429, 502, 503, 504, 507)


@dataclasses.dataclass
class Client:
    server: str
    token: str | None = None
    timeout: float = _DEFAULT_TIMEOUT

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request, retrying what is safe to retry; return the decoded JSON answer."""
        return _decode_answer(self.server + path, self.fetch(method, path, body))

    def fetch(self, method: str, path: str, body: Any = None) -> bytes:
        """The raw answer to one request, retried with backoff while that is safe and can help.

        The first retry is announced on stderr (a CI log should not sit silent for the whole
        timeout). What cannot heal fails at once: a 4xx, a name that does not resolve, a
        certificate that does not verify, a write that may have been stored.
        """
        import http.client
        import urllib.error
        import urllib.request

        url = self.server.rstrip("/") + path
        data = body if isinstance(body, bytes) else None  # bytes: JSON already encoded
        if body is not None and data is None:
            data = json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json", "User-Agent": f"perfit/{__version__}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if method != "GET":
            headers[_KEY_HEADER] = b64encode(new_id())  # one for all the tries of this write
        opener = _opener()
        deadline = time.monotonic() + self.timeout
        for attempt in range(1000):
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            remaining = deadline - time.monotonic()
            try:
                with opener.open(request, timeout=max(remaining, 0.1)) as answer:
                    return answer.read()
            except urllib.error.HTTPError as e:
                message = _server_message(e)
                if e.code < 500 and e.code != 429:
                    hint = _hint(e.code, message, self.server, url)
                    raise ServerSaidNo(f"{method} {path}: {e.code} {message}{hint}") from None
                if method != "GET" and e.code not in _RETRIED_WRITES:
                    raise SendFailed(f"{method} {path}: {e.code} {message} (not retried)") from None
                failure, delay = f"{e.code} {message}", _retry_after(e)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                _fail_if_hopeless(self.server, reason)
                # "Connection refused", not "[Errno 111] Connection refused"
                failure = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
                delay = None
            delay = delay if delay is not None else min(0.25 * 2**attempt, 5.0)
            if time.monotonic() + delay >= deadline:
                raise SendFailed(
                    f"could not reach {self.server} within {self.timeout:g}s: {failure}"
                )
            if attempt == 0:
                print(
                    f"perfit: {method} {url}: {failure}; retrying for up to "
                    f"{deadline - time.monotonic():.0f}s (--timeout, ${ENV_TIMEOUT})",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _fail_if_hopeless(server: str, reason: object) -> None:
    """Fail at once where waiting cannot help: a typo in the host, a certificate that lies."""
    import socket
    import ssl
    import urllib.parse

    host = urllib.parse.urlsplit(server).hostname
    if isinstance(reason, socket.gaierror):
        raise SendFailed(
            f"cannot resolve the server's name {host!r}: {reason.strerror}; "
            f"check --server (${ENV_SERVER})"
        ) from None
    if isinstance(reason, ssl.SSLCertVerificationError):
        raise SendFailed(
            f"the certificate of {host} does not verify: {reason.verify_message or reason}"
        ) from None
    if isinstance(reason, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(reason):
        # A TLS hello answered by plain HTTP: nothing was sent, and no retry helps.
        plain = "http://" + server.partition("://")[2]
        raise SendFailed(
            f"{server} answers in plain HTTP, not TLS: did you mean {plain}? "
            f"(--server, ${ENV_SERVER})"
        ) from None


def _hint(status: int, message: str, server: str, url: str) -> str:
    """A next step for a 4xx that leaves a person stuck, said after the server's message."""
    import urllib.parse

    if status == 401:
        return f" (the token given by --access-token or ${ENV_ACCESS_TOKEN})"
    path = urllib.parse.urlsplit(server).path.strip("/")
    if status == 404 and message == "no such route" and path:
        return (
            f": {url} was asked, and PerfIt serves from its root: --server (${ENV_SERVER}) "
            f"without /{path}, or a proxy that strips it"
        )
    return ""


def _decode_answer(url: str, raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        # Reached, but not a PerfIt server (a login page, a proxy): check --server.
        raise ServerSaidNo(f"the answer from {url} is not JSON: is it a PerfIt server?") from None


def _server_message(e: urllib.error.HTTPError) -> str:
    import http.client  # imported already by urllib, which raised e

    try:
        return str(json.loads(e.read())["message"])
    except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
        return e.reason or "error"


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    try:
        seconds = float(e.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return min(max(seconds, 0.0), 60.0) if math.isfinite(seconds) else None


def _server_url(text: str, option: str = "--server") -> str:
    """The --server (or --public-url) value as a base URL (http:// added when missing), or a
    UsageError."""
    import urllib.parse

    url = text if "://" in text else f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        raise UsageError(f"{option}: {text!r} is not a URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{option}: {text!r} is not an http(s) URL like https://perfit.example")
    if parts.query or parts.fragment:
        raise UsageError(f"{option}: {text!r} has a query or fragment; give the server's base URL")
    return url.rstrip("/")


# ==============================================================================================
# Client: harness formats
# The results files of benchmark harnesses read into named results, standard library only: one
# reader a format, each taking the median where the tool gives one, times in seconds.
# ==============================================================================================


@dataclasses.dataclass(frozen=True)
class Result:
    """One benchmark's result as PerfIt stores it: a named value, a unit, a direction."""

    name: str
    value: float
    unit: str = "s"
    better: str = "lower"
    #: every sample the harness wrote (its runs, rounds, repetitions), in `unit`; () when it
    #: wrote one number. `post` stores the value; `compare` judges the samples.
    samples: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "value": self.value, "unit": self.unit}
        if self.better != "lower":
            doc["better"] = self.better
        return doc


#: Seconds in each unit of time that harnesses write.
_HARNESS_TIME_UNITS = {
    "ps": 1e-12,
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "min": 60.0,
    "h": 3600.0,
}


def _measured(
    name: str, value: float, unit: str, better: str = "", samples: Iterable[float] = ()
) -> Result:
    """A result in PerfIt's units: a time (also "ns/op", "ns/iter") in seconds; anything per
    second higher-is-better unless said otherwise; other units as they come. `samples` (the
    harness's runs) go the same way."""
    base = unit.split("/")[0] if unit.endswith(("/op", "/iter")) else unit
    scale = _HARNESS_TIME_UNITS.get(base, 1.0)
    kept = tuple(_tidy(x * scale, 15) for x in samples)
    if base in _HARNESS_TIME_UNITS:
        return Result(name, _tidy(value * scale, 15), "s", better or "lower", kept)
    direction = better or ("higher" if _per_second(unit) else "lower")
    return Result(name, _tidy(value, 15), unit, direction, kept)


def _json_doc(text: str, fmt: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"not {fmt} output: the file is not JSON ({e})") from None


def _expect(condition: bool, fmt: str, what: str) -> None:
    if not condition:
        raise UsageError(f"not {fmt} output: {what}")


def _read_pytest_benchmark(text: str) -> list[Result]:
    """pytest-benchmark --benchmark-json: each benchmark's median (seconds), named
    group/name when it has a group (group/fullname where two share a group/name), else by its
    fullname (file::test[params])."""
    doc = _json_doc(text, "pytest-benchmark")
    _expect(
        isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list),
        "pytest-benchmark",
        'no "benchmarks" list',
    )

    def short(bench: dict) -> str:
        return f"{bench['group']}/{bench['name']}" if bench.get("group") else bench["fullname"]

    # Two tests of one name in two files of one group are two benchmarks: those take their
    # full names (file::test) after the group. Every other keeps the name 0.2 gave it.
    names = [short(b) for b in doc["benchmarks"]]
    twice = _repeated(names)
    results = []
    for bench, name in zip(doc["benchmarks"], names):
        if name in twice:
            name = f"{bench['group']}/{bench['fullname']}"
        stats = bench["stats"]  # "data": every round, with --benchmark-save-data
        results.append(_measured(name, stats["median"], "s", samples=stats.get("data") or ()))
    return results


def _read_hyperfine(text: str) -> list[Result]:
    """hyperfine --export-json: each command's median (seconds), named by the command."""
    doc = _json_doc(text, "hyperfine")
    _expect(
        isinstance(doc, dict) and isinstance(doc.get("results"), list),
        "hyperfine",
        'no "results" list',
    )
    return [
        _measured(r["command"], r["median"], "s", samples=r.get("times") or ())
        for r in doc["results"]
    ]


_GO_LINE_RE = _Regex(r"^(Benchmark\S*)\s+(\d+)\s+(\d.*)$")
_GO_MEASURE_RE = _Regex(r"([-+0-9.eE]+)\s+(\S+)")


def _read_go(text: str) -> list[Result]:
    """`go test -bench` text or -json: ns/op in seconds, under the benchmark's name without
    the -GOMAXPROCS suffix that every line shares (with -cpu=1,2,4 one benchmark ran at
    several: those are different benchmarks, named as go names them, BenchmarkX, BenchmarkX-2,
    BenchmarkX-4); B/op, allocs/op, MB/s and custom metrics as "NAME (UNIT)". With several
    packages each name starts with its package's import path. With -count=N, the median of
    the N lines."""
    if text.lstrip().startswith("{"):
        text = _go_json_output(text)
    lines, package = [], ""
    for line in text.splitlines():
        if line.startswith("pkg: "):
            package = line[5:].strip()
        elif match := _GO_LINE_RE.match(line.strip()):
            lines.append((package, match[1], match[3]))
    _expect(bool(lines), "go test -bench", "no Benchmark... lines")
    # One GOMAXPROCS for all (-8 on every line): go's suffix, not the name's. A name that ends
    # in a number of its own (size-100) keeps it: its lines do not all share one suffix.
    suffixes = {(re.search(r"-\d+$", bench) or [""])[0] for _, bench, _ in lines}
    (shared,) = suffixes if len(suffixes) == 1 else ("",)
    packages = {pkg for pkg, _, _ in lines}
    found: dict[tuple[str, str, str], list[float]] = {}
    for pkg, bench, measures in lines:
        name = bench.removesuffix(shared) if shared else bench
        for value, unit in _GO_MEASURE_RE.findall(measures):
            found.setdefault((pkg, name, unit), []).append(float(value))
    results = []
    for (package, bench, unit), values in found.items():
        name = f"{package}/{bench}" if len(packages) > 1 and package else bench
        if unit != "ns/op":
            name = f"{name} ({unit})"
        samples = values if len(values) > 1 else ()  # -count N: N lines, N samples
        results.append(_measured(name, _median(values), unit, samples=samples))
    return results


def _go_json_output(text: str) -> str:
    """The text a `go test -json` stream printed, each package's with its pkg: line first
    (a benchmark's name and its numbers may come in separate events)."""
    outputs: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            raise UsageError("not go -json output: a line is not JSON") from None
        if isinstance(event, dict) and event.get("Action") == "output":
            outputs.setdefault(event.get("Package", ""), []).append(event.get("Output", ""))
    return "".join(f"pkg: {pkg}\n" + "".join(lines) for pkg, lines in outputs.items())


def _read_google_benchmark(text: str) -> list[Result]:
    """Google Benchmark --benchmark_format=json: real time in seconds, from the "median"
    aggregate when repetitions made one, else the median of the iteration rows of each
    run; items_per_second and bytes_per_second as "NAME (items/s)", "NAME (bytes/s)"."""
    doc = _json_doc(text, "google-benchmark")
    _expect(
        isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list) and "context" in doc,
        "google-benchmark",
        'no "context" and "benchmarks"',
    )
    rows = [b for b in doc["benchmarks"] if not b.get("error_occurred")]
    medians = [b for b in rows if b.get("aggregate_name") == "median"]
    chosen = medians or [b for b in rows if b.get("run_type", "iteration") == "iteration"]
    grouped: dict[str, list[dict]] = {}
    for row in chosen:
        grouped.setdefault(row.get("run_name") or row["name"], []).append(row)
    results = []
    repetitions: dict[str, list[float]] = {}  # every iteration row: each is a repetition
    for row in rows:
        if row.get("run_type", "iteration") == "iteration":
            repetitions.setdefault(row.get("run_name") or row["name"], []).append(row["real_time"])
    for name, runs in grouped.items():
        unit = runs[0].get("time_unit", "ns")
        samples = repetitions.get(name, ()) if len(repetitions.get(name, ())) > 1 else ()
        value = _median(r["real_time"] for r in runs)
        results.append(_measured(name, value, unit, samples=samples))
        for field, unit in (("items_per_second", "items/s"), ("bytes_per_second", "bytes/s")):
            if field in runs[0]:
                value = _median(r[field] for r in runs)
                results.append(_measured(f"{name} ({unit})", value, unit, "higher"))
    return results


_LIBTEST_RE = _Regex(r"^test (.+?)\s+\.\.\.\s+bench:\s+([\d,.]+) (\S+)")


def _read_libtest(text: str) -> list[Result]:
    """Rust's `cargo bench` (libtest) and criterion's --output-format bencher: the
    "test NAME ... bench: N ns/iter (+/- D)" lines, in seconds; a name may have spaces, and
    harnesses that imitate libtest may write another unit ("1911 MS/s": higher-is-better)."""
    results = []
    for line in text.splitlines():
        match = _LIBTEST_RE.match(line.strip())
        if match:
            name, number, unit = match.groups()
            results.append(_measured(name, float(number.replace(",", "")), unit))
    _expect(bool(results), "libtest", 'no "test NAME ... bench:" lines')
    return results


#: Bencher's built-in measures: their units, and which way is better.
_BMF_MEASURES = {"latency": ("ns", "lower"), "throughput": ("ops/s", "higher")}


def _read_bmf(text: str) -> list[Result]:
    """Bencher Metric Format {"NAME": {"MEASURE": {"value"}}}: latency (ns) in seconds under
    NAME, every other measure as "NAME (MEASURE)"."""
    doc = _json_doc(text, "bmf")
    _expect(
        isinstance(doc, dict) and all(isinstance(v, dict) for v in doc.values()),
        "bmf",
        '{"NAME": {"MEASURE": {"value": ...}}} expected',
    )
    results = []
    for name, measures in doc.items():
        for measure, found in measures.items():
            _expect(isinstance(found, dict) and "value" in found, "bmf", f"{name}.{measure}")
            unit, better = _BMF_MEASURES.get(measure, (measure, "lower"))
            shown = name if measure == "latency" else f"{name} ({measure})"
            results.append(_measured(shown, found["value"], unit, better))
    return results


def _read_gab(text: str) -> list[Result]:
    """github-action-benchmark's custom JSON [{"name", "unit", "value"}]: a unit of time in
    seconds; a unit per second (ops/s, MB/s) higher-is-better."""
    doc = _json_doc(text, "gab")
    _expect(
        isinstance(doc, list) and all(isinstance(b, dict) for b in doc),
        "gab",
        '[{"name", "unit", "value"}] expected',
    )
    return [_measured(b["name"], b["value"], b.get("unit", "")) for b in doc]


_PYPERF_UNITS = {"second": "s", "byte": "B", "integer": ""}


def _read_pyperf(text: str) -> list[Result]:
    """pyperf JSON (a benchmark or a suite): the median of every run's values (warm-ups
    left out), named by the benchmark's name, seconds for time."""
    doc = _json_doc(text, "pyperf")
    _expect(
        isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list),
        "pyperf",
        'no "benchmarks" list',
    )
    common = doc.get("metadata", {})
    results = []
    for bench in doc["benchmarks"]:
        meta = {**common, **bench.get("metadata", {})}
        values = [v for run in bench.get("runs", []) for v in run.get("values", [])]
        if values:
            unit = _PYPERF_UNITS.get(meta.get("unit", "second"), meta.get("unit", ""))
            name = meta.get("name", "pyperf")
            results.append(_measured(name, _median(values), unit, samples=values))
    return results


def _matching_lines(text: str, pattern: str, fmt: str, what: str) -> list[re.Match]:
    """The lines of `text` that `pattern` matches (stripped of line ends); none is an error."""
    found = [m for line in text.splitlines() if (m := re.match(pattern, line.rstrip()))]
    _expect(bool(found), fmt, f"no {what} lines")
    return found


def _repeated(names: Iterable[str]) -> set[str]:
    """The names that come more than once."""
    return {name for name, n in collections.Counter(names).items() if n > 1}


def _told_apart(found: list[tuple[Result, str]]) -> list[Result]:
    """Results, each with what ran it (a JMH mode, a BenchmarkDotNet job, a Luau VM): a name
    that comes more than once gets it after it, "NAME [avgt]", so two runs of one benchmark
    are two metrics, not one metric holding both."""
    twice = _repeated(r.name for r, _ in found)
    return [
        dataclasses.replace(r, name=f"{r.name} [{how}]") if how and r.name in twice else r
        for r, how in found
    ]


def _read_benchmarkjs(text: str) -> list[Result]:
    """benchmark.js's `String(event.target)` lines, "NAME x 1,234 ops/sec ±0.5% (90 runs
    sampled)": operations a second, higher-is-better."""
    found = _matching_lines(
        text,
        r"^(.+?) x ([\d,.]+) ops/sec ±[\d.]+% \(\d+ runs? sampled\)$",
        "benchmarkjs",
        "NAME x N ops/sec",
    )
    return [_measured(m[1], float(m[2].replace(",", "")), "ops/sec") for m in found]


def _read_luau(text: str) -> list[Result]:
    """Luau's bench runner: "SUCCESS: NAME : 15.041ms +/- 0.6% on luau", the average, in
    seconds (and the VM, "[luau-jit]", where it ran on several)."""
    found = _matching_lines(
        text,
        r"^SUCCESS:\s*(.+?)\s*:\s*([\d.]+)ms \+/-\s*[\d.]+% on (\S+)",
        "luau",
        "SUCCESS: NAME : Nms",
    )
    return _told_apart([(_measured(m[1], float(m[2]), "ms"), m[3]) for m in found])


_CRITERION_TIME_RE = _Regex(r"^(.*?)\s*(time|thrpt):\s+\[\S+ \S+ ([\d.]+) (\S+) \S+ \S+\]")


def _read_criterion(text: str) -> list[Result]:
    """criterion's own text output: the middle of "time: [low ESTIMATE high]" in seconds, and
    of a "thrpt:" line as "NAME (UNIT)", higher-is-better. A long name has a line of its own
    (a "change:" block's percentages have three numbers, not six, and are no benchmark).
    Or its target/criterion directory, as _criterion_directory gives it."""
    if text.startswith("{"):
        return _read_criterion_estimates(text)
    results, name, previous = [], "", ""
    for line in text.splitlines():
        match = _CRITERION_TIME_RE.match(line.rstrip())
        if not match:
            previous = line.strip() or previous
        elif match[2] == "time":
            name = match[1].strip() or previous
            results.append(_measured(name, float(match[3]), match[4]))
        else:
            results.append(_measured(f"{name} ({match[4]})", float(match[3]), match[4], "higher"))
    _expect(bool(results), "criterion", 'no "NAME time: [...]" lines')
    return results


def _read_criterion_estimates(text: str) -> list[Result]:
    """criterion's estimates.json of each benchmark, by its benchmark.json's full_id: the
    median's point estimate, in seconds; every sample (sample.json: time / iterations)."""
    results = []
    for bench in _json_doc(text, "criterion")["criterion"]:
        sample = bench.get("sample") or {}
        samples = [t / n for t, n in zip(sample.get("times", ()), sample.get("iters", ())) if n]
        median = bench["estimates"]["median"]["point_estimate"]
        results.append(_measured(bench["full_id"], median, "ns", samples=samples))
    return results


def _criterion_directory(path: str) -> str:
    """criterion's target/criterion directory (or one of its benchmarks') as one JSON text:
    {"criterion": [{"full_id", "estimates", "sample"}]}, from each */new/ of it."""
    found = []
    for top, _, files in sorted(os.walk(path)):
        if os.path.basename(top) == "new" and {"benchmark.json", "estimates.json"} <= set(files):
            doc = {}
            for part in ("benchmark", "estimates", "sample"):
                if f"{part}.json" in files:
                    with open(os.path.join(top, f"{part}.json"), encoding="utf-8") as f:
                        doc[part] = json.load(f)
            found.append({**doc, "full_id": doc.pop("benchmark")["full_id"]})
    if not found:
        raise UsageError(
            f"{path} is a directory with no criterion estimates (*/new/estimates.json)"
        )
    return json.dumps({"criterion": found})


_CATCH2_RESULT_RE = _Regex(r"^(.*?)\s+\d+\s+\d+\s+[\d.]+ \S+$")
_CATCH2_MEAN_RE = _Regex(r"^\s+([\d.]+) (\S+)\s+[\d.]+ \S+\s+[\d.]+ \S+$")


def _read_catch2(text: str) -> list[Result]:
    """Catch2's console reporter (v2 and v3): each benchmark's mean, in seconds, named as it
    is (a name too long for its column wraps over lines: they are joined; one in several test
    cases gets its test case, "NAME [Case]")."""
    lines = [line.rstrip() for line in text.splitlines()]
    results, name, table, case = [], [], False, ""
    for i, line in enumerate(lines):
        if line.startswith(("-----", "=====")):
            # The table's rule comes under the three lines of its header; a test case's name
            # between two rules.
            table, name = i >= 3 and lines[i - 3].startswith("benchmark name"), []
            if i >= 2 and lines[i - 2].startswith("-----") and lines[i - 1].strip():
                case = lines[i - 1].strip()
        elif table and line and not line[0].isspace():
            result = _CATCH2_RESULT_RE.match(line)
            mean = _CATCH2_MEAN_RE.match(lines[i + 1]) if result and i + 1 < len(lines) else None
            if mean:
                full = " ".join([*name, result[1].strip()])
                results.append((_measured(full, float(mean[1]), mean[2]), case))
                name = []
            else:
                name.append(line.strip())
    _expect(bool(results), "catch2", 'no "benchmark name" table')
    return _told_apart(results)


def _read_jmh(text: str) -> list[Result]:
    """JMH's -rf json: each benchmark's score in its unit, named by the method with its
    params ("a.b.C.m(size=10,kind=x)", and its mode, "[avgt]", where it ran in several);
    throughput (mode thrpt) higher-is-better, times
    (avgt, sample, ss: "us/op") in seconds. Every iteration's score kept as a sample."""
    doc = _json_doc(text, "jmh")
    _expect(isinstance(doc, list), "jmh", '[{"benchmark", "primaryMetric"}] expected')
    results = []
    for bench in doc:
        params = bench.get("params") or {}
        name = bench["benchmark"] + (
            f"({','.join(f'{k}={v}' for k, v in params.items())})" if params else ""
        )
        metric = bench["primaryMetric"]
        samples = [x for fork in metric.get("rawData") or () for x in fork]
        mode = bench.get("mode", "")
        better = "higher" if mode == "thrpt" else ""
        results.append(
            (_measured(name, metric["score"], metric["scoreUnit"], better, samples), mode)
        )
    return _told_apart(results)


def _read_benchmarkdotnet(text: str) -> list[Result]:
    """BenchmarkDotNet's JSON exporter: each benchmark's median in seconds, named
    "Type.Method(params)" (and its job, "[Job-X]", where it ran in several); its measurements'
    values kept as samples where it wrote them; a failed one (no statistics) left out."""
    doc = _json_doc(text, "benchmarkdotnet")
    _expect(
        isinstance(doc, dict) and isinstance(doc.get("Benchmarks"), list),
        "benchmarkdotnet",
        'no "Benchmarks" list',
    )
    results = []
    for bench in doc["Benchmarks"]:
        stats = bench.get("Statistics")
        if not stats:
            continue  # a benchmark that failed has no statistics
        params = (bench.get("Parameters") or "").replace("&", ",")  # its PrintInfo joins with &
        name = f"{bench['Type']}.{bench['Method']}" + (f"({params})" if params else "")
        job = (bench.get("DisplayInfo") or "").rpartition(": ")[2]
        samples = stats.get("OriginalValues") or ()
        results.append((_measured(name, stats["Median"], "ns", samples=samples), job))
    return _told_apart(results)


def _read_julia(text: str) -> list[Result]:
    """Julia BenchmarkTools' JSON (BenchmarkTools.save): each trial's median time (or the
    estimate saved), in seconds, named by its groups' keys joined with "/"."""
    doc = _json_doc(text, "julia")
    _expect(
        isinstance(doc, list) and len(doc) == 2 and isinstance(doc[1], list),
        "julia",
        '[{"BenchmarkTools": ...}, [groups]] expected',
    )
    results: list[Result] = []

    def walk(path: list[str], node: list) -> None:
        kind, body = node
        if kind == "BenchmarkGroup":
            for key, child in body["data"].items():
                walk([*path, key], child)
        elif kind == "Trial" and body["times"]:
            results.append(
                _measured("/".join(path), _median(body["times"]), "ns", samples=body["times"])
            )
        elif kind == "TrialEstimate":
            results.append(_measured("/".join(path), body["time"], "ns"))

    for group in doc[1]:
        walk([], group)
    return results


#: asv's kinds of benchmark, by the start of their names: the unit of what they measure.
_ASV_UNITS = {"time_": "s", "timeraw_": "s", "mem_": "B", "peakmem_": "B", "track_": ""}


def _read_asv(text: str) -> list[Result]:
    """asv's results JSON (.asv/results/MACHINE/COMMIT-ENV.json): each benchmark's result
    (the median of its samples), named "module.Class.name(param, param)" for each combination
    of its params, as asv shows them; time in seconds, memory in bytes, track_ as it is."""
    doc = _json_doc(text, "asv")
    _expect(
        isinstance(doc, dict) and isinstance(doc.get("results"), dict) and "result_columns" in doc,
        "asv",
        'no "results" with "result_columns"',
    )
    results = []
    for name, row in doc["results"].items():
        row = dict(zip(doc["result_columns"], row))
        kind = name.rpartition(".")[2]
        unit = next((u for start, u in _ASV_UNITS.items() if kind.startswith(start)), "")
        values = row["result"] if isinstance(row["result"], list) else [row["result"]]
        params = row.get("params") or []
        combos = [f"({', '.join(c)})" for c in itertools.product(*params)] if params else [""]
        samples = row.get("samples") or [()] * len(values)
        for combo, value, runs in zip(combos, values, samples):
            if value is not None and math.isfinite(value):  # a failed one is null or NaN
                results.append(_measured(name + combo, value, unit, samples=runs or ()))
    return results


@dataclasses.dataclass(frozen=True)
class _Format:
    """A harness's output: how it looks (its JSON, or None, and its text) and its reader."""

    looks: Callable[[Any, str], bool]
    read: Callable[[str], list[Result]]


def _json_listing(key: str, *also: str) -> Callable[[Any, str], bool]:
    """A JSON object with a list under `key` and the keys `also`."""
    return lambda doc, text: (
        isinstance(doc, dict) and isinstance(doc.get(key), list) and all(k in doc for k in also)
    )


def _dict_with(items: list, key: str) -> bool:
    """Whether `items` holds a first item, a JSON object with `key`."""
    return bool(items) and isinstance(items[0], dict) and key in items[0]


def _lines_like(pattern: str) -> Callable[[Any, str], bool]:
    """Text with a line that `pattern` matches."""
    return lambda doc, text: doc is None and re.search(pattern, text, re.MULTILINE) is not None


#: Each format by the name --format takes, in the order --format auto tries them: the ones
#: whose shape says most first (pytest-benchmark's and Google Benchmark's JSON both list
#: "benchmarks"; pyperf's has nothing else of its own).
_FORMATS: dict[str, _Format] = {
    "pytest-benchmark": _Format(
        _json_listing("benchmarks", "machine_info"), _read_pytest_benchmark
    ),
    "google-benchmark": _Format(_json_listing("benchmarks", "context"), _read_google_benchmark),
    "pyperf": _Format(_json_listing("benchmarks"), _read_pyperf),
    "hyperfine": _Format(_json_listing("results"), _read_hyperfine),
    "go": _Format(
        lambda doc, text: (
            _lines_like(r"^Benchmark\S*\s+\d+\s+[-+0-9.eE]+ \S+")(doc, text)
            or re.search(r'^\{.*"Action"', text, re.MULTILINE) is not None
        ),
        _read_go,
    ),
    "libtest": _Format(_lines_like(r"^test .+?\s+\.\.\.\s+bench:"), _read_libtest),
    "criterion": _Format(
        lambda doc, text: (
            _lines_like(r"\s+time:\s+\[\S+ \S+ \S+ \S+ \S+ \S+\]")(doc, text)
            or (isinstance(doc, dict) and "criterion" in doc)
        ),
        _read_criterion,
    ),
    "catch2": _Format(_lines_like(r"^benchmark name\s+samples\s+iterations"), _read_catch2),
    "benchmarkjs": _Format(_lines_like(r" x [\d,.]+ ops/sec ±"), _read_benchmarkjs),
    "luau": _Format(_lines_like(r"^SUCCESS:.*:\s*[\d.]+ms \+/-"), _read_luau),
    "jmh": _Format(
        lambda doc, text: isinstance(doc, list) and _dict_with(doc[:1], "primaryMetric"),
        _read_jmh,
    ),
    "benchmarkdotnet": _Format(
        _json_listing("Benchmarks", "HostEnvironmentInfo"), _read_benchmarkdotnet
    ),
    "julia": _Format(
        lambda doc, text: isinstance(doc, list) and _dict_with(doc[:1], "BenchmarkTools"),
        _read_julia,
    ),
    "asv": _Format(lambda doc, text: isinstance(doc, dict) and "result_columns" in doc, _read_asv),
    "bmf": _Format(lambda doc, text: isinstance(doc, dict) and bool(doc), _read_bmf),
    "gab": _Format(lambda doc, text: isinstance(doc, list) and bool(doc), _read_gab),
}


def detect_format(text: str) -> str:
    """Which harness wrote this (for --format auto): the first format whose shape it has and
    whose reader reads results from it. Otherwise a UsageError saying what the file looks like."""
    return _read_any(text)[0]


def _read_any(text: str) -> tuple[str, list[Result]]:
    """The first format that reads this (see detect_format), and what it read."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    for name, fmt in _FORMATS.items():
        try:
            if fmt.looks(doc, text) and (results := fmt.read(text)):
                return name, results
        except (UsageError, LookupError, TypeError, ValueError, AttributeError, RecursionError):
            continue  # its shape, not its content: another format may read it
    raise UsageError(
        f"--format auto: {_what_it_looks_like(text, doc)}: none of the formats PerfIt reads "
        f"({', '.join(_FORMATS)}); name one with --format to be told what it lacks"
    )


def _what_it_looks_like(text: str, doc: Any) -> str:
    """A file's shape in a few words, for a file no format reads."""
    if not text.strip():
        return "the file is empty"
    if "\x00" in text or "\ufffd" in text:
        return "the file is binary"
    if isinstance(doc, dict):
        keys = ", ".join(list(doc)[:8]) + (", ..." if len(doc) > 8 else "")
        return f"JSON with top-level keys {keys}" if doc else "an empty JSON object"
    if isinstance(doc, list):
        return f"a JSON list of {len(doc)} item(s)" if doc else "an empty JSON list"
    if doc is not None:
        return f"a JSON {type(doc).__name__}"
    if text.lstrip()[:1] in "{[":
        try:
            json.loads(text)
        except ValueError as e:
            return f"JSON that breaks off or goes wrong ({e})"
    first = text.strip().splitlines()[0][:60]
    return f"text that starts {first!r}"


def read_results(text: str, fmt: str, prefix: str = "", better: str = "") -> list[Result]:
    """The named results of a harness's output; names start with `prefix/` when given; with
    `better`, every result whose unit is neither a time nor a rate is better that way (its
    format says no direction). A name the output gives twice is an error, not a mixed metric."""
    try:
        fmt, results = _read_any(text) if fmt == "auto" else (fmt, _FORMATS[fmt].read(text))
    except (LookupError, TypeError, ValueError, AttributeError, RecursionError) as e:
        # A file of the right shape with a field missing or of the wrong type.
        raise UsageError(f"not {fmt} output as PerfIt knows it: {type(e).__name__} {e}") from None
    if not results:
        raise UsageError(f"no results in the {fmt} output")
    if prefix:
        results = [dataclasses.replace(r, name=f"{prefix.rstrip('/')}/{r.name}") for r in results]
    if better:  # not a time nor a rate: their direction is known
        results = [
            r if r.unit == "s" or _per_second(r.unit) else dataclasses.replace(r, better=better)
            for r in results
        ]
    repeated = sorted(_repeated(r.name for r in results))
    if repeated:
        raise UsageError(
            f"the {fmt} output names {', '.join(map(repr, repeated[:5]))} more than once: PerfIt "
            "would mix them in one metric; post each run of them from a file of its own"
        )
    return results


def read_gab_data_js(text: str) -> list[tuple[Result, list[dict[str, Any]]]]:
    """github-action-benchmark's data.js (`window.BENCHMARK_DATA = {...}`) as points: a
    metric "SUITE/BENCH" each, a point per entry at its commit's time, with the commit and its
    URL (as metadata), higher-is-better by the entry's tool. Each metric comes as a Result
    (its name, unit and direction) and its points, {"t", "v", "m"}."""
    body = text.strip().removeprefix("window.BENCHMARK_DATA").lstrip(" =").rstrip(" ;\n")
    doc = _json_doc(body, "github-action-benchmark data.js")
    _expect(
        isinstance(doc, dict) and isinstance(doc.get("entries"), dict),
        "data.js",
        'no "entries" of suites',
    )
    series: dict[str, tuple[Result, list[dict[str, Any]]]] = {}
    for suite, entries in doc["entries"].items():
        for entry in entries:
            commit = entry.get("commit") or {}
            t = _commit_time(commit.get("timestamp"), entry.get("date"))
            sha, meta = str(commit.get("id", "")), str(commit.get("url", ""))
            better = "higher" if entry.get("tool") in _GAB_HIGHER_TOOLS else ""
            for bench in entry["benches"]:
                result = _measured(
                    f"{suite}/{bench['name']}", bench["value"], bench["unit"], better
                )
                point = {"t": t, "v": result.value}
                if meta:
                    point["m"] = meta[:_MAX_METADATA_BYTES]
                if _COMMIT_RE.fullmatch(sha) and sha:
                    point["commit"] = sha.lower()
                series.setdefault(result.name, (result, []))[1].append(point)
    return list(series.values())


#: The tools of github-action-benchmark whose numbers grow as things get faster.
_GAB_HIGHER_TOOLS = ("pytest", "benchmarkjs", "customBiggerIsBetter", "benchmarkluau")


def _commit_time(stamp: object, date_ms: object) -> float:
    """Unix seconds of a data.js entry: its commit's timestamp, else when it was stored."""
    import datetime

    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):  # 3.9's fromisoformat() takes no "Z"
            return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    if isinstance(date_ms, (int, float)):
        return date_ms / 1000
    raise UsageError("data.js: an entry has neither a commit timestamp nor a date")


# ==============================================================================================
# Client: CI context
# Where a CI job runs, from its service's environment: the commit and branch it measures and
# the job's URL (kept with each point), and on a pull request, where the PR branched off main.
# ==============================================================================================


@dataclasses.dataclass(frozen=True)
class CiContext:
    """What a CI job's environment tells of the run: the commit and branch it measures, the
    job's URL, and on a pull request where it branched (see branched_from)."""

    commit: str = ""
    branch: str = ""
    job: str = ""  #: the job's URL: a point's metadata, linked from charts and tables
    commit_link: str = ""  #: a commit's page, "{}" standing for its id; "" when unknown
    #: what the CI says of a pull request: its base (a commit, or a branch as origin/main)
    #: and its head ("HEAD": the checkout), where git's merge base of the two is searched
    pr_base: str = ""
    pr_head: str = ""

    def branched_from(self, env: dict[str, str] | None = None) -> tuple[tuple[str, ...], str]:
        """Where a PR branched, newest first: git's merge base of its head and base (when the
        checkout has their history), then that commit's first-parent ancestors, so a base
        main never measured is stood in for by the newest one it did; and a note when git
        could not say. Asked for by `compare` only: it runs git."""
        env = dict(os.environ if env is None else env)
        base, head = self.pr_base, self.pr_head
        if not base:
            return (), ""
        fork = _git(env, "merge-base", head, base) if head else ""
        start = fork or (base if _COMMIT_RE.fullmatch(base) else "")
        if not start:
            return (), f"git finds no merge base of this checkout and {base}: no base commit"
        ancestors = _git(env, "rev-list", "--first-parent", f"-n{_ANCESTORS}", start).split()
        note = ""
        if head and not fork:  # the PR's base is main's tip then, maybe newer than the branch
            note = (
                "git finds no merge base in this checkout (fetch-depth: 0 gives it the "
                "history): comparing at the PR's base commit, which main may have moved past"
            )
        return tuple(ancestors or (start,)), note


def _event(env: dict[str, str]) -> dict[str, Any]:
    """The GitHub Actions event (GITHUB_EVENT_PATH), or {}."""
    try:
        with open(env.get("GITHUB_EVENT_PATH", ""), encoding="utf-8") as f:
            event = json.load(f)
    except (OSError, ValueError):
        return {}
    return event if isinstance(event, dict) else {}


def _github(env: dict[str, str]) -> CiContext:
    pr = _event(env).get("pull_request") or {}
    head, base = (pr.get("head") or {}).get("sha", ""), (pr.get("base") or {}).get("sha", "")
    job = link = ""
    if env.get("GITHUB_REPOSITORY"):
        repository = (
            f"{env.get('GITHUB_SERVER_URL', 'https://github.com')}/{env['GITHUB_REPOSITORY']}"
        )
        link = f"{repository}/commit/{{}}"
        if env.get("GITHUB_RUN_ID"):
            attempt = env.get("GITHUB_RUN_ATTEMPT", "1")
            job = f"{repository}/actions/runs/{env['GITHUB_RUN_ID']}"
            job += "" if attempt in ("", "1") else f"/attempts/{attempt}"
    # On a pull request GITHUB_SHA is a merge commit GitHub made: the PR's head is measured.
    commit = head or env.get("GITHUB_SHA", "")
    branch = env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME", "")
    return CiContext(commit, branch, job, link, base, head)


def _gitlab(env: dict[str, str]) -> CiContext:
    # A merged-results pipeline measures a merge commit; its source branch's head is the PR's.
    commit = env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA") or env.get("CI_COMMIT_SHA", "")
    branch = env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME") or env.get("CI_COMMIT_BRANCH", "")
    link = f"{env['CI_PROJECT_URL']}/-/commit/{{}}" if env.get("CI_PROJECT_URL") else ""
    base = env.get("CI_MERGE_REQUEST_DIFF_BASE_SHA", "")  # GitLab's merge base already
    return CiContext(commit, branch, env.get("CI_JOB_URL", ""), link, base)


def _buildkite(env: dict[str, str]) -> CiContext:
    job = env.get("BUILDKITE_BUILD_URL", "")
    if job and env.get("BUILDKITE_JOB_ID"):
        job += f"#{env['BUILDKITE_JOB_ID']}"
    target = env.get("BUILDKITE_PULL_REQUEST_BASE_BRANCH", "")
    commit = env.get("BUILDKITE_COMMIT", "")  # "HEAD" is allowed there: resolved below
    pr = (f"origin/{target}", "HEAD") if target else ("", "")
    return CiContext(commit, env.get("BUILDKITE_BRANCH", ""), job, "", *pr)


def _circleci(env: dict[str, str]) -> CiContext:
    return CiContext(
        env.get("CIRCLE_SHA1", ""), env.get("CIRCLE_BRANCH", ""), env.get("CIRCLE_BUILD_URL", "")
    )


def _jenkins(env: dict[str, str]) -> CiContext:
    branch = (
        env.get("CHANGE_BRANCH")
        or env.get("BRANCH_NAME")
        or env.get("GIT_LOCAL_BRANCH")
        or env.get("GIT_BRANCH", "").removeprefix("origin/")
    )
    target = env.get("CHANGE_TARGET", "")
    pr = (f"origin/{target}", "HEAD") if target else ("", "")
    return CiContext(env.get("GIT_COMMIT", ""), branch, env.get("BUILD_URL", ""), "", *pr)


#: Each CI service PerfIt knows: the variable that says a job runs on it, and how to read it.
_CI_SERVICES: tuple[tuple[str, Callable[[dict[str, str]], CiContext]], ...] = (
    ("GITHUB_ACTIONS", _github),
    ("GITLAB_CI", _gitlab),
    ("BUILDKITE", _buildkite),
    ("CIRCLECI", _circleci),
    ("JENKINS_URL", _jenkins),
)
_ANCESTORS = 50  #: main's commits before a PR's base that may stand in for it (not measured)


def ci_context(env: dict[str, str] | None = None) -> CiContext:
    """The run's context on a CI service PerfIt knows, else the checkout's commit and branch."""
    env = dict(os.environ if env is None else env)
    found = next((read(env) for marker, read in _CI_SERVICES if env.get(marker)), None)
    if found is None:
        branch = _git(env, "rev-parse", "--abbrev-ref", "HEAD")
        found = CiContext(_git(env, "rev-parse", "HEAD"), "" if branch == "HEAD" else branch)
    commit = found.commit
    if not (commit and _COMMIT_RE.fullmatch(commit)):
        commit = _git(env, "rev-parse", "HEAD")
    return dataclasses.replace(found, commit=commit.lower())


def _git(env: dict[str, str], *args: str) -> str:
    """What a git command prints, or "" when it fails (no git, no checkout, no such commit);
    run with `env` over this process's environment (GIT_DIR and the like)."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, env={**os.environ, **env}
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


# ==============================================================================================
# Client: pull request comments
# A comparison posted as one comment on the pull request (a GitHub PR, a GitLab merge request),
# found again by a hidden marker and edited in place on every later run; or said why not.
# ==============================================================================================

_MAX_COMMENT_CHARS = 65_000  #: GitHub refuses a comment over 65,536 characters
#: Why a forge may refuse a comment, said after its own message.
_FORBIDDEN_HINTS = {
    "GitHub": " (a fork's pull request has a read-only token; otherwise give the job "
    "permissions: pull-requests: write)",
    "GitLab": " (PERFIT_GITLAB_TOKEN needs the api scope and at least the Reporter role)",
}


@dataclasses.dataclass(frozen=True)
class _Forge:
    """How to list, create and edit the comments of one pull request on one forge."""

    name: str
    comments: str  #: the URL that lists them (GET) and creates one (POST)
    edit: Callable[[Any], str]  #: a comment's id -> the URL that edits it
    edit_method: str  #: PATCH on GitHub, PUT on GitLab
    headers: dict[str, str]
    where: str  #: "pull request #7", for messages
    list_query: str = "per_page=100"


def _github_forge(env: dict[str, str]) -> _Forge | str:
    """GitHub's, or why there is none: not a pull request, or no token."""
    event = _event(env)
    number = (event.get("pull_request") or {}).get("number")
    if not number:
        return f"this is not a pull request ({env.get('GITHUB_EVENT_NAME') or 'no event'})"
    token = env.get("GITHUB_TOKEN", "")
    if not token:
        return "no GITHUB_TOKEN: give the step env: GITHUB_TOKEN: ${{ github.token }}"
    api = f"{env.get('GITHUB_API_URL', 'https://api.github.com')}/repos/{env.get('GITHUB_REPOSITORY', '')}"
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    return _Forge(
        "GitHub",
        f"{api}/issues/{number}/comments",
        lambda id_: f"{api}/issues/comments/{id_}",
        "PATCH",
        headers,
        f"pull request #{number}",
    )


def _gitlab_forge(env: dict[str, str]) -> _Forge | str:
    iid = env.get("CI_MERGE_REQUEST_IID", "")
    if not iid:
        return "this is not a merge request pipeline (no CI_MERGE_REQUEST_IID)"
    token = env.get("PERFIT_GITLAB_TOKEN", "")
    if not token:
        return "no PERFIT_GITLAB_TOKEN (a token with the api scope: CI_JOB_TOKEN cannot comment)"
    notes = f"{env.get('CI_API_V4_URL', '')}/projects/{env.get('CI_PROJECT_ID', '')}/merge_requests/{iid}/notes"
    return _Forge(
        "GitLab",
        notes,
        lambda id_: f"{notes}/{id_}",
        "PUT",
        {"PRIVATE-TOKEN": token},
        f"merge request !{iid}",
        "per_page=100&sort=asc",
    )


#: Where a PR comment can go: the variable that says a job runs there, and its forge.
_FORGES = (("GITHUB_ACTIONS", _github_forge), ("GITLAB_CI", _gitlab_forge))


def post_comment(
    body: str, key: str, env: dict[str, str] | None = None, timeout: float = 30
) -> str:
    """Create the PR's PerfIt comment (marked with `key`), or edit the one made before; what
    was done, as a line for the log. A forge that says no is told, never raised: the
    comparison's verdict, not the comment's fate, decides the exit code."""
    env = dict(os.environ if env is None else env)
    make = next((make for marker, make in _FORGES if env.get(marker)), None)
    forge = make(env) if make else "not on GitHub Actions or GitLab CI"
    if isinstance(forge, str):
        return f"no comment: {forge}"
    marker = f"<!-- perfit-comment: {key} -->"
    text = f"{marker}\n{body}"
    deadline = time.monotonic() + timeout
    for attempt in itertools.count():
        try:
            return _comment_once(forge, marker, text, deadline)
        except SendFailed as err:  # the forge was out of reach, or its proxy lost it
            delay = min(0.5 * 2**attempt, 5.0)
            if time.monotonic() + delay >= deadline:
                return f"could not comment on {forge.where}: {err.message}"
            time.sleep(delay)
        except PerfitError as err:
            return f"could not comment on {forge.where}: {err.message}"
    raise AssertionError("unreachable")  # pragma: no cover


def _comment_once(forge: _Forge, marker: str, text: str, deadline: float) -> str:
    """Edit the comment holding `marker`, or create it. Tried again after a failure, it
    looks again first: a comment whose creation was answered 502 may have been made, and a
    forge takes no Idempotency-Key."""
    found = _find_comment(forge, marker, deadline)
    if found is not None:
        with contextlib.suppress(ServerSaidNo):  # someone else's copy of the marker
            _forge_call(forge, forge.edit_method, forge.edit(found), {"body": text}, deadline)
            return f"updated the comment on {forge.where}"
    _forge_call(forge, "POST", forge.comments, {"body": text}, deadline)
    return f"commented on {forge.where}"


_COMMENT_PAGES = 50  #: pages of a PR's comments looked through for ours (5,000 comments)


def _find_comment(forge: _Forge, marker: str, deadline: float) -> Any | None:
    """The id of the PR's comment that holds `marker`, or None: a bot's first (the token's
    own, most likely), never a system note."""
    mine = []
    for page in range(1, _COMMENT_PAGES + 1):
        url = f"{forge.comments}?{forge.list_query}&page={page}"
        found = _forge_call(forge, "GET", url, None, deadline)
        if not isinstance(found, list):
            raise ServerSaidNo(f"{forge.name} answered the comments' list with no list")
        for comment in found:
            if (
                isinstance(comment, dict)
                and "id" in comment
                and marker in str(comment.get("body", ""))
                and not comment.get("system")
            ):
                mine.append(comment)
        if len(found) < 100:
            break
    bots = [c for c in mine if (c.get("user") or {}).get("type") == "Bot"]
    return (bots or mine)[0]["id"] if mine else None


def _forge_call(forge: _Forge, method: str, url: str, body: Any, deadline: float) -> Any:
    """One call to a forge's API, by time.monotonic() `deadline`; a refusal is a ServerSaidNo
    with its status and message, what may pass (no answer, 429, 502-504) a SendFailed."""
    import http.client
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    headers = {**forge.headers, "User-Agent": f"perfit/{__version__}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _opener().open(request, timeout=max(deadline - time.monotonic(), 0.1)) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as e:
        hint = _FORBIDDEN_HINTS[forge.name] if e.code in (401, 403, 404) else ""
        refused = SendFailed if e.code in _RETRIED_WRITES else ServerSaidNo
        raise refused(f"{e.code} {_server_message(e)}{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise SendFailed(f"{forge.name}: {getattr(e, 'reason', e)}") from None
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise ServerSaidNo(f"{forge.name} answered {url} with no JSON") from None


# ==============================================================================================
# The executable
# `perfit bundle`: this module and the pure-Python server dependencies in one zipapp, so that
# `python3 perfit.pyz serve` runs on a machine that has nothing but Python.
# ==============================================================================================

#: What goes into the zipapp beside this module: pure Python, taken from the running
#: environment. zstd is compiled code, which can't be imported from a zip: it comes from the
#: standard library (3.14+) or an installed zstandard where the file runs, or sealing is off.
_BUNDLED = ("bottle", "svgwrite")


def write_bundle(target: str) -> list[str]:
    """Write the zipapp; return what it holds ("bottle 0.13.4", ...)."""
    import importlib.metadata
    import tempfile
    import zipapp

    with tempfile.TemporaryDirectory() as staging:
        _stage_module(sys.modules[__name__], "perfit.py", staging)
        held = [f"perfit {__version__}"]
        for name in _BUNDLED:
            try:
                module = importlib.import_module(name)
            except ImportError as e:
                raise MissingDependency(
                    f"cannot bundle {name}: {e}; pip install {name} where you run `bundle`"
                ) from None
            version = importlib.metadata.version(name)
            if hasattr(module, "__path__"):
                _stage_package(importlib.resources.files(name), os.path.join(staging, name))
            else:
                _stage_module(module, f"{name}.py", staging)
            _stage_licence(name, staging)
            held.append(f"{name} {version}")
        _compile_staged(staging)
        # Our own __main__: zipapp's (main="perfit:main") calls main() and drops what it
        # returns, so every command would exit 0, a failing `run` or `metric check` too.
        with open(os.path.join(staging, "__main__.py"), "w", encoding="utf-8") as f:
            f.write(_BUNDLE_MAIN)
        zipapp.create_archive(staging, target, interpreter="/usr/bin/env python3", compressed=True)
    return held


_BUNDLE_MAIN = """\
# The entry point of perfit.pyz: exits with the code the command returns.
import perfit

raise SystemExit(perfit.main())
"""


def _stage_module(module: Any, name: str, staging: str) -> None:
    """A module's source (from a file, or from inside a zipapp) into the staging directory."""
    source = module.__loader__.get_data(module.__file__)
    with open(os.path.join(staging, name), "wb") as f:
        f.write(source)


def _stage_package(files: Any, dest: str) -> None:
    """A package's Python files, sub-packages included (a Traversable: a directory or a zip)."""
    os.makedirs(dest, exist_ok=True)
    for item in files.iterdir():
        if item.is_dir() and item.name != "__pycache__":
            _stage_package(item, os.path.join(dest, item.name))
        elif item.name.endswith(".py"):
            with open(os.path.join(dest, item.name), "wb") as f:
                f.write(item.read_bytes())


def _stage_licence(name: str, staging: str) -> None:
    """The dependency's licence text, which its licence (MIT) asks to travel with it."""
    import importlib.metadata

    for file in importlib.metadata.files(name) or ():
        if "LICEN" in file.name.upper():
            os.makedirs(os.path.join(staging, "LICENSES"), exist_ok=True)
            with open(os.path.join(staging, "LICENSES", f"{name}.txt"), "wb") as f:
                f.write(file.read_binary())
            return


def _compile_staged(staging: str) -> None:
    """Byte code beside each source, for this Python: a zipapp's imports never write any, so
    without it every start compiles everything again. Another Python's byte code is passed
    over by the import system, which compiles the source instead."""
    import py_compile

    for folder, _, names in os.walk(staging):
        for name in names:
            if name.endswith(".py") and name != "__main__.py":
                source = os.path.join(folder, name)
                py_compile.compile(
                    source,
                    cfile=source + "c",
                    doraise=True,
                    # No timestamp to check: inside a zip the byte code and the source are one.
                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                )


# ==============================================================================================
# CLI
# One subcommand per user task, all in one table (_COMMANDS) with their options (_Option); a
# client option comes from its flag or its PERFIT_* variable. Each _cmd_<name>(args) returns an
# exit code; expected failures raise PerfitError, which main() turns into one line.
# ==============================================================================================

_EPILOG = """\
examples:
  perfit serve                             # server on 127.0.0.1:5050, data in ./perfit-data
  export PERFIT_SERVER=https://perfit.example
  PERFIT_ACCESS_TOKEN=$ROOT perfit account new   # a new account and its admin token
  export PERFIT_ACCESS_TOKEN=<admin token>
  perfit metric new --name "unit tests" --unit s
  perfit token new --type post             # a token CI can only post with
  perfit run --metric "unit tests" -- make test  # in CI: time `make test`, post its duration
  perfit post --format auto results.json   # in CI: post a whole benchmark suite, by name
  perfit account show                      # the link of the account's board
  perfit check                             # in CI on main: exit 3 while any metric is regressed
  perfit compare --format auto --comment results.json  # in a PR: against main where it
                                           # branched, one PR comment; exit 3 on a regression

Tokens belong in the environment, not on the command line (where `ps` shows them).
Client settings: PERFIT_SERVER, PERFIT_ACCESS_TOKEN, PERFIT_METRIC, PERFIT_METADATA,
PERFIT_COMMIT, PERFIT_BRANCH, PERFIT_BOARD, PERFIT_BASE, PERFIT_TIMEOUT; compare --comment
uses GITHUB_TOKEN (GitHub) or PERFIT_GITLAB_TOKEN (GitLab); the server's: PERFITD_LISTEN,
PERFITD_DATA, PERFITD_ROOT_ACCESS_TOKEN.

exit codes: 0 ok; 1 the server said no (message on stderr); 2 usage error;
3 regressed (`metric check`, `check`, `compare`); 4 the server could not be reached within
--timeout; `run` exits with the command's own code, whatever happened to the post.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, not argparse's usage dump: CI logs should show the problem, not noise.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


#: A number as people write one in CI: 1000, -2.5, 1e3; not Python's 1_000, inf or nan.
_DECIMAL_RE = _Regex(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _finite_float(text: str) -> float:
    if not _DECIMAL_RE.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number like 1000, -2.5 or 1e3")
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than zero")
    return value


def _non_negative(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} must be zero or more")
        return value

    return parse


@dataclasses.dataclass(frozen=True)
class _Option:
    """An option (or an argument) of a command; its help tells its variable and default."""

    flag: str  #: "--name", or the name of a positional argument
    help: str
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    default: Any = None
    env: str = ""  #: read from this environment variable, when set and not empty
    action: str | None = None
    choices: tuple[str, ...] | None = None
    nargs: str | None = None
    short: str = ""  #: "-o": a short flag as well

    def add_to(self, parser: Any) -> None:
        notes = [f"${self.env}"] if self.env else []
        if self.default not in (None, "", False):
            notes.append(
                f"default {self.default:g}"
                if isinstance(self.default, float)
                else f"default {self.default}"
            )
        help = f"{self.help} ({'; '.join(notes)})" if notes else self.help
        if self.action:
            parser.add_argument(self.flag, action=self.action, help=help)
            return
        default = (os.environ.get(self.env) if self.env else None) or self.default
        kwargs = {"type": self.type, "choices": self.choices, "nargs": self.nargs}
        parser.add_argument(
            *filter(None, (self.short, self.flag)),
            metavar=self.metavar,
            default=default,
            help=help,
            **{k: v for k, v in kwargs.items() if v is not None},
        )


def _options(title: str, options: Sequence[_Option]) -> argparse.ArgumentParser:
    """A parent parser holding `options` in a group: commands share them through it."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group(title)
    for option in options:
        option.add_to(group)
    return parent


#: The options of every client command, of those that name a metric, of those that post.
_CLIENT = (
    _Option("--server", "PerfIt server", "URL", default=_DEFAULT_SERVER, env=ENV_SERVER),
    _Option("--access-token", "access token", "TOKEN", env=ENV_ACCESS_TOKEN),
    _Option(
        "--timeout",
        "give up after this long, retries included",
        "SECONDS",
        _non_negative(float),
        _DEFAULT_TIMEOUT,
        ENV_TIMEOUT,
    ),
)
_ON_METRIC = (
    *_CLIENT,
    _Option(
        "--metric",
        "the metric's id, or its name in the token's account",
        "ID|NAME",
        env=ENV_METRIC,
    ),
)
_POSTING = (
    *_ON_METRIC,
    _Option(
        "--metadata",
        "text kept with the points (default: the CI job's URL)",
        "TEXT",
        env=ENV_METADATA,
    ),
    _Option(
        "--commit",
        "the commit measured, 7-40 hex digits (default: the CI's, or the checkout's)",
        "SHA",
        env=ENV_COMMIT,
    ),
    _Option(
        "--branch",
        "the branch measured (default: the CI's, or the checkout's); the account's main "
        "branch is main's line, another's points are kept 30 days apart from it",
        "NAME",
        env=ENV_BRANCH,
    ),
)
#: The chart's range, as options of the commands that read points.
_RANGE = tuple(
    _Option(f"--{o.name}", f"e.g. {o.example or o.placeholder}", "WHEN")
    for o in CHART_OPTIONS
    if o.field in ("start", "end")
)
_DATA = _Option("--data", "data directory", "DIR", default=_DEFAULT_DATA, env=ENV_DATA)
_SERVE_OPTIONS = (
    _DATA,
    _Option(
        "--listen",
        "address to listen on; port 0 picks a free one",
        "HOST:PORT",
        default=_DEFAULT_LISTEN,
        env=ENV_LISTEN,
    ),
    _Option(
        "--rate-limit",
        "requests per second per client address, in bursts of 2N; 0 turns it off",
        "N",
        _non_negative(float),
        _DEFAULT_RATE_LIMIT,
    ),
    _Option(
        "--trust-proxy",
        "reverse proxies in front whose X-Forwarded-For entries are "
        "believed (0: the socket's address only)",
        "N",
        _non_negative(int),
        0,
    ),
    _Option(
        "--public-url",
        "where people reach the server (https://perfit.example): the base of the links in "
        "webhooks, PR comments and check's output; default: the Host each request came with",
        "URL",
        env=ENV_PUBLIC_URL,
    ),
    _Option(
        "--webhook-allow-private",
        "let accounts' webhooks call loopback, link-local and private addresses (refused by "
        "default: a tenant's webhook must not reach inside the server's network)",
        action="store_true",
    ),
    _Option(
        "--max-connections",
        "connections served at once; more get a 503 at once",
        "N",
        _non_negative(int),
        _DEFAULT_MAX_CONNECTIONS,
    ),
    _Option(
        "--header-timeout",
        "time a client has to send a request's headers; a slower one is cut off",
        "SECONDS",
        _positive_float,
        _HEADER_TIMEOUT,
    ),
    _Option(
        "--seal-bytes",
        "seal the active log into a compressed segment once it holds N bytes",
        "N",
        _non_negative(int),
        SEAL_BYTES,
    ),
    _Option(
        "--repair",
        "salvage a damaged data directory: rewrite each corrupt file with its "
        f"good records, keeping the original in <data>/{DAMAGED_DIR}/",
        action="store_true",
    ),
)


def _range_query(args: argparse.Namespace, **more: str) -> str:
    """The query string of the range options given (and `more`), "" when there are none."""
    import urllib.parse

    options = {o.flag[2:]: getattr(args, o.flag[2:].replace("-", "_")) for o in _RANGE}
    options.update(more)
    given = {k: v for k, v in options.items() if v}
    return "?" + urllib.parse.urlencode(given) if given else ""


def _client(args: argparse.Namespace) -> Client:
    if not args.access_token:
        raise UsageError(f"no access token: pass --access-token or set {ENV_ACCESS_TOKEN}")
    return Client(_server_url(args.server), args.access_token, args.timeout)


def _reader(args: argparse.Namespace) -> Client:
    """A client that only reads: a metric id is a read capability, no token needed."""
    return Client(_server_url(args.server), None, args.timeout)


def _metric_given(args: argparse.Namespace) -> str:
    if not args.metric:
        raise UsageError(f"no metric: pass --metric or set {ENV_METRIC}")
    return args.metric


def _metric_path(args: argparse.Namespace) -> str:
    """/m/ID of --metric: an id as it is; a name looked up in the token's account."""
    metric = _metric_given(args)
    if decode_id(metric) is not None:
        return f"/m/{metric}"
    if not args.access_token:
        raise UsageError(
            f"--metric {metric!r} is a name, not an id: looking it up needs a token of its "
            f"account (--access-token, ${ENV_ACCESS_TOKEN}), or give the metric's id"
        )
    for known in _client(args).call("GET", "/a/")["metrics"]:
        if known["name"] == metric:
            return f"/m/{known['metric_id']}"
    raise NotFound(f"no metric named {metric!r} in the token's account")


def _origin(args: argparse.Namespace) -> dict[str, str]:
    """What a post says of where its points come from: --metadata, --commit and --branch,
    else what the CI service (or the checkout) tells: the job's URL, the commit, the branch."""
    found = ci_context() if not (args.metadata and args.commit and args.branch) else CiContext()
    origin = {
        "metadata": args.metadata or found.job,
        "commit": (args.commit or found.commit).lower(),
        "branch": args.branch or found.branch,
    }
    return {k: v for k, v in origin.items() if v}


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _cmd_token_gen(args: argparse.Namespace) -> int:
    print(new_token())
    return EXIT_OK


def _cmd_token_new(args: argparse.Namespace) -> int:
    _print_json(_client(args).call("PUT", "/t/", {"type": args.type}))
    return EXIT_OK


def _cmd_token_list(args: argparse.Namespace) -> int:
    _print_json(_client(args).call("GET", "/t/"))
    return EXIT_OK


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    if decode_id(args.token_id) is None:
        raise UsageError(f"{args.token_id!r} is no token id (22 characters; `perfit token list`)")
    _print_json(_client(args).call("DELETE", f"/t/{args.token_id}"))
    return EXIT_OK


def _cmd_account_new(args: argparse.Namespace) -> int:
    _print_json(_client(args).call("PUT", "/a/"))
    return EXIT_OK


def _cmd_account_show(args: argparse.Namespace) -> int:
    client = _client(args)
    account = client.call("GET", "/a/")
    _print_json({"board": f"{client.server}/b/{account['board_id']}", **account})
    return EXIT_OK


def _cmd_account_new_board(args: argparse.Namespace) -> int:
    client = _client(args)
    board = client.call("PUT", "/b/")
    _print_json({"board": f"{client.server}/b/{board['board_id']}", **board})
    return EXIT_OK


def _cmd_account_main_branch(args: argparse.Namespace) -> int:
    _print_json(_client(args).call("PATCH", "/a/", {"main_branch": args.branch}))
    return EXIT_OK


def _cmd_account_webhook(args: argparse.Namespace) -> int:
    if bool(args.url) == bool(args.remove):
        raise UsageError("give the webhook's URL, or --remove")
    _print_json(_client(args).call("PATCH", "/a/", {"webhook": args.url}))
    return EXIT_OK


def _cmd_metric_new(args: argparse.Namespace) -> int:
    fields = ("name", "unit", "description", "better")
    body = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    _print_json(_client(args).call("PUT", "/m/", body))
    return EXIT_OK


_GET_FORMATS = ("table", "json", "csv")


def _cmd_metric_get(args: argparse.Namespace) -> int:
    client, path, query = _reader(args), _metric_path(args), _range_query(args)
    shown = args.format or ("table" if sys.stdout.isatty() else "json")
    if shown == "csv":
        sys.stdout.write(client.fetch("GET", f"{path}/csv{query}").decode("utf-8"))
        return EXIT_OK
    points = client.call("GET", f"{path}/json{query}")
    if shown == "json":
        # One point a line: valid JSON for jq, and still readable through `head` or `grep`.
        print("[" + ",\n ".join(json.dumps(p, ensure_ascii=False) for p in points) + "]")
        return EXIT_OK
    print(_points_table(points, client.call("GET", f"{path}/info")))
    return EXIT_OK


def _points_table(points: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """Points as a person reads them on a terminal: time, value with its unit, metadata."""
    unit = info.get("unit") or ""
    values = [format_value(p["v"], unit) for p in points]
    width = max(map(len, ["value", *values]))
    lines = [f"{'time (UTC)':<20}  {'value':>{width}}  metadata"]
    for point, value in zip(points, values):
        lines.append(f"{format_time(point['t'])}  {value:>{width}}  {point.get('m', '')}".rstrip())
    name = info.get("name") or info.get("metric_id", "")
    lines.append(f"{len(points)} point(s) of {name}" + (f", in {unit}" if unit else ""))
    return "\n".join(lines)


def _cmd_metric_check(args: argparse.Namespace) -> int:
    client, path = _reader(args), _metric_path(args)
    threshold = {"threshold": repr(args.threshold)} if args.threshold is not None else {}
    changes = client.call("GET", f"{path}/changes{_range_query(args, **threshold)}")
    info = client.call("GET", f"{path}/info")
    name = info.get("name") or ""
    label = f"{name} ({args.metric})" if name and name != args.metric else name or args.metric
    print(_change_report(label, changes, info.get("unit", "")))
    return EXIT_REGRESSED if _regressed(changes) else EXIT_OK


def _standing_doc(changes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest change point not dismissed as noise, from /changes (see standing)."""
    return next((c for c in reversed(changes) if not c.get("dismissed")), None)


def _regressed(changes: list[dict[str, Any]]) -> bool:
    """Whether the standing change point is a regression nobody accepted (Change.alarming,
    read from /changes)."""
    newest = _standing_doc(changes)
    return newest is not None and newest["kind"] == "regression" and not newest.get("accepted")


def _change_report(metric: str, changes: list[dict[str, Any]], unit: str = "") -> str:
    """A few lines a person reads in a CI log: each change point, then the verdict."""
    if not changes:
        return f"{metric}: no change points: the level is steady"
    lines = [f"{metric}: {len(changes)} change point(s), oldest first:"]
    for c in changes:
        before, after = format_value(c["before"], unit), format_value(c["after"], unit)
        notes = "".join(f", {k}" for k in ("accepted", "dismissed", "provisional") if c.get(k))
        if c.get("shape") == "drift":
            notes += f", a drift over {c['runs']} runs"
        lines.append(
            f"  {format_time(c['t'])}  {c['kind']:<11} {_percent(c['change'], c['before'], c['after']):>8}  "
            f"(median {before} -> {after}, point {c['index']}{notes}, t={c['t']})"
        )
    newest = _standing_doc(changes)
    if newest is None:
        lines.append(f"{metric}: ok: every change was dismissed as noise")
        return "\n".join(lines)
    verdict = "REGRESSED" if _regressed(changes) else "ok"
    accepted = " (accepted as intended)" if newest.get("accepted") else ""
    article = "an" if newest["kind"] == "improvement" else "a"
    lines.append(
        f"{metric}: {verdict}: the newest change is {article} {newest['kind']} "
        f"of {_percent(newest['change'], newest['before'], newest['after'])}{accepted}"
    )
    if verdict == "REGRESSED" and suspect_window(newest):
        lines.append(f"  suspects: {suspect_window(newest)}")
    return "\n".join(lines)


def _cmd_metric_edit(args: argparse.Namespace) -> int:
    """metric edit: change what is given of name, unit, description, better, keep."""
    body = {f: getattr(args, f) for f in ("name", "unit", "description", "better", "keep")}
    body = {f: v for f, v in body.items() if v is not None}
    if args.keep_all:
        if "keep" in body:
            raise UsageError("give --keep or --keep-all, not both")
        body["keep"] = None
    if not body:
        raise UsageError(
            "nothing to change: give --name, --unit, --description, --better or --keep"
        )
    _print_json(_client(args).call("PATCH", _metric_path(args), body))
    return EXIT_OK


def _cmd_metric_delete(args: argparse.Namespace) -> int:
    """metric delete: the metric and its points, for good, once --yes says so."""
    path = _metric_path(args)
    if not args.yes:
        info = _reader(args).call("GET", f"{path}/info")
        raise UsageError(
            f"this deletes the metric {info['name'] or info['metric_id']!r} and its "
            f"{info['points']} point(s) for good; add --yes to do it"
        )
    _print_json(_client(args).call("DELETE", path))
    return EXIT_OK


def _cmd_metric_say(args: argparse.Namespace) -> int:
    """metric accept / dismiss / undismiss: say of a change point (the newest, unless --at;
    for undismiss the newest dismissed) that it was meant, or noise, or not noise after all."""
    path, verb = _metric_path(args), args.action
    if args.at:
        t = _when(args.at, "--at")
    else:
        changes = _reader(args).call("GET", f"{path}/changes")
        if verb == "undismiss":
            changes = [c for c in changes if c.get("dismissed")]
        if not changes:
            raise NotFound(f"the metric has no change point to {verb}")
        t = changes[-1]["t"]
    _print_json(_client(args).call("POST", f"{path}/{verb}", {"t": t}))
    return EXIT_OK


def _cmd_metric_mark(args: argparse.Namespace) -> int:
    """metric exclude / include: mark the points of a second or of a span."""
    path = _metric_path(args)
    start, end = getattr(args, "from"), args.to  # "from" is a Python keyword
    if args.at and not (start or end):
        body = {"t": _when(args.at, "--at")}
    elif start and end and not args.at:
        body = {"start": _when(start, "--from"), "end": _when(end, "--to")}
    else:
        raise UsageError("give --at WHEN, or --from WHEN and --to WHEN")
    verb = args.action
    answer = _client(args).call("POST", f"{path}/{verb}", body)
    print(f"perfit: {verb}d {answer['points']} point(s)", file=sys.stderr)
    _print_json(answer)
    return EXIT_OK


def _when(text: str, flag: str) -> int:
    """Unix seconds, or an RFC 3339 time, as whole unix seconds."""
    try:
        return (
            int(float(text))
            if re.fullmatch(r"[0-9]+(\.[0-9]*)?", text)
            else int(parse_rfc3339(text))
        )
    except (ValueError, OverflowError, OSError) as e:
        raise UsageError(
            f"{flag}: {text!r} is not unix seconds nor a time like 2026-11-01T12:00:00Z ({e})"
        ) from None


def _cmd_metric_import(args: argparse.Namespace) -> int:
    if args.format == "gab":
        return _import_gab(args)
    path = _metric_path(args)
    client = _client(args)
    added, existing = _import_into(client, path, _read_points_file(args.file))
    print(json.dumps({"added": added, "existing": existing}))
    return EXIT_OK


def _import_gab(args: argparse.Namespace) -> int:
    """metric import --format gab: a github-action-benchmark data.js into named metrics."""
    client = _client(args)
    series = read_gab_data_js(_read_text(args.file))
    known = {m["name"]: m["metric_id"] for m in client.call("GET", "/a/")["metrics"]}
    added = existing = 0
    for result, points in series:
        if result.name not in known:
            body = {"name": result.name, "unit": result.unit, "better": result.better}
            known[result.name] = client.call("PUT", "/m/", body)["metric_id"]
        columns = _as_columns(points)
        new, old = _import_into(client, f"/m/{known[result.name]}", columns, result.name)
        added, existing = added + new, existing + old
    print(json.dumps({"metrics": len(series), "added": added, "existing": existing}))
    return EXIT_OK


def _import_into(
    client: Client, path: str, columns: dict[str, list], label: str = ""
) -> tuple[int, int]:
    """Send points, as columns {"t", "v", "m"}, to /m/ID/points in batches; (added, already
    there). Columns: a tenth of the JSON objects rows would be, to encode and to decode."""
    import concurrent.futures

    added = existing = 0
    where = f"{label}: " if label else ""
    total = len(columns["t"])
    bodies = (
        _json_columns({name: c[i : i + MAX_IMPORT_POINTS] for name, c in columns.items()})
        for i in range(0, total, MAX_IMPORT_POINTS)
    )
    # One request at a time, in order; the next body is encoded while the server stores the
    # one before (the two sides' work overlaps, on two processes).
    with concurrent.futures.ThreadPoolExecutor(1) as sender:
        sent = None
        for body in itertools.chain(bodies, [None]):
            if sent is not None:
                try:
                    answer = _decode_answer(path, sent.result())
                except PerfitError as err:
                    err.args = (
                        f"{where}{err.message} (after {added + existing} of {total} points: "
                        f"{added} added; importing the file again adds only the rest)",
                    )
                    raise
                added, existing = added + answer["added"], existing + answer.get("existing", 0)
                print(
                    f"perfit: {where}imported {added + existing}/{total} points: {added} new, "
                    f"{existing} already there",
                    file=sys.stderr,
                    flush=True,
                )
            if body is not None:
                sent = sender.submit(client.fetch, "POST", path + "/points", body.encode())
    return added, existing


def _read_points_file(path: str) -> dict[str, list]:
    """Points as columns {"t", "v"[, "m"]}, from CSV with a header (t,v[,m]), a JSON array,
    or JSON lines."""
    text = _read_text(path)
    first = text.lstrip()[:1]
    try:
        if first == "[":
            rows = json.loads(text)
        elif first == "{":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            return _csv_columns(text)
    except ValueError as e:
        raise UsageError(f"{path}: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UsageError(f'{path}: expected objects like {{"t": 1767225600, "v": 12.5}}')
    return _as_columns(rows)


def _as_columns(rows: Sequence[dict[str, Any]]) -> dict[str, list]:
    """Points as columns; the server checks each value, and names the point if one is bad."""
    columns = {"t": [r.get("t") for r in rows], "v": [r.get("v") for r in rows]}
    for name in _IMPORT_TEXTS:
        if any(name in r for r in rows):
            columns[name] = [r.get(name, "") for r in rows]
    return columns


def _csv_columns(text: str) -> dict[str, list]:
    plain = _plain_csv_columns(text)
    if plain is not None:
        return plain
    import csv

    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    if not {"t", "v"} <= set(header):
        raise ValueError(
            "a CSV file needs a header line naming t, v and optionally m, commit, branch"
        )
    at = {name: header.index(name) for name in ("t", "v", *_IMPORT_TEXTS) if name in header}
    rows = list(reader)
    if rows and {len(row) for row in rows} == {len(header)}:
        with contextlib.suppress(ValueError):  # a bad number: found line by line below
            # Column by column, float() mapped in C: a line at a time costs twice as much.
            found = {name: [row[at[name]] for row in rows] for name in at}
            found["t"], found["v"] = list(map(float, found["t"])), list(map(float, found["v"]))
            return _without_empty_texts(found)
    found = {name: [] for name in at}
    for line, row in enumerate(rows, start=2):
        try:
            found["t"].append(float(row[at["t"]]))
            found["v"].append(float(row[at["v"]]))
        except (IndexError, ValueError):
            raise ValueError(f"line {line}: t and v must be numbers") from None
        for name in at.keys() - {"t", "v"}:
            found[name].append(row[at[name]] if at[name] < len(row) else "")
    return _without_empty_texts(found)


def _without_empty_texts(columns: dict[str, list]) -> dict[str, list]:
    """The columns less the text ones that say nothing (metadata, commit, branch all "")."""
    return {k: c for k, c in columns.items() if k in ("t", "v") or any(c)}


def _plain_csv_columns(text: str) -> dict[str, list] | None:
    """_csv_columns of a plain CSV file, the usual kind: no quotes, every line as many fields
    as the header, every t and v a JSON number. Split with str methods, a column at a time
    (the csv module makes a list a line); None for any other file: the csv module reads it,
    and names the line that is wrong."""
    if '"' in text or "\r" in text or "\0" in text:
        return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the file's last newline
    header = lines[0].split(",") if lines else []
    if not {"t", "v"} <= set(header):
        return None
    width = len(header)
    if {*map(str.count, lines, itertools.repeat(","))} != {width - 1}:
        return None  # a line of another width, or an empty one
    fields = ",".join(lines[1:]).split(",") if len(lines) > 1 else []
    t = _JsonNumbers(fields[header.index("t") :: width])
    v = _JsonNumbers(fields[header.index("v") :: width])
    if not (t.valid() and v.valid()):
        return None
    texts = {k: fields[header.index(k) :: width] for k in _IMPORT_TEXTS if k in header}
    return _without_empty_texts({"t": t, "v": v, **texts})


class _JsonNumbers(list):
    """A column of numbers kept as the text they were written in, when each is a JSON number:
    sent as it is, not turned into floats and back (which is most of the client's time)."""

    def valid(self) -> bool:
        """Whether every item is the text of one JSON number."""
        try:
            # An item with a comma is not one; NaN and Infinity are not JSON numbers.
            numbers = json.loads(f"[{','.join(self)}]", parse_constant=_reject_constant)
        except ValueError:
            return False
        return len(numbers) == len(self) and {*map(type, numbers)} <= {int, float}

    def __getitem__(self, index: Any) -> Any:
        got = super().__getitem__(index)
        return _JsonNumbers(got) if isinstance(index, slice) else got

    def json(self) -> str:
        return f"[{','.join(self)}]"


def _json_columns(columns: dict[str, list]) -> str:
    """json.dumps(columns), a column of _JsonNumbers as the text it holds."""
    items = (
        f"{json.dumps(name)}: {c.json() if isinstance(c, _JsonNumbers) else json.dumps(c)}"
        for name, c in columns.items()
    )
    return "{" + ", ".join(items) + "}"


def _keep_the_owner_of(path: str) -> None:
    """Give what this process writes in the data directory to its owner, when started as root
    on one that root does not own (`sudo perfit store compact`, `sudo perfit serve --repair`):
    the service then starts again as itself."""
    global _GIVE_TO
    try:
        owner = os.stat(path)
    except OSError:
        return  # not there yet: made by whoever runs this
    if hasattr(os, "geteuid") and os.geteuid() == 0 and owner.st_uid != 0:
        _GIVE_TO = (owner.st_uid, owner.st_gid)
        user = _user_name(owner.st_uid)
        print(f"perfit: files written in {path} are given to {user}, its owner", file=sys.stderr)


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):  # no pwd (Windows), or a uid with no name
        return str(uid)


def not_permitted(err: PermissionError, argv: Sequence[str]) -> str:
    """A refused file as one line: whose it is, who we are, and what to run instead (`argv`:
    the command's arguments)."""
    import shlex

    if not err.filename or not hasattr(os, "geteuid"):
        return f"permission denied: {err.strerror or err}"
    path = os.path.abspath(err.filename)
    me = _user_name(os.geteuid())
    if not os.path.lexists(path):  # to be made in a directory not ours
        parent = next(p for p in _self_and_parents(path) if os.path.lexists(p))
        owner = _user_name(os.lstat(parent).st_uid)
        return (
            f"cannot create {path}: permission denied: {parent} belongs to {owner}, and this "
            f"runs as {me}; make it for {me}: sudo install -d -o {me} {path}"
        )
    owner = _user_name(os.lstat(path).st_uid)
    said = f"cannot open {path}: permission denied: it belongs to {owner}, and this runs as {me}"
    if owner == "root":  # left by a command run as root before 0.3 (see _keep_the_owner_of)
        return f"{said}; give it back: sudo chown {me}: {path}"
    return f"{said}; run it as {owner}: sudo -u {owner} {shlex.join(['perfit', *argv])}"


def _self_and_parents(path: str) -> Iterator[str]:
    path = os.path.abspath(path)
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _data_to_read(args: argparse.Namespace) -> str:
    """--data of a store command: an existing directory, and zstd if it holds segments."""
    if not os.path.isdir(args.data):
        raise UsageError(f"no data directory at {args.data}")
    if DataFiles.list(args.data).segments:
        need_zstd()
    return args.data


def _cmd_store_check(args: argparse.Namespace) -> int:
    reports = check_directory(_data_to_read(args))
    problems = 0
    for report in reports:
        for note in report.notes:
            print(f"{report.path}: note: {note}")
        for problem in report.problems:
            print(f"{report.path}: {problem}")
            problems += 1
    records = sum(r.records for r in reports)
    verdict = "clean" if not problems else f"{problems} problem(s) found"
    print(f"perfit: checked {len(reports)} file(s), {records} record(s): {verdict}")
    return EXIT_OK if not problems else EXIT_REFUSED


def _cmd_bundle(args: argparse.Namespace) -> int:
    held = write_bundle(args.output)
    size = os.path.getsize(args.output)
    zstd, _ = find_zstd()
    print(f"perfit: wrote {args.output} ({size / 1024:.0f} KiB): {', '.join(held)}")
    print(
        "perfit: run it with `python3 "
        f"{args.output} serve`; zstd is not in it (compiled code): Python 3.14+ has it built "
        f"in, elsewhere `pip install zstandard` or logs stay uncompressed (here: "
        f"{zstd.name if zstd else 'none'})"
    )
    return EXIT_OK


def _cmd_store_compact(args: argparse.Namespace) -> int:
    _keep_the_owner_of(args.data)
    with Store.open(_data_to_read(args)) as store:
        need_zstd()
        done = store.compact()
    before = sum(len(run) for run, _ in done)
    after = sum(os.path.getsize(made.path) for _, made in done)
    print(
        f"perfit: compacted {before} segment(s) into {len(done)} ({after:,} bytes) in {args.data}"
    )
    return EXIT_OK


def _cmd_store_backup(args: argparse.Namespace) -> int:
    copied = backup_directory(_data_to_read(args), args.dest)
    damaged = [p for r in check_directory(args.dest) for p in r.problems]
    if damaged:
        raise StoreError(f"the copy in {args.dest} does not check clean: {damaged[0]}")
    print(f"perfit: copied {copied} file(s) from {args.data} to {args.dest}; the copy checks clean")
    return EXIT_OK


def _post_value(args: argparse.Namespace, value: float, unit: str = "") -> Any:
    """Post to --metric: by id, or by name as a run of one (which creates a missing one)."""
    metric, origin = _metric_given(args), _origin(args)
    if decode_id(metric) is None:
        return _post_results(_client(args), [Result(metric, value, unit)], origin)
    body: dict[str, Any] = {"value": value, **origin}
    if unit:
        body["unit"] = unit  # the server converts it to the metric's own unit
    return _said_off_main(_client(args).call("POST", f"/m/{metric}", body), origin)


def _said_off_main(answer: dict[str, Any], origin: dict[str, str]) -> dict[str, Any]:
    """The answer to a post, after saying on stderr when its points went apart from main's."""
    if answer.get("main") is False:
        branch, main = origin.get("branch", ""), answer.get("main_branch", "")
        print(
            f"perfit: branch {branch!r} is not the account's main branch ({main!r}): these "
            "points are kept 30 days apart from main's line, and checks do not see them. If "
            f"{branch!r} is your main branch: perfit account main-branch {branch} (admin token)",
            file=sys.stderr,
        )
    return answer


def _post_results(
    client: Client, results: Sequence[Result], origin: dict[str, str]
) -> dict[str, Any]:
    """Post named results as CI runs of up to MAX_RUN_POINTS each; {"t", "metrics"}."""
    answer: dict[str, Any] = {"t": None, "metrics": {}}
    for i in range(0, len(results), MAX_RUN_POINTS):
        points = [r.to_json() for r in results[i : i + MAX_RUN_POINTS]]
        done = client.call("POST", "/r/", {"points": points, **origin})
        if not i:
            _said_off_main(done, origin)
        answer["t"] = done["t"]
        answer["metrics"].update(done["metrics"])
    return answer


def _cmd_post(args: argparse.Namespace) -> int:
    if args.format:
        return _post_file(args)
    try:
        value = _finite_float(args.value)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"VALUE: {e} (to post a results file, give --format)") from None
    _print_json(_post_value(args, value))
    return EXIT_OK


def _post_file(args: argparse.Namespace) -> int:
    """post --format: every result of a harness's output, named, as one CI run."""
    client = _client(args)
    results = read_results(
        _read_text(args.value), args.format, args.prefix or "", args.better or ""
    )
    answer = _post_results(client, results, _origin(args))
    _print_json(answer)
    board = client.call("GET", "/a/")["board_id"]
    print(
        f"perfit: posted {len(results)} result(s) from {args.value}; "
        f"the board: {client.server}/b/{board}",
        file=sys.stderr,
    )
    return EXIT_OK


def _read_text(path: str) -> str:
    """A file's text (- for stdin; a directory is criterion's target/criterion); one that
    cannot be read is a usage error."""
    try:
        if path == "-":
            return sys.stdin.read()
        if os.path.isdir(path):
            return _criterion_directory(path)
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    # UTF-8, with the BOM spreadsheets write, or UTF-16 as PowerShell's > writes it.
    encoding = "utf-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise UsageError(
            f"cannot read {path}: not text (byte 0x{raw[e.start]:02x} at offset {e.start} is "
            f"not {encoding.removesuffix('-sig').upper()})"
        ) from None


def _cmd_run(args: argparse.Namespace) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise UsageError("no command to run: perfit run [options] -- CMD [ARGS...]")
    try:
        _client(args), _metric_given(args)  # say now, not after a 30-minute job
        unsendable = None
    except UsageError as err:
        unsendable = err
        _warn_in_ci(f"{err.message}; the duration will not be posted")
    code, elapsed, stopped_by = _timed(command)
    if code in (126, 127) and elapsed is None:
        return code
    if stopped_by:
        print(
            f"perfit: passed {stopped_by} on to {command[0]} (exit {code}); not posting its time",
            file=sys.stderr,
        )
        return code
    if code != 0 and not args.send_on_failure:
        print(
            f"perfit: {command[0]} failed (exit {code}); not posting its time "
            "(--send-on-failure would)",
            file=sys.stderr,
        )
        return code
    if unsendable:
        return unsendable.exit_code if args.fail_on_send_failure else code
    try:
        _post_value(args, round(elapsed, 6), unit="s")
    except PerfitError as err:
        _warn_in_ci(f"could not post the duration: {err.message}")
        return err.exit_code if args.fail_on_send_failure else code
    print(
        f"perfit: {command[0]} took {format_duration(elapsed)}; posted to {args.metric}",
        file=sys.stderr,
    )
    return code


def _warn_in_ci(message: str) -> None:
    """Say on stderr that a post did not happen, and on GitHub Actions also as a warning on the
    run's page: a job that stays green while its chart stops must not hide it in the log."""
    print(f"perfit: {message}", file=sys.stderr, flush=True)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        escaped = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        print(f"::warning title=PerfIt::{escaped}", flush=True)


def _timed(command: list[str]) -> tuple[int, float | None, str]:
    """Run a command to its end: its exit code, its wall time (None: it never started) and
    the signal passed on to it, if one was."""
    started = time.monotonic()
    try:
        code, stopped_by = _run_child(command)
    except FileNotFoundError:
        print(f"perfit: error: command not found: {command[0]}", file=sys.stderr)
        return 127, None, ""
    except PermissionError:
        print(f"perfit: error: permission denied: {command[0]}", file=sys.stderr)
        return 126, None, ""
    return code, time.monotonic() - started, stopped_by


def _cmd_compare(args: argparse.Namespace) -> int:
    """compare: a PR's results against main's where the PR branched; exit 3 on a regression."""
    context = ci_context()
    branched, base_note = ((args.base,), "") if args.base else context.branched_from()
    base = list(branched)
    rest = args.what
    if args.format:
        if not rest:
            raise UsageError("with --format, give the results file(s): --format F FILE...")
        results = [
            r
            for path in rest
            for r in read_results(
                _read_text(path), args.format, args.prefix or "", args.better or ""
            )
        ]
        doc = _compare_suite_remotely(args, results, base)
    elif not rest:
        raise UsageError("nothing to compare: give values, -- CMD, or --format F FILE...")
    elif (values := _numbers(rest)) is not None:
        doc = _compare_one_remotely(args, values, "", base)
    else:  # not numbers: a command to time
        code, elapsed, stopped_by = _timed(rest[1:] if rest[0] == "--" else rest)
        if code or elapsed is None or stopped_by:
            print(f"perfit: {rest[0]} failed (exit {code}); nothing to compare", file=sys.stderr)
            return code or EXIT_REFUSED
        doc = _compare_one_remotely(args, [round(elapsed, 6)], "s", base)
    threshold = DEFAULT_CHANGE_THRESHOLD if args.threshold is None else args.threshold
    server = doc.get("base_url") or _server_url(args.server)  # a server before 0.3 sends none
    report = _Comparison(doc, server, context, base, threshold, base_note)
    markdown = _comparison_markdown(report)
    print(markdown if args.markdown else report.text())
    for note in report.notes():
        print(f"perfit: {note}", file=sys.stderr)
    _to_step_summary(markdown)
    if args.comment:
        print(
            f"perfit: {post_comment(markdown, args.comment_key, timeout=args.timeout)}",
            file=sys.stderr,
        )
    return EXIT_REGRESSED if report.count("regression") else EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    """check: every metric of a board (or under --prefix); exit 3 if any is regressed."""
    board = _board_of(args)
    doc = _reader(args).call("GET", f"/b/{board}/json")
    prefix = (args.prefix or "").rstrip("/")
    rows = [m for m in doc["metrics"] if not prefix or m["name"].startswith(f"{prefix}/")]
    regressed = [m for m in rows if _regressed([m["newest_change"]] if m["newest_change"] else [])]
    server = doc.get("base_url") or _server_url(args.server)
    lines = []
    for m in regressed:
        change = m["newest_change"]
        lines.append(
            f"  {m['name'] or m['metric_id']}: {_percent(change['change'])} since "
            f"{format_time(change['t'])} ({server}/m/{m['metric_id']})"
        )
    scope = f" under {prefix}/" if prefix else ""
    verdict = (
        f"REGRESSED: {len(regressed)} of {len(rows)}" if regressed else f"ok: none of {len(rows)}"
    )
    print(
        "\n".join(
            [*lines, f"perfit: {verdict} metric(s){scope} regressed; the board: {server}/b/{board}"]
        )
    )
    _to_step_summary(_check_markdown(regressed, len(rows), server, board))
    return EXIT_REGRESSED if regressed else EXIT_OK


def _to_step_summary(markdown: str) -> None:
    """Append to the job's summary on GitHub Actions ($GITHUB_STEP_SUMMARY), which a fork's
    pull request shows too; elsewhere, nothing."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY", "")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown + "\n")


def _board_of(args: argparse.Namespace) -> str:
    """--board, or the board of the token's account."""
    board = args.board
    if not board:
        if not args.access_token:
            raise UsageError(
                f"no board: pass --board BOARD_ID (${ENV_BOARD}; `perfit account show` prints "
                f"it; it needs no token), or a token (--access-token, ${ENV_ACCESS_TOKEN})"
            )
        board = _client(args).call("GET", "/a/")["board_id"]
    if decode_id(board) is None:
        raise UsageError(f"--board {board!r} is not a board id (22 characters)")
    return board


def _check_markdown(regressed: list[dict], total: int, server: str, board: str) -> str:
    title = (
        f"{len(regressed)} of {total} metrics regressed"
        if regressed
        else f"none of {total} metrics regressed"
    )
    lines = [f"### PerfIt: {title}", "", f"[The board]({server}/b/{board})", ""]
    if regressed:
        lines += ["| metric | change | since |", "| --- | ---: | --- |"]
        for m in regressed:
            change = m["newest_change"]
            name = _md_text(m["name"] or m["metric_id"])
            lines.append(
                f"| [{name}]({server}/m/{m['metric_id']}) | {_percent(change['change'])} | "
                f"{format_time(change['t'])} |"
            )
    return "\n".join(lines)


def _numbers(texts: Sequence[str]) -> list[float] | None:
    """The texts as finite numbers, or None if any of them is not one."""
    try:
        return [_finite_float(t) for t in texts]
    except argparse.ArgumentTypeError:
        return None


def _compare_suite_remotely(
    args: argparse.Namespace, results: Sequence[Result], base: Sequence[str]
) -> dict[str, Any]:
    """A suite compared by name on the board of --board, or of the token's account: one request."""
    if len(results) > MAX_COMPARE_RESULTS:
        raise UsageError(
            f"{len(results)} results; at most {MAX_COMPARE_RESULTS:,} in one comparison"
        )
    board = _board_of(args)
    share = max(_MIN_SENT_SAMPLES, min(MAX_RUN_POINTS, _MAX_SENT_SAMPLES // len(results)))
    body: dict[str, Any] = {"results": [_fresh_json(r, share) for r in results]}
    if base:
        body["base"] = list(base)
    doc = _reader(args).call("POST", f"/b/{board}/compare{_threshold_query(args)}", body)
    return {**doc, "board": board}


_MAX_SENT_SAMPLES = 100_000  #: samples a comparison sends in all (a body under 4 MiB)
_MIN_SENT_SAMPLES = 5  #: ... and at least this many a result, whatever the suite's size


def _fresh_json(result: Result, most: int = MAX_RUN_POINTS) -> dict[str, Any]:
    """A result as a comparison takes it: every sample the harness wrote (at most `most`:
    evenly spaced order statistics, so their median and spread stay), or its value."""
    samples = sorted(result.samples)
    if len(samples) > most:
        samples = [samples[round(i * (len(samples) - 1) / (most - 1))] for i in range(most)]
    doc: dict[str, Any] = {"name": result.name, "values": samples or [result.value]}
    if result.unit:
        doc["unit"] = result.unit
    return doc


def _compare_one_remotely(
    args: argparse.Namespace, values: list[float], unit: str, base: Sequence[str]
) -> dict[str, Any]:
    """Values for --metric compared with it, as a suite's answer of one."""
    metric = _metric_given(args)
    if decode_id(metric) is None and args.board and not args.access_token:
        # A name, no token (a fork's PR): the board knows the account's names.
        found = _reader(args).call("GET", f"/b/{_board_of(args)}/json")["metrics"]
        ids = [m["metric_id"] for m in found if m["name"] == metric]
        if not ids:
            raise NotFound(f"no metric named {metric!r} on board {args.board}")
        args.metric = ids[0]
    path = _metric_path(args)
    body: dict[str, Any] = {"values": values}
    if unit:
        body["unit"] = unit
    if base:
        body["base"] = list(base)
    reader = _reader(args)
    answer = reader.call("POST", f"{path}/compare{_threshold_query(args)}", body)
    info = reader.call("GET", f"{path}/info")
    name = info.get("name") or info["metric_id"]
    row = {"name": name, "metric_id": info["metric_id"], "unit": info.get("unit", ""), **answer}
    found = answer["baseline"]["commit"] if base else None
    return {"results": [row], "shift": None, "base": found, "missing": []}


def _threshold_query(args: argparse.Namespace) -> str:
    return f"?threshold={args.threshold!r}" if args.threshold is not None else ""


#: Each verdict as a comparison shows it, worst first: its mark and its words.
_VERDICTS = {
    "regression": ("🔴", "regression", "regressions"),
    "inconclusive": ("🟡", "inconclusive", "inconclusive"),
    "improvement": ("🟢", "improvement", "improvements"),
    "new": ("🆕", "new", "new"),
    "same": ("⚪", "the same", "the same"),
}


@dataclasses.dataclass
class _Comparison:
    """A comparison's answer as people read it: a terminal table here, and what the Markdown
    of a PR comment and a job summary needs (see _comparison_markdown)."""

    doc: dict[str, Any]
    server: str
    context: CiContext
    base: Sequence[str]
    threshold: float = DEFAULT_CHANGE_THRESHOLD
    base_note: str = ""  #: how the base was found, when git could not say

    @functools.cached_property
    def usual_commit(self) -> str | None:
        """The commit most baselines are at: the base, or main's newest run."""
        commits = [(r.get("baseline") or {}).get("commit") for r in self.doc["results"]]
        found = collections.Counter(c for c in commits if c).most_common(1)
        return found[0][0] if found else None

    @property
    def rows(self) -> list[dict[str, Any]]:
        order = list(_VERDICTS)
        return sorted(self.doc["results"], key=lambda r: order.index(r["verdict"]))

    def count(self, verdict: str) -> int:
        return sum(r["verdict"] == verdict for r in self.doc["results"])

    def tally(self) -> str:
        """ "1 regression, 48 the same" (the verdicts there are, worst first)."""
        parts = []
        for verdict, (_, one, many) in _VERDICTS.items():
            n = self.count(verdict)
            if n:
                parts.append(f"{n} {one if n == 1 else many}")
        return ", ".join(parts)

    def notes(self) -> list[str]:
        """What a reader should know besides the rows: the base, the run's shift."""
        notes = []
        if self.base and self.doc.get("base") is None:
            notes.append(
                "main has no point of the PR's base commit (nor of the 50 before it): "
                "compared with main's newest level"
            )
        elif not self.base:
            notes.append(
                "no base commit (not a pull request, or --base not given): compared with "
                "main's newest level"
            )
        if self.base_note:
            notes.append(self.base_note)
        if self.shift_note:
            notes.append(self.shift_note)
        return notes

    @property
    def shift_note(self) -> str:
        """What to say of a whole run that moved by the threshold or more; "" otherwise."""
        shift = self.doc.get("shift")
        if not shift or shift["verdict"] != "inconclusive":
            return ""
        return (
            f"the whole run is {_percent(shift['change'])}: a slower runner, or a change "
            "every benchmark shares; each change is measured against it"
        )

    def text(self) -> str:
        cells = [["", "benchmark", "main", "this run", "change", "95 % interval"]]
        for row in self.rows:
            cells.append([_VERDICTS[row["verdict"]][1], row["name"], *self._numbers(row)])
        widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
        regressed = self.count("regression")
        lines.append(f"perfit: {'REGRESSED: ' if regressed else ''}{self.tally()}")
        lines += [
            f"perfit: {m['name']}: main has it, these results do not"
            for m in self.doc.get("missing", [])
        ]
        return "\n".join(lines)

    def _numbers(self, row: dict[str, Any]) -> list[str]:
        """main (its median, and commit), this run, change, interval: as a person reads them."""
        unit, base = row.get("unit", ""), row.get("baseline") or {}
        main = "—" if base.get("median") is None else format_value(base["median"], unit)
        change = "—" if row.get("change") is None else _percent(row["change"])
        interval = "—"
        if row.get("interval") and None not in row["interval"]:
            interval = " … ".join(_percent(x) for x in row["interval"])
        return [main, format_value(row["value"], unit), change, interval]

    def _commit(self, sha: str) -> str:
        shown = f"`{sha[:7]}`"
        link = self.context.commit_link
        return f"[{shown}]({link.format(sha)})" if link else shown


def _comparison_markdown(report: _Comparison) -> str:
    """A comparison as Markdown, for a PR comment and a job summary: the rows that changed
    first, the unchanged folded, as much as a comment holds."""
    head = _markdown_head(report)
    table = [
        "| | benchmark | main | this run | change | 95 % interval |",
        "| :-: | --- | ---: | ---: | ---: | :-: |",
    ]
    missing = report.doc.get("missing", [])
    lost = []
    if missing:
        names = ", ".join(_md_text(m["name"]) for m in missing)
        lost = [f"**Main has {len(missing)} that this run lacks:** {names}", ""]
    footer = [
        f"<sub>Regression: at least the threshold ({report.threshold * 100:g} %) and beyond the "
        "noise main's runs show; inconclusive: at least the threshold, within that noise "
        "(run again); interval: 95 %. Made by PerfIt.</sub>"
    ]
    # What fits a comment: the rows that changed first, then the unchanged (folded).
    room = _MAX_COMMENT_CHARS - len("\n".join([*head, *table, *lost, *footer])) - 400
    shown = _fitting(
        [_markdown_row(report, r) for r in report.rows if r["verdict"] != "same"], room
    )
    room -= sum(len(line) + 1 for line in shown)
    same = _fitting([_markdown_row(report, r) for r in report.rows if r["verdict"] == "same"], room)
    lines = [*head, ""]
    if shown:
        lines += [*table, *shown, ""]
    lines += lost
    if same:
        summary = f"<details><summary>{len(same)} the same</summary>"
        lines += [summary, "", *table, *same, "", "</details>", ""]
    left = len(report.doc["results"]) - len(shown) - len(same)
    if left:
        lines += [f"{left} more results are left out to fit a comment: see the board.", ""]
    return "\n".join(lines + footer)


def _markdown_head(report: _Comparison) -> list[str]:
    """The title, the tally, where main's baseline is, and the whole run's shift."""
    regressed = report.count("regression")
    title = "no regression" if not regressed else f"{regressed} regression{'s' * (regressed > 1)}"
    total = len(report.doc["results"])
    head = [f"### PerfIt: {title} in {total} benchmark{'s' * (total != 1)}", ""]
    usual = report.usual_commit
    where = "main's newest level" + (f" ({report._commit(usual)})" if usual else "")
    if report.doc.get("base"):
        where = f"main at {report._commit(report.doc['base'])}, where this branched"
    board = report.doc.get("board")
    links = f" · [the board]({report.server}/b/{board})" if board else ""
    head.append(f"{report.tally()}: against {where}{links}")
    note = report.shift_note
    if note:
        head += ["", f"> ⚠️ {note[0].upper()}{note[1:]}."]
    return head


def _markdown_row(report: _Comparison, row: dict[str, Any]) -> str:
    """One result as a row of the comment's table."""
    mark = _VERDICTS[row["verdict"]][0]
    name = _md_text(row["name"])
    if row.get("metric_id"):
        query = f"?branch={_url_quote(report.context.branch)}" if report.context.branch else ""
        name = f"[{name}]({report.server}/m/{row['metric_id']}{query})"
    main, value, change, interval = (_md_text(c) for c in report._numbers(row))
    commit = (row.get("baseline") or {}).get("commit")
    if commit and commit != report.usual_commit:  # the usual one is said once, above
        main += f" ({report._commit(commit)})"
    return f"| {mark} | {name} | {main} | {value} | {change} | {interval} |"


#: What makes Markdown of text (a name a fork's pull request chose): emphasis, code, links
#: and images, a table's cells, strike-through; HTML is made entities before.
_MD_SPECIAL_RE = _Regex(r"([\\`*_\[\]|~])")


def _md_text(text: str) -> str:
    """Text as Markdown shows it, to the letter, in a table's cell or a link's text: no
    markup, no HTML, no line breaks."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL_RE.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def _fitting(lines: list[str], room: int) -> list[str]:
    """The first of `lines` that fit in `room` characters (each with its line break)."""
    used = itertools.accumulate(len(line) + 1 for line in lines)
    return [line for line, total in zip(lines, used) if total <= room]


def _url_quote(text: str) -> str:
    import urllib.parse

    return urllib.parse.quote(text, safe="")


#: Signals `run` passes on to its command: what CI runners send a job they cancel.
_FORWARDED_SIGNALS = (
    "SIGTERM",
    "SIGINT",
    "SIGHUP",
)  #: what `run` passes on (Windows has no SIGHUP)


def _run_child(command: list[str]) -> tuple[int, str]:
    """Run command to its end, passing on the signals that would stop us.

    Returns its exit code (128+N when signal N killed it, as shells say) and the name of the
    signal passed on, if one was. A Ctrl-C in a terminal reaches the command by itself (the
    whole foreground group gets it), so that one is not passed on a second time.
    """
    import signal
    import subprocess

    in_terminal = _in_terminal_foreground()
    child: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        if child and not (signum == signal.SIGINT and in_terminal):
            with contextlib.suppress(ProcessLookupError):
                child[0].send_signal(signum)

    forwarded = [getattr(signal, name) for name in _FORWARDED_SIGNALS if hasattr(signal, name)]
    previous = {s: signal.signal(s, forward) for s in forwarded}
    try:
        child.append(subprocess.Popen(command))
        if received:  # a signal came while the command was starting: it gets it now
            child[0].send_signal(received[-1])
        code = child[0].wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stopped_by = signal.Signals(received[-1]).name if received else ""
    return (128 - code if code < 0 else code), stopped_by


def _in_terminal_foreground() -> bool:
    """Whether we run in a terminal's foreground process group (where Ctrl-C goes to all)."""
    for stream in (sys.stdin, sys.stderr):
        try:
            if stream is not None and stream.isatty():
                return os.tcgetpgrp(stream.fileno()) == os.getpgrp()
        except (OSError, ValueError, AttributeError):  # AttributeError: no process groups
            continue
    return False


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    # Everything that can fail comes before a root token is made: one printed by a start that
    # then fails (port in use, a module missing) would be lost, and the next start makes none.
    host, port = _parse_listen(args.listen)
    public_url = args.public_url and _server_url(args.public_url, "--public-url")
    chosen_root = _root_token_from_env()
    _check_server_dependencies()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    _keep_the_owner_of(args.data)
    store = Store.open(args.data, repair=args.repair, seal_bytes=max(args.seal_bytes, 1024))
    store.exit_on_fatal = True
    store.sealer.in_child = True  # a long-lived heap: sealing's churn goes to a child
    store.start_maintenance()
    try:
        config = ServerConfig(
            rate_limit=args.rate_limit,
            trust_proxy=args.trust_proxy,
            webhook_allow_private=args.webhook_allow_private,
            public_url=public_url,
        )
        try:
            app = make_app(store, config)
            server = make_server(host, port, app, args.max_connections, args.header_timeout)
        except OSError as e:
            raise PerfitError(f"cannot listen on {args.listen}: {e.strerror or e}") from e
        try:
            store.root_token_hash = _root_token_hash(args.data, chosen_root)
        except BaseException:
            server.server_close()
            raise
        if store.zstd is None:
            _log.warning(
                "no zstd: %s; full logs stay uncompressed (%s)", store.zstd_missing, _ZSTD_FIX
            )

        def stop(signum: int, frame: Any) -> None:
            # shutdown() waits for serve_forever() to return, so it must run on another thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

        # Before saying "listening": a supervisor may send SIGTERM the moment it reads that.
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        bound_host, bound_port = server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"perfit: listening on http://{shown}:{bound_port}", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
            left = server.drain(_HEADER_TIMEOUT)
            if left:
                _log.warning("stopping with %d request(s) unfinished", left)
        finally:
            server.server_close()
        _log.info("stopped")
    finally:
        store.close()
    return EXIT_OK


#: What `perfit serve` imports besides the standard library (zstd is optional: see find_zstd).
_SERVER_MODULES = ("bottle", "svgwrite")


def _check_server_dependencies() -> None:
    """Import the server's modules now: a missing one is a line naming the fix, no traceback."""
    missing = []
    for name in _SERVER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependency(
            f"the server needs {' and '.join(missing)}, which this Python cannot import: "
            "pip install bottle svgwrite zstandard (or pip install . in a clone of PerfIt)"
        )


def _root_token_from_env() -> bytes | None:
    """The hash of $PERFITD_ROOT_ACCESS_TOKEN, if the operator chose one (checked first)."""
    token = os.environ.get(ENV_ROOT_TOKEN, "").strip()
    if not token:
        return None
    if len(token) < _MIN_ROOT_TOKEN_CHARS:
        raise UsageError(f"{ENV_ROOT_TOKEN} is too short; use `perfit token gen` to make one")
    return hash_token(token)


def _root_token_hash(data: str, chosen: bytes | None) -> bytes:
    """The hash of the root token: the operator's (`chosen`, from the environment), or the one
    made on first start (and printed then, once).

    Only its SHA-256 is kept (<data>/root-token.sha256), so nothing in the data directory or
    its backups can be used to log in. The file is its one home: a chosen token's hash
    replaces what it held, so a token replaced never works again, even when a later start
    lacks the environment. Lost a generated one? Delete that file and restart: a new one is
    made and printed.
    """
    path = os.path.join(data, ROOT_TOKEN_FILE)
    _migrate_plain_root_token(data, path)
    kept = None
    with contextlib.suppress(FileNotFoundError), open(path, encoding="ascii") as f:
        kept = bytes.fromhex(f.read().strip())
    if chosen is not None:
        if kept != chosen:
            _write_durably(path, chosen.hex().encode() + b"\n")
            if kept is not None:
                _log.warning("%s now holds %s's hash: the root token before it no longer "
                             "works", path, ENV_ROOT_TOKEN)  # fmt: skip
        return chosen
    if kept is not None:
        return kept
    token = new_token()
    _write_private(path, hash_token(token).hex() + "\n")
    print(f"perfit: root access token: {token}", flush=True)
    print(
        "perfit: (shown this once; only its hash is kept, in "
        f"{path}: delete that file and restart to make a new one)",
        flush=True,
    )
    return hash_token(token)


def _migrate_plain_root_token(data: str, hashed: str) -> None:
    """Replace the plain root-token file of PerfIt 0.1 by its hash: no secret at rest."""
    plain = os.path.join(data, "root-token")
    if os.path.exists(plain) and not os.path.exists(hashed):
        with open(plain, encoding="utf-8") as f:
            _write_private(hashed, hash_token(f.read().strip()).hex() + "\n")
        os.unlink(plain)
        _log.warning("replaced %s by its hash in %s; the token itself still works", plain, hashed)


def _write_private(path: str, text: str) -> None:
    fd = _open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


#: The subcommands, in the order --help lists them; a two-word one is an action of a group.
_GROUPS = {
    "store": "check, compact and back up a data directory",
    "token": "make, list and revoke access tokens",
    "account": "manage accounts and their boards",
    "metric": "create, change, delete, read, check and import metrics",
}


@dataclasses.dataclass(frozen=True)
class _Command:
    words: str  #: "serve", "metric get"
    run: Callable[[argparse.Namespace], int]
    help: str
    options: tuple[_Option, ...] = ()
    client: tuple[_Option, ...] = ()  #: the client options it takes (_CLIENT, _ON_METRIC ...)
    reads_range: bool = False  #: it takes the chart's range options
    description: str | None = None
    usage: str | None = None


#: The board a command reads: a read capability for every metric of an account, no token.
_BOARD_OPTION = _Option(
    "--board",
    "the account's board id (`perfit account show`); no token needed",
    "BOARD_ID",
    env=ENV_BOARD,
)

#: How `post` and `compare` read a results file.
_FORMAT_OPTIONS = (
    _Option(
        "--format",
        "read FILE as this harness's output; auto tells which by its shape",
        choices=("auto", *_FORMATS),
    ),
    _Option("--prefix", "put NAME/ before every result's name, e.g. the suite", "NAME"),
    _Option(
        "--better",
        "which way is better for the results that are neither times nor rates (github-action-"
        "benchmark's custom JSON, a BMF measure of your own, asv's track_); default: lower",
        choices=("lower", "higher"),
    ),
)

#: The change that `metric accept`, `dismiss` and `undismiss` speak of.
_CHANGE_AT = (
    _Option(
        "--at",
        "the change's time (unix seconds or RFC 3339, as `metric check` prints it); default "
        "the newest",
        "WHEN",
    ),
)

#: The points that `metric exclude` and `include` mark: one second's, or a span's.
_MARK_OPTIONS = (
    _Option("--at", "the point's time (unix seconds, as /json gives it, or RFC 3339)", "WHEN"),
    _Option("--from", "the span's first time", "WHEN"),
    _Option("--to", "the span's last time", "WHEN"),
)

#: The server's commands, and those that act on its data directory.
_SERVER_COMMANDS = (
    _Command(
        "serve",
        _cmd_serve,
        "run the server",
        _SERVE_OPTIONS,
        description=(
            f"Run the PerfIt server. The root access token (it creates accounts) is ${ENV_ROOT_TOKEN} "
            "if set; otherwise one is made on first start and printed once, and only its hash is "
            f"kept, in <data>/{ROOT_TOKEN_FILE} (delete it and restart for a new one). Needs bottle "
            "and svgwrite; zstd (Python 3.14+, or zstandard) to compress full logs."
        ),
    ),
    _Command(
        "bundle",
        _cmd_bundle,
        "write one executable file: this module, bottle and svgwrite in a zipapp",
        (_Option("--output", "the file to write", "FILE", default="perfit.pyz", short="-o"),),
        description="Write a zipapp holding PerfIt and its pure-Python server dependencies "
        "(bottle, svgwrite) from this environment, so that `python3 perfit.pyz serve` runs on a "
        "machine with nothing but Python 3.9+. zstd, which compresses full logs, is compiled "
        "code and can't be imported from a zip: Python 3.14+ has it built in; elsewhere an "
        "installed zstandard is used, or logs stay uncompressed (the server says so).",
    ),
    _Command(
        "store check",
        _cmd_store_check,
        "verify every record (safe while a server runs); exit 1 on damage",
        (_DATA,),
    ),
    _Command(
        "store compact",
        _cmd_store_compact,
        "seal and compact every segment now, reclaiming deleted and expired points (server stopped)",
        (_DATA,),
        description="Seal the logs and rewrite every segment without the points of deleted "
        "metrics and those past a metric's keep. A running server does this by itself, in the "
        "background, once such points are 5 % of all; this command is for a stopped server "
        "(it takes the data directory's lock). A crash at any moment loses nothing.",
    ),
    _Command(
        "store backup",
        _cmd_store_backup,
        "copy a data directory consistently, even while a server runs",
        (_DATA, _Option("dest", "a new or empty directory", "DEST")),
    ),
)
#: Tokens and accounts.
_ACCOUNT_COMMANDS = (
    _Command("token gen", _cmd_token_gen, "print a new random token (no server)"),
    _Command(
        "token new",
        _cmd_token_new,
        "a new token for the caller's account (admin token)",
        (
            _Option(
                "--type",
                "post tokens can only post data points",
                default="post",
                choices=("post", "admin"),
            ),
        ),
        _CLIENT,
    ),
    _Command(
        "token list",
        _cmd_token_list,
        "the account's tokens: id, type, when made; never the tokens (admin token)",
        client=_CLIENT,
    ),
    _Command(
        "token revoke",
        _cmd_token_revoke,
        "make one of the account's tokens stop working, at once (admin token)",
        (
            _Option(
                "token_id",
                "the token's id, from `token list` or `token new` (one that starts with - goes "
                "after --: token revoke -- -AbC...)",
                "TOKEN_ID",
            ),
        ),
        _CLIENT,
    ),
    _Command(
        "account new",
        _cmd_account_new,
        "a new account and its admin token (root token)",
        client=_CLIENT,
    ),
    _Command(
        "account show",
        _cmd_account_show,
        "the token's account: its board's link and its metrics",
        client=_CLIENT,
    ),
    _Command(
        "account webhook",
        _cmd_account_webhook,
        "tell a URL of each new regression (a JSON POST, Slack-compatible) (admin token)",
        (
            _Option("url", "an http(s) URL, e.g. a Slack incoming webhook", "URL", nargs="?"),
            _Option("--remove", "tell no URL any more", action="store_true"),
        ),
        _CLIENT,
    ),
    _Command(
        "account main-branch",
        _cmd_account_main_branch,
        "name the branch whose points are each metric's line (admin token; default main)",
        (_Option("branch", "the repository's main branch, e.g. master or trunk", "BRANCH"),),
        _CLIENT,
        description="Name the account's main branch (admin token): points posted with it, or "
        "with no branch, are each metric's line; another branch's are kept 30 days apart from "
        "it, drawn over it when asked for, and move none of main's change points, checks, "
        "badge, board or baselines. Points posted from now on follow it.",
    ),
    _Command(
        "account new-board",
        _cmd_account_new_board,
        "replace the board's id, so its old links stop working (admin token)",
        client=_CLIENT,
    ),
)
#: Metrics: made, read, checked, marked, imported.
_METRIC_COMMANDS = (
    _Command(
        "metric new",
        _cmd_metric_new,
        "create a metric (admin token); prints its JSON",
        (
            _Option("--name", "what is measured, e.g. 'unit tests'"),
            _Option("--unit", "e.g. s, ms, MB"),
            _Option("--description", "a sentence shown on the metric's page"),
            _Option(
                "--better",
                "which way is an improvement (lower, the default, as for durations)",
                choices=_BETTER_CHOICES,
            ),
        ),
        _CLIENT,
    ),
    _Command(
        "metric edit",
        _cmd_metric_edit,
        "rename a metric, or change its unit label, description, better or keep (admin token)",
        (
            _Option("--name", "a new name, unique in the account ('' removes it)"),
            _Option("--unit", "a new unit label (the values stay as they are)"),
            _Option("--description", "a sentence shown on the metric's page"),
            _Option("--better", "which way is an improvement", choices=_BETTER_CHOICES),
            _Option("--keep", "retention: serve only points younger than this (400d, 2y)", "AGE"),
            _Option("--keep-all", "keep every point from now on", action="store_true"),
        ),
        _ON_METRIC,
        description="Change what is given of the metric's name, unit, description, better "
        "and keep (admin token); prints the metric. With --keep, points older than that are no "
        "longer served from this moment, and their space comes back when the server compacts.",
    ),
    _Command(
        "metric delete",
        _cmd_metric_delete,
        "delete a metric and all its points, for good (admin token; --yes)",
        (_Option("--yes", "yes, delete it", action="store_true"),),
        _ON_METRIC,
    ),
    _Command(
        "metric get",
        _cmd_metric_get,
        "print the metric's data points",
        (
            _Option(
                "--format",
                "table, json or csv (default: table on a terminal, json otherwise)",
                choices=_GET_FORMATS,
            ),
        ),
        _ON_METRIC,
        True,
        "Print the metric's data points, oldest first: a table on a terminal, JSON (one "
        "point a line) when piped, or what --format asks for.",
    ),
    _Command(
        "metric check",
        _cmd_metric_check,
        "report change points; exit 3 while the metric is regressed",
        (
            _Option(
                "--threshold",
                "smallest relative step reported (0.05 is 5 %%)",
                "X",
                _non_negative(float),
                DEFAULT_CHANGE_THRESHOLD,
            ),
        ),
        _ON_METRIC,
        True,
        "Print the metric's change points (steps in its typical level) "
        "and exit 3 while its newest change point is a regression, 0 otherwise, 1 when the "
        "server says no: `perfit run ... && perfit metric check` fails a job on a "
        "regression.",
    ),
    _Command(
        "metric accept",
        _cmd_metric_say,
        "accept a change point as intended, so `metric check` passes it (admin token)",
        _CHANGE_AT,
        _ON_METRIC,
    ),
    _Command(
        "metric dismiss",
        _cmd_metric_say,
        "dismiss a change point as noise: no regression for anyone, counted as a false alarm "
        "(admin token)",
        _CHANGE_AT,
        _ON_METRIC,
    ),
    _Command(
        "metric undismiss",
        _cmd_metric_say,
        "take a dismissal back (admin token)",
        _CHANGE_AT,
        _ON_METRIC,
    ),
    _Command(
        "metric exclude",
        _cmd_metric_mark,
        "mark points as bad (a broken runner): kept, but left out of detection (admin token)",
        _MARK_OPTIONS,
        _ON_METRIC,
    ),
    _Command(
        "metric include",
        _cmd_metric_mark,
        "take excluded points back in (admin token)",
        _MARK_OPTIONS,
        _ON_METRIC,
    ),
    _Command(
        "metric import",
        _cmd_metric_import,
        "bulk-import points from CSV (t,v,m), JSON, or a github-action-benchmark data.js",
        (
            _Option("file", "the file to read; - for stdin", "FILE"),
            _Option(
                "--format",
                "points (CSV or JSON, into --metric), or gab: a github-action-benchmark data.js",
                default="points",
                choices=("points", "gab"),
            ),
        ),
        _ON_METRIC,
        description="Import points with their own times (admin token): a CSV file with a "
        "header line naming t, v and optionally m (what `GET /m/ID/csv` gives), a JSON "
        'array of {"t", "v", "m"}, or JSON lines. t is unix seconds. Sent in batches of '
        f"{MAX_IMPORT_POINTS}; each batch is stored whole or not at all, and points "
        "already there are not added again. With --format gab, a github-action-benchmark "
        "data.js becomes a metric per benchmark (SUITE/NAME, created when missing), a point "
        "per commit at its time, the commit as metadata; importing it again adds nothing.",
    ),
)
#: What CI jobs post, and how a pull request compares.
_POSTING_COMMANDS = (
    _Command(
        "post",
        _cmd_post,
        "post one data point, or a benchmark harness's results",
        (
            _Option(
                "value",
                "the value, e.g. 12.5; with --format, the results file (- for stdin)",
                "VALUE|FILE",
            ),
            *_FORMAT_OPTIONS,
        ),
        _POSTING,
        description="Post one value to --metric (an id, or a name: a metric missing by that name "
        "is created), or, with --format, every result in a benchmark harness's output as one "
        "CI run: each result goes to the metric of its name, created on first sight. Times are "
        "stored in seconds; throughput (per second) is higher-is-better. See the README's "
        '"Benchmark suites" for what each format takes.',
        usage="perfit post [options] VALUE\n       perfit post --format FORMAT [options] FILE",
    ),
    _Command(
        "run",
        _cmd_run,
        "run a command, post how long it took",
        (
            _Option(
                "--send-on-failure", "post the duration even when CMD fails", action="store_true"
            ),
            _Option(
                "--fail-on-send-failure",
                "fail (with the post's exit code) when the duration could not be posted",
                action="store_true",
            ),
            _Option("cmd", "the command to time", "CMD", nargs=argparse.REMAINDER),
        ),
        _POSTING,
        description="Run CMD, post its duration in the metric's unit, exit with CMD's "
        "exit code. A failed post is reported on stderr but never fails the job, unless "
        "--fail-on-send-failure.",
        usage="perfit run [options] -- CMD [ARGS...]",
    ),
    _Command(
        "compare",
        _cmd_compare,
        "compare a pull request's results with main's where it branched; exit 3 on a regression",
        (
            *_FORMAT_OPTIONS,
            _BOARD_OPTION,
            _Option(
                "--base",
                "main's commit to compare with (default: where the pull request branched, "
                "from the CI's environment and git)",
                "SHA",
                env=ENV_BASE,
            ),
            _Option(
                "--threshold",
                "smallest relative change that counts (default 0.05, 5 %%)",
                "X",
                _non_negative(float),
            ),
            _Option(
                "--comment",
                "also post the table as one comment on the pull request, edited in place on "
                "later runs (GitHub: $GITHUB_TOKEN; GitLab: $PERFIT_GITLAB_TOKEN)",
                action="store_true",
            ),
            _Option(
                "--comment-key",
                "tells this comparison's comment from another workflow's",
                "KEY",
                default="perfit",
            ),
            _Option("--markdown", "print the Markdown table instead", action="store_true"),
            _Option(
                "what",
                "values, -- CMD [ARGS...], or the results file(s)",
                "VALUE|FILE",
                nargs="*",
            ),
        ),
        _ON_METRIC,
        description="Compare a pull request's results with main's on the server, storing "
        "nothing: with --format, a whole suite by name (several files make one suite), on "
        "--board (no token needed: a fork's pull request has none) or the token's account's "
        "board; or values (a run's samples) for --metric, or a command timed like `run`. "
        "Main's level is taken where the pull request branched (the merge base, with the "
        "checkout's history; else the PR's base commit). Each result gets its change, the "
        "change's 95 % interval and a verdict: regression or improvement (at least the "
        "threshold and beyond the noise), inconclusive (at least the threshold, within the "
        "noise), the same, or new. A whole run's shared shift (a slower runner) is measured "
        "and taken out. Exit 3 on any regression, 0 otherwise. The Markdown table is appended "
        "to $GITHUB_STEP_SUMMARY when that is set; --comment posts it on the pull request.",
        usage="perfit compare --format FORMAT [options] FILE...\n"
        "       perfit compare [options] VALUE...\n       perfit compare [options] -- CMD [ARGS...]",
    ),
    _Command(
        "check",
        _cmd_check,
        "check every metric of the account (or under --prefix); exit 3 if any is regressed",
        (
            _BOARD_OPTION,
            _Option("--prefix", "only the metrics whose names start with NAME/", "NAME"),
        ),
        _CLIENT,
        description="Check every main metric of the token's account (or of --board), or those "
        "whose names start with --prefix/: print the regressed ones and a count, append a "
        "Markdown table to $GITHUB_STEP_SUMMARY when that is set, and exit 3 if any metric's "
        "newest change point is a regression nobody accepted (0 otherwise). A suite's `metric "
        "check`, in one call.",
    ),
)
#: Every subcommand, in the order --help lists them.
_COMMANDS = (*_SERVER_COMMANDS, *_ACCOUNT_COMMANDS, *_METRIC_COMMANDS, *_POSTING_COMMANDS)


def _build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser. Given the arguments, only the command they name gets its
    options (every command is listed, for help and errors): building all of them would cost
    every CI job's start as much again as importing this module."""
    chosen = _command_words(argv)
    parser = _Parser(
        prog="perfit",
        description="PerfIt: record and plot CI performance metrics. "
        "`serve` runs the server; every other command is a client of one.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"perfit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (serve)")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, Any] = {}
    for command in _COMMANDS:
        *group, name = command.words.split()
        where = top
        if group:
            if group[0] not in groups:
                action = top.add_parser(group[0], help=_GROUPS[group[0]])
                groups[group[0]] = action.add_subparsers(
                    dest="action", metavar="ACTION", required=True
                )
            where = groups[group[0]]
        if chosen is not None and command.words != chosen:
            where.add_parser(name, help=command.help)
            continue
        parents = [_options("client options", command.client)] if command.client else []
        if command.reads_range:
            parents.append(_options("range (as on a chart; a relative bound wins)", _RANGE))
        sub = where.add_parser(
            name,
            parents=parents,
            help=command.help,
            description=command.description,
            usage=command.usage,
        )
        for option in command.options:
            option.add_to(sub)
        sub.set_defaults(func=command.run)
    return parser


def _command_words(argv: Sequence[str] | None) -> str | None:
    """The command the arguments name ("metric get"), or None: not one of ours (or none)."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")][:2]
    for command in _COMMANDS:
        if command.words.split() == words[: len(command.words.split())]:
            return command.words
    return None


# ==============================================================================================
# Entry point
# main() is the only place that exits: it maps PerfitError to one line on stderr and its code.
# ==============================================================================================


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser(argv)
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return code
    except PerfitError as err:
        print(f"perfit: error: {err.message}", file=sys.stderr)
        return err.exit_code
    except PermissionError as err:  # a file of the data directory, or one given: not ours
        said = not_permitted(err, sys.argv[1:] if argv is None else argv)
        print(f"perfit: error: {said}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`perfit metric get | head`): it has what it wanted. Point
        # stdout at /dev/null so the flush at exit does not complain about it either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
