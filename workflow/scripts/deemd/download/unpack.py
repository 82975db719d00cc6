"""Resumable, atomic unpacking of zip archives: members extracted one by one to a
temporary name and renamed into place; members already present with the right size are
skipped, so an interrupted unpack resumes where it stopped."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from deemd.download.progress import format_bytes
from deemd.download.verify import MiB
from deemd.io import atomic_path, write_text_atomic


class UnpackError(RuntimeError):
    """An archive cannot be unpacked as asked (member missing, unsafe path, ...)."""


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
    with atomic_path(target, tmp=target.with_name(f".{target.name}.part")) as tmp:
        with zf.open(info) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, MiB)
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


def write_flag(path: str | os.PathLike, fields: dict) -> Path:
    """Write a flag file of ``key: value`` lines (YAML-readable), atomically."""
    path = Path(path)
    text = "".join(f"{k}: {v}\n" for k, v in fields.items())
    return write_text_atomic(path, text, fsync=True, tmp=path.with_name(f".{path.name}.part"))
