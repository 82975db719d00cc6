"""Writing outputs so that a kill never leaves a complete-looking file: everything is
written under a temporary sibling name and renamed into place (``os.replace`` is atomic
on one file system). One family: ``atomic_path`` / ``atomic_directory`` underneath, and
a writer per format on top."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


def temporary_sibling(path: str | Path, keep_suffix: bool = False) -> Path:
    """``name.tmp`` beside ``path``; ``stem.tmp.suffix`` with ``keep_suffix`` (for writers
    that pick the format from the suffix, such as matplotlib)."""
    path = Path(path)
    return path.with_name(path.stem + ".tmp" + path.suffix) if keep_suffix else path.with_name(path.name + ".tmp")


@contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False, tmp: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; when the block ends without
    an error it is renamed onto ``path``, otherwise removed. ``tmp`` chooses the temporary
    name (default: temporary_sibling). Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tmp) if tmp is not None else temporary_sibling(path, keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, write: Callable[[Path], object], keep_suffix: bool = False) -> Path:
    """``write(tmp)`` writes the file; then it is renamed to ``path`` (see atomic_path)."""
    with atomic_path(path, keep_suffix) as tmp:
        write(tmp)
    return Path(path)


@contextmanager
def atomic_directory(path: str | Path, create: bool = True) -> Iterator[Path]:
    """Yield ``path.tmp`` (emptied first; made when ``create``) to fill a folder in; when
    the block ends without an error, an old ``path`` is removed and the temporary renamed
    onto it. After an error the temporary stays (the next run empties it)."""
    path = Path(path)
    tmp = Path(str(path) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if create:
        tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str, fsync: bool = False, tmp: str | Path | None = None) -> Path:
    """A UTF-8 text file; ``fsync`` flushes it to disk before the rename."""
    with atomic_path(path, tmp=tmp) as part:
        with open(part, "w", encoding="utf-8") as handle:
            handle.write(text)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
    return Path(path)


def write_json_atomic(data, path: str | Path) -> Path:
    """JSON, indented by 2, with a final newline."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_parquet_atomic(table: pd.DataFrame, path: str | Path) -> None:
    """A Parquet table, without the index."""
    write_atomic(path, lambda tmp: table.to_parquet(tmp, index=False))


def write_table_atomic(table: pd.DataFrame, path: str | Path, sep: str = "\t", float_format: str | None = "%.4g") -> None:
    """A text table (TSV by default), without the index."""
    write_atomic(path, lambda tmp: table.to_csv(tmp, sep=sep, index=False, float_format=float_format))


def write_csv_atomic(table: pd.DataFrame, path: str | Path, **to_csv) -> None:
    """A CSV table, without the index; ``to_csv`` goes to DataFrame.to_csv."""
    write_atomic(path, lambda tmp: table.to_csv(tmp, index=False, **to_csv))
