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


@dataclass(frozen=True)
class NucleusParams:
    """Segmentation parameters in pixels of the image being segmented."""

    smoothing_sigma: float
    min_nucleus_area: float
    peak_min_distance: float
    min_contrast: float


def scale_params(config: dict, site_size: int) -> NucleusParams:
    """Scale the config's lengths (given at ``reference_site_size``) to ``site_size``;
    areas scale with the square of the ratio, grey levels not at all."""
    ratio = site_size / config["reference_site_size"]
    return NucleusParams(
        smoothing_sigma=config["smoothing_sigma"] * ratio,
        min_nucleus_area=config["min_nucleus_area"] * ratio**2,
        peak_min_distance=max(1.0, config["peak_min_distance"] * ratio),
        min_contrast=config["min_contrast"],
    )


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


def segment_nuclei(nuclear: np.ndarray, params: NucleusParams, valid: np.ndarray | None = None) -> np.ndarray:
    """Label image of nuclei: watershed of the distance transform of the foreground, seeded
    at its local maxima so that touching nuclei are split."""
    mask = foreground_mask(nuclear, params, valid)
    if not mask.any():
        return np.zeros(nuclear.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(mask)
    components, _ = ndi.label(mask)
    peaks = peak_local_max(
        distance, min_distance=int(round(params.peak_min_distance)), labels=components, exclude_border=False
    )
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Components too flat to hold a peak still count as one nucleus each.
    unseeded = np.setdiff1d(np.unique(components[mask]), np.unique(components[tuple(peaks.T)]))
    for offset, label in enumerate(unseeded, start=len(peaks) + 1):
        ys, xs = np.nonzero(components == label)
        markers[ys[len(ys) // 2], xs[len(xs) // 2]] = offset
    return watershed(-distance, markers, mask=mask).astype(np.int32)


def count_nuclei(nuclear: np.ndarray, params: NucleusParams, valid: np.ndarray | None = None) -> int:
    """Number of nuclei in one stitched well image."""
    return int(segment_nuclei(nuclear, params, valid).max())


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
    compared per imaged site, so that a well that lost sites is not called toxic.
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
    wells["toxic"] = treated & ~wells["no_nuclei"] & low
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
