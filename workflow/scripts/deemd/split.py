"""The split: which wells train, validate and test the models (the training set's
per-channel statistics are in deemd.channel_stats).

Untreated wells only are split (Mock and UV-inactivated: label 0, non-infected; Active
SARS-CoV-2 without treatment: label 1, infected), whole wells at a time so that no well
contributes sites to two sets, stratified by plate and class, class-balanced per plate,
seeded. Treated infected wells form the ``treated`` set (no label). Every well or site
left out is listed with its reason; nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from deemd.metadata import INFECTED, MOCK, UV, well_table

SETS = ("train", "val", "test")
ALL_SETS = SETS + ("treated",)
UNUSED = "unused"
EXCLUDED_COLUMNS = ["level", "well_id", "site_id", "plate_id", "reason", "detail"]
SITE_COLUMNS = [
    "site_id", "well_id", "plate_id", "well", "site", "well_index", "set", "label",
    "disease_condition", "treatment", "treatment_conc",
]

log = logging.getLogger(__name__)


def well_labels(wells: pd.DataFrame) -> pd.Series:
    """The class of each untreated well (Int64): 0 for Mock and UV-inactivated virus,
    1 for active virus; NA for treated wells (they have no ground truth)."""
    untreated = wells["treatment"].isna()
    label = pd.Series(pd.NA, index=wells.index, dtype="Int64")
    label[untreated & wells["disease_condition"].isin([MOCK, UV])] = 0
    label[untreated & (wells["disease_condition"] == INFECTED)] = 1
    return label


def well_indices(sites: pd.DataFrame) -> pd.Series:
    """well_id -> the well's row in its plate store: its position among the plate's wells
    sorted by name, which is the order ``well_table`` gives and the stitch step writes.

    Must be computed from the full sites table (every well the store holds), not from
    a filtered one."""
    wells = well_table(sites)
    index = wells.groupby("plate_id", sort=False).cumcount()
    return pd.Series(index.to_numpy(dtype=np.int64), index=wells["well_id"].to_numpy(), name="well_index")


def dropped_sites(qc_tables: Iterable[pd.DataFrame], sites: pd.DataFrame) -> pd.DataFrame:
    """The sites dropped at stitching (stitch QC tables) as site-level exclusions
    (reason ``dropped_site``, the stitch step's reason as detail)."""
    tables = [table for table in qc_tables if len(table)]
    if not tables:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in EXCLUDED_COLUMNS})
    qc = pd.concat(tables, ignore_index=True)
    unknown = sorted(set(qc["site_id"]) - set(sites["site_id"]))
    if unknown:
        raise ValueError(f"stitch QC lists site(s) not in the sites table: {unknown[:5]}")
    well_of = sites.set_index("site_id")["well_id"]
    return pd.DataFrame(
        {
            "level": "site",
            "well_id": well_of.loc[qc["site_id"]].to_numpy(),
            "site_id": qc["site_id"].to_numpy(),
            "plate_id": qc["plate_id"].to_numpy(),
            "reason": "dropped_site",
            "detail": qc["reason"].astype(str).to_numpy(),
        },
        columns=EXCLUDED_COLUMNS,
    )


def usable_site_counts(sites: pd.DataFrame, dropped: pd.DataFrame) -> pd.Series:
    """well_id -> number of its sites not dropped at stitching (0 for wells all dropped)."""
    kept = sites[~sites["site_id"].isin(dropped["site_id"])]
    counts = kept.groupby("well_id").size()
    return counts.reindex(sites["well_id"].unique(), fill_value=0).astype(np.int64)


def _well_exclusions(wells: pd.DataFrame, mask: pd.Series, reason: str, detail: str) -> pd.DataFrame:
    rows = wells[mask]
    return pd.DataFrame(
        {
            "level": "well",
            "well_id": rows["well_id"].to_numpy(),
            "site_id": pd.Series([None] * len(rows), dtype=object).to_numpy(),
            "plate_id": rows["plate_id"].to_numpy(),
            "reason": reason,
            "detail": detail,
        },
        columns=EXCLUDED_COLUMNS,
    )


def screen_wells(wells: pd.DataFrame, usable_sites: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop the wells no set may use, each with its reason, first reason first:
    ``no_nuclei`` (no nucleus detected), ``no_sites`` (every site dropped at stitching),
    ``toxic`` (treated well flagged toxic), ``treated_non_infected`` (a treatment on Mock or
    UV-inactivated cells: neither untreated ground truth nor an efficacy sample).

    Returns (kept wells with ``label`` and ``n_sites_used`` added, well-level exclusions).
    """
    unknown = sorted(set(wells["well_id"]) - set(usable_sites.index))
    if unknown:
        raise ValueError(f"well(s) of the wells table not in the sites table: {unknown[:5]}")
    wells = wells.copy()
    wells["label"] = well_labels(wells)
    wells["n_sites_used"] = wells["well_id"].map(usable_sites).astype(np.int64)
    treated = wells["treatment"].notna()
    rules = [
        ("no_nuclei", wells["no_nuclei"].astype(bool), "no nucleus detected"),
        ("no_sites", wells["n_sites_used"] == 0, "every site dropped at stitching"),
        ("toxic", treated & wells["toxic"].astype(bool), "treated well flagged toxic"),
        ("treated_non_infected", treated & (wells["disease_condition"] != INFECTED), "treatment on non-infected cells"),
    ]
    remaining = pd.Series(True, index=wells.index)
    excluded = []
    for reason, mask, detail in rules:
        hit = remaining & mask
        excluded.append(_well_exclusions(wells, hit, reason, detail))
        remaining &= ~hit
    return wells[remaining], pd.concat(excluded, ignore_index=True)


def balance_classes(untreated: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per plate, keep as many wells of the larger class as the smaller class has,
    chosen at random; the surplus is excluded (reason ``class_balance``).

    ``untreated`` holds labelled wells only. Returns (kept wells, exclusions)."""
    keep = []
    for _, plate in untreated.sort_values(["plate_id", "well_id"]).groupby("plate_id", sort=True):
        counts = plate["label"].value_counts()
        n = int(min(counts.get(0, 0), counts.get(1, 0)))
        for label in (0, 1):
            members = plate.index[plate["label"] == label]
            keep.extend(members[np.sort(rng.permutation(len(members))[:n])])
    mask = untreated.index.isin(keep)
    surplus = _well_exclusions(untreated, ~mask, "class_balance", "surplus of the larger class on its plate")
    return untreated[mask], surplus


def largest_remainder(n: int, shares: Sequence[float], priority: Sequence[float] | None = None) -> np.ndarray:
    """Split ``n`` items into whole counts as close as possible to ``n * shares``
    (shares >= 0, summing to 1): floors first, then one more each to the largest
    remainders. Equal remainders go to the higher ``priority`` (default: the earlier
    share); a random priority keeps one set from winning the odd well of every group."""
    shares = np.asarray(shares, dtype=float)
    if (shares < 0).any() or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"shares must be >= 0 and sum to 1, got {shares.tolist()}")
    priority = -np.arange(len(shares), dtype=float) if priority is None else np.asarray(priority, dtype=float)
    quotas = n * shares
    counts = np.floor(quotas + 1e-9).astype(np.int64)
    remainders = np.round(quotas - counts, 9)
    left = n - int(counts.sum())
    order = np.lexsort((-priority, -remainders))
    counts[order[:left]] += 1
    return counts


def set_shares(sizes: Mapping[str, float], available_sites: int) -> tuple[dict[str, float], str]:
    """The share of the balanced untreated wells that each set gets, and the mode.

    All sizes < 1: fractions (their sum at most 1; the rest is left unused). All >= 1:
    numbers of sites, turned into shares of ``available_sites``; asking for more sites
    than exist scales every set down in proportion (logged as a warning)."""
    values = {name: float(sizes[name]) for name in SETS}
    if all(0 < value < 1 for value in values.values()):
        total = sum(values.values())
        if total > 1 + 1e-9:
            raise ValueError(f"split.sizes: fractions {values} sum to {total:g} > 1")
        return values, "fractions"
    if all(value >= 1 for value in values.values()):
        total = sum(values.values())
        if available_sites <= 0:
            raise ValueError("split: no untreated site is available to split")
        if total > available_sites:
            log.warning(
                "split.sizes asks for %d sites but only %d untreated class-balanced sites exist; "
                "every set is scaled down to %.1f %% of its size", total, available_sites, 100 * available_sites / total,
            )
        denominator = max(total, available_sites)
        return {name: value / denominator for name, value in values.items()}, "sites"
    raise ValueError(f"split.sizes {values}: all three must be fractions (< 1) or all numbers of sites (>= 1)")


def assign_sets(
    wells: pd.DataFrame, sizes: Mapping[str, float], seed: int, balance: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Assign whole wells to sets.

    ``wells`` are screened wells (``screen_wells``) with ``label`` and ``n_sites_used``.
    Labelled (untreated) wells go to train/val/test: class-balanced per plate when
    ``balance``, then split per plate x class by largest remainder in a seeded random
    order. Treated wells go to ``treated``. Returns (wells with a ``set`` column,
    exclusions: ``class_balance`` surplus and ``not_sampled`` wells beyond the sizes).
    """
    rng = np.random.default_rng(seed)
    wells = wells.sort_values(["plate_id", "well_id"]).copy()
    untreated = wells[wells["label"].notna()]
    treated = wells[wells["label"].isna()].assign(set="treated")
    excluded = []
    if balance:
        untreated, surplus = balance_classes(untreated, rng)
        excluded.append(surplus)
    shares, mode = set_shares(sizes, int(untreated["n_sites_used"].sum()))
    share_vector = [shares[name] for name in SETS]
    share_vector.append(max(0.0, 1.0 - sum(share_vector)))
    share_vector = np.asarray(share_vector) / sum(share_vector)
    names = np.array(SETS + (UNUSED,), dtype=object)
    assigned = pd.Series(UNUSED, index=untreated.index, dtype=object)
    for _, plate in untreated.groupby("plate_id", sort=True):
        # One tie-break per plate: balanced classes then get equal counts in every set.
        priority = rng.random(len(names))
        for _, group in plate.groupby("label", sort=True):
            counts = largest_remainder(len(group), share_vector, priority)
            order = group.index[rng.permutation(len(group))]
            assigned.loc[order] = np.repeat(names, counts)
    untreated = untreated.assign(set=assigned)
    unused = untreated["set"] == UNUSED
    excluded.append(_well_exclusions(untreated, unused, "not_sampled", f"beyond split.sizes ({mode})"))
    if mode == "sites":
        got = untreated[~unused].groupby("set")["n_sites_used"].sum()
        for name in SETS:
            log.info("set %s: %d sites (asked %d)", name, got.get(name, 0), sizes[name])
    for name in SETS:
        if not (untreated["set"] == name).any():
            log.warning("set %s is empty (too few untreated wells for split.sizes)", name)
    result = pd.concat([untreated[~unused], treated]).sort_values(["plate_id", "well_id"])
    return result, pd.concat(excluded, ignore_index=True)


def split_sites(sites: pd.DataFrame, split_wells: pd.DataFrame, dropped: pd.DataFrame) -> pd.DataFrame:
    """One row per used site: the sites of the assigned wells minus those dropped at
    stitching, with the well's store row (``well_index``), set and label."""
    index = well_indices(sites)
    used = sites[sites["well_id"].isin(split_wells["well_id"]) & ~sites["site_id"].isin(dropped["site_id"])]
    per_well = split_wells.set_index("well_id")[["set", "label"]]
    table = used.assign(
        well_index=used["well_id"].map(index).astype(np.int64),
        set=used["well_id"].map(per_well["set"]),
        label=used["well_id"].map(per_well["label"]).astype("Int64"),
    )
    return table.sort_values(["plate_id", "well", "site"])[SITE_COLUMNS].reset_index(drop=True)


def summarise(split: pd.DataFrame) -> pd.DataFrame:
    """Wells and sites per plate x set x label, and per set x label over all plates
    (plate_id ``all``)."""

    def count(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        return table.groupby(keys, dropna=False, sort=False).agg(
            n_wells=("well_id", "nunique"), n_sites=("site_id", "size")
        ).reset_index()

    per_plate = count(split, ["plate_id", "set", "label"])
    overall = count(split, ["set", "label"]).assign(plate_id="all")
    summary = pd.concat([overall, per_plate], ignore_index=True)[["plate_id", "set", "label", "n_wells", "n_sites"]]
    summary["label"] = summary["label"].astype("Int64")
    order = {name: rank for rank, name in enumerate(ALL_SETS)}
    summary = summary.assign(
        _plate=summary["plate_id"] != "all", _set=summary["set"].map(order)
    ).sort_values(["_plate", "plate_id", "_set", "label"], na_position="last")
    return summary.drop(columns=["_plate", "_set"]).reset_index(drop=True)


def make_split(
    wells: pd.DataFrame,
    sites: pd.DataFrame,
    qc_tables: Iterable[pd.DataFrame],
    sizes: Mapping[str, float],
    seed: int,
    balance: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The whole split: (used sites, exclusions, summary). See the module docstring."""
    dropped = dropped_sites(qc_tables, sites)
    screened, excluded_wells = screen_wells(wells, usable_site_counts(sites, dropped))
    assigned, excluded_split = assign_sets(screened, sizes, seed, balance)
    used = split_sites(sites, assigned, dropped)
    excluded = pd.concat([excluded_wells, excluded_split, dropped], ignore_index=True)
    excluded = excluded.sort_values(["plate_id", "well_id", "level", "site_id"], na_position="first", kind="stable")
    return used, excluded.reset_index(drop=True), summarise(used)
