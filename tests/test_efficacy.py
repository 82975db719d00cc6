"""Efficacy: the sign-test intervals equal rstatix's, and the dose / treatment rules."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deemd.efficacy import (
    import_robjects,
    dose_efficacy,
    efficacy_tables,
    rank_treatments,
    sign_test_intervals,
    treatment_efficacy,
    treatment_score,
)

REPO = Path(__file__).resolve().parents[1]


# --- a reference without R --------------------------------------------------------------


def order_statistic_index(n, conf_level=0.95):
    """qbinom((1 - conf) / 2, n, 1/2): the smallest k with P(B <= k) >= (1 - conf) / 2."""
    p = (1 - conf_level) / 2
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) / 2**n
        if cdf >= p:
            return k
    return n


def reference_interval(z, conf_level=0.95):
    """(x(k), x(n-k+1), achieved level), 1-based order statistics; NaN where k = 0."""
    x = np.sort(np.asarray(z, dtype=float))
    n = len(x)
    k = order_statistic_index(n, conf_level)
    if k == 0:
        return math.nan, math.nan, math.nan
    achieved = 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n
    return x[k - 1], x[n - k], achieved


def reference_intervals(group, z, conf_level):
    """Same contract as sign_test_intervals, in numpy: lets the rule tests run without R."""
    rows = []
    for g in np.unique(group):
        values = z[group == g]
        lower, upper, achieved = reference_interval(values, conf_level)
        rows.append(
            {
                "group": g,
                "n": len(values),
                "median": float(np.median(values)),
                "ci_lower": lower,
                "ci_upper": upper,
                "k": order_statistic_index(len(values), conf_level),
                "conf_level": achieved,
            }
        )
    return pd.DataFrame(rows)


# --- R directly, as the test's own oracle -------------------------------------------------


@pytest.fixture(scope="module")
def r():
    ro = import_robjects()

    assert ro.r("isTRUE(suppressPackageStartupMessages(requireNamespace('rstatix', quietly = TRUE)))")[0]
    return ro


def rstatix_interval(ro, z, conf_level=0.95):
    """conf.low / conf.high of rstatix::sign_test(data, z ~ 1, detailed = TRUE) on one sample,
    and the achieved level its htest attaches (rounded to 3 digits by rstatix)."""
    ro.globalenv["x"] = ro.FloatVector(list(map(float, z)))
    ro.globalenv["level"] = conf_level
    res = ro.r("as.data.frame(rstatix::sign_test(data.frame(z = x), z ~ 1, conf.level = level, detailed = TRUE))")
    names = list(res.names)
    # n = 1 makes rstatix name the columns conf.low.NA / conf.high.NA (both NA).
    low = res.rx2("conf.low")[0] if "conf.low" in names else math.nan
    high = res.rx2("conf.high")[0] if "conf.high" in names else math.nan
    level = ro.r("attr(rstatix:::sign.test(x, conf.level = level)$conf.int, 'conf.level')")[0]
    return float(low), float(high), float(level)


SIZES = [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 13, 16, 17, 20, 25, 29, 33, 40, 41, 64]


def samples(seed=0):
    """Per size: a continuous sample, and one with many ties (z rounded to 0.1)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in SIZES:
        z = rng.beta(2, 3, size=n)
        out.append(z)
        out.append(np.round(rng.beta(2, 3, size=n), 1))
    return out


def test_intervals_equal_rstatix_sign_test(r):
    data = samples()
    group = np.concatenate([np.full(len(z), i) for i, z in enumerate(data)])
    ours = sign_test_intervals(group, np.concatenate(data), 0.95)
    assert ours["group"].tolist() == list(range(len(data)))
    for row, z in zip(ours.itertuples(), data):
        low, high, level = rstatix_interval(r, z)
        assert row.n == len(z)
        assert row.median == np.median(z)
        np.testing.assert_array_equal([row.ci_lower, row.ci_upper], [low, high])  # exact, NaN == NaN
        if len(z) >= 6:
            assert round(row.conf_level, 3) == level
            assert row.conf_level >= 0.95
        else:
            assert math.isnan(row.conf_level) and row.k == 0


def test_intervals_equal_the_order_statistic_formula(r):
    data = samples(seed=1)
    group = np.concatenate([np.full(len(z), i) for i, z in enumerate(data)])
    ours = sign_test_intervals(group, np.concatenate(data), 0.95)
    for row, z in zip(ours.itertuples(), data):
        lower, upper, achieved = reference_interval(z)
        np.testing.assert_array_equal([row.ci_lower, row.ci_upper], [lower, upper])
        np.testing.assert_allclose(row.conf_level, achieved, rtol=1e-12, equal_nan=True)
        if len(z) >= 6:
            # the bounds are sample values, no interpolation
            assert row.ci_lower in z and row.ci_upper in z


def test_known_order_statistics_and_other_confidence():
    # n = 6: k = 1 (1/64 < 0.025 <= 7/64), interval (min, max), level 1 - 2/64.
    # n = 10: k = 2, (x(2), x(9)); n = 40 at 90 %: k = qbinom(0.05, 40, 1/2) = 15.
    assert [order_statistic_index(n) for n in (5, 6, 10, 40)] == [0, 1, 2, 14]
    assert order_statistic_index(40, 0.90) == 15 and order_statistic_index(40, 0.99) == 12
    z10 = np.arange(10) / 10
    group = np.repeat([0, 1, 2], [6, 10, 40])
    z = np.concatenate([np.linspace(0.2, 0.7, 6), z10, np.linspace(0, 1, 40)])
    table = sign_test_intervals(group, z, 0.95)
    assert table.loc[0, ["ci_lower", "ci_upper"]].tolist() == [0.2, 0.7]
    assert table.loc[0, "conf_level"] == 1 - 2 / 64
    assert table.loc[1, ["ci_lower", "ci_upper"]].tolist() == [z10[1], z10[8]]
    at90 = sign_test_intervals(group, z, 0.90)
    x40 = np.linspace(0, 1, 40)
    assert at90.loc[2, ["ci_lower", "ci_upper"]].tolist() == [x40[14], x40[25]]


def test_intervals_reject_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        sign_test_intervals(np.zeros(2, int), np.array([0.1, np.nan]), 0.95)
    assert sign_test_intervals(np.zeros(0, int), np.zeros(0), 0.95).empty


# --- the dose and treatment rules -------------------------------------------------------


def site_table(groups):
    """groups: {(treatment, conc): z values}; two wells per dose, alternating."""
    rows = []
    for (treatment, conc), values in groups.items():
        for i, z in enumerate(values):
            rows.append(
                {
                    "site_id": f"{treatment}_{conc}_{i}",
                    "well_id": f"{treatment}_{conc}_w{i % 2}",
                    "plate_id": "E_1",
                    "well": "B02",
                    "treatment": treatment,
                    "treatment_conc": conc,
                    "model": "M",
                    "z": z,
                    "score": z,
                }
            )
    return pd.DataFrame(rows)


def test_treatment_score_rule():
    assert treatment_score([0.9, 0.6, 0.2, 0.1], 0.5) == 0.75  # median of the effective doses
    assert treatment_score([0.1, 0.2, 0.4], 0.5) == 0.2  # none effective: median of all
    assert treatment_score([0.5, 0.1], 0.5) == 0.5  # the boundary counts as effective
    assert treatment_score([np.nan, 0.3, 0.1], 0.5) == 0.2  # doses without interval ignored
    assert math.isnan(treatment_score([np.nan, np.nan], 0.5))
    assert math.isnan(treatment_score([], 0.5))


def test_dose_table_keeps_too_small_groups():
    sites = site_table(
        {
            ("A", 1.0): np.linspace(0.0, 0.3, 8),  # k = 1: upper bound = max = 0.3
            ("A", 0.1): [0.2, 0.4, 0.5],  # n = 3: no interval
            ("B", 1.0): np.linspace(0.5, 0.9, 6),
        }
    )
    doses = dose_efficacy(sites, zeta=0.5, intervals=reference_intervals)
    assert list(doses.columns) == [
        "treatment", "treatment_conc", "n_sites", "n_wells", "median_z", "ci_lower",
        "ci_upper", "conf_level", "e_dose", "effective_dose", "status",
    ]
    assert doses[["treatment", "treatment_conc"]].values.tolist() == [["A", 0.1], ["A", 1.0], ["B", 1.0]]
    small = doses.iloc[0]
    assert small["status"] == "too few sites (n=3)" and small["n_sites"] == 3 and small["n_wells"] == 2
    assert np.isnan([small["ci_lower"], small["ci_upper"], small["e_dose"], small["conf_level"]]).all()
    assert small["median_z"] == 0.4 and not small["effective_dose"]
    assert doses.iloc[1]["e_dose"] == pytest.approx(0.7) and doses.iloc[1]["effective_dose"]
    assert doses.iloc[2]["e_dose"] == pytest.approx(0.1) and not doses.iloc[2]["effective_dose"]
    assert doses["status"].tolist()[1:] == ["ok", "ok"]


def doses_table(rows):
    """rows: (treatment, conc, e_dose or None for a too-small group)."""
    return pd.DataFrame(
        {
            "treatment": [r[0] for r in rows],
            "treatment_conc": [r[1] for r in rows],
            "n_sites": [4 if r[2] is None else 9 for r in rows],
            "e_dose": [np.nan if r[2] is None else r[2] for r in rows],
        }
    )


def test_treatments_effective_set_and_ranking():
    doses = doses_table(
        [
            ("lo", 1, 0.1), ("lo", 2, 0.3), ("lo", 3, 0.2),  # none effective: e = 0.2
            ("one", 1, 0.8), ("one", 2, 0.1),  # one effective dose: e = 0.8
            ("two", 1, 0.7), ("two", 2, 0.9), ("two", 3, 0.0),  # two: e = 0.8, ranks above "one"
            ("tiny", 1, None), ("tiny", 2, None),  # no usable dose: kept, e NA, last
            ("mixed", 1, None), ("mixed", 2, 0.6),  # the small dose is ignored: e = 0.6
            ("aa", 1, 0.8), ("aa", 2, 0.1),  # full tie with "one": name decides
        ]
    )
    treatments = treatment_efficacy(doses, zeta=0.5)
    assert treatments["treatment"].tolist() == ["two", "aa", "one", "mixed", "lo", "tiny"]
    assert treatments["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    by = treatments.set_index("treatment")
    assert by.loc["two", "e_t"] == pytest.approx(0.8) and by.loc["two", "n_effective_doses"] == 2
    assert by.loc["lo", "e_t"] == pytest.approx(0.2) and not by.loc["lo", "effective"]
    assert by.loc["mixed", "n_doses"] == 2 and by.loc["mixed", "n_doses_with_interval"] == 1
    assert by.loc["mixed", "max_e_dose"] == 0.6
    assert sorted(treatments.loc[treatments["effective"], "treatment"]) == ["aa", "mixed", "one", "two"]
    tiny = by.loc["tiny"]
    assert np.isnan(tiny["e_t"]) and np.isnan(tiny["max_e_dose"]) and not tiny["effective"]
    assert tiny["n_doses_with_interval"] == 0 and tiny["status"].startswith("no dose with an interval")
    assert (by.drop(index="tiny")["status"] == "ok").all()


def test_ranking_puts_missing_scores_last_and_is_order_independent():
    table = pd.DataFrame(
        {
            "treatment": ["c", "b", "a", "d"],
            "e_t": [0.6, np.nan, 0.6, 0.9],
            "n_effective_doses": [1, 0, 3, 1],
        }
    )
    ranked = rank_treatments(table)
    assert ranked["treatment"].tolist() == ["d", "a", "c", "b"]
    shuffled = rank_treatments(table.iloc[::-1])
    pd.testing.assert_frame_equal(ranked, shuffled)


def test_empty_and_invalid_site_tables():
    doses, treatments = efficacy_tables(site_table({}).reindex(columns=["well_id", "treatment", "treatment_conc", "z"]), 0.5)
    assert doses.empty and treatments.empty and "e_dose" in doses.columns and "rank" in treatments.columns
    bad = site_table({("A", 1.0): [0.2, np.nan]})
    with pytest.raises(ValueError, match="outside"):
        dose_efficacy(bad, 0.5, intervals=reference_intervals)
    with pytest.raises(ValueError, match="lacks"):
        dose_efficacy(bad.drop(columns="z"), 0.5, intervals=reference_intervals)


# --- the glue, end to end (R included) --------------------------------------------------


def test_glue_main_end_to_end(tmp_path):
    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    from efficacy import main

    rng = np.random.default_rng(3)
    sites = site_table(
        {
            ("Good", 1.0): rng.uniform(0.0, 0.2, 12),
            ("Good", 10.0): rng.uniform(0.0, 0.1, 12),
            ("Bad", 1.0): rng.uniform(0.6, 1.0, 12),
            ("Bad", 10.0): rng.uniform(0.7, 1.0, 3),
            ("Few", 1.0): rng.uniform(0.0, 0.1, 4),
        }
    )
    sites["well"] = sites["well_id"]
    sites["role"] = "treated"
    controls = []
    for role, level in (("infected_control", 0.9), ("noninfected_control", 0.05)):
        for w in range(3):
            for site in range(4):
                controls.append({"site_id": f"{role}{w}{site}", "well_id": f"{role}{w}", "well": f"{role}{w}", "plate_id": "E_1",
                                 "role": role, "treatment": None, "treatment_conc": np.nan, "model": "M",
                                 "z": level + 0.01 * site, "score": level})
    sites = pd.concat([sites, pd.DataFrame(controls)], ignore_index=True)
    sites["a"] = sites["z"]
    nuclei = sites.drop_duplicates("well_id").assign(toxic=False, no_nuclei=False, nuclei_per_site=40.0, infected_control_median=40.0)
    nuclei = nuclei[["plate_id", "well", "treatment", "treatment_conc", "toxic", "no_nuclei", "nuclei_per_site", "infected_control_median"]]
    nuclei_path = tmp_path / "nuclei.parquet"
    nuclei.to_parquet(nuclei_path)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(sites)), 2)):
        path = tmp_path / f"E_{i + 1}.parquet"
        sites.iloc[part].to_parquet(path)
        paths.append(str(path))
    output = {name: str(tmp_path / "out" / f"{name}.parquet") for name in ("doses", "treatments", "wells", "plate_qc")}
    efficacy = {"zeta": 0.5, "confidence": 0.95, "inhibition_bar": 0.5, "fdr": 0.05, "min_viability": 0.8,
                "curve_bottom": "free"}
    qc = {"min_zprime": 0.0, "min_control_wells": 3}
    main(paths, str(nuclei_path), output, str(tmp_path / "log.txt"), efficacy, qc, "a", "M")
    doses = pd.read_parquet(output["doses"])
    treatments = pd.read_parquet(output["treatments"]).sort_values("deemd_rank")
    assert set(pd.read_parquet(output["plate_qc"])["readout"]) == {"a", "z"}
    assert len(pd.read_parquet(output["wells"])) == sites["well_id"].nunique()
    assert len(doses) == 5 and doses["n_sites"].sum() == (sites["role"] == "treated").sum()
    assert doses["status"].tolist().count("ok") == 3
    expected = sign_test_intervals(np.zeros(12, int), sites.loc[sites["treatment_conc"].eq(10.0) & sites["treatment"].eq("Good"), "z"].to_numpy(), 0.95)
    good10 = doses[(doses["treatment"] == "Good") & (doses["treatment_conc"] == 10.0)].iloc[0]
    assert good10["e_dose"] == 1 - expected.loc[0, "ci_upper"]
    assert treatments["treatment"].tolist() == ["Good", "Bad", "Few"]
    assert treatments["effective"].tolist() == [True, False, False]
    assert np.isnan(treatments["e_t"].iloc[2]) and treatments["status"].iloc[2] != "ok"
    assert "too few sites (n=4)" in (tmp_path / "log.txt").read_text()
    with pytest.raises(ValueError, match="model"):
        main(paths, str(nuclei_path), output, str(tmp_path / "log.txt"), efficacy, qc, "z", "W")
    # A shard without the chosen readout (written before W kept its logit) is named.
    with pytest.raises(ValueError, match=r"E_1\.parquet.*readout 'logit'.*rerun"):
        main(paths, str(nuclei_path), output, str(tmp_path / "log.txt"), efficacy, qc, "logit", "M")
    # A bad z on a control site (plate QC reads them) is an error naming it, as on a treated one.
    bad = sites.copy()
    bad.loc[bad["site_id"] == "infected_control00", "z"] = -0.1
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"1 sites have z outside \[0, 1\].*infected_control00"):
        main([str(tmp_path / "bad.parquet")], str(nuclei_path), output, str(tmp_path / "log.txt"), efficacy, qc, "a", "M")
