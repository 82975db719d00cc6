"""A synthetic well as a high-content imager would export it: the demo's 2 x 2 well field
cut into another grid of fields, and its 8-bit grey levels turned into 16-bit camera
counts. Used to write the Operetta-like example (tests/operetta_export.py) and by
benchmarks/stitch.py; the workflow itself never calls it."""

from __future__ import annotations

import numpy as np


def join_sites(sites: np.ndarray) -> np.ndarray:
    """The inverse of deemd.synth.field_sites: sites (4, ..., S, S) in the order s1 s2 /
    s3 s4 -> the well field (..., 2S, 2S)."""
    if sites.shape[0] != 4:
        raise ValueError(f"expected the 4 sites of a 2 x 2 well field, got {sites.shape[0]}")
    top = np.concatenate([sites[0], sites[1]], axis=-1)
    bottom = np.concatenate([sites[2], sites[3]], axis=-1)
    return np.concatenate([top, bottom], axis=-2)


def regrid_sites(sites: np.ndarray, layout: list[list[int]]) -> dict[int, np.ndarray]:
    """Cut the well field of the demo's 4 sites (4, ..., S, S) into the square grid of
    ``layout`` (n x n rows of site numbers, 0 for a field left out): site -> its field
    (..., 2S / n, 2S / n). The field must divide evenly."""
    field = join_sites(sites)
    n = len(layout)
    if any(len(row) != n for row in layout):
        raise ValueError(f"layout {layout} is not a square grid")
    size = field.shape[-1] // n
    if size * n != field.shape[-1]:
        raise ValueError(f"a {field.shape[-1]} px well field does not divide into {n} x {n} fields")
    return {
        int(site): field[..., r * size : (r + 1) * size, c * size : (c + 1) * size]
        for r, row in enumerate(layout)
        for c, site in enumerate(row)
        if site
    }


def camera_counts(image: np.ndarray, rng: np.random.Generator, offset: float, gains) -> np.ndarray:
    """8-bit grey levels (channel, y, x) uint8 as 16-bit camera counts uint16: a dark
    offset plus ``gains`` (one per channel) counts per grey level, dithered uniformly
    within a grey level's step, so that no count is exactly a multiple of the gain."""
    gains = np.asarray(gains, dtype=float)
    if gains.shape != (image.shape[0],):
        raise ValueError(f"{gains.size} gains for {image.shape[0]} channels")
    top = offset + 256 * gains.max()
    if offset < 0 or top > 65535:
        raise ValueError(f"offset {offset} and gains {gains.tolist()} reach {top:.0f}, beyond 16 bits")
    counts = offset + (image.astype(float) + rng.random(image.shape)) * gains[:, None, None]
    return np.floor(counts).astype(np.uint16)
