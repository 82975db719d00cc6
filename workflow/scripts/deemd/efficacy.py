"""Drug efficacy from site scores: a sign-test interval of the median per dose, a score per
treatment, and the ranking (docs/method.md §9).

For treatment t at concentration c the sites' scores T = {z_i} (z high = looks infected)
get the exact sign-test confidence interval of their median, as R's ``rstatix::sign_test``
reports it. rstatix 0.7.2 computes it in ``rstatix:::get_median_ci``::

    k  <- qbinom(p = (1 - conf.level) / 2, size = n, prob = 0.5, lower.tail = TRUE)
    ci <- sort(x)[c(k, n - k + 1)]
    attr(ci, "conf.level") <- 1 - 2 * pbinom(k - 1, size = n, prob = 0.5)

i.e. the order statistics x(k) and x(n-k+1), no interpolation; n counts the finite values
(``sign.test`` drops the others first), ties are simply repeated order statistics, and the
achieved confidence level 1 - 2 P(B <= k-1), B ~ Bin(n, 1/2), is at least the nominal one.
Where k = 0 (n <= 5 at 95 %) no interval exists and rstatix reports NA bounds.

Dose efficacy e(t,c) = 1 - upper bound (near 1: even the pessimistic median looks
non-infected). Treatment score e(t) = median of the doses with e(t,c) >= zeta if there are
any, else median of all its doses; t is effective if e(t) >= zeta.

The R part is isolated in :func:`sign_test_intervals` (rpy2 is imported there only, so the
rest of this module works without R); everything else takes and returns pandas tables.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np
import pandas as pd

DOSE_KEYS = ["treatment", "treatment_conc"]
SITE_COLUMNS = ["well_id", *DOSE_KEYS, "z"]
OK = "ok"

DOSE_COLUMNS = {
    "treatment": "object",
    "treatment_conc": "float64",
    "n_sites": "int64",
    "n_wells": "int64",
    "median_z": "float64",
    "ci_lower": "float64",
    "ci_upper": "float64",
    "conf_level": "float64",
    "e_dose": "float64",
    "effective_dose": "bool",
    "status": "object",
}
TREATMENT_COLUMNS = {
    "rank": "int64",
    "treatment": "object",
    "e_t": "float64",
    "n_doses": "int64",
    "n_doses_with_interval": "int64",
    "n_effective_doses": "int64",
    "effective": "bool",
    "max_e_dose": "float64",
    "status": "object",
}

# Groups by integer id, calls the public rstatix::sign_test once on the grouped table, and
# adds the achieved confidence level with get_median_ci's own formula (rstatix's tidy table
# drops it; its htest rounds it to 3 digits). A group of one site makes rstatix name its
# bound columns conf.low.NA / conf.high.NA; a missing column means "all NA".
_R_SIGN_TEST = r"""
function(group, z, conf.level) {
    data <- data.frame(group = group, z = z)
    res <- as.data.frame(rstatix::sign_test(
        dplyr::group_by(data, group), z ~ 1, conf.level = conf.level, detailed = TRUE
    ))
    column <- function(name) {
        if (name %in% names(res)) as.numeric(res[[name]]) else rep(NA_real_, nrow(res))
    }
    n <- as.numeric(res$n)
    k <- qbinom(p = (1 - conf.level) / 2, size = n, prob = 0.5, lower.tail = TRUE)
    achieved <- ifelse(k >= 1, 1 - 2 * pbinom(k - 1, size = n, prob = 0.5), NA_real_)
    data.frame(
        group = as.numeric(res$group), n = n, estimate = column("estimate"),
        conf.low = column("conf.low"), conf.high = column("conf.high"),
        k = as.numeric(k), conf.achieved = achieved
    )
}
"""


def import_robjects():
    """rpy2.robjects, with the process environment left as it was: starting R points
    LD_LIBRARY_PATH at the system libraries, after which any Python started from this
    process (a Snakemake job, a test's subprocess) may load the wrong libpython."""
    saved = os.environ.get("LD_LIBRARY_PATH")
    import rpy2.robjects as ro

    if saved is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = saved
    return ro


@functools.cache
def _r_sign_test():
    """The R function above, compiled once per process (loads rstatix)."""
    ro = import_robjects()

    loaded = ro.r("isTRUE(suppressPackageStartupMessages(requireNamespace('rstatix', quietly = TRUE)))")
    if not loaded[0]:
        raise RuntimeError("the R package rstatix is not installed (envs/r.yaml)")
    return ro.r(_R_SIGN_TEST)


def sign_test_intervals(group: np.ndarray, z: np.ndarray, conf_level: float) -> pd.DataFrame:
    """Sign-test interval of the median of ``z`` within each ``group``, computed in R by
    ``rstatix::sign_test(<grouped data>, z ~ 1, conf.level, detailed = TRUE)`` in one call.

    ``group`` holds integer group ids, ``z`` finite values. Returns one row per group id
    (ascending): group, n, median (rstatix's estimate), ci_lower, ci_upper (rstatix's
    conf.low / conf.high, NaN where rstatix gives none), k (the order statistic used; 0 =
    too few values for an interval) and conf_level (achieved level, NaN where k = 0).
    """
    ro = import_robjects()

    group = np.asarray(group, dtype=np.int64)
    z = np.asarray(z, dtype=np.float64)
    if group.shape != z.shape or group.ndim != 1:
        raise ValueError(f"group and z must be 1-d arrays of one length, got {group.shape} and {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("z holds non-finite values")
    if len(z) == 0:
        names = ["group", "n", "median", "ci_lower", "ci_upper", "k", "conf_level"]
        return pd.DataFrame({name: pd.Series(dtype="float64") for name in names})
    result = _r_sign_test()(ro.IntVector(group.tolist()), ro.FloatVector(z.tolist()), float(conf_level))
    columns = {name: np.asarray(result.rx2(name), dtype=np.float64) for name in result.names}
    table = pd.DataFrame(
        {
            "group": columns["group"].astype(np.int64),
            "n": columns["n"].astype(np.int64),
            "median": columns["estimate"],
            "ci_lower": columns["conf.low"],
            "ci_upper": columns["conf.high"],
            "k": columns["k"].astype(np.int64),
            "conf_level": columns["conf.achieved"],
        }
    )
    return table.sort_values("group", ignore_index=True)


IntervalFunction = Callable[[np.ndarray, np.ndarray, float], pd.DataFrame]


def check_z(sites: pd.DataFrame) -> np.ndarray:
    """The z column of a site table as float, checked to lie in [0, 1]: a NaN or
    out-of-range z is an upstream bug, not a site to drop quietly; the error names the
    first such sites."""
    z = sites["z"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(z) | (z < 0) | (z > 1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} sites have z outside [0, 1] or not finite, e.g. {sites.loc[bad].head(3).to_dict('records')}")
    return z


def check_sites(sites: pd.DataFrame) -> pd.DataFrame:
    """The columns efficacy needs, with z checked (check_z)."""
    missing = [column for column in SITE_COLUMNS if column not in sites.columns]
    if missing:
        raise ValueError(f"site table lacks columns {missing}")
    z = check_z(sites)
    if sites["treatment"].isna().any() or (sites["treatment"].astype(str).str.strip() == "").any():
        raise ValueError("site table holds untreated sites (empty treatment)")
    return sites[SITE_COLUMNS].assign(z=z)


def _empty(columns: dict) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def dose_efficacy(
    sites: pd.DataFrame,
    zeta: float,
    conf_level: float = 0.95,
    intervals: IntervalFunction = sign_test_intervals,
) -> pd.DataFrame:
    """One row per (treatment, treatment_conc): sites and wells counted, median z, the
    sign-test interval, e_dose = 1 - ci_upper and effective_dose = e_dose >= zeta.

    Groups too small for an interval keep their row, with NA interval and e_dose and a
    status "too few sites (n=..)"; the others have status "ok". ``intervals`` computes the
    per-group intervals (R by default; tests may pass a reference)."""
    sites = check_sites(sites)
    if sites.empty:
        return _empty(DOSE_COLUMNS)
    grouped = sites.groupby(DOSE_KEYS, sort=True, dropna=False)
    doses = grouped.agg(n_sites=("z", "size"), n_wells=("well_id", "nunique")).reset_index()
    group = grouped.ngroup().to_numpy()
    stats = intervals(group, sites["z"].to_numpy(), conf_level).set_index("group")
    stats = stats.reindex(np.arange(len(doses)))
    if not np.array_equal(stats["n"].to_numpy(), doses["n_sites"].to_numpy()):
        raise RuntimeError("the interval function counted other group sizes than the site table")
    has_interval = stats["ci_upper"].notna().to_numpy() & stats["ci_lower"].notna().to_numpy()
    doses["median_z"] = stats["median"].to_numpy()
    doses["ci_lower"] = np.where(has_interval, stats["ci_lower"], np.nan)
    doses["ci_upper"] = np.where(has_interval, stats["ci_upper"], np.nan)
    doses["conf_level"] = np.where(has_interval, stats["conf_level"], np.nan)
    doses["e_dose"] = 1.0 - doses["ci_upper"]
    doses["effective_dose"] = (doses["e_dose"] >= zeta).to_numpy()  # NaN >= zeta is False
    doses["status"] = np.where(has_interval, OK, [f"too few sites (n={n})" for n in doses["n_sites"]])
    return doses[list(DOSE_COLUMNS)].astype(DOSE_COLUMNS)


def treatment_score(e_doses, zeta: float) -> float:
    """e(t): the median of the dose efficacies >= zeta if there are any, else the median of
    all of them; NaN values (doses without an interval) are ignored, NaN if none is left."""
    e = np.asarray(e_doses, dtype=np.float64)
    e = e[~np.isnan(e)]
    if e.size == 0:
        return float("nan")
    effective = e[e >= zeta]
    return float(np.median(effective if effective.size else e))


def rank_treatments(treatments: pd.DataFrame) -> pd.DataFrame:
    """Order by e_t descending (NA last), then number of effective doses descending, then
    treatment name; rank = 1, 2, ... in that order (ties get distinct, name-ordered ranks)."""
    ordered = treatments.assign(_no_score=treatments["e_t"].isna()).sort_values(
        ["_no_score", "e_t", "n_effective_doses", "treatment"],
        ascending=[True, False, False, True],
        kind="mergesort",
        ignore_index=True,
    )
    return ordered.drop(columns="_no_score").assign(rank=np.arange(1, len(ordered) + 1))


def treatment_efficacy(doses: pd.DataFrame, zeta: float) -> pd.DataFrame:
    """One ranked row per treatment from the dose table: e_t, dose counts, effective
    (e_t >= zeta), the best dose's efficacy and a status; a treatment without any dose
    with an interval keeps its row with e_t NA, not effective, ranked last."""
    if doses.empty:
        return _empty(TREATMENT_COLUMNS)
    rows = []
    for treatment, group in doses.groupby("treatment", sort=True):
        e = group["e_dose"].to_numpy(dtype=np.float64)
        usable = ~np.isnan(e)
        e_t = treatment_score(e, zeta)
        if usable.any():
            status = OK
        else:
            sizes = ", ".join(str(n) for n in group["n_sites"])
            status = f"no dose with an interval: too few sites per dose (n={sizes})"
        rows.append(
            {
                "treatment": treatment,
                "e_t": e_t,
                "n_doses": len(group),
                "n_doses_with_interval": int(usable.sum()),
                "n_effective_doses": int((e[usable] >= zeta).sum()),
                "effective": bool(e_t >= zeta),
                "max_e_dose": float(e[usable].max()) if usable.any() else float("nan"),
                "status": status,
            }
        )
    return rank_treatments(pd.DataFrame(rows))[list(TREATMENT_COLUMNS)].astype(TREATMENT_COLUMNS)


def efficacy_tables(
    sites: pd.DataFrame,
    zeta: float,
    conf_level: float = 0.95,
    intervals: IntervalFunction = sign_test_intervals,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The dose table and the ranked treatment table from the treated sites' scores."""
    doses = dose_efficacy(sites, zeta, conf_level, intervals)
    return doses, treatment_efficacy(doses, zeta)
