"""Verification of downloaded data: expected checksums, file hashes, size and checksum
checks, and the errors that name what failed."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

MiB = 1024 * 1024
SUPPORTED_CHECKSUMS = ("md5", "sha256")


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or with a non-retryable error)."""


class SizeMismatchError(DownloadError):
    """The size of the data differs from the expected size."""


class ChecksumMismatchError(DownloadError):
    """The checksum of the downloaded data differs from the expected checksum."""


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
