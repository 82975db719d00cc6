import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from deemd.nuclei import (
    NucleusParams,
    count_nuclei,
    flag_wells,
    foreground_mask,
    infected_vs_noninfected,
    scale_params,
    segment_nuclei,
)

PARAMS = NucleusParams(smoothing_sigma=1.0, min_nucleus_area=12, peak_min_distance=3, min_contrast=12)


def disks(centres, radius=4, size=64, value=160, background=20, noise=3, seed=0):
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), float(background))
    for y, x in centres:
        image[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = value
    image = ndi.gaussian_filter(image, 0.7) + np.random.default_rng(seed).normal(0, noise, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def test_scale_params_scales_lengths_and_areas():
    config = {"reference_site_size": 1024, "smoothing_sigma": 8, "min_nucleus_area": 640, "peak_min_distance": 16, "min_contrast": 10}
    params = scale_params(config, 128)
    assert params.smoothing_sigma == 1 and params.min_nucleus_area == 10 and params.peak_min_distance == 2
    assert params.min_contrast == 10


def test_counts_separate_nuclei():
    image = disks([(10, 10), (10, 40), (40, 12), (50, 50), (30, 30)])
    assert count_nuclei(image, PARAMS) == 5


def test_touching_nuclei_are_split_by_watershed():
    image = disks([(30, 24), (30, 32)], radius=4)
    assert ndi.label(foreground_mask(image, PARAMS))[1] == 1
    assert count_nuclei(image, PARAMS) == 2


def test_debris_below_min_area_is_not_counted():
    image = disks([(20, 20), (45, 45)])
    image[5:7, 50:52] = 200
    assert count_nuclei(image, PARAMS) == 2


def test_empty_well_counts_zero_although_otsu_always_splits():
    noise = disks([], noise=4)
    assert count_nuclei(noise, PARAMS) == 0
    assert segment_nuclei(noise, PARAMS).max() == 0


def test_invalid_pixels_are_ignored():
    image = disks([(10, 10), (50, 50)])
    valid = np.ones_like(image, dtype=bool)
    valid[32:, 32:] = False
    assert count_nuclei(image, PARAMS, valid) == 1


def wells(counts, conditions, treatments):
    return pd.DataFrame({"plate_id": "E_1", "nuclei_count": counts, "disease_condition": conditions, "treatment": treatments})


def test_flag_wells_fraction_rule():
    table = wells(
        [100, 110, 90, 40, 95, 0],
        ["Active SARS-CoV-2"] * 3 + ["Active SARS-CoV-2"] * 3,
        [None, None, None, "X", "Y", "Z"],
    )
    flagged = flag_wells(table, {"method": "fraction", "fraction": 0.5, "z": 4})
    assert flagged["toxic"].tolist() == [False, False, False, True, False, False]
    assert flagged["no_nuclei"].tolist() == [False] * 5 + [True]
    assert flagged["infected_control_median"].iloc[0] == 100


def test_flag_wells_mad_rule():
    table = wells([100, 104, 96, 102, 98, 70, 97], ["Active SARS-CoV-2"] * 7, [None] * 5 + ["X", "Y"])
    flagged = flag_wells(table, {"method": "mad", "fraction": 0.5, "z": 4})
    assert flagged["toxic"].tolist() == [False] * 5 + [True, False]


def test_flag_wells_without_controls_flags_nothing_toxic():
    flagged = flag_wells(wells([10, 0], ["Mock", "Active SARS-CoV-2"], [None, "X"]), {"method": "fraction", "fraction": 0.5, "z": 4})
    assert not flagged["toxic"].any() and flagged["no_nuclei"].tolist() == [False, True]


def test_infected_vs_noninfected_mann_whitney():
    rng = np.random.default_rng(1)
    table = wells(
        list(rng.normal(100, 5, 20).round()) + list(rng.normal(80, 5, 20).round()) + [0],
        ["Mock"] * 10 + ["UV Inactivated SARS-CoV-2"] * 10 + ["Active SARS-CoV-2"] * 21,
        [None] * 41,
    ).assign(no_nuclei=lambda t: t["nuclei_count"] == 0)
    result = infected_vs_noninfected(table)
    assert result["n_infected"] == 20 and result["n_non_infected"] == 20
    assert result["p_value"] < 1e-6 and result["median_infected"] < result["median_non_infected"]
    none = infected_vs_noninfected(table[table["disease_condition"] == "Mock"])
    assert np.isnan(none["p_value"])
