"""Dose-response curves (docs/method.md §11): a four-parameter logistic of the dose efficacy
e(t,c) in log10 concentration, fitted per treatment with scipy's ``curve_fit``.

    e(c) = bottom + (top - bottom) / (1 + 10^((log10 EC50 - log10 c) * hill)),  hill > 0

``bottom`` is the efficacy at low doses, ``top`` at high doses (top < bottom: efficacy
falls with dose, e.g. a toxic compound). A fit never raises on awkward data: too few
doses, a flat response or a failed optimisation give NaN parameters and a status.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

OK = "ok"
PARAMETERS = ["bottom", "top", "log_ec50", "hill"]
FIT_COLUMNS = {
    "treatment": "object",
    "n_points": "int64",
    "bottom": "float64",
    "top": "float64",
    "log_ec50": "float64",
    "ec50_um": "float64",
    "hill": "float64",
    "rmse": "float64",
    "status": "object",
}
# Hill slopes outside this range are steps or lines; bounding them keeps the fit stable.
HILL_BOUNDS = (0.1, 10.0)
# A parameter within this share of its bounds' width of one of them is on that bound.
BOUND_TOLERANCE = 1e-4


def logistic4(log_c, bottom: float, top: float, log_ec50: float, hill: float):
    """The four-parameter logistic at log10 concentrations ``log_c``."""
    log_c = np.asarray(log_c, dtype=np.float64)
    exponent = np.clip((log_ec50 - log_c) * hill, -60, 60)
    return bottom + (top - bottom) / (1.0 + np.power(10.0, exponent))


def logistic4_jacobian(log_c, bottom: float, top: float, log_ec50: float, hill: float) -> np.ndarray:
    """d logistic4 / d (bottom, top, log_ec50, hill) at ``log_c``, (len(log_c), 4), in closed
    form: with s = 1 / (1 + 10^z), z = (log_ec50 - log_c) hill (clipped as in logistic4,
    where the derivatives in log_ec50 and hill are 0), the curve is bottom + (top - bottom) s
    and ds/dz = -ln(10) s (1 - s)."""
    log_c = np.asarray(log_c, dtype=np.float64)
    raw = (log_ec50 - log_c) * hill
    exponent = np.clip(raw, -60, 60)
    share = 1.0 / (1.0 + np.power(10.0, exponent))
    slope = -np.log(10.0) * share * (1.0 - share) * (top - bottom) * (raw == exponent)
    return np.column_stack([1.0 - share, share, slope * hill, slope * (log_ec50 - log_c)])


def _failed(n_points: int, status: str) -> dict:
    return {"n_points": n_points, **{name: np.nan for name in PARAMETERS}, "ec50_um": np.nan, "rmse": np.nan, "status": status,
            "covariance": np.full((4, 4), np.nan), "at_bound": np.zeros(4, dtype=bool), "held": np.zeros(4, dtype=bool)}


def fit_logistic(concentrations, efficacies, min_points: int = 4, flat_tolerance: float = 1e-3, limits=None,
                 ec50_margin: float = 1.0, bottom: float | None = None) -> dict:
    """Fit :func:`logistic4` to efficacies against concentrations (µM).

    ``bottom`` and ``top`` are kept within one data range of the data, and within
    ``limits`` = (low, high) when given (e(t,c) lies in [0, 1]); log10 EC50 within
    ``ec50_margin`` decades of the tested concentrations; hill within HILL_BOUNDS.
    ``bottom``, when given, holds the low-dose asymptote at that value (a three-parameter
    fit: for a response normalised to untreated controls, no compound means no effect).
    Points with a NaN efficacy (a dose without an interval) or a concentration <= 0 are
    left out. Returns a dict with n_points, bottom, top, log_ec50, ec50_um, hill, rmse
    and status: "ok", or why no curve was fitted ("too few doses (...)", "flat response",
    "fit failed: ..."), in which case the parameters are NaN; ``covariance`` (curve_fit's;
    zero in the row and column of a held bottom), ``at_bound``, which of (bottom, top,
    log_ec50, hill) ended on one of their bounds, and ``held``, which were not estimated
    (held by a bound or by ``bottom``).
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    c = np.asarray(concentrations, dtype=np.float64)
    e = np.asarray(efficacies, dtype=np.float64)
    if c.shape != e.shape or c.ndim != 1:
        raise ValueError(f"concentrations and efficacies must be 1-d of one length, got {c.shape} and {e.shape}")
    keep = np.isfinite(c) & (c > 0) & np.isfinite(e)
    c, e = c[keep], e[keep]
    n = int(len(e))
    n_levels = len(np.unique(c))
    if n < min_points or n_levels < 3:
        return _failed(n, f"too few doses ({n} at {n_levels} conc.)")
    if np.ptp(e) < flat_tolerance:
        return _failed(n, "flat response")
    x = np.log10(c)
    order = np.argsort(x, kind="stable")
    span = float(np.ptp(e))
    low, high = e.min() - span, e.max() + span
    if limits is not None:
        low, high = max(low, limits[0]), min(high, limits[1])
    lower = [low, low, x.min() - ec50_margin, HILL_BOUNDS[0]]
    upper = [high, high, x.max() + ec50_margin, HILL_BOUNDS[1]]
    low_end = float(np.mean(e[x <= x[order][min(1, n - 1)]]))
    high_end = float(np.mean(e[x >= x[order][max(n - 2, 0)]]))
    middle = 0.5 * (low_end + high_end)
    # Start at the concentration where the data cross half-way between the ends.
    crossing = x[order][np.argmin(np.abs(e[order] - middle))]
    start = np.clip([low_end, high_end, crossing, 1.0], lower, upper)
    fixed = np.array([bottom is not None, False, False, False])
    if bottom is not None:
        lower[0] = upper[0] = start[0] = float(bottom)

    def curve(log_c, *free):
        params = start.astype(np.float64)
        params[~fixed] = free
        return logistic4(log_c, *params)

    def jacobian(log_c, *free):
        params = start.astype(np.float64)
        params[~fixed] = free
        return logistic4_jacobian(log_c, *params)[:, ~fixed]

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            estimated, free_covariance = curve_fit(curve, x, e, p0=start[~fixed], jac=jacobian,
                                                   bounds=(np.array(lower)[~fixed], np.array(upper)[~fixed]), maxfev=20000)
    except (RuntimeError, ValueError, FloatingPointError) as error:
        return _failed(n, f"fit failed: {error}")
    if not np.all(np.isfinite(estimated)):
        return _failed(n, "fit failed: non-finite parameters")
    params = start.astype(np.float64)
    params[~fixed] = estimated
    covariance = np.zeros((4, 4))
    covariance[np.ix_(~fixed, ~fixed)] = free_covariance
    bottom, top, log_ec50, hill = (float(v) for v in params)
    width = np.subtract(upper, lower)
    at_bound = ~fixed & ((params <= np.add(lower, BOUND_TOLERANCE * width)) | (params >= np.subtract(upper, BOUND_TOLERANCE * width)))
    rmse = float(np.sqrt(np.mean((logistic4(x, *params) - e) ** 2)))
    return {
        "n_points": n,
        "bottom": bottom,
        "top": top,
        "log_ec50": log_ec50,
        "ec50_um": float(10.0**log_ec50),
        "hill": hill,
        "rmse": rmse,
        "status": OK,
        # (bottom, top, log_ec50, hill) covariance scaled by the residual variance
        # (curve_fit's default); inf where the data do not determine a parameter.
        "covariance": np.asarray(covariance, dtype=np.float64),
        "at_bound": np.asarray(at_bound, dtype=bool),
        "held": np.asarray(at_bound | fixed, dtype=bool),
    }


def fit_dose_table(doses: pd.DataFrame, **kwargs) -> pd.DataFrame:
    """One fit per treatment of a dose table (treatment, treatment_conc, e_dose), in
    treatment order; keyword arguments go to :func:`fit_logistic`."""
    missing = [c for c in ("treatment", "treatment_conc", "e_dose") if c not in doses.columns]
    if missing:
        raise ValueError(f"dose table lacks columns {missing}")
    rows = [
        {"treatment": treatment, **fit_logistic(group["treatment_conc"], group["e_dose"], **kwargs)}
        for treatment, group in doses.groupby("treatment", sort=True)
    ]
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in FIT_COLUMNS.items()})
    return pd.DataFrame(rows)[list(FIT_COLUMNS)].astype(FIT_COLUMNS)


def fitted_curve(fit, concentrations) -> np.ndarray:
    """The fitted efficacy at ``concentrations`` (µM); NaN where the fit has no curve."""
    c = np.asarray(concentrations, dtype=np.float64)
    if fit.get("status") != OK:
        return np.full(c.shape, np.nan)
    return logistic4(np.log10(c), fit["bottom"], fit["top"], fit["log_ec50"], fit["hill"])
