"""Scoring the results against a reference: identification of the effective set E
(precision, recall), ranking (Spearman correlation of e(t) with a reference score), and
infection-map localisation (ROC AUC of map pixels against true infected-cell masks).

The reference is any table of treatment -> score: the demo's hidden truth
(``max_efficacy``), or published hit scores (the paper compares with Heiser et al.).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


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
    result = stats.spearmanr(x, y)
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
