"""What the figures show: the top treatments, the sites whose infection maps are drawn,
the models' scores side by side, and the site images read from the plate stores."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deemd.metadata import INFECTED, MOCK
from deemd.store import open_plate_store, site_slices

MOCK_GROUP = "Mock"
ACTIVE_GROUP = "Active untreated"


def top_treatments(treatments: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` best-ranked treatments that have a score e(t), in rank order."""
    scored = treatments[treatments["e_t"].notna()].sort_values("rank", kind="mergesort")
    return scored.head(max(int(n), 0)).reset_index(drop=True)


def efficacy_wide(treatments_by_model: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per treatment, e_t / rank / effective per model (columns e_t_M, rank_M,
    effective_M, ...), ordered by the first model's rank."""
    if not treatments_by_model:
        raise ValueError("no model's treatment table given")
    wide = None
    for model, table in treatments_by_model.items():
        part = table[["treatment", "rank", "e_t", "effective"]].rename(
            columns={"rank": f"rank_{model}", "e_t": f"e_t_{model}", "effective": f"effective_{model}"}
        )
        wide = part if wide is None else wide.merge(part, on="treatment", how="outer", validate="one_to_one")
    first = next(iter(treatments_by_model))
    return wide.sort_values([f"rank_{first}", "treatment"], kind="mergesort", na_position="last").reset_index(drop=True)


def _nearest_to_median(group: pd.DataFrame, column: str, n: int) -> pd.DataFrame:
    """The ``n`` rows whose ``column`` lies closest to the group's median (ties: site_id)."""
    distance = (group[column] - group[column].median()).abs()
    return group.assign(_distance=distance).sort_values(["_distance", "site_id"], kind="mergesort").head(n).drop(columns="_distance")


def select_control_sites(test_sites: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` typical untreated test sites of each control group: Mock (label 0) and
    untreated Active SARS-CoV-2 (label 1), the sites whose score lies nearest the
    group's median score. ``test_sites`` needs site_id, label, score, disease_condition;
    a ``group`` column is added."""
    groups = [
        (MOCK_GROUP, (test_sites["disease_condition"] == MOCK) & (test_sites["label"] == 0)),
        (ACTIVE_GROUP, (test_sites["disease_condition"] == INFECTED) & (test_sites["label"] == 1)),
    ]
    chosen = [_nearest_to_median(test_sites[mask], "score", n).assign(group=name) for name, mask in groups if mask.any() and n > 0]
    if not chosen:
        return test_sites.head(0).assign(group=pd.Series(dtype="object"))
    return pd.concat(chosen, ignore_index=True)


def select_treated_sites(sites: pd.DataFrame, doses: pd.DataFrame, treatments: pd.DataFrame, n: int) -> pd.DataFrame:
    """One typical treated site for each of the ``n`` best-ranked treatments: at the
    treatment's most effective dose (highest e(t,c), then the lowest concentration), the
    site whose z lies nearest the dose's median z. ``sites`` is the inference table
    (site_id, treatment, treatment_conc, z, ...); a ``group`` label is added."""
    rows = []
    for top in top_treatments(treatments, n).itertuples():
        dose_rows = doses[(doses["treatment"] == top.treatment) & doses["e_dose"].notna()]
        if dose_rows.empty:
            continue
        best = dose_rows.sort_values(["e_dose", "treatment_conc"], ascending=[False, True], kind="mergesort").iloc[0]
        at_dose = sites[(sites["treatment"] == top.treatment) & np.isclose(sites["treatment_conc"], best["treatment_conc"])]
        if at_dose.empty:
            continue
        site = _nearest_to_median(at_dose, "z", 1)
        label = f"#{top.rank} {top.treatment} {best['treatment_conc']:g} µM"
        rows.append(site.assign(group=label, e_dose=float(best["e_dose"])))
    if not rows:
        return sites.head(0).assign(group=pd.Series(dtype="object"), e_dose=pd.Series(dtype="float64"))
    return pd.concat(rows, ignore_index=True)


def read_site_images(sites: pd.DataFrame, store_paths: dict[str, str]) -> np.ndarray:
    """The 5-channel uint8 pixels (n, C, S, S) of each site (plate_id, well_index, site)
    of ``sites``, in its row order, read from the per-plate stores."""
    images = []
    stores = {}
    for row in sites.itertuples():
        if row.plate_id not in stores:
            stores[row.plate_id] = open_plate_store(store_paths[row.plate_id])
        store = stores[row.plate_id]
        ys, xs = site_slices(store.site_layout, store.site_size)[int(row.site)]
        images.append(np.asarray(store.images[int(row.well_index), :, ys, xs]))
    if not images:
        return np.zeros((0, 0, 0, 0), dtype=np.uint8)
    return np.stack(images)
