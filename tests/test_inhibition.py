"""Unit tests of deemd.inhibition: control normalisation, plate QC, toxic doses, the
inhibition curve and its hit test, BH q-values and the ranking (docs/method.md §10)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deemd.doseresponse import logistic4
from deemd.inhibition import (
    treatment_curves,
    INFECTED_CONTROL,
    NONINFECTED_CONTROL,
    TREATED,
    benjamini_hochberg,
    control_references,
    fitted_at,
    inhibition,
    inhibition_curve,
    quantitative_efficacy,
    rank_by_hit,
    replicate_groups,
    trend_sd,
    variance_trend,
    robust_ssmd,
    robust_zprime,
    scored_sites,
    site_roles,
    cytotoxicity,
    ec50_qualifier,
    inhibition_settings,
    selectivity_index,
    viability_curve,
    well_medians,
    well_viability,
)
from test_efficacy import reference_intervals

CONCENTRATIONS = np.array([0.03, 0.1, 0.3, 1.0, 3.0, 10.0])


def test_robust_zprime_and_ssmd_known_values():
    positive = np.array([0.9, 1.0, 1.1])  # median 1.0, MAD 0.1
    negative = np.array([0.0, 0.1, 0.2])  # median 0.1, MAD 0.1
    sd = 1.4826 * 0.1
    assert robust_zprime(positive, negative) == pytest.approx(1 - 3 * 2 * sd / 0.9)
    assert robust_ssmd(positive, negative) == pytest.approx(0.9 / np.hypot(sd, sd))
    # How far an outlier lies does not matter, only which side it is on.
    assert robust_zprime(np.append(positive, 50.0), negative) == pytest.approx(robust_zprime(np.append(positive, 1.5), negative))
    assert robust_zprime(positive, positive) == -np.inf
    assert np.isnan(robust_zprime([], negative)) and np.isnan(robust_ssmd(positive, []))
    assert robust_ssmd([1.0, 1.0], [0.0, 0.0]) == np.inf


def split_table():
    return pd.DataFrame(
        {
            "site_id": [f"s{i}" for i in range(6)],
            "plate_id": ["E_1"] * 5 + ["E_2"],
            "set": ["train", "val", "test", "treated", "val", "treated"],
            "label": pd.array([1, 1, 0, pd.NA, 0, pd.NA], dtype="Int64"),
            "well": ["A01", "A02", "A03", "A04", "A05", "A01"],
        }
    )


def test_roles_leave_out_training_sites():
    roles = site_roles(split_table()).fillna("trained on")
    assert roles.tolist() == ["trained on", INFECTED_CONTROL, NONINFECTED_CONTROL, TREATED, NONINFECTED_CONTROL, TREATED]
    plate = scored_sites(split_table(), "E_1")
    assert plate["site_id"].tolist() == ["s1", "s2", "s3", "s4"]
    assert plate["role"].tolist() == [INFECTED_CONTROL, NONINFECTED_CONTROL, TREATED, NONINFECTED_CONTROL]


def control_wells(plate_id, infected, noninfected):
    rows = [{"plate_id": plate_id, "role": INFECTED_CONTROL, "median_a": v} for v in infected]
    rows += [{"plate_id": plate_id, "role": NONINFECTED_CONTROL, "median_a": v} for v in noninfected]
    return rows


def test_control_references_per_plate_and_pooled():
    wells = pd.DataFrame(
        control_wells("E_1", [0.6, 0.7, 0.8], [0.0, 0.1, 0.2])
        + control_wells("E_2", [0.5], [0.0, 0.0, 0.0])  # too few infected wells: pooled
        + [{"plate_id": "E_2", "role": TREATED, "median_a": 0.3}]
    )
    refs = control_references(wells, "median_a", min_wells=3).set_index("plate_id")
    assert refs.loc["E_1", "control_source"] == "plate"
    assert refs.loc["E_1", "median_infected"] == pytest.approx(0.7)
    assert refs.loc["E_1", "median_noninfected"] == pytest.approx(0.1)
    assert refs.loc["E_2", "control_source"] == "experiment"
    assert refs.loc["E_2", "n_infected"] == 4  # the experiment's four infected wells
    assert refs.loc["E_2", "median_infected"] == pytest.approx(np.median([0.6, 0.7, 0.8, 0.5]))


def test_control_references_error_names_plate_and_experiment():
    wells = pd.DataFrame(control_wells("HRCE-9_1", [], [0.0, 0.1, 0.2]) + [{"plate_id": "HRCE-9_1", "role": TREATED, "median_a": 0.3}])
    with pytest.raises(ValueError, match=r"plate HRCE-9_1: no held-out infected_control wells .* experiment HRCE-9"):
        control_references(wells, "median_a", min_wells=1)


def test_inhibition_scale_and_degenerate_references():
    values = inhibition([0.8, 0.45, 0.1, 0.9], [0.8, 0.8, 0.8, 0.1], [0.1, 0.1, 0.1, 0.1])
    assert values[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert np.isnan(values[3])  # references that do not separate give no inhibition


def nucleus_table(treatment, concentrations, viability, toxic=None):
    """Treated wells of a nucleus table, with the plate's infected-control median 40."""
    n = len(concentrations)
    return pd.DataFrame(
        {
            "plate_id": "E_1",
            "well": [f"A{i + 1:02d}" for i in range(n)],
            "treatment": treatment,
            "treatment_conc": np.asarray(concentrations, dtype=float),
            "toxic": np.zeros(n, bool) if toxic is None else np.asarray(toxic, bool),
            "no_nuclei": False,
            "nuclei_per_site": 40.0 * np.asarray(viability, dtype=float),
            "infected_control_median": 40.0,
        }
    )


def test_toxic_doses_need_half_the_wells():
    nuclei = nucleus_table("T", [1.0, 1.0, 10.0, 10.0], [0.6, 1.0, 0.5, 0.6], toxic=[False, True, True, True])
    nuclei = pd.concat([nuclei, nucleus_table(None, [np.nan], [1.0])], ignore_index=True)
    doses, _ = cytotoxicity(nuclei, min_viability=0.8)  # two doses: too few for a viability curve
    assert doses["toxic"].tolist() == [True, True]  # 1 of 2 is half; 2 of 2
    nuclei.loc[1, "toxic"] = False
    doses, treatments = cytotoxicity(nuclei, min_viability=0.8)
    assert doses["toxic"].tolist() == [False, True]
    assert doses["viability_median"].tolist() == pytest.approx([0.8, 0.55])
    assert treatments["viability_status"].iloc[0].startswith("no viability curve")


def test_well_viability_is_relative_to_the_infected_controls_and_keeps_empty_wells():
    nuclei = nucleus_table("T", [1.0, 3.0, 10.0, 10.0], [1.1, 0.5, 0.0, np.nan])
    nuclei.loc[2:3, "no_nuclei"] = True  # well 3: no imaged site, so no count at all
    viable = well_viability(nuclei)
    assert viable["viability"].tolist() == pytest.approx([1.1, 0.5, 0.0])
    assert viable["empty"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="infected_control_median"):
        well_viability(nuclei.drop(columns="infected_control_median"))


def test_a_dose_that_leaves_no_cell_is_toxic_and_an_empty_well_does_not_bend_the_curve():
    c, v = np.repeat(CONCENTRATIONS, 3), np.ones(3 * len(CONCENTRATIONS))
    nuclei = nucleus_table("T", c, v)
    top = nuclei["treatment_conc"] == 10.0
    nuclei.loc[top, ["nuclei_per_site", "no_nuclei", "toxic"]] = [0.0, True, True]  # flagged by flag_wells
    doses, treatments = cytotoxicity(nuclei, min_viability=0.8)
    dose = doses.set_index("treatment_conc").loc[10.0]
    assert bool(dose["toxic"]) and dose["toxic_reason"] == "well flags"
    assert dose["n_wells_toxic"] == dose["n_wells_plated"] == dose["n_wells_empty"] == 3
    assert dose["viability_median"] == 0.0
    # One empty well (a failed image, or one dead well) among a dose's three: not a toxic
    # dose, and the curve over the wells with nuclei stays flat.
    nuclei = nucleus_table("T", c, v)
    nuclei.loc[0, ["nuclei_per_site", "no_nuclei", "toxic"]] = [0.0, True, True]
    doses, treatments = cytotoxicity(nuclei, min_viability=0.8)
    assert not doses["toxic"].any() and doses["n_wells_toxic"].tolist() == [1] + [0] * (len(CONCENTRATIONS) - 1)
    assert treatments["viability_status"].iloc[0] == "no viability curve: flat response"
    # Every well empty: a status, not a missing row.
    nuclei = nucleus_table("T", [1.0, 10.0], [0.0, 0.0]).assign(no_nuclei=True, toxic=True)
    doses, treatments = cytotoxicity(nuclei, min_viability=0.8)
    assert doses["toxic"].all() and treatments["viability_status"].iloc[0].startswith("no viability curve: too few doses")


def cytotoxic_wells(cc50=2.5, hill=2.0, wells_per_dose=3, sd=0.04, seed=0):
    rng = np.random.default_rng(seed)
    c = np.repeat(CONCENTRATIONS, wells_per_dose)
    v = 1.0 - 0.9 * c**hill / (c**hill + cc50**hill) + rng.normal(0, sd, len(c))
    return c, v


def test_viability_curve_finds_the_cc50_of_a_falling_curve():
    c, v = cytotoxic_wells()
    curve = viability_curve(c, v)
    # Viability 0.5 where 0.9 c^2 / (c^2 + 2.5^2) = 0.5: c = 2.5 * sqrt(0.5 / 0.4).
    assert curve["status"] == "ok"
    assert curve["cc50_um"] == pytest.approx(2.5 * np.sqrt(1.25), rel=0.15)


def test_viability_curve_ignores_rising_and_flat_viability():
    rising = viability_curve(CONCENTRATIONS.repeat(3), np.linspace(0.7, 1.2, 18))
    assert rising["fit"] is None and rising["status"] == "viability does not fall with dose"
    c, v = cytotoxic_wells(cc50=100.0, hill=1.0)  # barely falls within the tested doses
    assert np.isnan(viability_curve(c, v)["cc50_um"])


def test_curve_flags_a_dose_that_costs_cells_though_no_well_is_flagged():
    # The 1 uM wells keep 0.72 of the cells (none below the nucleus count's fraction 0.7),
    # and the curve through every dose says so: left out at min_viability 0.8.
    c, v = cytotoxic_wells(cc50=1.5, sd=0.0)
    nuclei = nucleus_table("Tox", c, v, toxic=v < 0.7)
    doses, treatments = cytotoxicity(nuclei, min_viability=0.8)
    doses = doses.set_index("treatment_conc")
    assert doses.loc[1.0, "n_wells_toxic"] == 0
    assert doses.loc[1.0, "viability_fitted"] == pytest.approx(1 - 0.9 / 3.25, abs=0.02)
    assert doses["toxic"].tolist() == [False, False, False, True, True, True]
    assert doses["toxic_reason"].tolist() == ["", "", "", "viability curve", "well flags", "well flags"]
    relaxed, _ = cytotoxicity(nuclei, min_viability=0.0)  # only the well flags
    assert relaxed["toxic"].tolist() == [False, False, False, False, True, True]
    assert treatments["viability_cc50_um"].iloc[0] == pytest.approx(1.5 * np.sqrt(1.25), rel=0.05)


def test_toxicity_of_an_antiviral_is_its_loss_from_the_cells_it_spares():
    # An antiviral keeps 1.25x the infected controls' cells (it spares those the virus
    # kills) until its toxicity takes a share of them. Against the infected controls the
    # 3 uM dose still has 0.88 of their cells; against its own level it has lost 30 %.
    c, v = cytotoxic_wells(cc50=3.0, sd=0.0)
    v = 1.25 * (1.0 - (1.0 - v) / 0.9 * 0.6)  # from 1.25 down to 0.5
    doses, _ = cytotoxicity(nucleus_table("Antiviral", c, v), min_viability=0.8)
    at_3 = doses.set_index("treatment_conc").loc[3.0]
    assert at_3["viability_fitted"] == pytest.approx(1.25 * 0.7, abs=0.02)
    assert at_3["viability_relative"] == pytest.approx(0.7, abs=0.02)
    assert at_3["toxic"] and at_3["toxic_reason"] == "viability curve"
    # A compound below the infected controls' level at low doses is measured from 1, never
    # from its own lower level (no dose becomes less toxic for it).
    low = cytotoxicity(nucleus_table("Low", c, 0.9 * cytotoxic_wells(cc50=3.0, sd=0.0)[1]), min_viability=0.8)[0]
    np.testing.assert_allclose(low["viability_relative"], low["viability_fitted"])


def test_selectivity_index():
    assert selectivity_index([10.0, np.nan, 5.0], [0.1, 1.0, 0.0]) == pytest.approx([100.0, np.nan, np.nan], nan_ok=True)


def test_inhibition_settings_take_every_key_from_the_config_sections():
    efficacy = {"zeta": 0.5, "confidence": 0.95, "inhibition_bar": 0.5, "fdr": 0.05, "min_viability": 0.8,
                "curve_bottom": "free"}
    settings = inhibition_settings(efficacy, {"min_zprime": 0.0, "min_control_wells": 3})
    assert settings == {"inhibition_bar": 0.5, "fdr": 0.05, "confidence": 0.95, "min_viability": 0.8,
                        "min_zprime": 0.0, "min_control_wells": 3, "curve_bottom": None}
    assert inhibition_settings({**efficacy, "curve_bottom": "zero"}, {"min_zprime": 0.0, "min_control_wells": 3})["curve_bottom"] == 0.0


def noisy_wells(emax, ec50=0.5, hill=1.5, wells_per_dose=3, sd=0.05, seed=0):
    rng = np.random.default_rng(seed)
    c = np.repeat(CONCENTRATIONS, wells_per_dose)
    y = logistic4(np.log10(c), 0.0, emax, np.log10(ec50), hill) + rng.normal(0, sd, len(c))
    return c, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curve_of_an_effective_compound_is_a_hit(seed):
    c, y = noisy_wells(0.95, seed=seed)
    curve = inhibition_curve(c, y, bar=0.5)
    assert curve["inhibition_status"] == "ok"
    assert curve["inhibition_max"] == pytest.approx(0.95, abs=0.08)
    assert abs(np.log10(curve["inhibition_ec50_um"]) - np.log10(0.5)) < 0.3
    assert curve["hit_p_value"] < 1e-4
    assert curve["n_wells_tested"] == len(c)


def test_a_curve_that_falls_with_dose_has_no_ec50():
    """Probe: a compound that makes infection worse got an EC50 qualified "="."""
    c = np.repeat(CONCENTRATIONS, 3)
    y = logistic4(np.log10(c), 0.0, -0.8, np.log10(0.3), 1.5) + np.random.default_rng(0).normal(0, 0.03, len(c))
    curve = inhibition_curve(c, y, 0.5)
    assert curve["inhibition_emax"] < curve["inhibition_bottom"] and curve["inhibition_status"] == "ok"
    assert np.isnan(curve["inhibition_ec50_um"]) and curve["inhibition_ec50_qualifier"] == ""
    assert 0.1 < curve["inhibition_midpoint_um"] < 1.0  # still drawn: the figures take the midpoint
    assert np.isnan(curve["inhibition_log_ec50_se"]) and curve["hit_p_value"] > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curve_of_an_inactive_compound_is_not(seed):
    c, y = noisy_wells(0.0, seed=seed, sd=0.1)
    curve = inhibition_curve(c, y, bar=0.5)
    assert curve["hit_p_value"] > 0.5
    assert curve["inhibition_max"] < 0.3


def test_inhibition_max_is_held_to_the_range_of_the_truth():
    """A curve whose top lies above the non-infected controls' level reads 1, with the
    p-value of its fitted value unchanged; a dose-wise fallback is held too."""
    c, y = noisy_wells(1.15, seed=3, sd=0.02)
    curve = inhibition_curve(c, y, bar=0.5)
    assert curve["inhibition_max"] == 1.0 and curve["inhibition_emax"] > 1.05
    assert curve["hit_p_value"] < 1e-6
    below = inhibition_curve([0.1, 1.0, 10.0], [-0.3, -0.2, -0.25], bar=0.5)  # too few wells for a curve
    assert below["inhibition_max"] == 0.0 and np.isnan(below["hit_p_value"])


def test_curve_bottom_held_at_zero_lowers_the_upward_bias_of_inactive_compounds():
    # The best of six noisy doses is biased upward; a free bottom lets the curve chase the
    # noise at both ends, a bottom held at the untreated level only at the top.
    held, free = [], []
    for seed in range(30):
        c, y = noisy_wells(0.0, seed=100 + seed, sd=0.1)
        held.append(inhibition_curve(c, y, bar=0.5, bottom=0.0)["inhibition_max"])
        free.append(inhibition_curve(c, y, bar=0.5)["inhibition_max"])
    assert np.mean(held) < np.mean(free) - 0.01
    assert np.mean(held) < 0.15


def test_free_curve_bottom_follows_a_vehicle_shift():
    # Every dose reads 0.2 above the untreated controls (the vehicle itself inhibits):
    # only a free bottom can fit the flat low-dose end.
    c, y = noisy_wells(0.8, ec50=1.0, sd=0.02, seed=6)
    y = y + 0.2
    free = inhibition_curve(c, y, bar=0.5)
    held = inhibition_curve(c, y, bar=0.5, bottom=0.0)
    assert free["inhibition_bottom"] == pytest.approx(0.2, abs=0.05)
    assert held["inhibition_bottom"] == 0.0
    assert free["inhibition_max"] == pytest.approx(1.0, abs=0.05)


def test_ec50_qualifier_says_where_the_ec50_lies_against_the_doses():
    assert ec50_qualifier(0.5, 0.03, 10.0) == "=" and ec50_qualifier(10.0, 0.03, 10.0) == "="
    assert ec50_qualifier(20.0, 0.03, 10.0) == ">" and ec50_qualifier(0.01, 0.03, 10.0) == "<"
    assert ec50_qualifier(np.nan, 0.03, 10.0) == ""


def test_curve_still_rising_at_the_top_dose_has_an_extrapolated_ec50():
    c, y = noisy_wells(0.95, ec50=30.0, hill=1.0, sd=0.02, seed=7)
    curve = inhibition_curve(c, y, bar=0.5)
    assert curve["inhibition_ec50_um"] > c.max() and curve["inhibition_ec50_qualifier"] == ">"
    inside = inhibition_curve(*noisy_wells(0.95, seed=7), bar=0.5)
    assert inside["inhibition_ec50_qualifier"] == "="
    assert inhibition_curve([1.0, 10.0], [0.2, 0.8], bar=0.5)["inhibition_ec50_qualifier"] == ""


def test_curve_keeps_power_with_one_well_per_dose():
    c, y = noisy_wells(0.95, wells_per_dose=1, sd=0.03, seed=4)
    curve = inhibition_curve(c, y, bar=0.5)
    assert curve["n_wells_tested"] == 6 and curve["hit_p_value"] < 0.05


def test_curve_without_enough_wells_falls_back_to_the_best_dose():
    curve = inhibition_curve([1.0, 10.0, 10.0], [0.2, 0.8, 0.6], bar=0.5)
    assert np.isnan(curve["hit_p_value"]) and "too few wells" in curve["inhibition_status"]
    assert curve["inhibition_max"] == pytest.approx(0.7)
    empty = inhibition_curve([], [], bar=0.5)
    assert empty["n_wells_tested"] == 0 and np.isnan(empty["inhibition_max"])


def test_fitted_error_is_the_leverage_of_a_linear_case():
    # Far below a steep EC50 the curve is flat at its bottom and only the bottom is free there:
    # the fit is then a mean, whose error is s / sqrt(n) with s^2 = RSS / (n - rank).
    y = np.array([0.1, 0.3, 0.2, 0.2])
    fit = {"bottom": 0.2, "top": 1.0, "log_ec50": 2.0, "hill": 10.0, "held": np.array([False, True, True, True])}
    value, se, df = fitted_at(fit, [0.01, 0.01, 0.1, 0.1], y, [0.01])
    assert value[0] == pytest.approx(0.2) and df == 3
    assert se[0] == pytest.approx(np.sqrt(np.sum((y - 0.2) ** 2) / 3) / 2, rel=1e-6)
    # With the first two wells four times as noisy: the mean's variance is sum(v_i) s^2 / n^2,
    # s^2 = sum(r_i^2 / v_i) / (n - rank) (sandwich form).
    variance = np.array([4.0, 4.0, 1.0, 1.0])
    _, se, _ = fitted_at(fit, [0.01, 0.01, 0.1, 0.1], y, [0.01], variance)
    scale = np.sum((y - 0.2) ** 2 / variance) / 3
    assert se[0] == pytest.approx(np.sqrt(scale * variance.sum()) / 4, rel=1e-6)


def test_fitted_error_stays_bounded_where_the_parameters_are_not_determined():
    # A step between the two highest doses: curve_fit's covariance explodes (EC50 and top are
    # not determined), but the curve at the highest dose is pinned by its three wells.
    c = np.repeat([0.03, 0.1, 0.3, 1.0, 3.0, 10.0], 3)
    noise = np.tile([-0.01, 0.0, 0.01], 6)
    y = np.where(c < 5, 0.0, 1.0) + noise
    curve = inhibition_curve(c, y, bar=0.5)
    assert curve["inhibition_best_conc_um"] == 10.0 and curve["inhibition_max"] == pytest.approx(1.0, abs=0.02)
    assert curve["inhibition_max_se"] < 0.01 and curve["hit_p_value"] < 1e-6
    # Yet the parameters themselves stay uncertain, as they are.
    assert not curve["inhibition_emax_se"] < 0.1


def test_replicate_groups_take_used_doses_and_each_plates_controls():
    wells = pd.DataFrame({
        "role": [TREATED] * 5 + [INFECTED_CONTROL] * 3 + [NONINFECTED_CONTROL] * 2,
        "plate_id": ["P1"] * 5 + ["P1", "P1", "P2"] + ["P1", "P1"],
        "treatment": ["A", "A", "A", "B", "B"] + [None] * 5,
        "treatment_conc": [1.0, 1.0, 1.0, 3.0, 3.0] + [np.nan] * 5,
        "inhibition": [0.2, 0.4, 5.0, 0.9, np.nan, 0.0, 0.2, 0.1, 1.0, 1.1],
        "used": [True, True, False, True, True, False, False, False, False, False],
    })
    groups = replicate_groups(wells).sort_values("level", ignore_index=True)
    # A at 1 uM: the unused third well is left out; B: one finite well is no group; P2's
    # single infected control neither.
    assert groups["level"].tolist() == pytest.approx([0.1, 0.3, 1.05])
    assert groups["variance"].tolist() == pytest.approx([0.02, 0.02, 0.005])
    assert groups["df"].tolist() == [1, 1, 1]


def test_variance_trend_pools_each_bin_and_fills_empty_ones():
    groups = pd.DataFrame({"level": [0.1, 0.05, 0.9, 1.2], "variance": [0.04, 0.01, 0.0004, 0.0016], "df": [4, 2, 3, 3]})
    trend = variance_trend(groups, min_df=10)
    assert trend["level"] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    low, high = np.sqrt((4 * 0.04 + 2 * 0.01) / 6), np.sqrt((3 * 0.0004 + 3 * 0.0016) / 6)
    # The two middle bins hold no group: each takes its nearest filled neighbour.
    assert trend["sd"] == pytest.approx([low, low, high, high])
    assert trend["df"].tolist() == [6, 0, 0, 6]
    assert trend_sd(trend, [0.0, 0.25, 0.5, 2.0]) == pytest.approx([low, low, 0.5 * (low + high), high])
    assert variance_trend(groups, min_df=13) is None
    # A screen without replicate wells: no groups, no trend.
    empty = replicate_groups(pd.DataFrame({"role": [TREATED], "plate_id": ["P1"], "treatment": ["A"], "treatment_conc": [1.0],
                                           "inhibition": [0.5], "used": [True]}))
    assert empty.empty and variance_trend(empty) is None


def test_variance_trend_bounds_the_ratio_of_its_sds():
    groups = pd.DataFrame({"level": [0.1, 0.9], "variance": [1.0, 0.0], "df": [10, 10]})
    assert variance_trend(groups)["sd"][-1] == pytest.approx(1.0 / 10)


def heteroscedastic_wells(top, rng, sd_infected=0.3, sd_clean=0.05, wells_per_dose=3):
    """Wells whose spread shrinks from sd_infected at inhibition 0 to sd_clean at 1, as a
    count-like readout's does."""
    c = np.repeat(CONCENTRATIONS, wells_per_dose)
    mean = logistic4(np.log10(c), 0.0, top, np.log10(0.3), 1.5)
    sd = sd_infected + (sd_clean - sd_infected) * np.clip(mean, 0, 1)
    return c, mean + rng.normal(0, 1, len(c)) * sd


def heteroscedastic_trend(sd_infected=0.3, sd_clean=0.05):
    levels = np.array([0.125, 0.375, 0.625, 0.875])
    groups = pd.DataFrame({"level": levels, "variance": (sd_infected + (sd_clean - sd_infected) * levels) ** 2, "df": 50})
    return variance_trend(groups)


def test_noise_trend_gains_power_where_the_clean_doses_are_quiet():
    rng = np.random.default_rng(3)
    trend = heteroscedastic_trend()
    trend_p, plain_p = [], []
    for _ in range(40):
        c, y = heteroscedastic_wells(0.7, rng)
        trend_p.append(inhibition_curve(c, y, bar=0.5, noise=trend)["hit_p_value"])
        plain_p.append(inhibition_curve(c, y, bar=0.5)["hit_p_value"])
    assert np.mean(np.array(trend_p) < 0.01) > np.mean(np.array(plain_p) < 0.01) + 0.2


def test_noise_trend_keeps_false_calls_at_the_bar_near_alpha():
    # A compound whose plateau sits exactly at the bar: the test's p-value must not fall
    # below 0.05 much more often than 5 % of the time.
    rng = np.random.default_rng(5)
    trend = heteroscedastic_trend()
    curves = [inhibition_curve(*heteroscedastic_wells(0.5, rng), bar=0.5, noise=trend) for _ in range(200)]
    p = np.array([curve["hit_p_value"] for curve in curves])
    assert all(curve["inhibition_noise_trend"] for curve in curves)
    assert np.mean(p < 0.05) < 0.1


def test_benjamini_hochberg_against_hand_computation():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.5])
    q = benjamini_hochberg(p)
    # sorted finite p: 0.01 0.03 0.04 0.5 (m = 4): q = min over ranks >= i of p m / rank
    assert q[[0, 3, 1, 4]] == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert np.isnan(q[2])


def test_rank_by_hit_then_inhibition():
    table = pd.DataFrame(
        {
            "treatment": ["a", "b", "c", "d"],
            "hit": [False, True, False, True],
            "inhibition_max": [0.99, 0.6, np.nan, 0.9],
            "e_t": [0.1, 0.9, 0.5, 0.2],
        }
    )
    ranked = rank_by_hit(table)
    assert ranked["treatment"].tolist() == ["d", "b", "a", "c"]
    assert ranked["rank"].tolist() == [1, 2, 3, 4]


def screen(seed=0, min_wells=3):
    """Two plates: held-out controls, an effective and an inactive treatment, a toxic dose."""
    rng = np.random.default_rng(seed)
    rows, nuclei = [], []

    def add(plate, well, role, treatment, conc, level, toxic=False):
        for site in range(1, 5):
            a = float(np.clip(level + rng.normal(0, 0.03), 0, 1))
            rows.append(
                {"site_id": f"{plate}_{well}_{site}", "well_id": f"{plate}_{well}", "plate_id": plate, "well": well,
                 "site": site, "role": role, "treatment": treatment, "treatment_conc": conc, "z": a, "a": a}
            )
        nuclei.append({"plate_id": plate, "well": well, "treatment": treatment, "treatment_conc": conc, "toxic": toxic,
                       "no_nuclei": False, "nuclei_per_site": 12.0 if toxic else 40.0, "infected_control_median": 40.0})

    for plate in ("E_1", "E_2"):
        for i in range(4):
            add(plate, f"A{i + 1:02d}", INFECTED_CONTROL, None, np.nan, 0.6)
            add(plate, f"B{i + 1:02d}", NONINFECTED_CONTROL, None, np.nan, 0.05)
        for j, conc in enumerate(CONCENTRATIONS):
            effect = logistic4(np.log10(conc), 0.0, 0.95, np.log10(0.3), 1.5)
            add(plate, f"C{j + 1:02d}", TREATED, "Good", conc, 0.6 - effect * 0.55)
            add(plate, f"D{j + 1:02d}", TREATED, "Null", conc, 0.6)
        # The top dose of Tox kills: its wells never reach the shards, only the nuclei table.
        nuclei.append({"plate_id": plate, "well": "E01", "treatment": "Tox", "treatment_conc": 10.0, "toxic": True,
                       "no_nuclei": False, "nuclei_per_site": 12.0, "infected_control_median": 40.0})
    settings = {"inhibition_bar": 0.5, "fdr": 0.05, "confidence": 0.95, "min_zprime": 0.0, "min_control_wells": min_wells,
                "min_viability": 0.8, "curve_bottom": None}
    return pd.DataFrame(rows), pd.DataFrame(nuclei), settings


def test_quantitative_efficacy_end_to_end():
    sites, nuclei, settings = screen()
    tables = quantitative_efficacy(sites, nuclei, "M", "a", settings, reference_intervals)
    qc = tables["plate_qc"]
    assert sorted(qc["readout"].unique()) == ["a", "z"] and qc["passes"].all()
    assert (qc["zprime"] > 0.5).all() and (qc["control_source"] == "plate").all()
    treatments = tables["treatments"].set_index("treatment")
    assert bool(treatments.loc["Good", "hit"]) and not bool(treatments.loc["Null", "hit"])
    assert treatments.loc["Good", "inhibition_max"] == pytest.approx(0.95, abs=0.07)
    assert treatments.loc["Tox", "inhibition_status"] == "every dose toxic"
    assert treatments.loc["Tox", "n_toxic_doses"] == 1 and not bool(treatments.loc["Tox", "hit"])
    # Every dose keeps the controls' count: no viability curve, so no CC50 or selectivity.
    assert treatments[["viability_cc50_um", "selectivity_index"]].isna().all().all()
    assert treatments.loc["Good", "viability_status"].startswith("no viability curve")
    wells = tables["wells"]
    assert set(wells.loc[wells["role"] != TREATED, "reason"]) == {"control"}
    assert wells.loc[wells["role"] == TREATED, "used"].all()
    doses = tables["doses"].set_index(["treatment", "treatment_conc"])
    assert doses.loc[("Good", 10.0), "median_inhibition"] > 0.85
    assert doses.loc[("Good", 10.0), "n_wells_used"] == 2


def test_a_hit_that_kills_at_high_doses_gets_a_cc50_and_a_selectivity_index():
    sites, nuclei, settings = screen()
    # Good keeps its cells up to 1 uM, loses 40 % at 3 uM and 80 % at 10 uM (no well
    # flagged at 3 uM): both top doses leave its curve, the rest still make it a hit.
    loss = {0.03: 1.0, 0.1: 1.0, 0.3: 1.0, 1.0: 0.97, 3.0: 0.6, 10.0: 0.2}
    good = nuclei["treatment"] == "Good"
    nuclei.loc[good, "nuclei_per_site"] = 40.0 * nuclei.loc[good, "treatment_conc"].map(loss)
    nuclei.loc[good, "toxic"] = nuclei.loc[good, "treatment_conc"] == 10.0
    tables = quantitative_efficacy(sites, nuclei, "M", "a", settings, reference_intervals)
    doses = tables["doses"].set_index(["treatment", "treatment_conc"])
    assert bool(doses.loc[("Good", 3.0), "toxic"]) and doses.loc[("Good", 3.0), "n_wells_toxic"] == 0
    treatments = tables["treatments"].set_index("treatment")
    good = treatments.loc["Good"]
    assert bool(good["hit"]) and good["inhibition_best_conc_um"] == 1.0
    assert 1.0 < good["viability_cc50_um"] < 10.0
    assert good["selectivity_index"] == pytest.approx(good["viability_cc50_um"] / good["inhibition_ec50_um"])
    assert np.isnan(treatments.loc["Null", "selectivity_index"])  # not a hit: no window


def test_a_well_without_readout_values_says_so_not_that_the_controls_fail():
    """Probe: a treated well whose every site lacks the readout was blamed on the controls."""
    sites, nuclei, settings = screen()
    missing = sites["well_id"] == "E_1_C03"
    sites.loc[missing, "a"] = np.nan
    wells = quantitative_efficacy(sites, nuclei, "M", "a", settings, reference_intervals)["wells"].set_index("well_id")
    assert wells.loc["E_1_C03", "reason"] == "no a value on any of its sites" and not wells.loc["E_1_C03", "used"]
    assert (wells.loc[wells.index != "E_1_C03", "reason"] != "no a value on any of its sites").all()


def test_failing_plate_informs_the_estimates_but_not_the_hit_test():
    sites, nuclei, settings = screen()
    noisy = (sites["plate_id"] == "E_2") & sites["role"].isin([INFECTED_CONTROL, NONINFECTED_CONTROL])
    sites.loc[noisy, "a"] = np.random.default_rng(1).uniform(0, 1, int(noisy.sum()))
    tables = quantitative_efficacy(sites, nuclei, "M", "a", settings, reference_intervals)
    qc = tables["plate_qc"].set_index(["plate_id", "readout"])
    assert not qc.loc[("E_2", "a"), "passes"] and qc.loc[("E_1", "a"), "passes"]
    assert not qc.loc[("E_2", "z"), "passes"]  # one decision per plate, from the readout used
    wells = tables["wells"]
    treated = wells[wells["role"] == TREATED]
    failed, passed = treated[treated["plate_id"] == "E_2"], treated[treated["plate_id"] == "E_1"]
    assert failed["used"].all() and (~failed["plate_passes_qc"]).all()
    assert passed["used"].all() and passed["plate_passes_qc"].all() and (passed["reason"] == "").all()
    # The reason quotes the Z' that decided, that of the readout used (a), not z's.
    assert failed["reason"].iloc[0] == f"plate QC: Z' of a {qc.loc[('E_2', 'a'), 'zprime']:.2f} < 0.0, so not in the hit test"
    good = tables["treatments"].set_index("treatment").loc["Good"]
    assert good["n_wells_tested"] == 12 and good["n_wells_failing_qc"] == 6


def test_treatment_curves_test_hits_on_passing_plates_only():
    """The estimates use every used well; the p-value is that of the passing plate's wells
    alone; a treatment only on the failing plate is never a hit."""
    sites, nuclei, settings = screen()
    tables = quantitative_efficacy(sites, nuclei, "M", "a", settings, reference_intervals)
    wells, doses = tables["wells"], tables["doses"]
    failing = wells.assign(plate_passes_qc=wells["plate_id"] != "E_2")
    # "Only": Good's wells of plate E_2 under another name, so all of its wells fail QC.
    only = failing[(failing["treatment"] == "Good") & (failing["plate_id"] == "E_2")].assign(treatment="Only")
    failing = pd.concat([failing, only], ignore_index=True)
    both = treatment_curves(failing, doses, 0.5, 0.05).set_index("treatment")
    alone = treatment_curves(wells[wells["plate_id"] != "E_2"], doses, 0.5, 0.05).set_index("treatment")
    every = treatment_curves(wells, doses, 0.5, 0.05).set_index("treatment")
    assert both.loc["Good", "hit_p_value"] == pytest.approx(alone.loc["Good", "hit_p_value"])
    assert both.loc["Good", "inhibition_max"] == pytest.approx(every.loc["Good", "inhibition_max"])
    assert both.loc["Good", "n_wells_failing_qc"] == 6 and every.loc["Good", "n_wells_failing_qc"] == 0
    assert bool(both.loc["Good", "hit"]) and not bool(both.loc["Only", "hit"])
    assert np.isfinite(both.loc["Only", "inhibition_max"]) and np.isnan(both.loc["Only", "hit_p_value"])
    assert "no hit test on the plates passing QC: no usable well" in both.loc["Only", "inhibition_status"]


def test_well_medians_one_row_per_well():
    sites, _, _ = screen()
    wells = well_medians(sites, ["z", "a"])
    assert len(wells) == sites["well_id"].nunique() and (wells["n_sites"] == 4).all()
    first = sites[sites["well_id"] == wells["well_id"].iloc[0]]
    assert wells["median_a"].iloc[0] == pytest.approx(first["a"].median())
    assert stats.rankdata(wells["median_a"]).shape == (len(wells),)
