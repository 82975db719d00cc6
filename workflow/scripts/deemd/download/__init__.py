"""Resumable, verified HTTP downloads and resumable, atomic unpacking of zip archives
(docs/method.md §1): the RxRx19a archives (metadata, ~445 GB of images, embeddings) come
from a public bucket over plain HTTP(S), and a transfer of that size *will* be interrupted.

* ``transfer``: :func:`download`, the resumable HTTP client (the stock Snakemake storage
  plugins do not resume);
* ``verify``: expected checksums, :func:`verify_file` and the mismatch errors;
* ``unpack``: :func:`unpack_experiment` / :func:`unpack_archive`, member by member to a
  temporary name and renamed into place, skipping members already present;
* ``progress``: the :class:`Progress` reports and log formats.

Only the standard library is used (urllib/http.client, hashlib, zipfile).
"""

from deemd.download.progress import Progress, format_bytes, format_duration
from deemd.download.transfer import RETRYABLE_HTTP_STATUS, USER_AGENT, download, parse_content_range, server_md5
from deemd.download.unpack import (
    UnpackError,
    UnpackResult,
    common_top_level,
    extract_member_atomic,
    extract_single_member,
    find_member,
    image_member_path,
    safe_relpath,
    unpack_archive,
    unpack_experiment,
    unpack_members,
    write_flag,
)
from deemd.download.verify import (
    MiB,
    SUPPORTED_CHECKSUMS,
    ChecksumMismatchError,
    DownloadError,
    SizeMismatchError,
    hash_file,
    normalise_checksums,
    verify_file,
)

__all__ = [
    "MiB", "SUPPORTED_CHECKSUMS", "USER_AGENT", "RETRYABLE_HTTP_STATUS",
    "ChecksumMismatchError", "DownloadError", "SizeMismatchError", "UnpackError", "UnpackResult", "Progress",
    "common_top_level", "download", "extract_member_atomic", "extract_single_member", "find_member",
    "format_bytes", "format_duration", "hash_file", "image_member_path", "normalise_checksums", "parse_content_range",
    "safe_relpath", "server_md5", "unpack_archive", "unpack_experiment", "unpack_members", "verify_file", "write_flag",
]
