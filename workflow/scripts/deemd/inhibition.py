"""Quantitative efficacy beside DEEMD's e(t) (docs/method.md §10): percent inhibition
normalised to on-plate controls, plate QC, a dose-response fit per treatment and
FDR-controlled hit calls.

A site's *readout* is how infected it looks: for the patch models M and V, the mean of its
smoothed infection map (``map_mean``, the default) or a_i, the share of the map at or above
eta (:func:`deemd.maps.map_readouts`); for the whole-site model W, its logit (the default:
the output before the sigmoid, a linear layer on globally average-pooled features, so the
mean of its class activation map over the site) or the site probability z_i. Per plate, the
readout is scaled between the medians of the untreated controls that the model was not
trained on (validation and test wells):

    inhibition_i = 1 - (r_i - r_noninfected) / (r_infected - r_noninfected)

so 0 looks like the infected controls and 1 like the non-infected ones.

The tested unit is the well (its inhibition is the median of its sites): the sites of a
well share seeding, virus, staining and focus, so they are not independent replicates,
and testing sites would inflate n. Per treatment, a four-parameter logistic of well
inhibition against log10 concentration over its non-toxic doses pools every dose, so a
dose with one or two wells still contributes. The hit test asks whether the fitted
inhibition at the best non-toxic dose exceeds a bar: a one-sided t-test with the fitted
value's standard error from the fit's linearisation at the data (:func:`fitted_at`), each
well's noise shaped by the screen's noise trend (:func:`variance_trend`), and
n_wells - rank degrees of freedom, then Benjamini-Hochberg across the screen. Doses that cost cells (the nucleus count's
flags, or a fitted viability curve below ``min_viability``) are left out of the curve: the
readout falls with the cells, which would read as inhibition.

Every function takes and returns arrays or pandas tables; nothing here reads files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from deemd.doseresponse import OK, fit_logistic, fitted_curve, logistic4, logistic4_jacobian

TREATED = "treated"
INFECTED_CONTROL = "infected_control"
NONINFECTED_CONTROL = "noninfected_control"
CONTROL_ROLES = (INFECTED_CONTROL, NONINFECTED_CONTROL)
# Untreated wells the models never trained on: their scores are honest references.
HELD_OUT_SETS = ("val", "test")
# MAD -> standard deviation of a normal distribution.
MAD_SCALE = 1.4826
# Bounds of the inhibition curve's asymptotes. 0 and 1 are the two control levels, so a
# plateau far beyond them is not measured but extrapolated: where the curve has not flattened
# within the tested doses, a free top ran to 2 and carried the EC50 out of the range with
# it. A quarter beyond each control level leaves room for noise and plate effects.
INHIBITION_LIMITS = (-0.25, 1.25)
# Bounds of the viability curve's asymptotes: 0 kills every cell; above 1, a compound keeps
# more cells than the infected controls (it spares them the virus's damage).
VIABILITY_LIMITS = (0.0, 1.5)
MIN_FIT_WELLS = 5  # a 4PL with one residual degree of freedom at least
# efficacy.curve_bottom: "free" fits the curve's low-dose asymptote; "zero" holds it at the
# infected controls' level (no compound, no inhibition).
CURVE_BOTTOMS = {"zero": 0.0, "free": None}
# Singular values of a fit's Jacobian below this share of the largest are directions the
# data do not determine (fitted_at).
RANK_TOLERANCE = 1e-8
# The noise trend (variance_trend): replicate groups are pooled in these bins of inhibition,
# and a trend needs this many residual degrees of freedom in all, or the errors take every
# well's noise as equal. A bin's standard deviation is held to at least 1/MAX_SD_RATIO of
# the largest, so that a few identical wells cannot make a dose look noiseless.
NOISE_BIN_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_NOISE_DF = 10
MAX_SD_RATIO = 10.0

PLATE_QC_COLUMNS = {
    "plate_id": "object",
    "model": "object",
    "readout": "object",
    "n_infected": "int64",
    "n_noninfected": "int64",
    "median_infected": "float64",
    "median_noninfected": "float64",
    "zprime": "float64",
    "ssmd": "float64",
    "control_source": "object",
    "passes": "bool",
}
CURVE_COLUMNS = {
    "inhibition_max": "float64",
    "inhibition_max_se": "float64",
    "inhibition_best_conc_um": "float64",
    "inhibition_ec50_um": "float64",
    "inhibition_midpoint_um": "float64",
    "inhibition_ec50_qualifier": "object",
    "inhibition_log_ec50_se": "float64",
    "inhibition_emax": "float64",
    "inhibition_emax_se": "float64",
    "inhibition_bottom": "float64",
    "inhibition_hill": "float64",
    "n_wells_tested": "int64",
    "hit_p_value": "float64",
    "inhibition_noise_trend": "bool",
    "inhibition_status": "object",
}


def site_roles(sites: pd.DataFrame) -> pd.Series:
    """The role of each site of a split table (set, label): ``treated``,
    ``infected_control`` or ``noninfected_control`` for held-out untreated sites, and
    None for the sites a model trained on."""
    role = pd.Series(None, index=sites.index, dtype=object)
    role[sites["set"] == TREATED] = TREATED
    held_out = sites["set"].isin(HELD_OUT_SETS)
    label = sites["label"].astype("Float64")
    role[held_out & (label == 1).fillna(False).to_numpy(dtype=bool)] = INFECTED_CONTROL
    role[held_out & (label == 0).fillna(False).to_numpy(dtype=bool)] = NONINFECTED_CONTROL
    return role


def scored_sites(split: pd.DataFrame, plate_id: str) -> pd.DataFrame:
    """The sites of one plate that inference scores: its treated sites and its held-out
    control sites, with their ``role``, in the split table's order."""
    plate = split[split["plate_id"] == plate_id]
    plate = plate.assign(role=site_roles(plate))
    return plate[plate["role"].notna()].reset_index(drop=True)


def robust_sd(values) -> float:
    """1.4826 x the median absolute deviation: a standard deviation that a few outlying
    wells do not inflate."""
    values = np.asarray(values, dtype=np.float64)
    return float(MAD_SCALE * np.median(np.abs(values - np.median(values))))


def robust_zprime(positive, negative) -> float:
    """Robust Z'-factor (Zhang et al. 1999, medians and MADs for means and SDs):
    1 - 3 (sd_pos + sd_neg) / |median_pos - median_neg|; NaN when either group is empty,
    -inf when the medians coincide. Above 0.5: an excellent assay; below 0: the controls
    overlap."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(positive) or not len(negative):
        return float("nan")
    gap = abs(float(np.median(positive) - np.median(negative)))
    spread = robust_sd(positive) + robust_sd(negative)
    if gap == 0:
        return float("-inf")
    return 1.0 - 3.0 * spread / gap


def robust_ssmd(positive, negative) -> float:
    """Robust strictly standardised mean difference (Zhang 2007): (median_pos -
    median_neg) / sqrt(sd_pos^2 + sd_neg^2); NaN when either group is empty, +-inf when
    both groups are constant but apart."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(positive) or not len(negative):
        return float("nan")
    gap = float(np.median(positive) - np.median(negative))
    spread = float(np.hypot(robust_sd(positive), robust_sd(negative)))
    if spread == 0:
        return float("nan") if gap == 0 else float(np.sign(gap) * np.inf)
    return gap / spread


def well_medians(sites: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per well of a site table (well_id, plate_id, well, role, treatment,
    treatment_conc) with n_sites and the median of each of ``columns`` over its sites."""
    keys = ["well_id", "plate_id", "well", "role", "treatment", "treatment_conc"]
    grouped = sites.groupby(keys, sort=True, dropna=False)
    table = grouped.size().rename("n_sites").reset_index()
    for column in columns:
        table[f"median_{column}"] = grouped[column].median().to_numpy()
    return table


def control_references(wells: pd.DataFrame, column: str, min_wells: int) -> pd.DataFrame:
    """Per plate, the medians of the held-out infected and non-infected control wells'
    ``column``, their numbers and where they came from (``control_source``): the plate
    itself, or, where the plate has fewer than ``min_wells`` of either kind, the pooled
    control wells of its experiment (``plate_id`` is ``{experiment}_{plate}``).

    Raises ValueError naming the plate and the experiment when even the experiment lacks
    control wells of a kind."""
    wells = wells.assign(_experiment=wells["plate_id"].str.rsplit("_", n=1).str[0])
    controls = wells[wells["role"].isin(CONTROL_ROLES) & wells[column].notna()]
    rows = []
    for plate_id, experiment in wells[["plate_id", "_experiment"]].drop_duplicates().itertuples(index=False):
        on_plate = controls[controls["plate_id"] == plate_id]
        counts = on_plate["role"].value_counts()
        source = "plate"
        if min(counts.get(INFECTED_CONTROL, 0), counts.get(NONINFECTED_CONTROL, 0)) < min_wells:
            source = "experiment"
            on_plate = controls[controls["_experiment"] == experiment]
            counts = on_plate["role"].value_counts()
            missing = [role for role in CONTROL_ROLES if counts.get(role, 0) == 0]
            if missing:
                raise ValueError(
                    f"plate {plate_id}: no held-out {' or '.join(missing)} wells on the plate or in "
                    f"experiment {experiment}, so its inhibition cannot be normalised; give every "
                    "plate untreated Mock/UV and Active SARS-CoV-2 wells beyond the training set"
                )
        by_role = {role: on_plate.loc[on_plate["role"] == role, column].to_numpy() for role in CONTROL_ROLES}
        rows.append(
            {
                "plate_id": plate_id,
                "n_infected": len(by_role[INFECTED_CONTROL]),
                "n_noninfected": len(by_role[NONINFECTED_CONTROL]),
                "median_infected": float(np.median(by_role[INFECTED_CONTROL])),
                "median_noninfected": float(np.median(by_role[NONINFECTED_CONTROL])),
                "zprime": robust_zprime(by_role[INFECTED_CONTROL], by_role[NONINFECTED_CONTROL]),
                "ssmd": robust_ssmd(by_role[INFECTED_CONTROL], by_role[NONINFECTED_CONTROL]),
                "control_source": source,
            }
        )
    return pd.DataFrame(rows)


def inhibition(readout, infected_reference, noninfected_reference) -> np.ndarray:
    """1 - (r - r_noninfected) / (r_infected - r_noninfected), elementwise; NaN where the
    references do not separate (infected reference not above the non-infected one)."""
    readout = np.asarray(readout, dtype=np.float64)
    infected_reference = np.asarray(infected_reference, dtype=np.float64)
    noninfected_reference = np.asarray(noninfected_reference, dtype=np.float64)
    span = infected_reference - noninfected_reference
    with np.errstate(divide="ignore", invalid="ignore"):
        value = 1.0 - (readout - noninfected_reference) / span
    return np.where(span > 0, value, np.nan)


def well_viability(nuclei_wells: pd.DataFrame) -> pd.DataFrame:
    """The imaged treated wells of a nucleus table (treatment, treatment_conc, well, toxic,
    nuclei_per_site, infected_control_median; no_nuclei where present) with ``viability``
    = nuclei per site / the plate's untreated infected median: 1 survives like the
    infected controls, 0 kills every cell (a well without any nucleus, ``empty``). Wells
    without an imaged site (nuclei_per_site NaN) are left out: they hold no count."""
    missing = [c for c in ("treatment", "treatment_conc", "toxic", "nuclei_per_site", "infected_control_median") if c not in nuclei_wells]
    if missing:
        raise ValueError(f"nucleus well table lacks columns {missing}; rerun the nuclei rule")
    treated = nuclei_wells[nuclei_wells["treatment"].notna() & nuclei_wells["nuclei_per_site"].notna()]
    with np.errstate(divide="ignore", invalid="ignore"):
        viability = treated["nuclei_per_site"].to_numpy(np.float64) / treated["infected_control_median"].to_numpy(np.float64)
    empty = treated["no_nuclei"].astype(bool) if "no_nuclei" in treated else treated["nuclei_per_site"] == 0
    return treated.assign(viability=np.where(np.isfinite(viability), viability, np.nan), empty=empty.to_numpy(dtype=bool))


def viability_curve(concentrations, viability) -> dict:
    """The cytotoxicity curve of one treatment: a 4PL of well viability against log10
    concentration over all its counted wells, toxic ones included (they carry the
    information about the doses below them). Only a falling curve (top < bottom) counts
    as cytotoxicity; a rising one (cells rescued from the virus) or a failed fit gives
    ``fit`` = None. ``cc50_um``: where the curve crosses viability 0.5, NaN when it
    does not within the tested concentrations. ``status`` says which."""
    c = np.asarray(concentrations, dtype=np.float64)
    v = np.asarray(viability, dtype=np.float64)
    fit = fit_logistic(c, v, min_points=MIN_FIT_WELLS, limits=VIABILITY_LIMITS)
    if fit["status"] != OK:
        return {"fit": None, "cc50_um": np.nan, "status": f"no viability curve: {fit['status']}"}
    if fit["top"] >= fit["bottom"]:
        return {"fit": None, "cc50_um": np.nan, "status": "viability does not fall with dose"}
    bottom, top, log_ec50, hill = fit["bottom"], fit["top"], fit["log_ec50"], fit["hill"]
    tested = np.log10(c[np.isfinite(c) & (c > 0)])
    cc50, status = np.nan, "CC50 above the tested doses"
    if bottom <= 0.5:
        status = "viability below 0.5 at every tested dose"
    elif top < 0.5:
        # Solve bottom + (top - bottom) / (1 + 10^((log_ec50 - x) hill)) = 0.5 for x.
        x = log_ec50 - np.log10((top - bottom) / (0.5 - bottom) - 1.0) / hill
        if tested.min() <= x <= tested.max():
            cc50, status = float(10.0**x), OK
    return {"fit": fit, "cc50_um": cc50, "status": status}


def cytotoxicity(nuclei_wells: pd.DataFrame, min_viability: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per dose and per treatment, how much the treated wells of a nucleus table lose
    cells (docs/method.md §10).

    Doses (treatment, treatment_conc): n_wells_plated, n_wells_toxic (a well without any
    nucleus is flagged, §3), n_wells_empty (those without any nucleus), viability_median (of the dose's wells, 0 for an empty one),
    viability_fitted (its viability curve at the dose, NaN without
    a falling curve), viability_relative (viability_fitted over the larger of 1 and the
    curve at the lowest tested dose: the share of the cells the compound would keep
    without its toxicity that it keeps), ``toxic`` and ``toxic_reason``: "well flags" when at least
    half of its counted wells are flagged by the nucleus count (§3), else "viability curve"
    when viability_relative is below ``min_viability``, else "". A toxic dose is
    left out of the inhibition curve and cannot be a treatment's best dose: where cells die
    (and the survivors change), the infection readout falls with them and would read as
    inhibition. Treatments: viability_cc50_um and viability_status. The viability curve is
    fitted to the wells with nuclei: an empty well may be a failed image, and one 0 among
    a dose's replicates would drag a least-squares curve down; the well flags still count
    it, so a dose whose wells are empty is toxic."""
    treated = well_viability(nuclei_wells)
    grouped = treated.groupby(["treatment", "treatment_conc"], sort=True)
    doses = grouped.agg(
        n_wells_plated=("toxic", "size"), n_wells_toxic=("toxic", "sum"), n_wells_empty=("empty", "sum"),
        viability_median=("viability", "median"),
    ).reset_index()
    doses = doses.astype({"n_wells_toxic": np.int64, "n_wells_empty": np.int64})
    doses["viability_fitted"] = np.nan
    doses["viability_relative"] = np.nan
    rows = []
    for name, wells in treated.groupby("treatment", sort=True):
        counted = wells[~wells["empty"]]
        curve = viability_curve(counted["treatment_conc"], counted["viability"])
        rows.append({"treatment": name, "viability_cc50_um": curve["cc50_um"], "viability_status": curve["status"]})
        if curve["fit"] is not None:
            at = (doses["treatment"] == name).to_numpy()
            fitted = fitted_curve(curve["fit"], doses.loc[at, "treatment_conc"])
            doses.loc[at, "viability_fitted"] = fitted
            # An antiviral also spares cells the virus kills, so its untoxic level can lie
            # above the infected controls': its toxicity is the loss from that level, read
            # at its lowest tested dose (the asymptote beyond it is an extrapolation).
            doses.loc[at, "viability_relative"] = fitted / max(1.0, float(np.max(fitted)))
    by_wells = (2 * doses["n_wells_toxic"] >= doses["n_wells_plated"]).to_numpy(dtype=bool)
    by_curve = (doses["viability_relative"] < min_viability).to_numpy(dtype=bool)
    doses["toxic"] = by_wells | by_curve
    doses["toxic_reason"] = np.where(by_wells, "well flags", np.where(by_curve, "viability curve", ""))
    treatments = pd.DataFrame(rows, columns=["treatment", "viability_cc50_um", "viability_status"])
    return doses, treatments.astype({"viability_cc50_um": "float64", "viability_status": "object"})


def selectivity_index(cc50_um, ec50_um) -> np.ndarray:
    """CC50 / EC50, the therapeutic window of an antiviral (float); NaN where either is
    unknown (no CC50 within the tested doses: the compound is at least that selective)."""
    cc50, ec50 = np.asarray(cc50_um, dtype=np.float64), np.asarray(ec50_um, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((cc50 > 0) & (ec50 > 0), cc50 / ec50, np.nan)


def fitted_at(fit: dict, data_concentrations, data_values, concentrations, relative_variance=None) -> tuple[np.ndarray, np.ndarray, int]:
    """The fitted curve at ``concentrations`` (µM), its standard error and the residual
    degrees of freedom, from the fit's linearisation at the data it was fitted to
    (``data_concentrations``, ``data_values``: the same points in the same number).

    Near the fit, the curve at c is a linear function of the data, f(c) ~ a(c)' y with
    a(c)' = g(c)' (J'J)^+ J': J is the Jacobian of the curve at the data in the parameters
    the fit estimated (not ``held`` by a bound or a fixed bottom), g(c) its row at c, ^+ the pseudo-inverse
    over the directions the data determine (singular values of J above RANK_TOLERANCE of
    the largest). So se(c)^2 = sum_i a_i(c)^2 sigma_i^2, with sigma_i^2 = s^2 v_i:
    ``relative_variance`` v (one per point; 1 for all when None, which gives the usual
    s^2 g'(J'J)^+ g) shapes how the wells' noise differs, and s^2 = sum_i r_i^2 / v_i /
    (n - rank) scales it to the fit's own residuals r. This is the sandwich
    (heteroscedasticity-consistent) form: the curve keeps its unweighted fit, and only its
    error follows the noise of the wells that determine it. At a tested concentration the
    error is then about the leverage of that dose's wells times their noise. curve_fit's
    covariance cannot give this where the data leave parameters undetermined (a step
    between two doses, a plateau beyond them): it is then near-singular, and g' C g
    explodes although the curve at the tested doses is pinned by their wells."""
    c = np.asarray(concentrations, dtype=np.float64)
    params = np.array([fit["bottom"], fit["top"], fit["log_ec50"], fit["hill"]], dtype=np.float64)
    value = logistic4(np.log10(c), *params)
    free = ~np.asarray(fit.get("held", np.zeros(4, dtype=bool)), dtype=bool)
    data = np.log10(np.asarray(data_concentrations, dtype=np.float64))
    n = len(data)
    if not free.any():
        return value, np.full(c.shape, np.nan), n
    variance = np.ones(n) if relative_variance is None else np.asarray(relative_variance, dtype=np.float64)
    left, singular, right = np.linalg.svd(logistic4_jacobian(data, *params)[:, free], full_matrices=False)
    determined = singular > RANK_TOLERANCE * singular[0] if singular.size and singular[0] > 0 else np.zeros(0, dtype=bool)
    rank = int(determined.sum())
    df = n - rank
    if rank == 0 or df <= 0:
        return value, np.full(c.shape, np.nan), max(df, 0)
    residuals = np.asarray(data_values, dtype=np.float64) - logistic4(data, *params)
    scale = np.sum(residuals**2 / variance) / df
    # a(c) for every c at once: (len(c) x n) = g(c) V S^-1 U'.
    linear_map = ((logistic4_jacobian(np.log10(c), *params)[:, free] @ right[determined].T) / singular[determined]) @ left[:, determined].T
    return value, np.sqrt(scale * (linear_map**2 @ variance)), df


def ec50_qualifier(ec50_um: float, lowest_um: float, highest_um: float) -> str:
    """Where a fitted EC50 lies against the concentrations its curve was fitted on: "=" inside
    them, ">" above the highest (the curve still rises at the top dose; the EC50 is
    extrapolated, read it as "more than the highest dose"), "<" below the lowest (it acts
    from the first dose), "" without an EC50."""
    if not np.isfinite(ec50_um):
        return ""
    if ec50_um > highest_um:
        return ">"
    if ec50_um < lowest_um:
        return "<"
    return "="


def _no_curve(n_wells: int, status: str, best: float = np.nan) -> dict:
    row = {name: np.nan for name in CURVE_COLUMNS}
    row.update(inhibition_max=float(np.clip(best, 0.0, 1.0)), inhibition_ec50_qualifier="", n_wells_tested=n_wells, inhibition_noise_trend=False,
               inhibition_status=status)
    return row


def replicate_groups(wells: pd.DataFrame) -> pd.DataFrame:
    """The replicate groups of a well table (role, plate_id, treatment, treatment_conc,
    inhibition, used) whose spread measures the assay's noise: the used treated wells of
    each dose (treatment, treatment_conc) and the control wells of each plate and kind.
    One row per group of at least two wells: ``level`` (mean inhibition), ``variance``
    (unbiased, between its wells) and ``df`` (wells - 1)."""
    y = wells["inhibition"].to_numpy(dtype=np.float64)
    treated = (wells["role"] == TREATED).to_numpy() & wells["used"].to_numpy(dtype=bool) & np.isfinite(y)
    control = wells["role"].isin(CONTROL_ROLES).to_numpy() & np.isfinite(y)
    doses = wells[treated].groupby(["treatment", "treatment_conc"])["inhibition"]
    controls = wells[control].groupby(["plate_id", "role"])["inhibition"]
    parts = [grouped.agg(level="mean", variance="var", n="size") for grouped in (doses, controls)]
    groups = pd.concat(parts, ignore_index=True)
    groups = groups[groups["n"] >= 2]
    groups = groups.assign(df=groups["n"] - 1)[["level", "variance", "df"]].reset_index(drop=True)
    return groups.astype({"level": "float64", "variance": "float64", "df": "int64"})


def variance_trend(groups: pd.DataFrame, edges=NOISE_BIN_EDGES, min_df: int = MIN_NOISE_DF) -> dict | None:
    """How the spread of well inhibition between replicate wells depends on its level,
    from the replicate groups of a screen (:func:`replicate_groups`: level, variance, df).

    The groups are binned by level (``edges``; levels beyond them fall in the end bins) and
    each bin's variance is pooled (sum of squares over degrees of freedom). Returns
    ``{"level": bin centres, "sd": pooled standard deviation, "df": per bin}``; a bin
    without groups takes its nearest filled neighbour's sd, and every sd is held to at
    least 1/MAX_SD_RATIO of the largest. None when the groups hold fewer than ``min_df``
    degrees of freedom in all: too little to tell a trend from noise.

    Why: the spread of a readout of infection depends on its level (docs/method.md §10):
    M's map readout varies several times more between wells near the infected controls
    than between wells that look clean, W's site probability most half-way. One pooled
    residual variance per curve lets noisy doses set the error of its value at a quiet
    best dose."""
    edges = np.asarray(edges, dtype=np.float64)
    level, variance, df = (groups[c].to_numpy(np.float64) for c in ("level", "variance", "df"))
    keep = np.isfinite(level) & np.isfinite(variance) & (df > 0)
    level, variance, df = level[keep], variance[keep], df[keep]
    if df.sum() < min_df:
        return None
    bins = np.clip(np.digitize(level, edges[1:-1]), 0, len(edges) - 2)
    n_bins = len(edges) - 1
    pooled_df = np.bincount(bins, weights=df, minlength=n_bins)
    squares = np.bincount(bins, weights=df * variance, minlength=n_bins)
    filled = pooled_df > 0
    centres = 0.5 * (edges[:-1] + edges[1:])
    sd = np.sqrt(squares[filled] / pooled_df[filled])
    # An empty bin takes its nearest filled neighbour's value.
    nearest = np.abs(centres[:, None] - centres[filled][None, :]).argmin(axis=1)
    sd = sd[nearest]
    if not np.isfinite(sd).all() or sd.max() <= 0:
        return None
    sd = np.maximum(sd, sd.max() / MAX_SD_RATIO)
    return {"level": centres, "sd": sd, "df": pooled_df.astype(np.int64)}


def trend_sd(trend: dict, levels) -> np.ndarray:
    """The noise trend's standard deviation at inhibition ``levels`` (linear between the bin
    centres, constant beyond the end ones)."""
    return np.interp(np.asarray(levels, dtype=np.float64), trend["level"], trend["sd"])


def inhibition_curve(concentrations, well_inhibition, bar: float, noise: dict | None = None, bottom: float | None = None) -> dict:
    """The dose-response of one treatment from its usable wells (concentration in µM,
    well inhibition): a 4PL fit, the fitted inhibition at the best tested dose
    (``inhibition_max``, the maximum of the curve over the tested concentrations, held to
    [0, 1], the range of the share of infection a dose can remove) with its
    standard error, the EC50 and Emax (the fitted top) with theirs, and the one-sided
    p-value of inhibition_max > ``bar`` (t distribution with the residual degrees of
    freedom, n_wells less the parameters the data determine; :func:`fitted_at`).

    With a noise trend (:func:`variance_trend`) the standard error follows it: each
    well's variance is taken proportional to the trend's at the curve's value at its dose
    (:func:`fitted_at`, sandwich form), so the error of a plateau measured on quiet wells is
    not inflated by noisy wells elsewhere on the curve. The trend sets only the relative
    variances; their scale still comes from the treatment's own residuals, and the fit
    itself stays unweighted. ``inhibition_noise_trend`` says whether a trend was used.

    Without a usable fit (too few wells or doses, a failed fit) the p-value is NaN and
    inhibition_max falls back to the best per-dose median (also held to [0, 1]), with the
    reason as status. The standard error and the p-value are those of the fitted value
    itself: holding it to [0, 1] changes the estimate, not the test."""
    c = np.asarray(concentrations, dtype=np.float64)
    y = np.asarray(well_inhibition, dtype=np.float64)
    keep = np.isfinite(c) & (c > 0) & np.isfinite(y)
    c, y = c[keep], y[keep]
    n = len(y)
    if n == 0:
        return _no_curve(0, "no usable well")
    levels = np.unique(c)
    per_dose = np.array([np.median(y[c == level]) for level in levels])
    best_median = float(per_dose.max())
    if n < MIN_FIT_WELLS:
        return _no_curve(n, f"too few wells for a curve ({n} < {MIN_FIT_WELLS})", best_median)
    fit = fit_logistic(c, y, min_points=MIN_FIT_WELLS, limits=INHIBITION_LIMITS, bottom=bottom)
    if fit["status"] != OK:
        return _no_curve(n, fit["status"], best_median)
    variance = None if noise is None else trend_sd(noise, fitted_curve(fit, c)) ** 2
    values, errors, df = fitted_at(fit, c, y, levels, variance)
    best = int(np.argmax(values))
    se = float(errors[best])
    p_value = float(stats.t.sf((values[best] - bar) / se, df)) if np.isfinite(se) and se > 0 else np.nan
    covariance = np.asarray(fit["covariance"])
    status = OK if np.isfinite(p_value) else "fit without a finite standard error"
    # An EC50 is where inhibition rises half-way to its Emax; a curve that falls with dose
    # (the compound makes the readout worse) has none, whatever its midpoint.
    rises = fit["top"] > fit["bottom"]
    ec50 = fit["ec50_um"] if rises else np.nan
    return {
        # The truth lies in [0, 1], so holding the estimate there never moves it further
        # from it; above 1 is a well reading cleaner than the non-infected controls.
        "inhibition_max": float(np.clip(values[best], 0.0, 1.0)),
        "inhibition_max_se": se,
        "inhibition_best_conc_um": float(levels[best]),
        "inhibition_ec50_um": ec50,
        # The 4PL's midpoint whichever way it runs: with bottom, emax and hill it draws
        # the fitted curve, a falling one too.
        "inhibition_midpoint_um": fit["ec50_um"],
        "inhibition_ec50_qualifier": ec50_qualifier(ec50, levels.min(), levels.max()),
        "inhibition_log_ec50_se": float(np.sqrt(covariance[2, 2])) if rises and covariance[2, 2] >= 0 else np.nan,
        "inhibition_emax": fit["top"],
        "inhibition_emax_se": float(np.sqrt(covariance[1, 1])) if covariance[1, 1] >= 0 else np.nan,
        "inhibition_bottom": fit["bottom"],
        "inhibition_hill": fit["hill"],
        "n_wells_tested": n,
        "hit_p_value": p_value,
        "inhibition_noise_trend": variance is not None,
        "inhibition_status": status,
    }


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values of the finite p-values (scipy's
    false_discovery_control); NaN stays NaN and does not count among the tests."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = stats.false_discovery_control(np.clip(p[finite], 0.0, 1.0), method="bh")
    return q


def rank_by_hit(treatments: pd.DataFrame) -> pd.DataFrame:
    """The default ranking: hits first, then inhibition_max descending (NaN last), then
    e_t descending, then name; ``rank`` = 1, 2, ... The DEEMD rank by e(t) is kept as
    ``deemd_rank``."""
    ordered = treatments.assign(
        _not_hit=~treatments["hit"].astype(bool),
        _no_value=treatments["inhibition_max"].isna(),
        _e_t=treatments["e_t"].fillna(-np.inf),
    ).sort_values(
        ["_not_hit", "_no_value", "inhibition_max", "_e_t", "treatment"],
        ascending=[True, True, False, False, True],
        kind="mergesort",
        ignore_index=True,
    )
    return ordered.drop(columns=["_not_hit", "_no_value", "_e_t"]).assign(rank=np.arange(1, len(ordered) + 1))


def plate_qc(wells: pd.DataFrame, model: str, readouts: list[str], decisive: str, min_wells: int, min_zprime: float) -> pd.DataFrame:
    """One row per plate and readout (PLATE_QC_COLUMNS): the held-out control wells'
    medians, robust Z' and SSMD. ``passes`` is the decisive readout's Z' >= ``min_zprime``,
    the same on every row of a plate."""
    tables = []
    for readout in readouts:
        table = control_references(wells, f"median_{readout}", min_wells)
        tables.append(table.assign(model=model, readout=readout))
    qc = pd.concat(tables, ignore_index=True)
    decided = qc[qc["readout"] == decisive].set_index("plate_id")["zprime"] >= min_zprime
    qc["passes"] = qc["plate_id"].map(decided).astype(bool)
    return qc[list(PLATE_QC_COLUMNS)].astype(PLATE_QC_COLUMNS)


def usable_wells(wells: pd.DataFrame, doses: pd.DataFrame, qc: pd.DataFrame, readout: str, min_zprime: float) -> pd.DataFrame:
    """``used``, ``plate_passes_qc`` and ``reason`` for every well. A treated well is used
    for its treatment's curve unless its dose is toxic or its inhibition is undefined
    (the reason says which: no value of ``readout`` on any of its sites, or its plate's
    controls do not separate); control wells are references, never used. A used well on a
    plate that fails QC (the Z' of ``readout``, the one inhibition is computed from, below
    ``min_zprime``) stays in the curve's estimates but not in its hit test
    (:func:`treatment_curves`); its reason names the Z'."""
    decisive = qc[qc["readout"] == readout].set_index("plate_id")
    passes, zprime = decisive["passes"], decisive["zprime"]
    toxic = wells.merge(doses[["treatment", "treatment_conc", "toxic"]], on=["treatment", "treatment_conc"], how="left")["toxic"]
    toxic = toxic.fillna(False).astype(bool).to_numpy()
    reason = np.full(len(wells), "", dtype=object)
    treated = (wells["role"] == TREATED).to_numpy()
    reason[~treated] = "control"
    undefined = treated & wells["inhibition"].isna().to_numpy()
    no_readout = wells[f"median_{readout}"].isna().to_numpy()  # the well's median (well_medians)
    reason[undefined] = "controls do not separate"
    reason[undefined & no_readout] = f"no {readout} value on any of its sites"
    failing = ~wells["plate_id"].map(passes).fillna(False).astype(bool).to_numpy()
    reason[treated & toxic & (reason == "")] = "toxic dose"
    used = reason == ""
    plate_reason = [f"plate QC: Z' of {readout} {zprime.get(p, np.nan):.2f} < {min_zprime}, so not in the hit test"
                    for p in wells["plate_id"]]
    reason = np.where(used & failing, plate_reason, reason)
    return wells.assign(toxic=toxic & treated, used=used, plate_passes_qc=~failing, reason=reason)


def dose_inhibition(sites: pd.DataFrame, used_wells: pd.DataFrame, conf_level: float, intervals) -> pd.DataFrame:
    """Per (treatment, treatment_conc): n_wells_used, and the median inhibition of the
    used wells' sites with its exact sign-test interval (``intervals``, as for e(t,c);
    a descriptive interval over sites, docs/method.md §10)."""
    used = sites[sites["well_id"].isin(used_wells.loc[used_wells["used"], "well_id"])]
    used = used[np.isfinite(used["inhibition"].to_numpy(dtype=np.float64))]
    keys = ["treatment", "treatment_conc"]
    if used.empty:
        return pd.DataFrame(columns=[*keys, "n_wells_used", "median_inhibition", "inhibition_ci_lower", "inhibition_ci_upper"])
    grouped = used.groupby(keys, sort=True)
    table = grouped.agg(n_wells_used=("well_id", "nunique")).reset_index()
    ci = intervals(grouped.ngroup().to_numpy(), used["inhibition"].to_numpy(dtype=np.float64), conf_level)
    ci = ci.set_index("group").reindex(np.arange(len(table)))
    table["median_inhibition"] = ci["median"].to_numpy()
    table["inhibition_ci_lower"] = ci["ci_lower"].to_numpy()
    table["inhibition_ci_upper"] = ci["ci_upper"].to_numpy()
    return table


def treatment_curves(used_wells: pd.DataFrame, doses: pd.DataFrame, bar: float, fdr: float, noise: dict | None = None,
                     bottom: float | None = None) -> pd.DataFrame:
    """One row per treatment that has any treated well or dose: its inhibition curve
    (:func:`inhibition_curve` over its used wells, its error shaped by the screen's
    ``noise`` trend where one is given, its low-dose asymptote held at ``bottom`` where
    one is given), n_toxic_doses, the BH q-value and ``hit`` = q <= ``fdr``.

    Wells on plates that fail QC (``plate_passes_qc`` False, counted in
    ``n_wells_failing_qc``) inform the estimates, but no hit rests on them: where a
    treatment has any, its p-value comes from the same curve fitted to its other wells
    alone (NaN, never a hit, where those are too few)."""
    treated = used_wells[used_wells["role"] == TREATED]
    names = sorted(set(treated["treatment"]) | set(doses["treatment"]))
    rows = []
    for name in names:
        wells = treated[(treated["treatment"] == name) & treated["used"]]
        n_toxic = int(doses.loc[doses["treatment"] == name, "toxic"].sum())
        passing = wells["plate_passes_qc"].to_numpy(dtype=bool)
        if wells.empty:
            status = "every dose toxic" if n_toxic else "no usable well"
            curve = _no_curve(0, status)
        else:
            curve = inhibition_curve(wells["treatment_conc"], wells["inhibition"], bar, noise, bottom)
        if not passing.all():
            tested = wells[passing]
            test = inhibition_curve(tested["treatment_conc"], tested["inhibition"], bar, noise, bottom)
            curve["hit_p_value"] = test["hit_p_value"]
            if not np.isfinite(test["hit_p_value"]):
                curve["inhibition_status"] += f"; no hit test on the plates passing QC: {test['inhibition_status']}"
        rows.append({"treatment": name, **curve, "n_toxic_doses": n_toxic, "n_wells_failing_qc": int((~passing).sum())})
    table = pd.DataFrame(rows, columns=["treatment", *CURVE_COLUMNS, "n_toxic_doses", "n_wells_failing_qc"])
    table = table.astype({**CURVE_COLUMNS, "n_toxic_doses": "int64", "n_wells_failing_qc": "int64"})
    table["hit_q_value"] = benjamini_hochberg(table["hit_p_value"])
    table["hit"] = (table["hit_q_value"] <= fdr).to_numpy()
    return table


def inhibition_settings(efficacy: dict, qc: dict) -> dict:
    """The settings :func:`quantitative_efficacy` takes, from the config's ``efficacy``
    and ``qc`` sections (validated, so their defaults are filled in)."""
    return {
        "inhibition_bar": efficacy["inhibition_bar"],
        "fdr": efficacy["fdr"],
        "confidence": efficacy["confidence"],
        "min_viability": efficacy["min_viability"],
        "min_zprime": qc["min_zprime"],
        "min_control_wells": qc["min_control_wells"],
        "curve_bottom": CURVE_BOTTOMS[efficacy["curve_bottom"]],
    }


def quantitative_efficacy(
    sites: pd.DataFrame,
    nuclei_wells: pd.DataFrame,
    model: str,
    readout: str,
    settings: dict,
    intervals,
) -> dict[str, pd.DataFrame]:
    """The inhibition statistics of one model's scored sites (docs/method.md §10).

    ``sites``: the inference shards (role, well_id, plate_id, well, treatment,
    treatment_conc, z, and ``readout``: "a", "map_mean", "logit" or "z"). ``nuclei_wells``: the per-well
    nucleus table (plate_id, well, treatment, treatment_conc, toxic, no_nuclei).
    ``settings``: inhibition_bar, fdr, confidence, min_zprime, min_control_wells,
    min_viability, curve_bottom (:func:`inhibition_settings`).
    Returns the tables ``sites`` (with inhibition), ``wells``, ``plate_qc``, ``doses``
    (per-dose additions), ``treatments`` (per-treatment additions) and ``noise`` (the
    screen's noise trend, :func:`noise_table`)."""
    readouts = ["z"] if readout == "z" else ["z", readout]
    wells = well_medians(sites, readouts)
    qc = plate_qc(wells, model, readouts, readout, settings["min_control_wells"], settings["min_zprime"])
    references = qc[qc["readout"] == readout].set_index("plate_id")
    sites = sites.assign(
        inhibition=inhibition(
            sites[readout],
            sites["plate_id"].map(references["median_infected"]),
            sites["plate_id"].map(references["median_noninfected"]),
        )
    )
    wells["inhibition"] = sites.groupby("well_id")["inhibition"].median().reindex(wells["well_id"]).to_numpy()
    doses, viability = cytotoxicity(nuclei_wells, settings["min_viability"])
    wells = usable_wells(wells, doses, qc, readout, settings["min_zprime"])
    per_dose = dose_inhibition(sites, wells, settings["confidence"], intervals)
    doses = doses.merge(per_dose, on=["treatment", "treatment_conc"], how="outer")
    doses["n_wells_used"] = doses["n_wells_used"].fillna(0).astype(np.int64)
    doses["toxic"] = doses["toxic"].fillna(False).astype(bool)
    doses["toxic_reason"] = doses["toxic_reason"].fillna("")
    noise = variance_trend(replicate_groups(wells))
    curves = treatment_curves(wells, doses, settings["inhibition_bar"], settings["fdr"], noise, settings["curve_bottom"])
    curves = curves.merge(viability, on="treatment", how="left")
    # Only a hit has an antiviral EC50 to compare with; elsewhere the fitted EC50 is noise.
    window = selectivity_index(curves["viability_cc50_um"], curves["inhibition_ec50_um"])
    curves["selectivity_index"] = np.where(curves["hit"].to_numpy(dtype=bool), window, np.nan)
    return {"sites": sites, "wells": wells, "plate_qc": qc, "doses": doses, "treatments": curves, "noise": noise_table(noise)}


def noise_table(noise: dict | None) -> pd.DataFrame:
    """The noise trend (:func:`variance_trend`) as a table: level, sd, df per bin; empty
    when the screen had too few replicate wells for one (every well's noise is then taken
    as equal)."""
    if noise is None:
        return pd.DataFrame({"level": pd.Series(dtype="float64"), "sd": pd.Series(dtype="float64"), "df": pd.Series(dtype="int64")})
    return pd.DataFrame({"level": noise["level"], "sd": noise["sd"], "df": noise["df"]})
