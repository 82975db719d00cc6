"""Writing outputs so that a kill never leaves a complete-looking file."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def write_parquet_atomic(table: pd.DataFrame, path: str | Path) -> None:
    """Write a Parquet table under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_table_atomic(table: pd.DataFrame, path: str | Path, sep: str = "\t", float_format: str | None = "%.4g") -> None:
    """Write a text table (TSV by default) under a temporary name, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, sep=sep, index=False, float_format=float_format)
    os.replace(tmp, path)
