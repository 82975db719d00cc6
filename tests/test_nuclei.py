import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from skimage.feature import peak_local_max

from deemd.nuclei import (
    NucleusParams,
    ToxicityReferenceError,
    count_nuclei,
    downsample,
    estimate_diameter,
    estimate_wells,
    flag_wells,
    foreground_mask,
    infected_vs_noninfected,
    nucleus_seeds,
    params_from_diameter,
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


def disk_field(radius, n, size=256, pairs=0, seed=0):
    """Image with ``n`` separate disks of ``radius`` px placed at random (no two closer
    than a radius apart at their rims) and ``pairs`` pairs of touching disks; returns the
    image and the number of disks."""
    rng = np.random.default_rng(seed)
    centres = []
    for _ in range(20000):
        if len(centres) == n + 2 * pairs:
            break
        c = rng.uniform(radius + 2, size - 3 * radius - 2, 2)
        new = [c, c + [2 * radius, 0]] if len(centres) < 2 * pairs else [c]
        if all(np.hypot(*(q - o)) >= 3 * radius for q in new for o in centres):
            centres.extend(new)
    return disks(centres, radius=radius, size=size, seed=seed), len(centres)


def test_params_from_diameter_scales_lengths_and_areas():
    small, large = params_from_diameter(8, 12), params_from_diameter(16, 12)
    assert large.smoothing_sigma == pytest.approx(2 * small.smoothing_sigma)
    assert large.min_nucleus_area == pytest.approx(4 * small.min_nucleus_area)
    assert large.peak_min_distance == pytest.approx(2 * small.peak_min_distance)
    assert small.min_contrast == 12 and small.downsample == 1
    # Large nuclei are counted at reduced resolution, lengths in its pixels.
    reduced = params_from_diameter(60, 12)
    assert reduced.downsample == 6 and reduced.smoothing_sigma == pytest.approx(params_from_diameter(10, 12, None).smoothing_sigma)
    assert params_from_diameter(60, 12, None).downsample == 1
    # Reduced so that nuclei are 9-18 px wide: RxRx19a's 18 px nuclei at half resolution.
    assert [params_from_diameter(d, 12).downsample for d in (8, 17.9, 18, 20, 27)] == [1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="diameter"):
        params_from_diameter(float("nan"), 12)


def test_downsample_block_means_and_valid_majority():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    valid = np.zeros((4, 4), dtype=bool)
    valid[:, :3] = True
    small, small_valid = downsample(image, 2, valid)
    assert small.tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert small_valid.tolist() == [[True, False], [True, False]]
    odd, _ = downsample(np.ones((5, 5)), 2)
    assert odd.shape == (3, 3) and np.all(odd == 1)


@pytest.mark.parametrize("radius", [3, 6, 12])
@pytest.mark.parametrize("n,pairs", [(8, 0), (30, 0), (12, 10)], ids=["sparse", "dense", "touching"])
def test_estimate_diameter_recovers_disks(radius, n, pairs):
    size = 96 * radius  # same density in nuclei per image at every radius
    images = [disk_field(radius, n, size, pairs, seed)[0] for seed in (1, 2)]
    assert estimate_diameter(images, 12) == pytest.approx(2 * radius, rel=0.1)


def test_estimate_diameter_ignores_cut_nuclei_and_debris():
    image, _ = disk_field(6, 20, 400, seed=3)
    alone = estimate_diameter([image], 12)
    debris = image.copy()
    for y, x in np.random.default_rng(4).uniform(10, 390, (25, 2)).astype(int):
        debris[y : y + 2, x : x + 2] = 200
    valid = np.ones(image.shape, dtype=bool)
    valid[:, 200:] = False  # a dropped site cuts the nuclei on its edge
    assert estimate_diameter([debris], 12) == pytest.approx(alone, rel=0.05)
    assert estimate_diameter([image], 12, [valid]) == pytest.approx(12, rel=0.1)


def test_estimate_diameter_of_empty_images_is_nan():
    assert np.isnan(estimate_diameter([disks([], noise=4)], 12))
    assert np.isnan(estimate_diameter([], 12))


def test_estimate_wells_spreads_over_the_untreated_wells():
    untreated = np.zeros(40, dtype=bool)
    untreated[[1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 39]] = True
    chosen = estimate_wells(untreated, 4)
    assert len(chosen) == 4 and untreated[chosen].all() and chosen[0] == 1 and chosen[-1] == 39
    assert estimate_wells(untreated[:6], 4).tolist() == [1, 5]


@pytest.mark.parametrize("radius", [4, 8, 16])
def test_auto_counts_touching_disks_as_with_the_true_diameter(radius):
    image, n = disk_field(radius, 12, 96 * radius, pairs=8, seed=5)
    diameter = estimate_diameter([image], 12)
    auto, fixed = params_from_diameter(diameter, 12), params_from_diameter(2.0 * radius, 12)
    assert count_nuclei(image, auto) == count_nuclei(image, fixed) == n
    # ... although the touching pairs are single foreground components.
    assert ndi.label(foreground_mask(image, fixed))[1] < n - 4


@pytest.mark.parametrize("radius,factor", [(10, 2), (30, 6)])
def test_reduced_resolution_counts_as_full_resolution(radius, factor):
    image, n = disk_field(radius, 10, 40 * radius, pairs=6, seed=6)
    reduced, full = params_from_diameter(2 * radius, 12), params_from_diameter(2 * radius, 12, None)
    assert reduced.downsample == factor and full.downsample == 1
    assert count_nuclei(image, reduced) == count_nuclei(image, full) == n


def per_component_seed_count(mask, params):
    """The seed count of a search component by component (skimage's labels=), the
    reference that nucleus_seeds' whole-image search must match."""
    components, n = ndi.label(mask)
    distance = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=int(params.peak_min_distance) + 1, labels=components, exclude_border=False)
    return len(peaks) + n - np.unique(components[tuple(peaks.T)]).size


@pytest.mark.parametrize("radius,seed", [(3, 1), (5, 2), (8, 3)])
def test_whole_image_seed_search_counts_as_per_component_and_as_the_watershed(radius, seed):
    image, n = disk_field(radius, 14, 40 * radius, pairs=6, seed=seed)
    params = params_from_diameter(2 * radius, 12, None)
    mask = foreground_mask(image, params)
    distance, markers = nucleus_seeds(mask, params)
    assert markers.max() == np.count_nonzero(markers) == per_component_seed_count(mask, params) == n
    assert (markers[~mask] == 0).all() and distance.max() > 0
    # count_nuclei counts the markers; the watershed grows each into one labelled nucleus.
    assert count_nuclei(image, params) == segment_nuclei(image, params).max() == n


def test_a_small_nucleus_beside_a_large_one_keeps_its_seed():
    # The small disk's peak lies within the peak distance of the large disk's pixels that
    # are higher than it, so the whole-image search drops it; it still gets its own marker.
    yy, xx = np.mgrid[:48, :48]
    mask = ((yy - 24) ** 2 + (xx - 18) ** 2 <= 12**2) | ((yy - 24) ** 2 + (xx - 34) ** 2 <= 2**2)
    params = NucleusParams(1.0, 4, 8, 12)
    assert ndi.label(mask)[1] == 2
    distance, markers = nucleus_seeds(mask, params)
    assert len(peak_local_max(distance, min_distance=9, exclude_border=False)) == 1
    components = ndi.label(mask)[0]
    assert markers.max() == 2 and sorted(components[markers > 0]) == [1, 2]


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
    # Z's well holds no nucleus: every cell dead, toxic (not a failed image: it is treated).
    assert flagged["toxic"].tolist() == [False, False, False, True, False, True]
    assert flagged["no_nuclei"].tolist() == [False] * 5 + [True]
    assert flagged["infected_control_median"].iloc[0] == 25  # nuclei per imaged site
    assert (flagged["toxicity_reference"] == "plate").all()


def test_flag_wells_empty_untreated_or_unimaged_wells_are_not_toxic():
    table = wells([100, 110, 0, 0, 0], ["Active SARS-CoV-2"] * 5, [None, None, None, "X", "Y"])
    table.loc[4, "n_sites_imaged"] = 0  # every site of Y's well dropped at stitching: no count at all
    flagged = flag_wells(table, FRACTION)
    assert flagged["no_nuclei"].tolist() == [False, False, True, True, True]
    assert flagged["toxic"].tolist() == [False, False, False, True, False]


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


def test_plate_diameter_from_untreated_wells_fallback_and_config():
    from nuclei_plate import plate_diameter

    small, _ = disk_field(6, 20, 400, seed=1)
    large, _ = disk_field(10, 12, 400, seed=2)
    blank = disks([], size=400, noise=4)
    auto = {"diameter": "auto", "min_contrast": 12}

    def estimate(images, untreated, config=auto):
        return plate_diameter(images.__getitem__, lambda i: None, np.array(untreated), config, "HRCE-1_1")

    # The treated well's nuclei (here larger) do not enter the estimate.
    diameter, source = estimate([large, small, small], [False, True, True])
    assert diameter == pytest.approx(12, rel=0.1) and source == "estimated from 2 untreated wells"
    assert estimate([large, small], [False, True], {"diameter": 9.5, "min_contrast": 12}) == (9.5, "nuclei.diameter")
    diameter, source = estimate([large, blank], [False, True])
    assert diameter == pytest.approx(20, rel=0.1) and "all wells" in source
    with pytest.raises(ValueError, match=r"plate HRCE-1_1: nuclei.diameter is auto"):
        estimate([blank, blank], [True, False])


def test_valid_pixels_mask_dropped_sites_and_layout_gaps():
    from deemd.nuclei import valid_pixels

    assert valid_pixels(np.ones(4, bool), [[1, 2], [3, 4]], 4) is None
    mask = valid_pixels(np.array([True, False, True, True]), [[1, 2], [3, 4]], 4)
    assert mask.shape == (8, 8) and not mask[:4, 4:].any() and mask[:4, :4].all() and mask[4:].all()
    gap = valid_pixels(np.ones(5, bool), [[1, 2, 3], [4, 0, 5]], 4)  # 2 x 3, middle field not imaged
    assert gap.shape == (8, 12) and not gap[4:, 4:8].any() and gap.sum() == 5 * 16
