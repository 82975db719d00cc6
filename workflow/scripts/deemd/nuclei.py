"""Nucleus counting on the stitched nuclear channel, and the per-well QC flags."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import stats
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from deemd.metadata import INFECTED, MOCK, UV
from deemd.store import site_slices


# Segmentation lengths as multiples of the typical nucleus diameter d (px), so one set of
# factors serves any magnification (docs/method.md, nucleus counting). Smoothing and minimum
# area are the former fixed values at 1024 px (sigma 8, area 700) over the demo's nucleus
# diameter there (61 px); checked with benchmarks/nuclei_scale.py on both synthetic worlds at
# nucleus radii 2-5 % of the site, 25-150 cells per site and several seeds.
# - smoothing 0.13 d: removes chromatin texture and noise, and stays far below the gap that
#   it would have to bridge to merge neighbours;
# - minimum area 0.19 d^2 (a disk of diameter 0.5 d): debris is smaller, most of a nucleus
#   cut by a dropped site or the well edge is not;
# - peak distance 0.5 d: two touching nuclei have distance-transform peaks d apart, one
#   elongated nucleus a single ridge. On crowded sites (centres down to 1 d apart) 0.65 d,
#   the former value, lost 5-9 % of a well's nuclei and 0.5 d 1-4 %; 0.4 d lost 1-2 % but
#   split 3 of 672 disks of touching pairs in three, 0.5 d none (see segment_nuclei).
SIGMA_PER_DIAMETER = 0.13
MIN_AREA_PER_DIAMETER_SQ = 0.19
PEAK_DISTANCE_PER_DIAMETER = 0.5
# Counting is done at reduced resolution where nuclei are at least twice this wide (px),
# reduced by the integer d // WORKING_DIAMETER, so that they are 9-18 px wide there: the
# sizes that the counts were checked at (nuclei of 5-13 px on 128 px sites count within a
# few %), with a distance transform of one clear peak a nucleus. The cost of every step
# falls with the square of the factor; RxRx19a's nuclei (about 18 px) are counted at half
# resolution (benchmarks/scale.py, benchmarks/nuclei_scale.py).
WORKING_DIAMETER = 9.0
# The estimate: components whose area is at most this many times that of their inscribed
# disk (radius: the maximum of the distance transform) are taken as single nuclei. Measured
# on blurred, noisy digital disks of radius 2.5-12 px: singles 0.9-1.3 (an ellipse adds its
# aspect ratio), two touching disks 1.7-2.6.
SINGLE_AREA_RATIO = 1.6
# Untreated wells of a plate the estimate reads (evenly spread): ~1000 nuclei at the demo's
# density, a stable median, at a few seconds per plate at 1024 px sites.
ESTIMATE_WELLS = 8


@dataclass(frozen=True)
class NucleusParams:
    """Segmentation parameters in pixels of the image being segmented; ``downsample`` is
    the integer factor by which the image is reduced (block mean) before segmenting, the
    lengths being in pixels of the reduced image."""

    smoothing_sigma: float
    min_nucleus_area: float
    peak_min_distance: float
    min_contrast: float
    downsample: int = 1


def params_from_diameter(diameter: float, min_contrast: float, working_diameter: float | None = WORKING_DIAMETER) -> NucleusParams:
    """Segmentation parameters for nuclei of typical ``diameter`` px (of the site): lengths
    as the factors above times the diameter at the working resolution, which is reduced by
    the integer ``diameter // working_diameter`` (None: full resolution). Grey levels are
    not scaled."""
    if not np.isfinite(diameter) or diameter <= 0:
        raise ValueError(f"nucleus diameter must be a positive number of pixels, got {diameter}")
    factor = max(1, int(diameter // working_diameter)) if working_diameter else 1
    d = diameter / factor
    return NucleusParams(
        smoothing_sigma=SIGMA_PER_DIAMETER * d,
        min_nucleus_area=MIN_AREA_PER_DIAMETER_SQ * d * d,
        peak_min_distance=max(1.0, PEAK_DISTANCE_PER_DIAMETER * d),
        min_contrast=min_contrast,
        downsample=factor,
    )


def downsample(image: np.ndarray, factor: int, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Block mean of ``image`` (H, W) by an integer ``factor`` as float32 (edges padded by
    replication to a multiple of the factor), and of ``valid`` (a pixel is valid where most
    of its block is)."""
    if factor == 1:
        return image, valid
    h, w = image.shape
    pad = ((0, -h % factor), (0, -w % factor))

    def reduce(a):
        a = np.pad(a, pad, mode="edge")
        return a.reshape(a.shape[0] // factor, factor, a.shape[1] // factor, factor).mean(axis=(1, 3), dtype=np.float32)

    return reduce(image), None if valid is None else reduce(valid) > 0.5


def _component_sizes(mask: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Area (px) and inscribed radius (maximum of the distance transform, px) of each
    connected component of ``mask`` (holes filled) that touches neither the image border
    nor an invalid pixel: those nuclei are cut."""
    labels, n = ndi.label(ndi.binary_fill_holes(mask))
    if n == 0:
        return np.zeros(0), np.zeros(0)
    index = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(float)
    radius = np.asarray(ndi.maximum(ndi.distance_transform_edt(labels > 0), labels, index))
    edge = np.zeros(mask.shape, dtype=bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    if valid is not None:
        edge |= ndi.binary_dilation(~valid)
    inner = ~np.isin(index, labels[edge])
    return area[inner], radius[inner]


def single_nucleus_diameters(nuclear: np.ndarray, sigma: float, min_contrast: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Equivalent diameters (px, float) of the foreground components of one image
    (smoothed by ``sigma`` px, Otsu) that look like single nuclei: area at most
    SINGLE_AREA_RATIO times that of their inscribed disk. Touching nuclei form components
    of about twice that area with the same inscribed disk, so they drop out instead of
    inflating the estimate."""
    mask = foreground_mask(nuclear, NucleusParams(sigma, 0.0, 1.0, min_contrast), valid)
    area, radius = _component_sizes(mask, valid)
    single = (area >= 4) & (area <= SINGLE_AREA_RATIO * np.pi * radius**2)
    return np.sqrt(4.0 * area[single] / np.pi)


def area_weighted_median(diameters: np.ndarray) -> float:
    """Median of ``diameters`` (px) weighted by area (diameter squared): the diameter of the
    nucleus that the median foreground pixel belongs to, so that many small debris spots
    cannot outvote the nuclei. NaN when empty."""
    if diameters.size == 0:
        return np.nan
    d = np.sort(diameters)
    cumulative = np.cumsum(d**2)
    return float(d[np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def estimate_diameter(images, min_contrast: float, valids=None) -> float:
    """Typical nucleus diameter (px, float) in a set of nuclear images (each (H, W), e.g.
    the untreated wells of a plate); NaN when none holds a nucleus.

    Two passes, each the area-weighted median equivalent diameter of the components that
    look like single nuclei (``single_nucleus_diameters``), pooled over the images: the
    first smoothed by 1 px, which any nucleus survives, the second with the smoothing and
    at the working resolution that the first estimate implies (``params_from_diameter``),
    so that chromatin texture in large nuclei does not fray their outlines. Components
    under half the first estimate (debris, noise) are left out of the second.
    """
    images = list(images)
    valids = [None] * len(images) if valids is None else list(valids)

    def median_diameter(params: NucleusParams, floor: float) -> float:
        diameters = []
        for image, valid in zip(images, valids):
            small, small_valid = downsample(image, params.downsample, valid)
            d = single_nucleus_diameters(small, params.smoothing_sigma, min_contrast, small_valid) * params.downsample
            diameters.append(d[d >= floor])
        return area_weighted_median(np.concatenate(diameters or [np.zeros(0)]))

    first = median_diameter(NucleusParams(1.0, 0.0, 1.0, min_contrast), 0.0)
    if not np.isfinite(first):
        return np.nan
    return median_diameter(params_from_diameter(first, min_contrast), 0.5 * first)


def estimate_wells(untreated: np.ndarray, n: int = ESTIMATE_WELLS) -> np.ndarray:
    """Indices (int) of up to ``n`` wells where ``untreated`` (bool, per well) is True,
    evenly spread over the plate order (edge effects and drift average out)."""
    candidates = np.flatnonzero(untreated)
    if candidates.size <= n:
        return candidates
    return candidates[np.unique(np.linspace(0, candidates.size - 1, n).round().astype(int))]


def nucleus_params(config: dict, diameter: float) -> NucleusParams:
    """Parameters from the config's ``nuclei`` section for a plate whose typical nucleus
    diameter is ``diameter`` px (the config's number, or the plate's estimate)."""
    return params_from_diameter(diameter, config["min_contrast"])


def foreground_mask(nuclear: np.ndarray, params: NucleusParams, valid: np.ndarray | None = None) -> np.ndarray:
    """Nuclei foreground: Gaussian smoothing, then Otsu's threshold, trusted only where the
    foreground is ``min_contrast`` grey levels brighter than the background (an empty well
    has no foreground although Otsu always splits), then small objects removed.
    ``valid`` masks pixels that belong to no imaged site (dropped sites)."""
    smooth = ndi.gaussian_filter(nuclear.astype(np.float32), params.smoothing_sigma)
    pixels = smooth if valid is None else smooth[valid]
    if pixels.size == 0 or pixels.max() - pixels.min() < params.min_contrast:
        return np.zeros(nuclear.shape, dtype=bool)
    threshold = threshold_otsu(pixels)
    above = smooth > threshold
    if valid is not None:
        above &= valid
    inside, outside = smooth[above], pixels[pixels <= threshold]
    if inside.size == 0 or outside.size == 0 or np.median(inside) - np.median(outside) < params.min_contrast:
        return np.zeros(nuclear.shape, dtype=bool)
    return remove_small_objects(above, max_size=max(int(params.min_nucleus_area) - 1, 0))


def nucleus_seeds(mask: np.ndarray, params: NucleusParams) -> tuple[np.ndarray, np.ndarray]:
    """The distance transform of the foreground ``mask`` (float) and the watershed's
    markers (int32, 1..n, 0 elsewhere): one at each local maximum of the distance transform
    farther than ``peak_min_distance`` from a higher one, and one at the distance maximum
    of each component left without one. Each marker is one nucleus.

    The maxima are searched over the whole image at once, not component by component:
    between components the distance transform is 0, so a nucleus's peak can only be
    suppressed by a higher one of a neighbour closer than the peak distance, i.e. by a
    nucleus that touches it, and a component that loses its every peak that way still gets
    its own marker. The counts are those of the per-component search (tests/test_nuclei.py,
    benchmarks/nuclei_scale.py), at a fraction of its cost: skimage's labels= loops over
    the components in Python."""
    distance = ndi.distance_transform_edt(mask)
    components, n = ndi.label(mask)
    # Peaks strictly farther apart than peak_min_distance: skimage keeps two peaks exactly
    # min_distance apart, so a flat ridge of the distance transform d long (two touching
    # nuclei) would give three peaks at a distance of d / 2.
    peaks = peak_local_max(distance, min_distance=int(params.peak_min_distance) + 1, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    unseeded = np.setdiff1d(np.arange(1, n + 1), components[tuple(peaks.T)])
    if unseeded.size:
        at = np.array(ndi.maximum_position(distance, components, unseeded)).reshape(-1, 2)
        markers[tuple(at.T)] = np.arange(len(peaks) + 1, len(peaks) + 1 + unseeded.size)
    return distance, markers


def segment_nuclei(nuclear: np.ndarray, params: NucleusParams, valid: np.ndarray | None = None) -> np.ndarray:
    """Label image of nuclei: watershed of the distance transform of the foreground, seeded
    at its local maxima (``nucleus_seeds``) so that touching nuclei are split."""
    mask = foreground_mask(nuclear, params, valid)
    if not mask.any():
        return np.zeros(nuclear.shape, dtype=np.int32)
    distance, markers = nucleus_seeds(mask, params)
    return watershed(-distance, markers, mask=mask).astype(np.int32)


def valid_pixels(site_valid: np.ndarray, layout: list[list[int]], site_size: int) -> np.ndarray | None:
    """(Y, X) bool mask of the pixels of a stitched well that belong to an imaged site:
    False on a dropped site (``site_valid``, bool per site 1..n) and on a gap of the
    layout (0); None when every pixel is imaged (no mask needed)."""
    placement = site_slices(layout, site_size)
    if site_valid.all() and len(placement) == len(layout) * len(layout[0]):
        return None
    mask = np.zeros((len(layout) * site_size, len(layout[0]) * site_size), dtype=bool)
    for site, (ys, xs) in placement.items():
        mask[ys, xs] = site_valid[site - 1]
    return mask


def count_nuclei(nuclear: np.ndarray, params: NucleusParams, valid: np.ndarray | None = None) -> int:
    """Number of nuclei in one stitched well image (H, W), segmented at the resolution
    reduced by ``params.downsample``: the number of the watershed's markers, each of which
    the watershed grows into one nucleus (so it is not run; ``segment_nuclei`` gives the
    labels)."""
    nuclear, valid = downsample(nuclear, params.downsample, valid)
    mask = foreground_mask(nuclear, params, valid)
    if not mask.any():
        return 0
    return int(nucleus_seeds(mask, params)[1].max())


class ToxicityReferenceError(ValueError):
    """A plate has no untreated infected well with nuclei, nor has its experiment."""


def flag_wells(wells: pd.DataFrame, toxicity: dict) -> pd.DataFrame:
    """Add the QC flags to a per-well table of one or more plates.

    ``wells`` holds, per well: plate_id, experiment, disease_condition, treatment,
    nuclei_count (int) and n_sites_imaged (int, sites left after on_bad_image: drop).
    Adds nuclei_per_site (float, count / n_sites_imaged; NaN without imaged sites),
    no_nuclei, toxic, infected_control_median (nuclei per site) and toxicity_reference.

    no_nuclei: no nucleus detected (such wells are excluded everywhere).
    toxic: a treated well far below the untreated infected wells; the rule is ``fraction``
    (per-site count < fraction * their median) or ``mad`` (robust z-score < -z). Counts are
    compared per imaged site, so that a well that lost sites is not called toxic. A treated
    well whose imaged sites hold no nucleus at all is toxic too: a dose that leaves no cell
    must count against its compound, not vanish as a failed image (an untreated well
    without nuclei is a failed image: the controls always hold cells).
    The reference is the plate's own untreated infected wells with nuclei
    (toxicity_reference 'plate'); a plate without any uses those of every plate of its
    experiment in ``wells`` ('experiment'); without those either, ToxicityReferenceError
    names the plate and the experiment.
    """
    wells = wells.copy()
    count = wells["nuclei_count"].to_numpy(dtype=float)
    imaged = wells["n_sites_imaged"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        wells["nuclei_per_site"] = np.where(imaged > 0, count / imaged, np.nan)
    wells["no_nuclei"] = wells["nuclei_count"] == 0
    treated = wells["treatment"].notna()
    control = (wells["disease_condition"] == INFECTED) & ~treated & ~wells["no_nuclei"] & (imaged > 0)
    median = pd.Series(np.nan, index=wells.index)
    scale = pd.Series(np.nan, index=wells.index)
    reference = pd.Series("plate", index=wells.index, dtype=object)
    for plate_id, rows in wells.groupby("plate_id", sort=True).groups.items():
        pool = control & wells.index.isin(rows)
        if not pool.any():
            experiment = wells.loc[rows, "experiment"].iloc[0]
            pool = control & (wells["experiment"] == experiment)
            if not pool.any():
                raise ToxicityReferenceError(
                    f"plate {plate_id}: no untreated {INFECTED!r} well with nuclei, on this plate or on any plate "
                    f"of experiment {experiment!r}; nuclei.toxicity needs them as the reference"
                )
            reference[rows] = "experiment"
        per_site = wells.loc[pool, "nuclei_per_site"]
        median[rows] = float(per_site.median())
        scale[rows] = max(float(stats.median_abs_deviation(per_site, scale="normal")), 1e-9)
    wells["infected_control_median"] = median
    wells["toxicity_reference"] = reference
    if toxicity["method"] == "fraction":
        low = wells["nuclei_per_site"] < toxicity["fraction"] * median
    else:
        low = (wells["nuclei_per_site"] - median) / scale < -toxicity["z"]
    wells["toxic"] = treated & (imaged > 0) & (wells["no_nuclei"] | low)
    return wells


def infected_vs_noninfected(wells: pd.DataFrame) -> dict:
    """Two-sided Mann-Whitney U test of nucleus counts: untreated Active SARS-CoV-2 wells
    against untreated Mock and UV-inactivated wells (wells without nuclei left out)."""
    untreated = wells[wells["treatment"].isna() & ~wells["no_nuclei"]]
    infected = untreated.loc[untreated["disease_condition"] == INFECTED, "nuclei_count"]
    healthy = untreated.loc[untreated["disease_condition"].isin([MOCK, UV]), "nuclei_count"]
    result = {
        "n_infected": int(len(infected)),
        "n_non_infected": int(len(healthy)),
        "median_infected": float(infected.median()) if len(infected) else np.nan,
        "median_non_infected": float(healthy.median()) if len(healthy) else np.nan,
        "u_statistic": np.nan,
        "p_value": np.nan,
    }
    if len(infected) and len(healthy):
        test = stats.mannwhitneyu(infected, healthy, alternative="two-sided")
        result.update(u_statistic=float(test.statistic), p_value=float(test.pvalue))
    return result
