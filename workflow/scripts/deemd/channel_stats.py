"""Per-channel mean and standard deviation of the training sites (docs/method.md §4; the
inputs are standardised with them), from exact per-channel histograms of the pixels (uint8
in the workflow's stores; uint16 works the same)
read from the per-plate stores a batch of wells at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor

import numpy as np
import pandas as pd

from deemd.store import PlateStore, site_slices


def channel_histograms(well_image: np.ndarray, sites: Iterable[int], site_layout, site_size: int) -> np.ndarray:
    """Per-channel histograms (channel x levels, int64; 256 levels for uint8, 65536 for
    uint16) of the given sites of one stitched well (channel, y, x) image. Histograms sum
    exactly, in any order, and a channel's sums of x and x^2 follow from them without a
    float copy of the image."""
    if well_image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8 or uint16 images, got {well_image.dtype}")
    levels = int(np.iinfo(well_image.dtype).max) + 1
    placement = site_slices(site_layout, site_size)
    hist = np.zeros((well_image.shape[0], levels), dtype=np.int64)
    for site in sites:
        ys, xs = placement[int(site)]
        for channel in range(well_image.shape[0]):
            hist[channel] += np.bincount(well_image[channel, ys, xs].ravel(), minlength=levels)
    return hist


def stats_from_histograms(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation from channel x levels histograms,
    through float64 sums of x and x^2."""
    values = np.arange(hist.shape[1], dtype=np.float64)
    n = hist.sum(axis=1).astype(np.float64)
    if (n == 0).any():
        raise ValueError("no pixel to compute channel statistics from")
    total = hist @ values
    total_sq = hist @ values**2
    mean = total / n
    var = np.maximum(total_sq / n - mean**2, 0.0)
    return mean, np.sqrt(var)


def training_channel_stats(
    split: pd.DataFrame,
    stores: Mapping[str, PlateStore],
    batch_wells: int = 16,
    pool: Executor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Per-channel mean and std (raw grey levels of the store) over the training sites of ``split``,
    read from the per-plate stores ``batch_wells`` wells at a time (never a plate).

    Checks that each store holds the well at ``well_index`` and that the site was imaged.
    Returns {"channels", "mean", "std", "n_sites", "site_size"}."""
    train = split[split["set"] == "train"]
    if train.empty:
        raise ValueError("the split has no training site")
    missing = sorted(set(train["plate_id"]) - set(stores))
    if missing:
        raise ValueError(f"no plate store for plate(s) {missing}")
    first = stores[sorted(train["plate_id"].unique())[0]]
    channels, site_size = first.channel_names, first.site_size
    jobs = []  # (store, well_index, sites)
    for plate_id, plate in train.groupby("plate_id", sort=True):
        store = stores[plate_id]
        if store.channel_names != channels or store.site_size != site_size:
            raise ValueError(f"plate {plate_id}: channels/site size {store.channel_names}/{store.site_size} differ from {channels}/{site_size}")
        store_wells, valid = store.wells, store.site_valid
        for (well_index, well), rows in plate.groupby(["well_index", "well"], sort=True):
            if store_wells[well_index] != well:
                raise ValueError(f"plate {plate_id}: store row {well_index} holds well {store_wells[well_index]}, split says {well}")
            sites = rows["site"].astype(int).tolist()
            if not all(valid[well_index, site - 1] for site in sites):
                raise ValueError(f"plate {plate_id} well {well}: a training site was not imaged")
            jobs.append((store, int(well_index), sites))

    def one(job):
        store, well_index, sites = job
        return channel_histograms(store.read_well(well_index), sites, store.site_layout, store.site_size)

    hist = 0  # channel x levels once the first well is read
    step = max(1, batch_wells)
    for start in range(0, len(jobs), step):
        batch = jobs[start : start + step]
        for part in pool.map(one, batch) if pool is not None else map(one, batch):
            hist += part
        if progress is not None:
            progress(min(start + step, len(jobs)), len(jobs))
    mean, std = stats_from_histograms(hist)
    return {
        "channels": list(channels),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "n_sites": int(len(train)),
        "site_size": int(site_size),
    }
