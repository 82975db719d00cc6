import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from deemd.nuclei import (
    NucleusParams,
    ToxicityReferenceError,
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


def wells(counts, conditions, treatments, plate_id="E_1", n_sites_imaged=4):
    return pd.DataFrame(
        {
            "plate_id": plate_id,
            "experiment": plate_id.rsplit("_", 1)[0],
            "nuclei_count": counts,
            "n_sites_imaged": n_sites_imaged,
            "disease_condition": conditions,
            "treatment": treatments,
        }
    )


def test_flag_wells_fraction_rule():
    table = wells(
        [100, 110, 90, 40, 95, 0],
        ["Active SARS-CoV-2"] * 3 + ["Active SARS-CoV-2"] * 3,
        [None, None, None, "X", "Y", "Z"],
    )
    flagged = flag_wells(table, {"method": "fraction", "fraction": 0.5, "z": 4})
    assert flagged["toxic"].tolist() == [False, False, False, True, False, False]
    assert flagged["no_nuclei"].tolist() == [False] * 5 + [True]
    assert flagged["infected_control_median"].iloc[0] == 25  # nuclei per imaged site
    assert (flagged["toxicity_reference"] == "plate").all()


def test_flag_wells_mad_rule():
    table = wells([100, 104, 96, 102, 98, 70, 97], ["Active SARS-CoV-2"] * 7, [None] * 5 + ["X", "Y"])
    flagged = flag_wells(table, {"method": "mad", "fraction": 0.5, "z": 4})
    assert flagged["toxic"].tolist() == [False] * 5 + [True, False]


FRACTION = {"method": "fraction", "fraction": 0.5, "z": 4}


def test_flag_wells_plate_without_controls_uses_its_experiments():
    """issue 11: a plate without untreated infected wells flagged nothing toxic (median NaN)."""
    own = wells([100, 110, 90, 40], ["Active SARS-CoV-2"] * 4, [None, None, None, "X"], plate_id="E_1")
    # Plate 2: no untreated infected well at all; plate 3: they have no nuclei.
    none = wells([80, 30], ["Mock", "Active SARS-CoV-2"], [None, "X"], plate_id="E_2")
    empty = wells([0, 0, 30], ["Active SARS-CoV-2"] * 3, [None, None, "X"], plate_id="E_3")
    other = wells([10, 10, 4], ["Active SARS-CoV-2"] * 3, [None, None, "X"], plate_id="F_1")
    flagged = flag_wells(pd.concat([own, none, empty, other], ignore_index=True), FRACTION).set_index("plate_id")
    assert flagged.loc["E_1", "toxicity_reference"].tolist() == ["plate"] * 4
    assert flagged.loc["E_2", "toxicity_reference"].tolist() == ["experiment"] * 2
    assert flagged.loc["E_3", "toxicity_reference"].tolist() == ["experiment"] * 3
    assert (flagged.loc[["E_2", "E_3"], "infected_control_median"] == 25).all()  # E_1's, not F_1's
    assert flagged.loc["E_2", "toxic"].tolist() == [False, True]
    assert flagged.loc["E_3", "toxic"].tolist() == [False, False, True]
    assert flagged.loc["F_1", "toxic"].tolist() == [False, False, True]


def test_flag_wells_without_controls_in_the_experiment_names_plate_and_experiment():
    table = pd.concat(
        [
            wells([100, 40], ["Active SARS-CoV-2"] * 2, [None, "X"], plate_id="E_1"),
            wells([10, 0], ["Mock", "Active SARS-CoV-2"], [None, "X"], plate_id="F_7"),
        ],
        ignore_index=True,
    )
    with pytest.raises(ToxicityReferenceError, match=r"plate F_7: no untreated 'Active SARS-CoV-2' well with nuclei, on this plate or on any plate of experiment 'F'"):
        flag_wells(table, FRACTION)
    table.loc[table["plate_id"] == "F_7", "disease_condition"] = "Active SARS-CoV-2"
    table.loc[table["plate_id"] == "F_7", "nuclei_count"] = 0  # controls there, but no cells in them
    with pytest.raises(ToxicityReferenceError, match="plate F_7"):
        flag_wells(table, FRACTION)


def test_flag_wells_compares_counts_per_imaged_site():
    """issue 11: with on_bad_image: drop, 92 nuclei over 2 sites were called toxic against a
    median of 163 over 4."""
    table = wells([163, 160, 170, 92, 60], ["Active SARS-CoV-2"] * 5, [None, None, None, "X", "Y"])
    table["n_sites_imaged"] = [4, 4, 4, 2, 2]
    flagged = flag_wells(table, {"method": "fraction", "fraction": 0.7, "z": 4})
    assert flagged["nuclei_per_site"].tolist() == [40.75, 40.0, 42.5, 46.0, 30.0]
    assert flagged["toxic"].tolist() == [False, False, False, False, False]
    flagged = flag_wells(table.assign(n_sites_imaged=[4, 4, 4, 2, 4]), {"method": "fraction", "fraction": 0.7, "z": 4})
    assert flagged["toxic"].tolist() == [False, False, False, False, True]
    # A control that lost sites enters the median per site too; a well without sites is no reference.
    table = wells([100, 50, 0, 40], ["Active SARS-CoV-2"] * 4, [None, None, None, "X"])
    table["n_sites_imaged"] = [4, 2, 0, 4]
    flagged = flag_wells(table, FRACTION)
    assert flagged["infected_control_median"].iloc[0] == 25  # median of 25 and 25
    assert flagged["toxic"].tolist() == [False, False, False, True]  # 10 < 0.5 * 25 per site
    mad = flag_wells(wells([100, 104, 96, 102, 98, 50], ["Active SARS-CoV-2"] * 6, [None] * 5 + ["X"]).assign(n_sites_imaged=[4] * 5 + [2]), {"method": "mad", "fraction": 0.5, "z": 4})
    assert not mad["toxic"].any()


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
