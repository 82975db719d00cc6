"""The quantitative call (hit, inhibition_max, EC50) scored against a synthetic truth, on a
hand-computed case: partial compounds count in neither precision nor recall."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deemd.truth import (
    call_scores,
    ec50_agreement,
    quantitative_truth_scores,
    dose_ranges,
    truth_classes,
    truth_efficacy_column,
)

THRESHOLD = 0.85


def compounds():
    """T1, T2, T7 truly effective (T7's EC50 outside the tested range), T3 partial, T6
    effective but toxic where it works (partial at its best non-toxic dose), T4 and T5
    without any effect (T5 toxic); T8 was not screened."""
    return pd.DataFrame({
        "treatment": ["T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8"],
        "kind": ["effective", "effective", "partial", "inactive", "toxic", "effective_toxic", "effective", "effective"],
        "ec50_um": [1.0, 0.1, 0.3, np.nan, np.nan, 1.0, 50.0, 1.0],
        "emax": [0.97, 0.92, 0.55, 0.0, 0.0, 0.95, 0.9, 0.95],
        "max_efficacy": [0.95, 0.9, 0.5, 0.0, 0.0, 0.9, 0.88, 0.9],
        "best_nontoxic_efficacy": [0.95, 0.9, 0.5, 0.0, 0.0, 0.2, 0.88, 0.9],
    })


def treatments():
    return pd.DataFrame({
        "treatment": ["T1", "T2", "T3", "T4", "T5", "T6", "T7"],
        "hit": [True, False, True, True, False, True, True],
        "effective": [True, False, True, False, False, False, True],
        "e_t": [0.7, 0.3, 0.55, 0.1, 0.0, 0.2, 0.6],
        "inhibition_max": [0.9, 0.6, 0.55, 0.45, 0.05, 0.3, 0.85],
        "inhibition_ec50_um": [1.5, 0.5, 0.3, np.nan, np.nan, np.nan, 20.0],
    })


def doses():
    return pd.DataFrame({"treatment": np.repeat(treatments()["treatment"], 3),
                         "treatment_conc": np.tile([0.03, 1.0, 10.0], 7)})


def test_truth_classes():
    classes = truth_classes(compounds(), THRESHOLD, "best_nontoxic_efficacy").set_index("treatment")
    assert classes["truth_class"].to_dict() == {
        "T1": "effective", "T2": "effective", "T3": "partial", "T4": "inactive", "T5": "inactive",
        "T6": "partial", "T7": "effective", "T8": "effective",
    }
    # With max_efficacy, T6 counts as effective.
    assert truth_classes(compounds(), THRESHOLD, "max_efficacy").set_index("treatment").loc["T6", "truth_class"] == "effective"
    with pytest.raises(ValueError, match="more than once"):
        truth_classes(pd.concat([compounds(), compounds().head(1)]), THRESHOLD, "max_efficacy")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['emax'\]"):
        truth_classes(compounds().drop(columns="emax"), THRESHOLD, "max_efficacy")


def test_truth_column_falls_back_to_max_efficacy():
    assert truth_efficacy_column(compounds()) == "best_nontoxic_efficacy"
    assert truth_efficacy_column(compounds().drop(columns="best_nontoxic_efficacy")) == "max_efficacy"
    with pytest.raises(ValueError, match="neither"):
        truth_efficacy_column(compounds().drop(columns=["best_nontoxic_efficacy", "max_efficacy"]))


def test_a_hit_on_a_partial_compound_counts_in_neither_precision_nor_recall():
    classes = truth_classes(compounds(), THRESHOLD, "best_nontoxic_efficacy")
    scores = call_scores(treatments(), classes, "hit")
    # Scored: T1, T2, T4, T5, T7 (T3, T6 partial; T8 not screened). Called: T1, T4, T7.
    assert scores["n_treatments"] == 5 and scores["n_predicted"] == 3 and scores["n_true"] == 3
    assert scores["n_true_positive"] == 2
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["n_partial"] == 2 and scores["n_partial_called"] == 2
    # Uncalling both partial hits changes neither score.
    uncalled = treatments().assign(hit=lambda t: t["hit"] & ~t["treatment"].isin(["T3", "T6"]))
    again = call_scores(uncalled, classes, "hit")
    assert (again["precision"], again["recall"]) == (scores["precision"], scores["recall"])
    assert again["n_partial_called"] == 0


def test_ec50_agreement_and_tested_ranges():
    ranges = dose_ranges(pd.DataFrame({"treatment": ["A", "A", "A", "B"], "treatment_conc": [0.0, 0.1, 3.0, 1.0]}))
    assert ranges.set_index("treatment").loc["A"].tolist() == [0.1, 3.0]
    # Inside: 1.0 (estimate 3.0: 0.48 decades, close), 0.2 (estimate 0.02: far), 2.0 (no estimate);
    # outside: 100.
    result = ec50_agreement([3.0, 0.02, np.nan, 100.0], [1.0, 0.2, 2.0, 100.0], [0.1] * 4, [10.0] * 4)
    assert result == {"ec50_within_half_log": pytest.approx(1 / 3), "n_ec50": 3}
    assert np.isnan(ec50_agreement([1.0], [np.nan], [0.1], [10.0])["ec50_within_half_log"])


def test_quantitative_scores_on_a_hand_computed_case():
    classes = truth_classes(compounds(), THRESHOLD, "best_nontoxic_efficacy")
    scores = quantitative_truth_scores(treatments(), doses(), classes)
    assert scores["hit_precision"] == pytest.approx(2 / 3) and scores["hit_recall"] == pytest.approx(2 / 3)
    assert scores["n_truly_effective"] == 3 and scores["n_truly_inactive"] == 2 and scores["n_partial"] == 2
    assert scores["hit_n_partial_called"] == 2
    # |error| over emax > 0 (T1 .05, T2 .3, T3 .05, T6 .1, T7 .03): median 0.05.
    assert scores["inhibition_median_abs_error"] == pytest.approx(0.05) and scores["n_with_effect"] == 5
    # True EC50 inside 0.03-10 µM: T1 (1.5 vs 1: close), T2 (0.5 vs 0.1: 0.7 decades), T3 (exact), T6 (no fit).
    assert scores["ec50_within_half_log"] == pytest.approx(0.5) and scores["n_ec50"] == 4
    # Of those, truly effective: T1 and T2 (T6 is partial at its best non-toxic dose).
    assert scores["ec50_within_half_log_effective"] == pytest.approx(0.5) and scores["n_ec50_effective"] == 2
    truth = [0.95, 0.9, 0.5, 0.0, 0.0, 0.2, 0.88]
    assert scores["inhibition_spearman_rho"] == pytest.approx(stats.spearmanr(treatments()["inhibition_max"], truth).statistic)
    assert scores["e_spearman_rho_true_efficacy"] == pytest.approx(stats.spearmanr(treatments()["e_t"], truth).statistic)
    # DEEMD's E with the same exclusion: called T1, T7 (T3 is partial): precision 1, recall 2/3.
    assert scores["e_precision_excl_partial"] == 1.0 and scores["e_recall_excl_partial"] == pytest.approx(2 / 3)
    assert scores["e_n_partial_called"] == 1
