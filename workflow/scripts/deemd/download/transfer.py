"""Resumable HTTP(S) transfer (docs/method.md §1): :func:`download` streams into
``dest.part``, resumes it with ``Range: bytes=N-`` (in the same call after a dropped
connection, and across runs), retries transient failures with exponential backoff,
reports progress through a callback, verifies size and checksums (computed
incrementally, the resumed prefix included) and only then renames ``dest.part`` to
``dest``."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.client
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from deemd.download.progress import Progress, format_bytes
from deemd.download.verify import MiB, ChecksumMismatchError, DownloadError, SizeMismatchError, normalise_checksums, verify_file

log = logging.getLogger("deemd.download")

USER_AGENT = "deemd-download/1.0 (python-urllib)"
#: HTTP statuses worth retrying (timeouts, rate limits, server hiccups).
RETRYABLE_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Transient(Exception):
    """Internal: a failure worth retrying (connection dropped mid-transfer, HTTP 503...)."""


class _StartOver(Exception):
    """Internal: the partial file cannot be resumed and was discarded."""


# --------------------------------------------------------------------------- headers


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None] | None:
    """Parse a ``Content-Range`` header.

    ``'bytes 100-199/1000'`` -> ``(100, 199, 1000)``; ``'bytes 100-199/*'`` ->
    ``(100, 199, None)``; ``'bytes */1000'`` (sent with 416) -> ``(None, None, 1000)``;
    anything else -> ``None``.
    """
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value, flags=re.I)
    if not m:
        return None
    start, end, total = m.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total != "*" else None,
    )


def server_md5(headers) -> str | None:
    """The whole-object MD5 a Google Cloud Storage server announces, as hex, if any.

    GCS sends ``x-goog-hash: crc32c=...,md5=<base64>`` (possibly as two headers) for
    objects uploaded in one piece; composite objects only carry crc32c. The value
    describes the whole object, also in answers to Range requests.
    """
    values = (headers.get_all("x-goog-hash") if hasattr(headers, "get_all") else None) or []
    for value in values:
        for item in value.split(","):
            key, _, encoded = item.strip().partition("=")
            if key.lower() == "md5" and encoded:
                try:
                    return base64.b64decode(encoded, validate=True).hex()
                except (binascii.Error, ValueError):
                    return None
    return None


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


@dataclass
class _Transfer:
    """Mutable state of one :func:`download` call."""

    url: str
    dest: Path
    part: Path
    expected_size: int | None
    expected: dict[str, str]
    chunk_size: int
    timeout: float
    progress: Callable[[Progress], None] | None
    progress_interval: float
    use_server_md5: bool
    total: int | None = None
    server_md5: str | None = None
    hashers: dict = field(default_factory=dict)
    hashed: int = 0  # bytes of .part the hashers have seen
    transferred: int = 0  # bytes received by this call
    started: float = field(default_factory=time.monotonic)
    last_report: float = field(default_factory=time.monotonic)

    def algorithms(self) -> set[str]:
        algos = set(self.expected)
        if self.use_server_md5 and self.server_md5 and "md5" not in self.expected:
            algos.add("md5")
        return algos

    def reset_hashers(self) -> None:
        self.hashers = {algo: hashlib.new(algo) for algo in sorted(self.algorithms())}
        self.hashed = 0

    def ensure_hashed(self, offset: int) -> None:
        """Bring the hashers in line with the first ``offset`` bytes of ``.part``."""
        if set(self.hashers) != self.algorithms():
            self.reset_hashers()
        if not self.hashers:
            self.hashed = offset
            return
        if self.hashed == offset:
            return
        self.reset_hashers()
        if offset:
            log.info("%s: hashing the %s already on disk", self.dest.name, format_bytes(offset))
            with open(self.part, "rb") as f:
                remaining = offset
                while remaining:
                    chunk = f.read(min(self.chunk_size, remaining))
                    if not chunk:
                        raise _StartOver(f"{self.part} shrank while being hashed")
                    self.update(chunk, count=False)
                    remaining -= len(chunk)
        self.hashed = offset

    def update(self, chunk: bytes, count: bool = True) -> None:
        for h in self.hashers.values():
            h.update(chunk)
        self.hashed += len(chunk)
        if count:
            self.transferred += len(chunk)

    def report(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (not force and now - self.last_report < self.progress_interval):
            return
        self.last_report = now
        elapsed = max(now - self.started, 1e-9)
        self.progress(
            Progress(self.dest.name, done, self.total, self.transferred / elapsed, elapsed)
        )


def _request(url: str, offset: int) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.Request(url, headers=headers)


def _open(t: _Transfer, offset: int):
    """The HTTP answer to a request for ``t.url`` from ``offset`` on, or None where the
    server reports the partial file complete (HTTP 416). Raises _Transient / _StartOver /
    DownloadError, and lets other URLErrors through to be retried."""
    try:
        return urllib.request.urlopen(_request(t.url, offset), timeout=t.timeout)
    except urllib.error.HTTPError as err:
        with contextlib.closing(err):
            if err.code == 416 and offset:
                rng = parse_content_range(err.headers.get("Content-Range"))
                remote_total = rng[2] if rng else None
                if remote_total == offset or (remote_total is None and t.total in (None, offset)):
                    log.info("%s: server reports the partial file complete (HTTP 416)", t.dest.name)
                    t.total = offset
                    t.ensure_hashed(offset)
                    return None
                raise _StartOver(
                    f"partial file has {offset} bytes but the remote file has {remote_total}"
                ) from None
            if err.code in RETRYABLE_HTTP_STATUS:
                raise _Transient(f"HTTP {err.code} {err.reason}") from err
            raise DownloadError(f"{t.dest}: HTTP {err.code} {err.reason} for {t.url}") from err
    except urllib.error.URLError as err:
        local = urllib.parse.urlsplit(t.url).scheme == "file"
        if local or isinstance(err.reason, ssl.SSLCertVerificationError):
            raise DownloadError(f"{t.dest}: {err.reason} for {t.url}") from err
        raise  # transient (connection refused, DNS hiccup, timeout): retried by the caller


def _body_plan(t: _Transfer, resp, offset: int) -> tuple[int, int | None, str]:
    """(offset, body length or None, file mode) of an answer: 206 appends at ``offset``,
    200 (Range ignored) starts over at 0. Checks the server's size against the expected
    one and brings the hashers in line with the data kept."""
    status = getattr(resp, "status", None) or 200  # file:// answers have no status
    t.server_md5 = server_md5(resp.headers) or t.server_md5
    if status == 206:
        rng = parse_content_range(resp.headers.get("Content-Range"))
        if rng is None or rng[0] != offset:
            raise _StartOver(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
        length = rng[1] - rng[0] + 1
        remote_total = rng[2]
        mode = "ab"
    elif status == 200:
        if offset:
            log.warning(
                "%s: server ignored the Range request (HTTP 200): starting over", t.dest.name
            )
            offset = 0
        cl = resp.headers.get("Content-Length")
        length = int(cl) if cl and cl.isdigit() else None
        remote_total = length
        mode = "wb"
    else:
        raise DownloadError(f"{t.dest}: unexpected HTTP {status} for {t.url}")

    if remote_total is not None:
        if t.expected_size is not None and remote_total != t.expected_size:
            raise SizeMismatchError(
                f"{t.dest}: size mismatch: expected {t.expected_size} bytes, "
                f"the server reports {remote_total} for {t.url}"
            )
        t.total = remote_total
    if mode == "wb":
        t.reset_hashers()
    else:
        t.ensure_hashed(offset)
    return offset, length, mode


def _attempt(t: _Transfer, offset: int) -> None:
    """One HTTP request, appending to (or restarting) ``t.part``.

    Returns when the file is complete; raises _Transient / _StartOver / DownloadError.
    """
    resp = _open(t, offset)
    if resp is None:
        return
    with resp:
        offset, length, mode = _body_plan(t, resp, offset)
        received = 0
        with open(t.part, mode) as f:
            try:
                while chunk := resp.read(t.chunk_size):
                    f.write(chunk)
                    t.update(chunk)
                    received += len(chunk)
                    t.report(offset + received)
            finally:
                f.flush()
                os.fsync(f.fileno())
        if length is not None and received < length:
            raise _Transient(f"connection closed after {received} of {length} bytes")


def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, _Transient) else f"{type(err).__name__}: {err}"


#: Exceptions that mean "the network let us down, try again".
_TRANSIENT = (
    _Transient,
    urllib.error.URLError,
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine...
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)


def download(
    url: str,
    dest: str | os.PathLike,
    expected_size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    *,
    chunk_size: int = 8 * MiB,
    retries: int = 20,
    timeout: float = 60.0,
    progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 10.0,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    keep_bad: bool = True,
    use_server_md5: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download ``url`` to ``dest``, resuming, retrying and verifying; return ``dest``.

    Data is streamed to ``dest.part``. If it exists (an earlier run was interrupted) or the
    connection drops, the transfer continues with ``Range: bytes=N-``: a ``206`` answer is
    appended, a ``200`` (server ignores Range) restarts from zero, a ``416`` means the
    partial file is already complete. Connection errors, timeouts, truncated bodies and
    HTTP 408/429/5xx are retried up to ``retries`` times in a row with exponential backoff
    (``backoff`` s doubling up to ``max_backoff``); the count restarts whenever an attempt
    made progress. After the last retry ``.part`` is kept, so a rerun resumes.

    ``progress`` receives a :class:`Progress` (``str()`` is a log line with bytes, %
    and MB/s) at most every ``progress_interval`` seconds and once at the end.

    Verification: the size must equal ``expected_size`` (checked against the server's
    Content-Length before transferring) and the server's length; ``md5``/``sha256``, if
    given, must match (hex). Without a configured md5 the whole-object MD5 that Google
    Cloud Storage announces in ``x-goog-hash`` is checked (``use_server_md5``). Hashes are
    computed while streaming, over the resumed prefix too. On a mismatch the data is moved
    to ``dest.bad`` (``keep_bad``) or deleted, and :class:`ChecksumMismatchError` /
    :class:`SizeMismatchError` names the file, expected and actual values. Only verified
    data is renamed (atomically) to ``dest``. If ``dest`` already exists and passes the
    checks it is returned as is.
    """
    dest = Path(dest)
    part, bad = _sibling(dest, ".part"), _sibling(dest, ".bad")
    expected = normalise_checksums(md5, sha256)
    expected_size = int(expected_size) if expected_size is not None else None
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")

    def discard(path: Path) -> str:
        if keep_bad:
            os.replace(path, bad)
            return f"the bad file was moved to {bad}"
        path.unlink()
        return "the bad file was deleted"

    if dest.exists() and _present_and_verified(dest, expected_size, expected, chunk_size, discard):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    t = _Transfer(
        url, dest, part, expected_size, expected, chunk_size, timeout, progress, progress_interval, use_server_md5,
        total=expected_size,
    )
    t.reset_hashers()
    _transfer_with_retries(t, retries, backoff, max_backoff, sleep)
    _verify_and_rename(t, expected, discard)
    return dest


def _present_and_verified(dest: Path, expected_size: int | None, expected: dict, chunk_size: int, discard) -> bool:
    """Whether ``dest`` (which exists) passes the checks; if not, it is discarded."""
    problems = verify_file(dest, expected_size, **expected, chunk_size=chunk_size)
    if not problems:
        log.info("%s: already present and verified, nothing to download", dest)
        return True
    log.warning(
        "%s: existing file fails verification (%s); %s",
        dest,
        "; ".join(problems),
        discard(dest),
    )
    return False


def _transfer_with_retries(t: _Transfer, retries: int, backoff: float, max_backoff: float, sleep) -> None:
    """Attempts until ``t.part`` holds the whole file: a partial file larger than the
    remote one, or one that cannot be resumed, starts over (at most ``retries`` times);
    transient failures are retried ``retries`` times in a row with exponential backoff,
    the count restarting whenever an attempt made progress."""
    dest, part = t.dest, t.part
    failures = restarts = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if t.total is not None and offset > t.total:
            log.warning(
                "%s: partial file (%d bytes) is larger than the file (%d): starting over",
                dest.name,
                offset,
                t.total,
            )
            part.unlink()
            offset = 0
        if offset and t.total is not None and offset == t.total:
            t.ensure_hashed(offset)  # complete .part left by an earlier run
            return
        if offset:
            log.info("%s: resuming at %s", dest.name, format_bytes(offset))
        try:
            _attempt(t, offset)
            return
        except _StartOver as err:
            restarts += 1
            log.warning("%s: %s; discarding the partial file and starting over", dest.name, err)
            part.unlink(missing_ok=True)
            t.reset_hashers()
            if restarts > retries:
                raise DownloadError(
                    f"{dest}: cannot resume ({err}) after {retries} restarts"
                ) from err
        except _TRANSIENT as err:
            now = part.stat().st_size if part.exists() else 0
            failures = 1 if now > offset else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"{dest}: giving up after {retries} retries ({_describe(err)}); "
                    f"{format_bytes(now)} kept in {part}, run again to resume"
                ) from err
            delay = min(max_backoff, backoff * 2 ** (failures - 1))
            log.warning(
                "%s: %s at %s; retry %d/%d in %.1f s",
                dest.name,
                _describe(err),
                format_bytes(now),
                failures,
                retries,
                delay,
            )
            sleep(delay)


def _verify_and_rename(t: _Transfer, expected: dict, discard) -> None:
    """Check the whole ``t.part`` (size against the expected and the server's; the
    configured checksums, else the server's MD5) and rename it to ``t.dest``; on a
    mismatch discard it and raise SizeMismatchError / ChecksumMismatchError."""
    dest, part, expected_size = t.dest, t.part, t.expected_size
    if not part.exists():  # an empty body never opened the file (0-byte download)
        part.touch()
    size = part.stat().st_size
    t.report(size, force=True)
    t.ensure_hashed(size)
    problems = []
    for label, want in (("expected size", expected_size), ("server size", t.total)):
        if want is not None and size != want:
            problems.append(f"size ({label}): expected {want} bytes, got {size}")
            break
    wanted = dict(expected)
    if "md5" not in wanted and "md5" in t.hashers and t.server_md5:
        wanted["md5"] = t.server_md5
    actual = {algo: h.hexdigest() for algo, h in t.hashers.items()}
    for algo, want in wanted.items():
        if actual[algo] != want:
            source = "configured" if algo in expected else "announced by the server"
            problems.append(f"{algo}: expected {want} ({source}), got {actual[algo]}")
    if problems:
        where = discard(part)
        cls = (
            SizeMismatchError
            if all(p.startswith("size") for p in problems)
            else ChecksumMismatchError
        )
        raise cls(f"{dest}: download verification failed: {'; '.join(problems)}; {where}")
    for algo in sorted(actual):
        log.info("%s: %s %s verified", dest.name, algo, actual[algo])
    os.replace(part, dest)
    log.info("%s: complete, %s", dest, format_bytes(size))
