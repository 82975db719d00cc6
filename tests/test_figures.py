"""Figures and report stage: logistic dose-response fits, scoring against a reference or
truth, the choice of what the figures show, and every figure rendered to a PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deemd import doseresponse
from deemd.doseresponse import fit_dose_table, fit_logistic, fitted_curve, logistic4, logistic4_jacobian
from deemd.figures import (
    ACTIVE_GROUP,
    MOCK_GROUP,
    efficacy_wide,
    read_site_images,
    select_control_sites,
    select_treated_sites,
    top_treatments,
)
from deemd.metadata import INFECTED, MOCK, UV
from deemd.plots import (
    dose_response_figure,
    infection_map_figure,
    k_selection_figure,
    model_comparison_figure,
    pr_curves_figure,
    reference_correlation_figure,
    stretch_contrast,
)
from deemd.store import create_plate_store
from deemd.truth import (
    effective_set_scores,
    identification,
    load_masks,
    map_localisation_auc,
    map_localisation_auc_per_site,
    reference_correlation,
    reference_scores,
    spearman,
    with_reference,
)

CONCENTRATIONS = np.array([0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0])


# --- logistic dose-response fits -------------------------------------------------------


def test_logistic_has_its_asymptotes_and_midpoint():
    log_c = np.array([-6.0, 0.0, 6.0])
    values = logistic4(log_c, 0.1, 0.9, 0.0, 1.5)
    assert values[0] == pytest.approx(0.1, abs=1e-6)
    assert values[1] == pytest.approx(0.5)
    assert values[2] == pytest.approx(0.9, abs=1e-6)
    assert np.all(np.isfinite(logistic4(np.array([-1e6, 1e6]), 0, 1, 0, 10)))


def test_fit_recovers_the_parameters_of_a_noiseless_curve():
    e = logistic4(np.log10(CONCENTRATIONS), 0.05, 0.9, np.log10(0.8), 1.3)
    fit = fit_logistic(CONCENTRATIONS, e)
    assert fit["status"] == "ok" and fit["n_points"] == 7
    assert fit["bottom"] == pytest.approx(0.05, abs=1e-3)
    assert fit["top"] == pytest.approx(0.9, abs=1e-3)
    assert fit["ec50_um"] == pytest.approx(0.8, rel=1e-2)
    assert fit["hill"] == pytest.approx(1.3, rel=1e-2)
    assert fit["rmse"] < 1e-4
    assert np.allclose(fitted_curve(fit, CONCENTRATIONS), e, atol=1e-3)
    assert not fit["at_bound"].any()


def test_fit_with_a_held_bottom_is_a_three_parameter_fit():
    # A curve that starts above the tested range's low end still has its bottom held.
    e = logistic4(np.log10(CONCENTRATIONS), 0.0, 0.6, np.log10(0.05), 1.0)
    fit = fit_logistic(CONCENTRATIONS, e, bottom=0.0)
    assert fit["status"] == "ok" and fit["bottom"] == 0.0
    assert fit["top"] == pytest.approx(0.6, abs=1e-3) and fit["ec50_um"] == pytest.approx(0.05, rel=1e-2)
    assert list(fit["held"]) == [True, False, False, False] and not fit["at_bound"][0]
    assert np.all(fit["covariance"][0] == 0) and np.all(fit["covariance"][:, 0] == 0)


def test_fit_of_a_falling_response_puts_top_below_bottom():
    e = logistic4(np.log10(CONCENTRATIONS), 0.7, 0.1, np.log10(2.0), 2.0)
    fit = fit_logistic(CONCENTRATIONS, e)
    assert fit["status"] == "ok"
    assert fit["top"] < fit["bottom"]
    assert fit["ec50_um"] == pytest.approx(2.0, rel=0.05)


def test_noisy_fit_and_limits_are_respected():
    rng = np.random.default_rng(3)
    concentrations = np.repeat(CONCENTRATIONS, 3)
    e = logistic4(np.log10(concentrations), 0.0, 1.0, 0.0, 1.0) + rng.normal(0, 0.05, len(concentrations))
    fit = fit_logistic(concentrations, e, limits=(0.0, 1.0))
    assert fit["status"] == "ok"
    assert 0.0 <= fit["bottom"] <= 1.0 and 0.0 <= fit["top"] <= 1.0
    assert 0.3 < fit["ec50_um"] < 3.0
    # EC50 stays within ec50_margin decades of the tested range.
    rising_late = np.array([0, 0, 0, 0, 0, 0, 0.4])
    late = fit_logistic(CONCENTRATIONS, rising_late, limits=(0, 1), ec50_margin=1.0)
    assert late["status"] == "ok" and late["log_ec50"] <= np.log10(30.0) + 1.0 + 1e-9
    # A step at the last dose: the hill slope ends on its bound, and the fit says so.
    step = fit_logistic(CONCENTRATIONS, [0, 0, 0, 0, 0, 0, 1.0], limits=(0, 1))
    assert step["status"] == "ok" and step["at_bound"][3]


def test_flat_and_small_data_give_nans_and_a_status_not_an_error():
    flat = fit_logistic(CONCENTRATIONS, np.full(7, 0.2))
    assert flat["status"] == "flat response"
    assert all(np.isnan(flat[name]) for name in ("bottom", "top", "log_ec50", "ec50_um", "hill", "rmse"))
    few = fit_logistic([0.1, 1.0], [0.1, 0.9])
    assert few["status"].startswith("too few doses") and np.isnan(few["ec50_um"])
    # Replicates at only two concentrations cannot place a sigmoid either.
    two_levels = fit_logistic([0.1, 0.1, 1.0, 1.0], [0.1, 0.2, 0.8, 0.9])
    assert two_levels["status"].startswith("too few doses")
    empty = fit_logistic([], [])
    assert empty["n_points"] == 0 and empty["status"].startswith("too few doses")
    assert np.all(np.isnan(fitted_curve(flat, CONCENTRATIONS)))


def test_nan_efficacies_and_non_positive_concentrations_are_left_out():
    e = logistic4(np.log10(CONCENTRATIONS), 0.05, 0.9, 0.0, 1.0)
    with_gaps = np.append(e, [np.nan, 0.5])
    concentrations = np.append(CONCENTRATIONS, [5.0, 0.0])
    fit = fit_logistic(concentrations, with_gaps)
    assert fit["n_points"] == 7 and fit["status"] == "ok"
    assert fit["ec50_um"] == pytest.approx(1.0, rel=0.02)
    with pytest.raises(ValueError, match="one length"):
        fit_logistic([1, 2, 3], [0.1, 0.2])


def test_failed_optimisation_is_a_status(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    import scipy.optimize

    monkeypatch.setattr(scipy.optimize, "curve_fit", fail)  # fit_logistic imports it when it runs
    fit = fit_logistic(CONCENTRATIONS, np.linspace(0, 1, 7))
    assert fit["status"] == "fit failed: Optimal parameters not found"
    assert np.isnan(fit["hill"])


def dose_table():
    rows = []
    curves = {"A": (0.02, 0.85, 0.0, 2.0), "B": None, "C": (0.03, 0.4, 0.5, 1.0)}
    for treatment, params in curves.items():
        for c in CONCENTRATIONS[:6]:
            e = 0.02 if params is None else float(logistic4(np.log10(c), *params))
            ci_upper = 1 - e
            rows.append({"treatment": treatment, "treatment_conc": c, "n_sites": 12, "n_wells": 3,
                         "median_z": ci_upper - 0.05, "ci_lower": ci_upper - 0.2, "ci_upper": ci_upper,
                         "conf_level": 0.96, "e_dose": e, "effective_dose": e >= 0.5, "status": "ok"})
    doses = pd.DataFrame(rows)
    # One dose of C without an interval.
    last = doses.index[doses["treatment"] == "C"][-1]
    doses.loc[last, ["ci_lower", "ci_upper", "e_dose", "conf_level"]] = np.nan
    doses.loc[last, "status"] = "too few sites (n=3)"
    return doses


def treatment_table():
    return pd.DataFrame({
        "rank": [1, 2, 3, 4],
        "treatment": ["A", "C", "B", "D"],
        "e_t": [0.8, 0.35, 0.02, np.nan],
        "n_doses": [6, 6, 6, 1],
        "n_doses_with_interval": [6, 5, 6, 0],
        "n_effective_doses": [3, 0, 0, 0],
        "effective": [True, False, False, False],
        "max_e_dose": [0.85, 0.38, 0.02, np.nan],
        "status": ["ok", "ok", "ok", "no dose with an interval"],
    })


def test_fit_dose_table_fits_each_treatment():
    fits = fit_dose_table(dose_table(), limits=(0, 1))
    assert fits["treatment"].tolist() == ["A", "B", "C"]
    assert list(fits.columns) == list(doseresponse.FIT_COLUMNS)
    by = fits.set_index("treatment")
    assert by.loc["A", "status"] == "ok" and by.loc["A", "ec50_um"] == pytest.approx(1.0, rel=0.02)
    assert by.loc["B", "status"] == "flat response"
    assert by.loc["C", "n_points"] == 5
    empty = fit_dose_table(dose_table().head(0))
    assert empty.empty and list(empty.columns) == list(doseresponse.FIT_COLUMNS)
    with pytest.raises(ValueError, match="e_dose"):
        fit_dose_table(dose_table().drop(columns="e_dose"))


# --- scoring against a reference or the truth ------------------------------------------


def reference_table():
    return pd.DataFrame({"compound": [" A", "B", "C", "D", "E"], "hit": [0.9, 0.1, 0.6, None, 0.8], "other": 1})


def test_reference_scores_standardises_and_checks():
    reference = reference_scores(reference_table(), "compound", "hit")
    assert reference["treatment"].tolist() == ["A", "B", "C", "E"]
    assert reference["reference_score"].tolist() == [0.9, 0.1, 0.6, 0.8]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['score'\]"):
        reference_scores(reference_table(), "compound", "score")
    with pytest.raises(ValueError, match="more than once"):
        reference_scores(pd.DataFrame({"t": ["A", "A"], "s": [1, 2]}), "t", "s")


def test_identification_precision_and_recall():
    result = identification({"A", "B", "Z"}, {"A", "C"}, universe={"A", "B", "C", "D"})
    assert result == {"n_treatments": 4, "n_predicted": 2, "n_true": 2, "n_true_positive": 1, "precision": 0.5, "recall": 0.5}
    nothing = identification(set(), {"A"}, {"A", "B"})
    assert np.isnan(nothing["precision"]) and nothing["recall"] == 0
    assert np.isnan(identification({"A"}, set(), {"A"})["recall"])


def test_effective_set_and_correlation_against_a_reference():
    reference = reference_scores(reference_table(), "compound", "hit")
    treatments = treatment_table()
    merged = with_reference(treatments, reference)
    assert sorted(merged["treatment"]) == ["A", "B", "C"]  # D has no e_t, E was not screened
    scores = effective_set_scores(treatments, reference, threshold=0.5)
    # E = {A}; truly effective among the shared ones: A, C.
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5 and scores["n_treatments"] == 3
    correlation = reference_correlation(treatments, reference)
    assert correlation["rho"] == pytest.approx(1.0) and correlation["n"] == 3


def test_spearman_edge_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40])["rho"] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    constant = spearman([1, 2, 3], [5, 5, 5])
    assert np.isnan(constant["rho"]) and constant["status"] == "constant scores"
    few = spearman([1, np.nan, 3], [1, 2, 3])
    assert few["n"] == 2 and np.isnan(few["rho"])


def test_map_localisation_auc():
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[:, 4:9, 4:9] = True
    perfect = masks.astype(float) * 0.5 + 0.2
    assert map_localisation_auc(perfect, masks) == pytest.approx(1.0)
    assert map_localisation_auc(1 - perfect, masks) == pytest.approx(0.0)
    assert 0.4 < map_localisation_auc(rng.random(masks.shape), masks) < 0.6
    assert np.isnan(map_localisation_auc(perfect, np.zeros_like(masks)))
    with pytest.raises(ValueError, match="differ in shape"):
        map_localisation_auc(perfect[:1], masks)
    masks[1] = False
    per_site = map_localisation_auc_per_site(perfect, masks)
    assert per_site[0] == pytest.approx(1.0) and np.isnan(per_site[1])


def test_load_masks_in_site_order(tmp_path):
    a = np.zeros((2, 4, 4), dtype=bool)
    a[1, 0, 0] = True
    b = np.ones((1, 4, 4), dtype=bool)
    np.savez(tmp_path / "P_1.npz", site_id=np.array(["P_1_A01_1", "P_1_A01_2"]), infected=a)
    np.savez(tmp_path / "P_2.npz", site_id=np.array(["P_2_A01_1"]), infected=b)
    paths = [tmp_path / "P_1.npz", tmp_path / "P_2.npz"]
    masks = load_masks(paths, ["P_2_A01_1", "P_1_A01_2"])
    assert masks.shape == (2, 4, 4) and masks.dtype == bool
    assert masks[0].all() and masks[1].sum() == 1
    with pytest.raises(KeyError, match="P_3_A01_1"):
        load_masks(paths, ["P_3_A01_1"])


# --- what the figures show --------------------------------------------------------------


def test_top_treatments_and_wide_table():
    treatments = treatment_table()
    assert top_treatments(treatments, 2)["treatment"].tolist() == ["A", "C"]
    assert top_treatments(treatments, 10)["treatment"].tolist() == ["A", "C", "B"]  # D has no score
    other = treatments.assign(rank=[3, 1, 2, 4], e_t=[0.1, 0.9, 0.5, np.nan], effective=[False, True, True, False])
    wide = efficacy_wide({"M": treatments, "W": other})
    assert wide["treatment"].tolist() == ["A", "C", "B", "D"]  # the first model's order
    assert wide.loc[wide["treatment"] == "C", ["e_t_M", "e_t_W", "rank_W"]].values.tolist() == [[0.35, 0.9, 1]]
    with pytest.raises(ValueError):
        efficacy_wide({})


def test_control_sites_are_typical_sites_of_each_group():
    test = pd.DataFrame({
        "site_id": [f"s{i}" for i in range(7)],
        "label": [0, 0, 0, 1, 1, 1, 0],
        "disease_condition": [MOCK, MOCK, MOCK, INFECTED, INFECTED, INFECTED, UV],
        "score": [0.01, 0.2, 0.05, 0.99, 0.7, 0.9, 0.05],
    })
    chosen = select_control_sites(test, 1)
    assert chosen["site_id"].tolist() == ["s2", "s5"]  # nearest each group's median
    assert chosen["group"].tolist() == [MOCK_GROUP, ACTIVE_GROUP]
    assert len(select_control_sites(test, 5)) == 6  # UV is not a group shown
    assert select_control_sites(test, 0).empty
    assert select_control_sites(test[test["label"] == 1], 2)["group"].unique().tolist() == [ACTIVE_GROUP]


def test_treated_site_is_a_typical_site_of_the_best_dose():
    doses = dose_table()
    sites = pd.DataFrame({
        "site_id": ["a1", "a2", "a3", "a4", "c1", "c2"],
        "treatment": ["A", "A", "A", "A", "C", "C"],
        "treatment_conc": [10.0, 10.0, 10.0, 0.03, 3.0, 3.0],
        "z": [0.1, 0.3, 0.2, 0.9, 0.6, 0.62],
    })
    chosen = select_treated_sites(sites, doses, treatment_table(), 2)
    # A's best dose is 10 µM (median z 0.2: site a3); C's best dose with an interval is 3 µM.
    assert chosen["site_id"].tolist() == ["a3", "c1"]
    assert chosen["group"].tolist() == ["#1 A 10 µM", "#2 C 3 µM"]
    assert select_treated_sites(sites, doses, treatment_table(), 0).empty
    assert select_treated_sites(sites.head(0), doses, treatment_table(), 2).empty


def test_read_site_images_cuts_each_site(tmp_path):
    size = 8
    store = create_plate_store(tmp_path / "P_1.zarr", ["A01", "A02"], ["a", "b"], size, [[1, 2], [3, 4]])
    images = np.zeros((2, 2, 2 * size, 2 * size), dtype=np.uint8)
    for w in range(2):
        for s, (y, x) in enumerate([(0, 0), (0, size), (size, 0), (size, size)], start=1):
            images[w, :, y : y + size, x : x + size] = 10 * w + s + np.array([0, 100])[:, None, None]
    store.images[:] = images
    store.group.attrs["complete"] = True
    sites = pd.DataFrame({"plate_id": ["P_1", "P_1"], "well_index": [1, 0], "site": [4, 2]})
    pixels = read_site_images(sites, {"P_1": str(tmp_path / "P_1.zarr")})
    assert pixels.shape == (2, 2, size, size) and pixels.dtype == np.uint8
    assert (pixels[0, 0] == 14).all() and (pixels[0, 1] == 114).all() and (pixels[1, 0] == 2).all()
    assert read_site_images(sites.head(0), {}).shape[0] == 0


# --- figures ----------------------------------------------------------------------------


def test_k_selection_and_pr_figures_mark_models_below_chance():
    table = pd.DataFrame({"k": [1, 2, 25, 49], "val_ap": [0.99, 1.0, 0.45, 0.33], "chance_ap": 0.5,
                          "below_chance": [False, False, True, True], "area_infected_median": [0.2, 0.3, 0.9, 0.0],
                          "area_infected_q25": 0.1, "area_infected_q75": 0.5, "area_non_infected_median": 0.0})
    figure = k_selection_figure(table, 0.33, 0.4)
    assert len(figure.axes) == 2  # both panels
    labels = [text.get_text() for text in figure.axes[1].get_legend().get_texts()]
    assert "below chance: not a result (k = 25, 49)" in labels and "chance (share infected)" in labels
    healthy = k_selection_figure(table.assign(below_chance=False), 0.33, 0.4)
    assert not any("below" in text.get_text() for text in healthy.axes[1].get_legend().get_texts())
    scores = pd.DataFrame({"model": ["M"] * 4 + ["W"] * 4, "label": [0, 1, 0, 1] * 2, "score": [0.1, 0.9, 0.2, 0.8, 0.9, 0.1, 0.8, 0.2]})
    ap = pd.DataFrame({"model": ["M", "W"], "average_precision": [1.0, 0.42], "below_chance": [False, True]})
    legend = [text.get_text() for text in pr_curves_figure(scores, ap).axes[0].get_legend().get_texts()]
    assert "M: AP 1.000" in legend and "W: AP 0.420 (below chance)" in legend


def test_stretch_contrast():
    image = np.arange(100, dtype=np.uint8).reshape(10, 10)
    stretched = stretch_contrast(image)
    assert stretched.min() == 0 and stretched.max() == 1
    assert (stretch_contrast(np.full((4, 4), 7)) == 0).all()


def save(figure, path, min_bytes=5000):
    """Render to PNG; the file must be a real, non-blank image."""
    import matplotlib.image
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=60)
    plt.close(figure)
    assert path.stat().st_size > min_bytes
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.std() > 0
    return path


def test_every_figure_renders_to_png(tmp_path):
    doses = dose_table()
    fits = fit_dose_table(doses, limits=(0, 1))
    treatments = treatment_table()
    save(dose_response_figure(doses, fits, top_treatments(treatments, 3), zeta=0.5, columns=2, title="M"), tmp_path / "dose.png")
    save(dose_response_figure(doses, fits, treatments.head(0), zeta=0.5), tmp_path / "dose_empty.png", min_bytes=1000)

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (3, 5, 32, 32), dtype=np.uint8)
    maps = rng.random((3, 32, 32)).astype(np.float32)
    masks = maps > 0.8
    names = ["Hoechst", "ConA", "Phalloidin", "Syto14", "WGA"]
    save(infection_map_figure(images, maps, names, ["Mock", "Active", "#1 A"], masks=masks, title="maps"), tmp_path / "maps.png")
    save(infection_map_figure(images[:1], maps[:1], names, ["one"]), tmp_path / "maps_one.png")
    save(infection_map_figure(np.zeros((0, 5, 32, 32), np.uint8), np.zeros((0, 32, 32)), names, []), tmp_path / "maps_none.png", min_bytes=1000)
    with pytest.raises(ValueError, match="do not match"):
        infection_map_figure(images, maps[:2], names, ["a", "b", "c"])
    with pytest.raises(ValueError, match="channel names"):
        infection_map_figure(images, maps, names[:3], ["a", "b", "c"])

    other = treatments.assign(e_t=[0.7, 0.6, 0.1, np.nan], effective=[True, True, False, False])
    wide = efficacy_wide({"M": treatments, "W": other, "V": treatments.assign(e_t=0.05, effective=False)})
    save(model_comparison_figure(wide, ["M", "W", "V"], zeta=0.5, top=3), tmp_path / "comparison.png")
    save(model_comparison_figure(efficacy_wide({"M": treatments}), ["M"], zeta=0.5), tmp_path / "comparison_one.png")

    reference = reference_scores(reference_table(), "compound", "hit")
    merged = {"M": with_reference(treatments, reference), "W": with_reference(other, reference)}
    save(reference_correlation_figure(merged, zeta=0.5, threshold=0.5, reference_name="hit"), tmp_path / "reference.png")


# --- quantitative efficacy: ranking table, calls, plate layout, figures ------------------
# Hand-made tables with exactly the columns of results/{name}/efficacy/{model}/.

from deemd.figures import (  # noqa: E402
    CALL_CATEGORIES,
    RANKING_COLUMNS,
    call_categories,
    plate_grid,
    plate_shape,
    ranking_table,
    row_label,
    well_position,
)
from deemd.inhibition_plots import (  # noqa: E402
    deemd_vs_inhibition_figure,
    hit_scatter_figure,
    inhibition_dose_response_figure,
    plate_maps_figure,
    plate_qc_figure,
)

INHIBITION_CURVES = {"A": (0.0, 0.95, 0.5, 1.5), "B": None, "C": (0.05, 0.6, 1.0, 1.0)}


def inhibition_doses():
    """dose_table() with the inhibition columns; A's two highest doses are toxic, C's
    last dose has no interval."""
    doses = dose_table()
    median = [0.0 if INHIBITION_CURVES[t] is None else float(logistic4(np.log10(c), *INHIBITION_CURVES[t][:2],
                                                                         np.log10(INHIBITION_CURVES[t][2]), INHIBITION_CURVES[t][3]))
              for t, c in zip(doses["treatment"], doses["treatment_conc"])]
    doses["median_inhibition"] = median
    doses["inhibition_ci_lower"] = doses["median_inhibition"] - 0.15
    doses["inhibition_ci_upper"] = doses["median_inhibition"] + 0.1
    doses["toxic"] = (doses["treatment"] == "A") & (doses["treatment_conc"] >= 3.0)
    doses["n_wells_used"] = np.where(doses["toxic"], 0, 3)
    no_ci = doses["ci_lower"].isna()
    doses.loc[no_ci, ["inhibition_ci_lower", "inhibition_ci_upper"]] = np.nan
    return doses


def inhibition_treatments():
    """treatment_table() with the inhibition columns and the new ranking: hit C first
    (DEEMD put A first), D without any estimate last."""
    treatments = treatment_table()
    extra = pd.DataFrame({
        "treatment": ["A", "C", "B", "D"],
        "inhibition_max": [0.8, 0.9, 0.02, np.nan],
        "inhibition_max_se": [0.05, 0.04, 0.05, np.nan],
        "inhibition_best_conc_um": [1.0, 10.0, 0.03, np.nan],
        "inhibition_ec50_um": [0.5, 1.0, np.nan, np.nan],
        "inhibition_ec50_qualifier": ["=", "=", "", ""],
        "inhibition_emax": [0.95, 0.6, np.nan, np.nan],
        "inhibition_emax_se": [0.03, 0.05, np.nan, np.nan],
        "inhibition_bottom": [0.0, 0.05, np.nan, np.nan],
        "inhibition_hill": [1.5, 1.0, np.nan, np.nan],
        "hit_p_value": [1e-5, 0.0, 0.9, np.nan],
        "hit_q_value": [2e-5, 0.0, 0.9, np.nan],
        "hit": [True, True, False, False],
        "n_toxic_doses": [2, 0, 0, 1],
        "n_wells_tested": [12, 18, 18, 0],
        "n_wells_failing_qc": [0, 0, 0, 0],
        "inhibition_noise_trend": [True, True, False, False],
        "inhibition_status": ["ok", "ok", "flat response", "no non-toxic dose"],
        "viability_cc50_um": [np.nan, 8.0, np.nan, 0.5],
        "selectivity_index": [np.nan, 8.0, np.nan, np.nan],
        "viability_status": ["viability does not fall with dose", "ok", "CC50 above the tested doses", "ok"],
    })
    table = treatments.merge(extra, on="treatment", validate="one_to_one")
    table["deemd_rank"] = table["rank"]
    table["rank"] = table["treatment"].map({"A": 2, "C": 1, "B": 3, "D": 4})
    return table


def efficacy_wells(plates=("P_1", "P_2")):
    """One row per well: 3 treated wells per dose of A, B, C spread over ``plates``, and
    4 infected and 4 non-infected control wells per plate, on 96-well plates."""
    doses = inhibition_doses()
    rng = np.random.default_rng(4)
    rows, slots = [], {plate: 0 for plate in plates}

    def well(plate):
        slots[plate] += 1
        return f"{'ABCDEFGH'[(slots[plate] - 1) // 12]}{(slots[plate] - 1) % 12 + 1:02d}"

    for dose in doses.itertuples():
        for replicate in range(3):
            plate = plates[replicate % len(plates)]
            inhibition = dose.median_inhibition + rng.normal(0, 0.05)
            rows.append({"plate_id": plate, "well": well(plate), "role": "treated", "treatment": dose.treatment,
                         "treatment_conc": dose.treatment_conc, "n_sites": 4, "median_z": 1 - inhibition,
                         "median_readout": 0.3 * (1 - inhibition), "inhibition": inhibition, "toxic": bool(dose.toxic),
                         "used": not dose.toxic, "reason": "toxic" if dose.toxic else ""})
    for plate in plates:
        for role, level in (("infected_control", 0.0), ("noninfected_control", 1.0)):
            for _ in range(4):
                inhibition = level + rng.normal(0, 0.05)
                rows.append({"plate_id": plate, "well": well(plate), "role": role, "treatment": None, "treatment_conc": 0.0,
                             "n_sites": 4, "median_z": 1 - inhibition, "median_readout": 0.3 * (1 - inhibition),
                             "inhibition": inhibition, "toxic": False, "used": True, "reason": ""})
    wells = pd.DataFrame(rows)
    wells.insert(2, "well_id", wells["plate_id"] + "_" + wells["well"])
    return wells


def nuclei_wells(wells):
    return wells[["plate_id", "well"]].assign(nuclei_count=np.arange(len(wells)) % 50 + 300, toxic=wells["toxic"], no_nuclei=False)


def plate_qc_table(models=("M", "W", "V")):
    """plate_qc rows of each model (W: z and logit, M and V: z and a); V's second plate fails."""
    tables = []
    for model in models:
        readouts = ["z", "logit"] if model == "W" else ["z", "a"]
        for readout in readouts:
            fails = model == "V"
            tables.append(pd.DataFrame({
                "plate_id": ["P_1", "P_2"], "model": model, "readout": readout, "n_infected": 4, "n_noninfected": 4,
                "median_infected": [0.9, 0.8], "median_noninfected": [0.05, 0.1],
                "zprime": [0.6, -4.0 if fails else 0.4], "ssmd": [5.0, 0.5 if fails else 3.0],
                "control_source": ["plate", "experiment"], "passes": [True, not fails],
            }))
    return pd.concat(tables, ignore_index=True)


def test_ranking_table_orders_by_the_new_rank_and_shows_both_calls():
    doses = inhibition_doses()
    ranked = ranking_table(inhibition_treatments(), fit_dose_table(doses, limits=(0, 1)))
    assert ranked["treatment"].tolist() == ["C", "A", "B", "D"]
    assert ranked.columns[:4].tolist() == ["rank", "treatment", "hit", "effective"]
    assert [c for c in RANKING_COLUMNS if c in ranked.columns] == RANKING_COLUMNS
    assert {"fit_status", "ec50_um", "top"} <= set(ranked.columns)
    assert ranked.set_index("treatment").loc["A", "deemd_rank"] == 1
    with pytest.raises(ValueError, match="rank"):
        ranking_table(inhibition_treatments().drop(columns="rank"), fit_dose_table(doses))


def test_top_treatments_by_another_score_and_rank():
    treatments = inhibition_treatments()
    assert top_treatments(treatments, 5, score="inhibition_max")["treatment"].tolist() == ["C", "A", "B"]
    assert top_treatments(treatments, 2, rank="deemd_rank")["treatment"].tolist() == ["A", "C"]


def test_call_categories():
    categories = call_categories([True, False, True, False, None], [True, True, False, False, True])
    assert categories.tolist() == ["hit and effective", "hit only", "effective only", "neither", "hit only"]
    assert set(categories) <= set(CALL_CATEGORIES)
    with pytest.raises(ValueError, match="effective calls"):
        call_categories([True], [True, False])


def test_well_positions_and_plate_formats():
    rows, columns = well_position(["A01", "b03", "H12"])
    assert rows.tolist() == [0, 1, 7] and columns.tolist() == [0, 2, 11]
    assert plate_shape(rows, columns) == (8, 12)
    rows, columns = well_position(["P24", "A01"])
    assert plate_shape(rows, columns) == (16, 24)
    rows, columns = well_position(["AF48", "Z01", "AA02"])
    assert rows.tolist() == [31, 25, 26] and plate_shape(rows, columns) == (32, 48)
    assert [row_label(i) for i in (0, 25, 26, 31)] == ["A", "Z", "AA", "AF"]
    grid = plate_grid([0, 1], [2, 0], [5.0, 7.0], (2, 3))
    assert grid[0, 2] == 5 and grid[1, 0] == 7 and np.isnan(grid).sum() == 4
    with pytest.raises(ValueError, match="twice"):
        plate_grid([0, 0], [1, 1], [1, 2], (2, 3))
    with pytest.raises(ValueError, match="B3x"):
        well_position(["A01", "B3x"])


def test_every_inhibition_figure_renders_to_png(tmp_path):
    doses, treatments, wells = inhibition_doses(), inhibition_treatments(), efficacy_wells()
    shown = top_treatments(treatments, 4, score="inhibition_max")
    save(inhibition_dose_response_figure(doses, wells, shown, bar=0.5, columns=2, title="M"), tmp_path / "inhibition.png")
    save(inhibition_dose_response_figure(doses, wells, shown.head(0), bar=0.5), tmp_path / "inhibition_empty.png", min_bytes=1000)
    save(hit_scatter_figure(treatments, bar=0.5, fdr=0.05, model="M"), tmp_path / "hits.png")
    save(deemd_vs_inhibition_figure(treatments, zeta=0.5, bar=0.5, model="M"), tmp_path / "versus.png")
    save(plate_qc_figure(plate_qc_table(), min_zprime=0.0), tmp_path / "plate_qc.png")
    save(plate_qc_figure(plate_qc_table(("W",)), min_zprime=0.3), tmp_path / "plate_qc_w.png")
    save(plate_maps_figure(nuclei_wells(wells), wells, "M"), tmp_path / "plate_maps.png")
    # A 384-well plate, and a well counted for nuclei but not scored (blank, not an error).
    big = wells.assign(well=[f"{'ABCDEFGHIJKLMNOP'[i % 16]}{i // 16 + 1:02d}" for i in range(len(wells))], plate_id="P_1")
    nuclei = pd.concat([nuclei_wells(big), pd.DataFrame({"plate_id": ["P_1"], "well": ["P24"], "nuclei_count": [0], "toxic": [False]})])
    save(plate_maps_figure(nuclei, big, "W"), tmp_path / "plate_maps_384.png")


def test_inhibition_panel_draws_the_treatments_own_curve(tmp_path):
    """The fitted curve drawn is logistic4 at the treatment's own parameters (emax as top)."""
    doses, treatments, wells = inhibition_doses(), inhibition_treatments(), efficacy_wells()
    figure = inhibition_dose_response_figure(doses, wells, top_treatments(treatments, 1, score="inhibition_max"), bar=0.5)
    ax = figure.axes[0]
    curve = next(line for line in ax.get_lines() if line.get_label() == "4PL fit")
    x, y = curve.get_data()
    c = treatments.set_index("treatment").loc["C"]
    expected = logistic4(np.log10(x), c["inhibition_bottom"], c["inhibition_emax"], np.log10(c["inhibition_ec50_um"]), c["inhibition_hill"])
    assert np.allclose(y, expected)
    assert "#1 C: hit" in ax.get_title()
    save(figure, tmp_path / "one.png")


def test_inhibition_panel_draws_a_falling_curve_from_its_midpoint(tmp_path):
    """A curve that falls with dose has no EC50; it is still drawn, from its midpoint."""
    doses, treatments, wells = inhibition_doses(), inhibition_treatments(), efficacy_wells()
    c = treatments["treatment"] == "C"
    treatments["inhibition_midpoint_um"] = treatments["inhibition_ec50_um"]
    treatments.loc[c, "inhibition_ec50_um"] = np.nan
    figure = inhibition_dose_response_figure(doses, wells, top_treatments(treatments, 1, score="inhibition_max"), bar=0.5)
    ax = figure.axes[0]
    x, y = next(line for line in ax.get_lines() if line.get_label() == "4PL fit").get_data()
    row = treatments[c].iloc[0]
    expected = logistic4(np.log10(x), row["inhibition_bottom"], row["inhibition_emax"], np.log10(row["inhibition_midpoint_um"]), row["inhibition_hill"])
    assert np.allclose(y, expected)
    assert any(text.get_text() == "no EC50: falls with dose" for text in ax.texts)
    save(figure, tmp_path / "falling.png")


@pytest.mark.parametrize("params", [(0.1, 0.9, -0.5, 1.3), (0.0, 1.0, 1.5, 8.0), (0.2, -0.1, -2.0, 0.3), (0.0, 1.0, 0.0, 60.0)])
def test_logistic4_jacobian_matches_central_differences(params):
    """The closed-form Jacobian the fits use, against central differences of logistic4,
    also where the exponent is clipped (hill 60: a step)."""
    log_c, params = np.linspace(-3, 2, 50), np.array(params)
    numeric = np.empty((len(log_c), 4))
    for index in range(4):
        step = 1e-6 * max(1.0, abs(params[index]))
        up, down = params.copy(), params.copy()
        up[index] += step
        down[index] -= step
        numeric[:, index] = (logistic4(log_c, *up) - logistic4(log_c, *down)) / (2 * step)
    assert np.allclose(logistic4_jacobian(log_c, *params), numeric, atol=1e-7)
