"""Infection maps (docs/method.md §8): per pixel, the generalised mean of the probabilities of
the patches that cover it, A = (mean mu^(1/alpha))^alpha, then a Gaussian filter."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from deemd.grid import PatchGrid


def infection_maps(probabilities: np.ndarray, grid: PatchGrid, alpha: float = 0.2) -> np.ndarray:
    """(n_sites, N) patch probabilities -> (n_sites, S, S) maps before smoothing.

    With alpha < 1 the mean is dominated by the larger probabilities, so a high patch is
    not washed out by the low ones overlapping it. Each patch's powered probability is added
    to its square of the site (a loop over the g x g patch positions, vectorised over
    sites), in float64; pixels no patch covers are 0.
    """
    if probabilities.ndim != 2 or probabilities.shape[1] != grid.n_patches:
        raise ValueError(f"expected (n_sites, {grid.n_patches}) probabilities, got {probabilities.shape}")
    powered = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0) ** (1.0 / alpha)
    n, size, side = len(powered), grid.patch_size, grid.site_size
    total = np.zeros((n, side, side), dtype=np.float64)
    count = np.zeros((side, side), dtype=np.float64)
    for index in range(grid.n_patches):  # row-major, as the patches are cut (deemd.mil)
        y, x = (index // grid.grid) * grid.stride, (index % grid.grid) * grid.stride
        total[:, y : y + size, x : x + size] += powered[:, index, None, None]
        count[y : y + size, x : x + size] += 1.0
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return (mean**alpha).astype(np.float32)


def smooth_maps(maps: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian filter of each map (sigma in pixels of the site; 0 = none)."""
    if sigma_px <= 0:
        return maps
    return ndi.gaussian_filter(maps, sigma=(0, sigma_px, sigma_px), mode="nearest").astype(np.float32)


def scaled_sigma(sigma_at_reference: float, site_size: int, reference_site_size: int) -> float:
    """The smoothing sigma scaled to the site size (60 px at 1024 px in the paper)."""
    return sigma_at_reference * site_size / reference_site_size


def area_above(maps: np.ndarray, eta: float) -> np.ndarray:
    """Fraction of each map's pixels at or above eta (the k-selection statistic)."""
    return (maps >= eta).reshape(len(maps), -1).mean(axis=1)


def site_maps(probabilities: np.ndarray, grid: PatchGrid, alpha: float, sigma: float, reference_site_size: int) -> np.ndarray:
    """The whole map recipe of docs/method.md §8: (n_sites, N) patch probabilities ->
    (n_sites, S, S) smoothed infection maps, float32, with the smoothing ``sigma`` given in
    pixels at a site of ``reference_site_size`` px and scaled to the grid's site size."""
    return smooth_maps(infection_maps(probabilities, grid, alpha), scaled_sigma(sigma, grid.site_size, reference_site_size))


def map_readouts(
    probabilities: np.ndarray,
    grid: PatchGrid,
    alpha: float,
    sigma: float,
    reference_site_size: int,
    eta: float,
    batch_sites: int = 64,
) -> dict[str, np.ndarray]:
    """Two readouts of each site's smoothed infection map (docs/method.md §10), float64,
    one per row of ``probabilities``: ``a``, the share of the map at or above ``eta``, and
    ``map_mean``, the map's mean. Sites are mapped ``batch_sites`` at a time, so memory
    stays at batch_sites x S x S floats whatever the shard size (a 1024 px site's map is
    4 MB)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != grid.n_patches:
        raise ValueError(f"expected (n_sites, {grid.n_patches}) probabilities, got {probabilities.shape}")
    readouts = {name: np.empty(len(probabilities), dtype=np.float64) for name in ("a", "map_mean")}
    for start in range(0, len(probabilities), batch_sites):
        chunk = probabilities[start : start + batch_sites]
        maps = site_maps(chunk, grid, alpha, sigma, reference_site_size)
        readouts["a"][start : start + len(chunk)] = area_above(maps, eta)
        readouts["map_mean"][start : start + len(chunk)] = maps.reshape(len(maps), -1).mean(axis=1)
    return readouts


def infected_share(probabilities: np.ndarray, grid: PatchGrid, alpha: float, sigma: float, reference_site_size: int, eta: float) -> np.ndarray:
    """a_i of docs/method.md §10: the share of each site's smoothed infection map at or
    above ``eta`` (see :func:`map_readouts`)."""
    return map_readouts(probabilities, grid, alpha, sigma, reference_site_size, eta)["a"]
