"""The per-plate image store that every step after stitching reads instead of the PNGs.

One Zarr (v3) group per plate:
  images      uint8 (well, channel, y, x), one Blosc-compressed chunk per well;
  site_valid  bool (well, site): False where a site's PNG was dropped (on_bad_image: drop);
  attrs       wells, channel names, site size and layout, and OME-NGFF-style axes.

Why one 4-D array and not one OME-Zarr HCS image per well: zarr-python pays about 2-3 ms
of metadata and call overhead per array, which at demo size costs more than decoding the
PNGs; one array per plate reads a well in one chunk (measured in benchmarks/stitch.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr


@dataclass(frozen=True)
class PlateStore:
    """An open per-plate store."""

    group: zarr.Group

    @property
    def images(self) -> zarr.Array:
        return self.group["images"]

    @property
    def site_valid(self) -> np.ndarray:
        return self.group["site_valid"][:]

    @property
    def wells(self) -> list[str]:
        return list(self.group.attrs["wells"])

    @property
    def channel_names(self) -> list[str]:
        return list(self.group.attrs["channel_names"])

    @property
    def site_size(self) -> int:
        return int(self.group.attrs["site_size"])

    @property
    def site_layout(self) -> list[list[int]]:
        return [list(row) for row in self.group.attrs["site_layout"]]

    def read_wells(self, start: int = 0, stop: int | None = None, channel: int | None = None) -> np.ndarray:
        """Wells [start, stop) as (well, channel, y, x), or (well, y, x) for one channel index."""
        if channel is None:
            return self.images[start:stop]
        return self.images[start:stop, channel]


def create_plate_store(
    path: str | Path,
    wells: list[str],
    channel_names: list[str],
    site_size: int,
    site_layout: list[list[int]],
    codec: str = "lz4",
    clevel: int = 5,
    attrs: dict | None = None,
) -> PlateStore:
    """Create an empty store for ``len(wells)`` stitched wells of 2x2 sites."""
    rows, cols = len(site_layout), len(site_layout[0])
    shape = (len(wells), len(channel_names), rows * site_size, cols * site_size)
    group = zarr.open_group(str(path), mode="w")
    compressor = zarr.codecs.BloscCodec(cname=codec, clevel=clevel, shuffle="shuffle")
    # Flat chunk keys (no directory per chunk) and no all-fill-value test per chunk: both
    # cost more CPU than compressing a small well (benchmarks/stitch.py).
    group.create_array(
        "images",
        shape=shape,
        chunks=(1,) + shape[1:],
        dtype="uint8",
        compressors=compressor,
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "."},
        config={"write_empty_chunks": True},
    )
    group.create_array("site_valid", shape=(len(wells), rows * cols), chunks=(max(len(wells), 1), rows * cols), dtype="bool", fill_value=False)
    group.attrs.update(
        {
            "wells": list(wells),
            "channel_names": list(channel_names),
            "site_size": int(site_size),
            "site_layout": [list(map(int, row)) for row in site_layout],
            "axes": [
                {"name": "well", "type": "other"},
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "pixel"},
                {"name": "x", "type": "space", "unit": "pixel"},
            ],
            **(attrs or {}),
        }
    )
    return PlateStore(group)


def open_plate_store(path: str | Path) -> PlateStore:
    """Open a store for reading; a missing or unfinished store is an error naming it."""
    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
        group["images"], group["site_valid"]
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as error:
        raise FileNotFoundError(f"{path}: not a deemd plate store ({error})") from error
    if not group.attrs.get("complete", False):
        raise ValueError(f"{path}: plate store was not finished (no 'complete' attribute); rerun the stitch job")
    return PlateStore(group)


def site_slices(site_layout: list[list[int]], site_size: int) -> dict[int, tuple[slice, slice]]:
    """Where each site lies in the stitched well image: site -> (y slice, x slice)."""
    placement = {}
    for r, row in enumerate(site_layout):
        for c, site in enumerate(row):
            placement[int(site)] = (slice(r * site_size, (r + 1) * site_size), slice(c * site_size, (c + 1) * site_size))
    return placement
