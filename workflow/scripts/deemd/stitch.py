"""Reading site PNGs and tiling the sites of a well into one image."""

from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from deemd.store import site_slices


class ImageReadError(OSError):
    """A site image is missing, corrupt, or not the expected 8-bit size."""


def image_path(pattern: str, experiment: str, plate: int, well: str, site: int, channel: int) -> str:
    """Fill the dataset's image path pattern (str.format fields, format specs allowed)."""
    return pattern.format(experiment=experiment, plate=int(plate), well=well, site=int(site), channel=int(channel))


def read_png(path: str, site_size: int) -> np.ndarray:
    """Decode one 8-bit single-channel PNG of ``site_size`` x ``site_size``.

    Every failure is an ImageReadError naming the file: missing, truncated or corrupt,
    wrong mode (not 8-bit grey) or wrong size. Never returns zeros in place of an image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != "L":
                raise ImageReadError(f"{path}: mode {image.mode!r}, expected 8-bit greyscale ('L')")
            array = np.asarray(image)
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except (UnidentifiedImageError, OSError, SyntaxError, zlib.error, ValueError) as error:
        if isinstance(error, ImageReadError):
            raise
        raise ImageReadError(f"{path}: corrupt or truncated PNG ({error})") from error
    if array.shape != (site_size, site_size):
        raise ImageReadError(f"{path}: size {array.shape[1]}x{array.shape[0]}, expected {site_size}x{site_size} (dataset.site_size)")
    return array


def read_site(paths: list[str], site_size: int) -> np.ndarray:
    """All channels of one site as (channel, y, x) uint8."""
    return np.stack([read_png(path, site_size) for path in paths])


def read_well_into(
    out: np.ndarray,
    well_sites: list[tuple[int, str, list[str]]],
    site_layout: list[list[int]],
    site_size: int,
    on_bad_image: str,
) -> tuple[np.ndarray, list[dict]]:
    """Decode the sites of one well ((site, site_id, paths) as from site_paths_by_well)
    straight into their places in ``out`` (channel, Y, X): the 2x2 tiling costs no copy.

    Returns a bool vector over sites 1..n (True = imaged) and the QC records of dropped
    sites. A site that is absent, or dropped because a channel is unreadable
    (``on_bad_image == "drop"``), is zero in ``out`` and False in the vector, so no later
    step mistakes it for a dark field; with ``"error"`` the ImageReadError stops the job.
    """
    placement = site_slices(site_layout, site_size)
    valid = np.zeros(len(placement), dtype=bool)
    dropped = []
    out[...] = 0
    for site, site_id, paths in well_sites:
        ys, xs = placement[site]
        try:
            for channel, path in enumerate(paths):
                out[channel, ys, xs] = read_png(path, site_size)
            valid[site - 1] = True
        except ImageReadError as error:
            if on_bad_image != "drop":
                raise
            out[:, ys, xs] = 0
            dropped.append({"site_id": site_id, "site": site, "reason": str(error)})
    return valid, dropped


def site_paths_by_well(plate_sites, pattern: str, channels: list[int]) -> dict[str, list[tuple[int, str, list[str]]]]:
    """Per well, in table order: (site, site_id, channel paths) of each of its sites.
    Built once per plate with plain lists (no per-well DataFrame work in the hot loop)."""
    by_well: dict[str, list] = {}
    columns = ("experiment", "plate", "well", "site", "site_id")
    for experiment, plate, well, site, site_id in zip(*(plate_sites[c].tolist() for c in columns)):
        paths = [image_path(pattern, experiment, plate, well, site, channel) for channel in channels]
        by_well.setdefault(well, []).append((int(site), site_id, paths))
    return by_well


def stitch_plate(
    plate_sites,
    store,
    pattern: str,
    channels: list[int],
    on_bad_image: str,
    batch_wells: int,
    pool,
    progress=None,
) -> list[dict]:
    """Decode, stitch and write every well of one plate into an open PlateStore.

    Wells are decoded in parallel on ``pool`` (PNG decoding releases the GIL) into a batch
    buffer, one batch ahead of this thread, which writes the previous batch (zarr
    compresses its chunks meanwhile). Returns the QC records of dropped sites.
    """
    wells = store.wells
    by_well = site_paths_by_well(plate_sites, pattern, channels)
    layout, site_size = store.site_layout, store.site_size
    valid_all = np.zeros((len(wells), len(layout) * len(layout[0])), dtype=bool)
    dropped: list[dict] = []
    batches = [range(start, min(start + batch_wells, len(wells))) for start in range(0, len(wells), batch_wells)]
    buffers = [np.empty((batch_wells,) + store.images.shape[1:], dtype=np.uint8) for _ in range(2)]

    def submit(k):
        buffer = buffers[k % 2]
        return [
            pool.submit(read_well_into, buffer[offset], by_well.get(wells[index], []), layout, site_size, on_bad_image)
            for offset, index in enumerate(batches[k])
        ]

    pending = submit(0) if batches else []
    for k, batch in enumerate(batches):
        results = [future.result() for future in pending]
        pending = submit(k + 1) if k + 1 < len(batches) else []
        store.images[batch.start : batch.stop] = buffers[k % 2][: len(batch)]
        for index, (valid, bad) in zip(batch, results):
            valid_all[index] = valid
            dropped.extend(dict(record, well=wells[index]) for record in bad)
        if progress is not None:
            progress(batch.stop, len(wells))
    store.group["site_valid"][:] = valid_all
    return dropped


def _size_and_mtime(paths: list[str]) -> list[tuple[int, int]]:
    stats = []
    for path in paths:
        try:
            stat = os.stat(path)
            stats.append((stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            stats.append((-1, -1))
    return stats


def image_manifest_digest(plate_sites, pattern: str, channels: list[int], threads: int = 8) -> str:
    """Hash of the size and modification time (ns) of every channel image of one plate's
    sites (the plate's own files only; a missing file counts as size and time -1).

    A param of the stitch job, so a re-exported or repaired PNG reruns its plate without
    making the images O(sites) inputs of the DAG. Costs one os.stat per file, spread over
    ``threads`` threads (stat releases the GIL: on a network file system the latency of
    the calls overlaps).
    """
    columns = ("experiment", "plate", "well", "site")
    paths = [
        image_path(pattern, experiment, plate, well, site, channel)
        for experiment, plate, well, site in zip(*(plate_sites[c].tolist() for c in columns))
        for channel in channels
    ]
    step = max(1, -(-len(paths) // threads))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(_size_and_mtime, [paths[i : i + step] for i in range(0, len(paths), step)]))
    stats = [stat for part in parts for stat in part]
    return hashlib.blake2b(np.asarray(stats, dtype=np.int64).reshape(-1, 2).tobytes(), digest_size=16).hexdigest()
