"""Scoring the results against a reference: identification of the effective set E
(precision, recall), ranking (Spearman correlation of e(t) with a reference score), and
infection-map localisation (ROC AUC of map pixels against true infected-cell masks).

The reference is any table of treatment -> score: the demo's hidden truth
(``max_efficacy``), or published hit scores (the paper compares with Heiser et al.).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def reference_scores(table: pd.DataFrame, treatment_column: str, score_column: str) -> pd.DataFrame:
    """A reference table as (treatment, reference_score): rows without a score dropped;
    a missing column or a treatment listed twice is an error naming it."""
    missing = [column for column in (treatment_column, score_column) if column not in table.columns]
    if missing:
        raise ValueError(f"reference table lacks column(s) {missing}; it has {list(table.columns)}")
    reference = pd.DataFrame(
        {
            "treatment": table[treatment_column].astype("string").str.strip(),
            "reference_score": pd.to_numeric(table[score_column], errors="coerce").astype("float64"),
        }
    )
    reference = reference[reference["treatment"].notna() & (reference["treatment"] != "") & reference["reference_score"].notna()]
    duplicated = reference["treatment"][reference["treatment"].duplicated()]
    if len(duplicated):
        raise ValueError(f"reference table lists treatment(s) more than once: {sorted(set(duplicated))[:5]}")
    return reference.astype({"treatment": "object"}).reset_index(drop=True)


def with_reference(treatments: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """The treatments (treatment, e_t, effective, ...) that the reference scores, with
    their reference_score; treatments without a score on either side are left out."""
    merged = treatments.merge(reference, on="treatment", how="inner", validate="one_to_one")
    return merged[merged["e_t"].notna()].reset_index(drop=True)


def identification(predicted_effective, truly_effective, universe) -> dict:
    """Precision and recall of a predicted effective set against the true one, both
    restricted to ``universe`` (the treatments scored on both sides). Precision is NaN
    when nothing is predicted, recall NaN when nothing is truly effective."""
    universe = set(universe)
    predicted = set(predicted_effective) & universe
    truth = set(truly_effective) & universe
    hits = len(predicted & truth)
    return {
        "n_treatments": len(universe),
        "n_predicted": len(predicted),
        "n_true": len(truth),
        "n_true_positive": hits,
        "precision": hits / len(predicted) if predicted else float("nan"),
        "recall": hits / len(truth) if truth else float("nan"),
    }


def effective_set_scores(treatments: pd.DataFrame, reference: pd.DataFrame, threshold: float) -> dict:
    """Precision and recall of E = {t : effective} against {t : reference_score >= threshold},
    over the treatments both tables score."""
    merged = with_reference(treatments, reference)
    return identification(
        merged.loc[merged["effective"].astype(bool), "treatment"],
        merged.loc[merged["reference_score"] >= threshold, "treatment"],
        merged["treatment"],
    )


def spearman(x, y) -> dict:
    """Spearman rank correlation: rho, two-sided p-value and n; NaN (with a status) when
    fewer than 3 pairs or one side is constant, instead of scipy's warning."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    n = int(len(x))
    if n < 3:
        return {"rho": np.nan, "p_value": np.nan, "n": n, "status": f"too few treatments (n={n})"}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": np.nan, "p_value": np.nan, "n": n, "status": "constant scores"}
    from scipy.stats import spearmanr

    result = spearmanr(x, y)
    return {"rho": float(result.statistic), "p_value": float(result.pvalue), "n": n, "status": "ok"}


def reference_correlation(treatments: pd.DataFrame, reference: pd.DataFrame) -> dict:
    """Spearman correlation of e(t) with the reference score over the shared treatments."""
    merged = with_reference(treatments, reference)
    return spearman(merged["e_t"], merged["reference_score"])


def map_localisation_auc(maps: np.ndarray, masks: np.ndarray) -> float:
    """ROC AUC of infection-map pixel values against true infected-cell masks, pooled over
    all pixels of all given sites (maps and masks of one shape); NaN when the masks hold
    only one class."""
    from sklearn.metrics import roc_auc_score

    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    truth = masks.ravel()
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, maps.ravel()))


def map_localisation_auc_per_site(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The localisation ROC AUC of each site separately (NaN for a site with one class)."""
    maps = np.asarray(maps)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"expected maps and masks of one (n_sites, S, S) shape, got {maps.shape} and {masks.shape}")
    return np.array([map_localisation_auc(m, t) for m, t in zip(maps, masks)], dtype=np.float64)


def load_masks(mask_paths, site_ids) -> np.ndarray:
    """The true infected-cell masks (n, S, S) of ``site_ids``, in their order, from the
    demo's per-plate ``masks/{plate}.npz`` files (arrays site_id, infected); a site
    found in none of them is an error naming it."""
    site_ids = [str(s) for s in site_ids]
    wanted = set(site_ids)
    found = {}
    for path in mask_paths:
        with np.load(path) as data:
            ids = [str(s) for s in data["site_id"]]
            rows = [i for i, s in enumerate(ids) if s in wanted]
            if rows:
                infected = data["infected"][rows]
                found.update({ids[i]: infected[j] for j, i in enumerate(rows)})
    missing = [s for s in site_ids if s not in found]
    if missing:
        raise KeyError(f"no truth mask for {len(missing)} site(s), e.g. {missing[:3]}")
    if not site_ids:
        return np.zeros((0, 0, 0), dtype=bool)
    return np.stack([found[s] for s in site_ids]).astype(bool)


# --- the quantitative call (hit, inhibition) against a synthetic truth -------------------
# Truly effective: the best non-toxic tested dose removes at least `threshold` of the
# infection; truly inactive: no antiviral effect at all (emax == 0: kinds inactive and
# toxic). Everything between ("partial") counts in neither precision nor recall, so that
# a hit on a compound removing 60 % of the infection is neither right nor wrong.

EFFECTIVE, INACTIVE, PARTIAL = "effective", "inactive", "partial"


def truth_efficacy_column(compounds: pd.DataFrame) -> str:
    """The truth column of a compound's best achievable efficacy: best_nontoxic_efficacy
    where the truth has it, else max_efficacy (older truth files; the caller warns)."""
    for column in ("best_nontoxic_efficacy", "max_efficacy"):
        if column in compounds.columns:
            return column
    raise ValueError(f"truth table has neither best_nontoxic_efficacy nor max_efficacy; it has {list(compounds.columns)}")


def truth_classes(compounds: pd.DataFrame, threshold: float, efficacy_column: str) -> pd.DataFrame:
    """One row per compound of the truth table (treatment, emax, ec50_um, ``efficacy_column``):
    treatment, true_efficacy (float, 0-1), emax, true_ec50_um (NaN without an effect) and
    truth_class: "effective" (true_efficacy >= threshold), "inactive" (emax == 0) or
    "partial" (any other: some true effect below the threshold at the best non-toxic dose)."""
    missing = [c for c in ("treatment", "emax", "ec50_um", efficacy_column) if c not in compounds.columns]
    if missing:
        raise ValueError(f"truth table lacks column(s) {missing}; it has {list(compounds.columns)}")
    classes = pd.DataFrame({
        "treatment": compounds["treatment"].astype(str).str.strip(),
        "true_efficacy": pd.to_numeric(compounds[efficacy_column], errors="coerce").astype("float64"),
        "emax": pd.to_numeric(compounds["emax"], errors="coerce").fillna(0.0).astype("float64"),
        "true_ec50_um": pd.to_numeric(compounds["ec50_um"], errors="coerce").astype("float64"),
    })
    classes["truth_class"] = np.select(
        [classes["true_efficacy"] >= threshold, classes["emax"] == 0], [EFFECTIVE, INACTIVE], PARTIAL
    ).astype(object)
    duplicated = classes["treatment"][classes["treatment"].duplicated()]
    if len(duplicated):
        raise ValueError(f"truth table lists treatment(s) more than once: {sorted(set(duplicated))[:5]}")
    return classes


def call_scores(treatments: pd.DataFrame, classes: pd.DataFrame, call_column: str) -> dict:
    """Precision and recall of the boolean call ``call_column`` (hit, effective) of the
    treatments against the truth classes (:func:`truth_classes`), over the treatments that
    both tables hold and that are truly effective or truly inactive; calls on partial
    compounds are counted apart (n_partial, n_partial_called) and in neither score."""
    merged = treatments[["treatment", call_column]].merge(classes, on="treatment", how="inner", validate="one_to_one")
    called = merged[call_column].astype("boolean").fillna(False).to_numpy(dtype=bool)
    partial = (merged["truth_class"] == PARTIAL).to_numpy()
    scored = merged[~partial]
    result = identification(
        scored.loc[called[~partial], "treatment"],
        scored.loc[scored["truth_class"] == EFFECTIVE, "treatment"],
        scored["treatment"],
    )
    return {**result, "n_partial": int(partial.sum()), "n_partial_called": int((called & partial).sum())}


def dose_ranges(doses: pd.DataFrame) -> pd.DataFrame:
    """The tested concentration range of each treatment of a dose table (treatment,
    treatment_conc in µM): treatment, conc_min_um, conc_max_um (positive doses only)."""
    positive = doses[doses["treatment_conc"] > 0]
    return (positive.groupby("treatment")["treatment_conc"].agg(conc_min_um="min", conc_max_um="max").reset_index())


def ec50_agreement(estimated_um, true_um, conc_min_um, conc_max_um, tolerance_log10: float = 0.5) -> dict:
    """The share of compounds whose true EC50 lies inside their tested range (inclusive)
    whose estimated EC50 lies within ``tolerance_log10`` decades of it (a missing estimate
    counts as a miss), and n, the number of such compounds (share NaN when n is 0)."""
    estimated, truth = np.asarray(estimated_um, dtype=np.float64), np.asarray(true_um, dtype=np.float64)
    low, high = np.asarray(conc_min_um, dtype=np.float64), np.asarray(conc_max_um, dtype=np.float64)
    inside = np.isfinite(truth) & (truth > 0) & (truth >= low) & (truth <= high)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.abs(np.log10(estimated[inside]) - np.log10(truth[inside]))
    close = np.isfinite(error) & (error <= tolerance_log10)
    n = int(inside.sum())
    return {"ec50_within_half_log": float(close.mean()) if n else float("nan"), "n_ec50": n}


def inhibition_truth_scores(treatments: pd.DataFrame, doses: pd.DataFrame, classes: pd.DataFrame) -> dict:
    """The inhibition estimates of one model scored against the truth classes: Spearman
    rho of inhibition_max with true_efficacy (all shared compounds), the median
    |inhibition_max - true_efficacy| over compounds with any true effect (emax > 0; a
    compound without an estimate is left out and n says how many remain), and the EC50
    agreement (:func:`ec50_agreement`, ranges from ``doses``) over every such compound and,
    as ``ec50_within_half_log_effective`` and ``n_ec50_effective``, over the truly effective
    ones alone (a partial compound's curve rises by less than its wells' spread, so its EC50
    is the least determined)."""
    merged = treatments.merge(classes, on="treatment", how="inner", validate="one_to_one")
    merged = merged.merge(dose_ranges(doses), on="treatment", how="left", validate="one_to_one")
    correlation = spearman(merged["inhibition_max"], merged["true_efficacy"])
    with_effect = merged[(merged["emax"] > 0) & merged["inhibition_max"].notna()]
    error = (with_effect["inhibition_max"] - with_effect["true_efficacy"]).abs()
    effective = merged[merged["truth_class"] == EFFECTIVE]
    return {
        "inhibition_spearman_rho": correlation["rho"],
        "inhibition_spearman_p": correlation["p_value"],
        "inhibition_median_abs_error": float(error.median()) if len(error) else float("nan"),
        "n_with_effect": int(len(with_effect)),
        **ec50_agreement(merged["inhibition_ec50_um"], merged["true_ec50_um"], merged["conc_min_um"], merged["conc_max_um"]),
        **{f"{key}_effective": value for key, value in ec50_agreement(
            effective["inhibition_ec50_um"], effective["true_ec50_um"], effective["conc_min_um"], effective["conc_max_um"]).items()},
    }


def quantitative_truth_scores(treatments: pd.DataFrame, doses: pd.DataFrame, classes: pd.DataFrame) -> dict:
    """Every score of the quantitative comparison for one model: precision and recall of
    ``hit`` and of DEEMD's ``effective`` with partial compounds excluded (hit_*, e_*),
    Spearman rho of e(t) with true_efficacy, and :func:`inhibition_truth_scores`."""
    hit = call_scores(treatments, classes, "hit")
    deemd = call_scores(treatments, classes, "effective")
    merged = treatments.merge(classes, on="treatment", how="inner", validate="one_to_one")
    e_rho = spearman(merged["e_t"], merged["true_efficacy"])
    return {
        "hit_precision": hit["precision"],
        "hit_recall": hit["recall"],
        "hit_n_called": hit["n_predicted"],
        "hit_n_true_positive": hit["n_true_positive"],
        "n_truly_effective": hit["n_true"],
        "n_truly_inactive": hit["n_treatments"] - hit["n_true"],
        "n_partial": hit["n_partial"],
        "hit_n_partial_called": hit["n_partial_called"],
        **inhibition_truth_scores(treatments, doses, classes),
        "e_precision_excl_partial": deemd["precision"],
        "e_recall_excl_partial": deemd["recall"],
        "e_n_called_excl_partial": deemd["n_predicted"],
        "e_n_partial_called": deemd["n_partial_called"],
        "e_spearman_rho_true_efficacy": e_rho["rho"],
    }
