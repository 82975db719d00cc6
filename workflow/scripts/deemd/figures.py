"""What the figures show: the top treatments, the sites whose infection maps are drawn,
the models' scores side by side, and the site images read from the plate stores."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deemd.metadata import INFECTED, MOCK
from deemd.store import open_plate_store

MOCK_GROUP = "Mock"
ACTIVE_GROUP = "Active untreated"


def top_treatments(treatments: pd.DataFrame, n: int, score: str = "e_t", rank: str = "rank") -> pd.DataFrame:
    """The ``n`` best-ranked treatments (by the column ``rank``) that have a ``score``
    (e(t) by default, e.g. inhibition_max), in rank order."""
    scored = treatments[treatments[score].notna()].sort_values(rank, kind="mergesort")
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


def store_channel_names(store_paths: dict[str, str]) -> list[str]:
    """The channel names of the first of the plates' stores (every store of a run is
    stitched with the same channels); none without stores."""
    return open_plate_store(next(iter(store_paths.values()))).channel_names if store_paths else []


def read_site_images(sites: pd.DataFrame, store_paths: dict[str, str]) -> np.ndarray:
    """The 5-channel uint8 pixels (n, C, S, S) of each site (plate_id, well_index, site)
    of ``sites``, in its row order, read from the per-plate stores."""
    images = []
    stores = {}
    for row in sites.itertuples():
        if row.plate_id not in stores:
            stores[row.plate_id] = open_plate_store(store_paths[row.plate_id])
        store = stores[row.plate_id]
        images.append(np.asarray(store.read_site(row.well_index, row.site)))
    if not images:
        return np.zeros((0, 0, 0, 0), dtype=np.uint8)
    return np.stack(images)


# --- quantitative efficacy: the ranking table, the two calls, plate layouts -------------

# The ranking table's leading columns: both calls, the inhibition estimates, then DEEMD's.
RANKING_COLUMNS = [
    "rank", "treatment", "hit", "effective", "inhibition_max", "inhibition_max_se", "inhibition_best_conc_um",
    "inhibition_ec50_um", "inhibition_ec50_qualifier", "inhibition_emax", "inhibition_emax_se", "inhibition_bottom", "inhibition_hill",
    "hit_p_value", "hit_q_value", "n_toxic_doses", "n_wells_tested", "n_wells_failing_qc", "inhibition_noise_trend", "inhibition_status",
    "viability_cc50_um", "selectivity_index", "viability_status",
    "deemd_rank", "e_t", "n_doses", "n_doses_with_interval", "n_effective_doses", "max_e_dose", "status",
]


def ranking_table(treatments: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """The treatments (efficacy/{model}/treatments.parquet) with the logistic fits of
    e(t,c) (deemd.doseresponse.fit_dose_table; ``status`` becomes ``fit_status``), ordered
    by ``rank`` (hit first, then inhibition_max). Columns: RANKING_COLUMNS that are
    present, then any other treatment column, then the fit's; a missing ``rank`` column is
    an error naming the columns there are."""
    if "rank" not in treatments.columns or "treatment" not in treatments.columns:
        raise ValueError(f"treatment table lacks rank or treatment; it has {list(treatments.columns)}")
    ranked = treatments.merge(
        fits.drop(columns="n_points", errors="ignore").rename(columns={"status": "fit_status"}),
        on="treatment", how="left", validate="one_to_one",
    ).sort_values(["rank", "treatment"], kind="mergesort")
    first = [c for c in RANKING_COLUMNS if c in ranked.columns]
    others = [c for c in treatments.columns if c not in first]
    rest = [c for c in ranked.columns if c not in first and c not in others]
    return ranked[first + others + rest].reset_index(drop=True)


CALL_CATEGORIES = ["hit and effective", "hit only", "effective only", "neither"]


def call_categories(effective, hit) -> np.ndarray:
    """Which of the four combinations of DEEMD's call (``effective``, E) and the
    inhibition call (``hit``) each treatment has: an object array of CALL_CATEGORIES
    labels; missing calls count as False."""
    e = pd.Series(effective, dtype="boolean").fillna(False).to_numpy(dtype=bool)
    h = pd.Series(hit, dtype="boolean").fillna(False).to_numpy(dtype=bool)
    if e.shape != h.shape:
        raise ValueError(f"{len(e)} effective calls for {len(h)} hit calls")
    return np.select([h & e, h & ~e, ~h & e], CALL_CATEGORIES[:3], CALL_CATEGORIES[3]).astype(object)


# Standard plate formats (rows, columns); a plate is drawn in the smallest that holds its wells.
PLATE_FORMATS = [(8, 12), (16, 24), (32, 48)]


def well_position(wells) -> tuple[np.ndarray, np.ndarray]:
    """Zero-based (row, column) int arrays of well names like "B03" or "AF48": row letters
    A..Z, then AA..AF (1536-well plates), and a column number; a name of another form is
    an error naming it."""
    given = pd.Series(wells, dtype="object").astype(str)
    names = given.str.strip().str.upper()
    parts = names.str.extract(r"^([A-Z]{1,2})(\d{1,3})$")
    bad = given[parts[0].isna()]
    if len(bad):
        raise ValueError(f"well name(s) {bad.head(3).tolist()} are not a row letter and a column number (e.g. B03)")
    letters = parts[0].to_numpy(dtype=str)
    rows = np.array([(26 * (ord(s[0]) - 64) + ord(s[1]) - 65) if len(s) == 2 else ord(s) - 65 for s in letters], dtype=np.int64)
    columns = parts[1].astype(np.int64).to_numpy() - 1
    if (columns < 0).any():
        raise ValueError(f"well name(s) {given[columns < 0].head(3).tolist()} have column 0")
    return rows, columns


def plate_shape(rows, columns) -> tuple[int, int]:
    """(n_rows, n_columns) of the smallest standard plate (96, 384, 1536 wells) holding
    wells at the zero-based positions ``rows``, ``columns``; beyond 1536, the wells' extent."""
    n_rows = int(np.max(rows)) + 1 if len(rows) else 1
    n_columns = int(np.max(columns)) + 1 if len(columns) else 1
    for shape in PLATE_FORMATS:
        if n_rows <= shape[0] and n_columns <= shape[1]:
            return shape
    return n_rows, n_columns


def plate_grid(rows, columns, values, shape: tuple[int, int]) -> np.ndarray:
    """A float (n_rows, n_columns) array with ``values`` at the wells' positions and NaN
    at wells not given (drawn blank); a well given twice is an error."""
    grid = np.full(shape, np.nan)
    rows, columns = np.asarray(rows), np.asarray(columns)
    flat = rows * shape[1] + columns
    if len(np.unique(flat)) != len(flat):
        raise ValueError("a well is given twice for one plate")
    grid[rows, columns] = np.asarray(values, dtype=np.float64)
    return grid


def row_label(index: int) -> str:
    """The row letters of a zero-based row index (0 -> A, 26 -> AA)."""
    return chr(65 + index) if index < 26 else chr(64 + index // 26) + chr(65 + index % 26)
