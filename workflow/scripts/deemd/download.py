"""Resumable, verified HTTP downloads and resumable, atomic unpacking of zip archives.

docs/method.md §1: the RxRx19a archives (metadata, ~445 GB of images, embeddings) come from
a public bucket over plain HTTP(S). A transfer of that size *will* be interrupted, so:

* :func:`download` streams into ``dest.part``, resumes it with ``Range: bytes=N-``
  (in the same call after a dropped connection, and across runs), retries transient
  failures with exponential backoff, reports progress through a callback, verifies size
  and checksums (computed incrementally, the resumed prefix included) and only then
  renames ``dest.part`` to ``dest``. Nothing that fails verification is left where it
  could pass for a complete download.
* :func:`unpack_experiment` / :func:`unpack_archive` extract members one by one to a
  temporary name and rename them into place, skip members already present with the
  right size, so an interrupted unpack resumes where it stopped.

Only the standard library is used (urllib/http.client, hashlib, zipfile).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

MiB = 1024 * 1024
USER_AGENT = "deemd-download/1.0 (python-urllib)"
#: HTTP statuses worth retrying (timeouts, rate limits, server hiccups).
RETRYABLE_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
SUPPORTED_CHECKSUMS = ("md5", "sha256")


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or with a non-retryable error)."""


class SizeMismatchError(DownloadError):
    """The size of the data differs from the expected size."""


class ChecksumMismatchError(DownloadError):
    """The checksum of the downloaded data differs from the expected checksum."""


class UnpackError(RuntimeError):
    """An archive cannot be unpacked as asked (member missing, unsafe path, ...)."""


class _Transient(Exception):
    """Internal: a failure worth retrying (connection dropped mid-transfer, HTTP 503...)."""


class _StartOver(Exception):
    """Internal: the partial file cannot be resumed and was discarded."""


# --------------------------------------------------------------------------- progress


def format_bytes(n: float) -> str:
    """Human-readable size in decimal units: ``format_bytes(1.5e9) == '1.50 GB'``."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` for an ETA."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass(frozen=True)
class Progress:
    """One progress report of :func:`download`; ``str()`` gives a log line.

    ``done`` counts bytes in the partial file (the resumed prefix included),
    ``rate`` is bytes/s transferred by this call (prefix excluded).
    """

    name: str
    done: int
    total: int | None
    rate: float
    elapsed: float

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None

    def __str__(self) -> str:
        text = f"{self.name}: {format_bytes(self.done)}"
        if self.total:
            text += f" / {format_bytes(self.total)} ({100 * self.done / self.total:.1f} %)"
        text += f", {self.rate / 1e6:.2f} MB/s"
        if self.total and self.rate > 0 and self.done < self.total:
            text += f", ETA {format_duration((self.total - self.done) / self.rate)}"
        return text


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


# --------------------------------------------------------------------------- hashing


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def normalise_checksums(md5: str | None = None, sha256: str | None = None) -> dict[str, str]:
    """``{'md5': hex, 'sha256': hex}`` for the checksums given, lower-cased and checked."""
    lengths = {"md5": 32, "sha256": 64}
    out = {}
    for algo, value in (("md5", md5), ("sha256", sha256)):
        if value is None or str(value).strip() == "":
            continue
        value = str(value).strip().lower()
        if not re.fullmatch(rf"[0-9a-f]{{{lengths[algo]}}}", value):
            raise ValueError(f"{algo} checksum must be {lengths[algo]} hex digits, got {value!r}")
        out[algo] = value
    return out


def hash_file(
    path: str | os.PathLike, algorithms=SUPPORTED_CHECKSUMS, chunk_size: int = 8 * MiB
) -> dict[str, str]:
    """Hex digests of a file for each algorithm, read once in chunks."""
    hashers = {algo: hashlib.new(algo) for algo in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            for h in hashers.values():
                h.update(chunk)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


def verify_file(
    path: str | os.PathLike,
    expected_size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    chunk_size: int = 8 * MiB,
) -> list[str]:
    """Check a file against an expected size and checksums; return the problems found.

    An empty list means the file passed every check that was asked for.
    """
    path = Path(path)
    expected = normalise_checksums(md5, sha256)
    size = path.stat().st_size
    problems = []
    if expected_size is not None and size != int(expected_size):
        problems.append(f"size: expected {int(expected_size)} bytes, got {size}")
        return problems
    if expected:
        actual = hash_file(path, expected, chunk_size)
        for algo, want in expected.items():
            if actual[algo] != want:
                problems.append(f"{algo}: expected {want}, got {actual[algo]}")
    return problems


# --------------------------------------------------------------------------- download


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


def _attempt(t: _Transfer, offset: int) -> None:
    """One HTTP request, appending to (or restarting) ``t.part``.

    Returns when the file is complete; raises _Transient / _StartOver / DownloadError.
    """
    try:
        resp = urllib.request.urlopen(_request(t.url, offset), timeout=t.timeout)
    except urllib.error.HTTPError as err:
        with contextlib.closing(err):
            if err.code == 416 and offset:
                rng = parse_content_range(err.headers.get("Content-Range"))
                remote_total = rng[2] if rng else None
                if remote_total == offset or (remote_total is None and t.total in (None, offset)):
                    log.info("%s: server reports the partial file complete (HTTP 416)", t.dest.name)
                    t.total = offset
                    t.ensure_hashed(offset)
                    return
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

    with resp:
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

    if dest.exists():
        problems = verify_file(dest, expected_size, **expected, chunk_size=chunk_size)
        if not problems:
            log.info("%s: already present and verified, nothing to download", dest)
            return dest
        log.warning(
            "%s: existing file fails verification (%s); %s",
            dest,
            "; ".join(problems),
            discard(dest),
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    t = _Transfer(
        url,
        dest,
        part,
        expected_size,
        expected,
        chunk_size,
        timeout,
        progress,
        progress_interval,
        use_server_md5,
        total=expected_size,
    )
    t.reset_hashers()
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
            break
        if offset:
            log.info("%s: resuming at %s", dest.name, format_bytes(offset))
        try:
            _attempt(t, offset)
            break
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
    return dest


# --------------------------------------------------------------------------- unpacking


@dataclass(frozen=True)
class UnpackResult:
    """What :func:`unpack_members` did: ``files`` selected, of which ``extracted`` were
    written now and ``skipped`` were already present with the right size."""

    files: int
    extracted: int
    skipped: int
    bytes_extracted: int
    plates: int = 0


def safe_relpath(rel: str) -> str:
    """Return a zip member path if it stays inside the destination, else raise UnpackError."""
    parts = rel.split("/")
    if (
        rel.startswith("/")
        or "\\" in rel
        or any(p in ("", ".", "..") for p in parts)
        or ":" in parts[0]
    ):
        raise UnpackError(f"unsafe path in archive: {rel!r}")
    return rel


def image_member_path(name: str, experiment: str) -> str | None:
    """Destination path (relative) of an images-archive member, or None if not selected.

    Members whose path contains ``images/{experiment}/`` (at a path-component boundary)
    are selected and everything before ``images/`` is stripped:
    ``'RxRx19a/images/HRCE-1/Plate1/A01_s1_w1.png'`` -> ``'images/HRCE-1/Plate1/A01_s1_w1.png'``.
    ``HRCE-1`` does not select ``HRCE-10``. Directory entries give None.
    """
    if name.endswith("/"):
        return None
    key = f"images/{experiment}/"
    i = name.find(key)
    while i != -1:
        if i == 0 or name[i - 1] == "/":
            rel = name[i:]
            return safe_relpath(rel) if len(rel) > len(key) else None
        i = name.find(key, i + 1)
    return None


def common_top_level(names: list[str]) -> str:
    """``'RxRx19a/'`` if every member lies under that one top-level folder, else ``''``."""
    tops = {n.split("/", 1)[0] + "/" for n in names if "/" in n.strip("/")}
    if len(tops) == 1 and all(n.startswith(next(iter(tops))) for n in names):
        return next(iter(tops))
    return ""


def extract_member_atomic(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> int:
    """Extract one member to ``target`` via a temporary sibling and an atomic rename.

    The temporary name (``.{name}.part``) is fixed, so an interrupted run leaves at most
    one stray file that the next run overwrites. zipfile checks the CRC while reading.
    Returns the number of bytes written.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        with zf.open(info) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, MiB)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info.file_size


def unpack_members(
    zip_path: str | os.PathLike,
    dest_root: str | os.PathLike,
    select: Callable[[str], str | None],
    *,
    label: str | None = None,
    progress: Callable[[str], None] | None = None,
    progress_interval: float = 10.0,
) -> UnpackResult:
    """Extract the members for which ``select(name)`` gives a relative path.

    Each selected member goes to ``dest_root / select(name)`` atomically
    (:func:`extract_member_atomic`); members already there with the right size are
    skipped, so rerunning after an interruption only does what is missing.
    ``progress`` gets a log line at most every ``progress_interval`` seconds and at the end.
    """
    dest_root = Path(dest_root)
    label = label or Path(zip_path).name
    with zipfile.ZipFile(zip_path) as zf:
        plan = []
        for info in zf.infolist():
            if info.is_dir():
                continue
            rel = select(info.filename)
            if rel is not None:
                plan.append((info, dest_root / safe_relpath(rel)))
        plan.sort(key=lambda item: item[0].header_offset)  # read the archive sequentially
        extracted = skipped = nbytes = 0
        started = last = time.monotonic()
        for i, (info, target) in enumerate(plan, 1):
            try:
                present = target.stat().st_size == info.file_size
            except FileNotFoundError:
                present = False
            if present:
                skipped += 1
            else:
                nbytes += extract_member_atomic(zf, info, target)
                extracted += 1
            now = time.monotonic()
            if progress and (now - last >= progress_interval or i == len(plan)):
                last = now
                rate = nbytes / max(now - started, 1e-9) / 1e6
                progress(
                    f"{label}: {i}/{len(plan)} files ({100 * i / len(plan):.1f} %), "
                    f"{extracted} extracted ({format_bytes(nbytes)}, {rate:.2f} MB/s), "
                    f"{skipped} already present"
                )
    plates = len({target.parent for _, target in plan})
    return UnpackResult(len(plan), extracted, skipped, nbytes, plates)


def unpack_experiment(
    zip_path: str | os.PathLike, dest_root: str | os.PathLike, experiment: str, **kwargs
) -> UnpackResult:
    """Unpack the images of one experiment to ``dest_root/images/{experiment}/...``.

    Raises UnpackError if the archive holds no image of that experiment (a typo in
    the config should fail loudly, not produce an empty image folder).
    """
    result = unpack_members(
        zip_path,
        dest_root,
        lambda name: image_member_path(name, experiment),
        label=kwargs.pop("label", experiment),
        **kwargs,
    )
    if result.files == 0:
        raise UnpackError(f"{zip_path}: no member under images/{experiment}/")
    return result


def unpack_archive(
    zip_path: str | os.PathLike, dest_root: str | os.PathLike, **kwargs
) -> UnpackResult:
    """Unpack a whole archive to ``dest_root``, dropping a single top-level folder."""
    with zipfile.ZipFile(zip_path) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
    top = common_top_level(names)
    return unpack_members(zip_path, dest_root, lambda name: name[len(top) :], **kwargs)


def find_member(names: list[str], member: str) -> str:
    """The archive member called ``member``: an exact match, else the one path ending in
    ``/member`` (``'metadata.csv'`` finds ``'RxRx19a/metadata.csv'``). UnpackError if
    none or several match."""
    if member in names:
        return member
    hits = [n for n in names if n.endswith("/" + member.lstrip("/"))]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        raise UnpackError(f"no member {member!r} in the archive (members: {shown})")
    raise UnpackError(f"member {member!r} is ambiguous: {', '.join(hits)}")


def extract_single_member(
    zip_path: str | os.PathLike, member: str, dest: str | os.PathLike
) -> Path:
    """Extract one member (found with :func:`find_member`) to ``dest``, atomically."""
    dest = Path(dest)
    with zipfile.ZipFile(zip_path) as zf:
        name = find_member([i.filename for i in zf.infolist() if not i.is_dir()], member)
        extract_member_atomic(zf, zf.getinfo(name), dest)
    return dest


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_flag(path: str | os.PathLike, fields: dict) -> Path:
    """Write a flag file of ``key: value`` lines (YAML-readable), atomically."""
    return atomic_write_text(path, "".join(f"{k}: {v}\n" for k, v in fields.items()))
