"""Figures of the quantitative efficacy (docs/method.md §10, §11): inhibition
dose-response panels with the fitted curve, the hit scatter, DEEMD's e(t) against the
inhibition, per-plate QC (Z', SSMD) and plate heatmaps of nuclei, z and inhibition.

Every function takes the tables of ``results/{name}/efficacy/{model}/`` (doses,
treatments, wells, plate_qc) as they are and returns a matplotlib figure; saving is
deemd.plots.save_figure_atomic's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colors

from deemd.doseresponse import logistic4
from deemd.figures import CALL_CATEGORIES, call_categories, plate_grid, plate_shape, row_label, well_position
from deemd.plots import (
    MODEL_COLOURS,
    _panel_grid,
    concentration_grid,
    log_concentration_axis,
    panel_legend,
    plt,
)
from deemd.truth import spearman

HIT_COLOUR = "#C44E52"
TOXIC_COLOUR = "#DD8452"
# The four combinations of DEEMD's call E and the hit call.
CATEGORY_COLOURS = dict(zip(CALL_CATEGORIES, ["#C44E52", "#DD8452", "#4C72B0", "#AAAAAA"]))
# Panel notes stay readable over the points they may cover.
TEXT_BOX = {"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.0}
# The y range of inhibition panels: inhibition may fall below 0 or above 1, within reason.
INHIBITION_LIMITS = (-0.5, 1.5)


def fitted_inhibition(treatment, concentrations) -> np.ndarray | None:
    """The treatment's fitted 4PL inhibition at ``concentrations`` (µM), with emax as the
    top asymptote and its midpoint (the EC50 where the curve rises; a falling curve has a
    midpoint but no EC50); None when its fit failed or a parameter is missing."""
    midpoint = getattr(treatment, "inhibition_midpoint_um", getattr(treatment, "inhibition_ec50_um", np.nan))
    params = [getattr(treatment, "inhibition_bottom", np.nan), getattr(treatment, "inhibition_emax", np.nan), midpoint,
              getattr(treatment, "inhibition_hill", np.nan)]
    if getattr(treatment, "inhibition_status", "ok") != "ok" or not np.all(np.isfinite(params)) or params[2] <= 0:
        return None
    bottom, top, ec50, hill = params
    return logistic4(np.log10(concentrations), bottom, top, np.log10(ec50), hill)


def _inhibition_ylim(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    low = min(-0.1, values.min() - 0.05) if len(values) else -0.1
    high = max(1.1, values.max() + 0.05) if len(values) else 1.1
    return max(low, INHIBITION_LIMITS[0]), min(high, INHIBITION_LIMITS[1])


def _hit_title(treatment) -> str:
    q = getattr(treatment, "hit_q_value", np.nan)
    q_text = f"q = {q:.2g}" if np.isfinite(q) else "no q"
    call = "hit" if bool(getattr(treatment, "hit", False)) else "not a hit"
    return f"#{treatment.rank} {treatment.treatment}: {call} ({q_text})"


def inhibition_dose_response_figure(doses: pd.DataFrame, wells: pd.DataFrame, treatments: pd.DataFrame, bar: float,
                                    columns: int = 4, title: str | None = None):
    """One panel per treatment of ``treatments`` (in its order; ``rank``, ``hit``,
    ``hit_q_value`` and the inhibition_* fit columns): the per-dose median inhibition
    (``doses``: median_inhibition, inhibition_ci_lower / _upper, toxic) against
    concentration (log axis) with its interval as error bar, doses without an interval as
    grey crosses, each treated well's inhibition (``wells``: role, used; unused wells
    hollow), toxic doses shaded, the fitted 4PL curve (inhibition_bottom, inhibition_emax
    as top, inhibition_ec50_um, inhibition_hill), the estimate inhibition_max at
    inhibition_best_conc_um as a diamond and the inhibition bar as a dashed line."""
    n = max(len(treatments), 1)
    figure, axes = _panel_grid(n, columns, 3.0, 2.7)
    if len(treatments) == 0:
        axes[0].text(0.5, 0.5, "no treatment with an inhibition", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    grid = concentration_grid(doses)
    treated = wells[wells["role"] == "treated"] if "role" in wells.columns else wells
    rng = np.random.default_rng(0)
    for ax, top in zip(axes, treatments.itertuples()):
        rows = doses[doses["treatment"] == top.treatment].sort_values("treatment_conc")
        shown = [rows["median_inhibition"]]
        for conc in rows.loc[rows["toxic"].astype("boolean").fillna(False).to_numpy(dtype=bool), "treatment_conc"]:
            ax.axvspan(conc / 10**0.15, conc * 10**0.15, color=TOXIC_COLOUR, alpha=0.2, linewidth=0, label="toxic dose")
        own = treated[treated["treatment"] == top.treatment]
        if len(own):
            # Small multiplicative jitter so that replicate wells of a dose do not overlap.
            x = own["treatment_conc"].to_numpy(dtype=float) * 10 ** rng.uniform(-0.04, 0.04, len(own))
            used = own["used"].astype("boolean").fillna(False).to_numpy(dtype=bool)
            y = own["inhibition"].to_numpy(dtype=float)
            ax.scatter(x[used], y[used], s=9, color="grey", alpha=0.7, linewidths=0, label="well", zorder=2)
            ax.scatter(x[~used], y[~used], s=9, facecolors="none", edgecolors="grey", linewidths=0.6, label="well not used", zorder=2)
            shown.append(own["inhibition"])
        with_ci = rows[rows["inhibition_ci_lower"].notna() & rows["inhibition_ci_upper"].notna()]
        median = with_ci["median_inhibition"].to_numpy(dtype=float)
        ax.errorbar(
            with_ci["treatment_conc"], median,
            yerr=[median - with_ci["inhibition_ci_lower"].to_numpy(dtype=float), with_ci["inhibition_ci_upper"].to_numpy(dtype=float) - median],
            fmt="o", color="black", ecolor="black", elinewidth=1, capsize=2, markersize=4, label="dose median (interval)", zorder=3,
        )
        without = rows[~rows.index.isin(with_ci.index) & rows["median_inhibition"].notna()]
        if len(without):
            ax.plot(without["treatment_conc"], without["median_inhibition"], "x", color="grey", label="dose median, no interval", zorder=3)
        curve = fitted_inhibition(top, grid)
        if curve is not None:
            ax.plot(grid, curve, color=HIT_COLOUR, linewidth=1.3, label="4PL fit", zorder=4)
            ec50 = top.inhibition_ec50_um
            label = f"EC50 {ec50:.3g} µM" if np.isfinite(ec50) else "no EC50: falls with dose"
            ax.text(0.03, 0.95, label, transform=ax.transAxes, va="top", fontsize=7, bbox=TEXT_BOX)
        else:
            status = getattr(top, "inhibition_status", "")
            ax.text(0.03, 0.95, f"no fit: {status}", transform=ax.transAxes, va="top", fontsize=6, color="grey", bbox=TEXT_BOX)
        best = getattr(top, "inhibition_best_conc_um", np.nan)
        if np.isfinite(best) and np.isfinite(top.inhibition_max):
            ax.plot([best], [top.inhibition_max], "D", color=HIT_COLOUR, markeredgecolor="black", markersize=5,
                    label="inhibition_max", zorder=5)
        ax.axhline(bar, color="#4C72B0", linestyle="--", linewidth=1, label=f"bar = {bar:g}")
        ax.axhline(0, color="black", linewidth=0.5, linestyle=":")
        log_concentration_axis(ax, grid)
        ax.set_ylim(*_inhibition_ylim(pd.concat(shown)))
        ax.set_title(_hit_title(top), fontsize=8, color=HIT_COLOUR if bool(top.hit) else "black")
        ax.tick_params(labelsize=7)
    per_row = axes[0].get_subplotspec().get_gridspec().ncols
    for i, ax in enumerate(axes):
        if i + per_row >= len(axes):
            ax.set_xlabel("concentration (µM)", fontsize=8)
        if i % per_row == 0:
            ax.set_ylabel("inhibition", fontsize=8)
    legend = panel_legend(figure, axes)
    if title:
        figure.suptitle(title)
    # The legend's two lines take about 0.6 inch, whatever the number of panel rows.
    figure.tight_layout(rect=(0, min(0.3, 0.6 / figure.get_figheight()) if legend else 0, 1, 1))
    return figure


def hit_scatter_figure(treatments: pd.DataFrame, bar: float, fdr: float, model: str, label_top: int = 5):
    """The screen's hit call: inhibition_max (x, with inhibition_max_se as error bar)
    against -log10 hit_q_value (y), hits coloured, a dashed line at the inhibition bar and
    one at -log10 fdr; the ``label_top`` best-ranked hits are named. q-values of 0 are
    drawn at the smallest positive one / 10 (1e-16 if none); treatments without a q or an
    estimate are left out and counted in the title."""
    figure, ax = plt.subplots(figsize=(5.2, 4.2))
    q = treatments["hit_q_value"].to_numpy(dtype=float)
    x = treatments["inhibition_max"].to_numpy(dtype=float)
    se = treatments["inhibition_max_se"].to_numpy(dtype=float) if "inhibition_max_se" in treatments.columns else np.full(len(x), np.nan)
    hit = treatments["hit"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    drawn = np.isfinite(q) & np.isfinite(x)
    positive = q[drawn & (q > 0)]
    floor = positive.min() / 10 if len(positive) else 1e-16
    y = -np.log10(np.clip(q, floor, 1.0))
    for selected, colour, label in ((drawn & ~hit, "grey", "not a hit"), (drawn & hit, MODEL_COLOURS.get(model, HIT_COLOUR), "hit")):
        if selected.any():
            ax.errorbar(x[selected], y[selected], xerr=np.where(np.isfinite(se[selected]), se[selected], 0), fmt="o", markersize=4,
                        color=colour, ecolor=colour, elinewidth=0.6, alpha=0.85, label=f"{label} ({int(selected.sum())})")
    ax.axvline(bar, color="#4C72B0", linestyle="--", linewidth=1, label=f"bar = {bar:g}")
    ax.axhline(-np.log10(fdr), color="black", linestyle=":", linewidth=1, label=f"FDR = {fdr:g}")
    labelled = treatments[drawn & hit].sort_values("rank", kind="mergesort").head(max(label_top, 0))
    for row in labelled.itertuples():
        ax.annotate(row.treatment, (row.inhibition_max, -np.log10(max(row.hit_q_value, floor))), fontsize=6,
                    xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("inhibition_max (best non-toxic dose)")
    ax.set_ylabel("-log10 q (Benjamini-Hochberg)")
    ax.set_xlim(*_inhibition_ylim(x[drawn]))
    ax.set_ylim(bottom=0)
    left_out = int((~drawn).sum())
    ax.set_title(f"model {model}: {int(hit.sum())} hits of {len(treatments)}" + (f" ({left_out} without q)" if left_out else ""), fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    return figure


def deemd_vs_inhibition_figure(treatments: pd.DataFrame, zeta: float, bar: float, model: str, label_top: int = 5):
    """DEEMD's score e(t) (y) against inhibition_max (x), one point per treatment coloured
    by the four combinations of the calls E (``effective``) and ``hit``, lines at zeta and
    at the inhibition bar, Spearman rho in the title; the ``label_top`` best-ranked
    treatments are named."""
    figure, ax = plt.subplots(figsize=(5.2, 4.4))
    x = treatments["inhibition_max"].to_numpy(dtype=float)
    y = treatments["e_t"].to_numpy(dtype=float)
    categories = call_categories(treatments["effective"], treatments["hit"])
    drawn = np.isfinite(x) & np.isfinite(y)
    for category in CALL_CATEGORIES:
        selected = drawn & (categories == category)
        if selected.any():
            ax.scatter(x[selected], y[selected], s=18, color=CATEGORY_COLOURS[category], alpha=0.85, label=f"{category} ({int(selected.sum())})")
    ax.axhline(zeta, color="#4C72B0", linestyle="--", linewidth=0.8, label=f"zeta = {zeta:g}")
    ax.axvline(bar, color="black", linestyle=":", linewidth=0.8, label=f"bar = {bar:g}")
    for row in treatments[drawn].sort_values("rank", kind="mergesort").head(max(label_top, 0)).itertuples():
        ax.annotate(row.treatment, (row.inhibition_max, row.e_t), fontsize=6, xytext=(3, 2), textcoords="offset points")
    result = spearman(x, y)
    rho = f"{result['rho']:.2f}" if np.isfinite(result["rho"]) else "NA"
    left_out = int((~drawn).sum())
    ax.set_title(f"model {model}: Spearman rho = {rho} (n={result['n']})" + (f", {left_out} without a score" if left_out else ""), fontsize=9)
    ax.set_xlabel("inhibition_max")
    ax.set_ylabel("DEEMD e(t)")
    ax.set_xlim(*_inhibition_ylim(x[drawn]))
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    return figure


# Z' can be far below 0 on a plate without separation; the panels stop here.
ZPRIME_FLOOR = -2.0


READOUT_NOTES = {"z": " (site score)", "a": " (a: infected share of the map)", "map_mean": " (mean of the map)",
                 "logit": " (W: logit, the mean of its activation map)"}


def plate_qc_figure(qc: pd.DataFrame, min_zprime: float):
    """Per-plate QC of every model: one column per readout (z, a), the robust Z' (top,
    values below ZPRIME_FLOOR drawn at it) and SSMD (bottom) of each plate, one colour per
    model; plates that fail (``passes`` False) as red crosses, plates normalised to the
    experiment's pooled controls (control_source "experiment") as squares, the
    ``min_zprime`` line in the Z' panels. ``qc`` is the plate_qc tables of the models
    concatenated (plate_id, model, readout, zprime, ssmd, control_source, passes)."""
    present = set(qc["readout"])
    readouts = ["z", *sorted(present - {"z"})] if "z" in present else sorted(present) or ["z"]
    plates = sorted(qc["plate_id"].unique())
    models = list(dict.fromkeys(qc["model"]))
    width = max(4.5, 0.45 * len(plates) * max(len(models), 1) / 2 + 2.5)
    figure, axes = plt.subplots(2, len(readouts), figsize=(width * len(readouts), 6.4), squeeze=False)
    positions = {plate: i for i, plate in enumerate(plates)}
    step = 0.7 / max(len(models), 1)
    for j, readout in enumerate(readouts):
        for i, (column, label) in enumerate((("zprime", "robust Z'"), ("ssmd", "robust SSMD"))):
            ax = axes[i, j]
            for m, model in enumerate(models):
                rows = qc[(qc["model"] == model) & (qc["readout"] == readout)]
                x = rows["plate_id"].map(positions).to_numpy(dtype=float) + (m - (len(models) - 1) / 2) * step
                values = rows[column].to_numpy(dtype=float)
                if column == "zprime":
                    values = np.maximum(values, ZPRIME_FLOOR)
                passes = rows["passes"].astype("boolean").fillna(False).to_numpy(dtype=bool)
                pooled = (rows["control_source"] == "experiment").to_numpy() if "control_source" in rows.columns else np.zeros(len(rows), bool)
                colour = MODEL_COLOURS.get(model, "black")
                for selected, marker in ((~pooled, "o"), (pooled, "s")):
                    if selected.any():
                        ax.scatter(x[selected], values[selected], marker=marker, s=22, color=colour,
                                   label=f"model {model}" + (", pooled controls" if marker == "s" else ""))
                if (~passes).any():
                    ax.scatter(x[~passes], values[~passes], marker="o", s=110, facecolors="none", edgecolors="#D62728",
                               linewidths=1.4, label="plate fails QC")
            if column == "zprime":
                ax.axhline(min_zprime, color="black", linestyle="--", linewidth=0.9, label=f"min_zprime = {min_zprime:g}")
                shown = np.maximum(qc[column].to_numpy(dtype=float), ZPRIME_FLOOR)
                low = min(min_zprime - 0.2, np.nanmin(shown) - 0.1) if np.isfinite(shown).any() else ZPRIME_FLOOR
                ax.set_ylim(max(low, ZPRIME_FLOOR - 0.1), 1.05)
            else:
                ax.axhline(0, color="black", linewidth=0.5, linestyle=":")
            ax.set_xticks(range(len(plates)), plates if i == 1 else [""] * len(plates), rotation=45, ha="right", fontsize=7)
            ax.set_xlim(-0.6, max(len(plates), 1) - 0.4)
            ax.set_ylabel(f"{label} on {readout}", fontsize=8)
            if i == 0:
                ax.set_title(f"readout {readout}" + READOUT_NOTES.get(readout, ""), fontsize=9)
    legend = panel_legend(figure, axes.ravel(), ncol=4)
    figure.tight_layout(rect=(0, 0.1 if legend else 0, 1, 1))
    return figure


PLATE_MAP_PANELS = [
    ("nuclei_count", "nuclei count", "viridis", None),
    ("median_z", "median z", "magma_r", (0.0, 1.0)),
    ("inhibition", "inhibition", "RdYlBu", (0.0, 1.0)),
]


def plate_maps_figure(nuclei_wells: pd.DataFrame, wells: pd.DataFrame, model: str):
    """For each plate, rows x columns heatmaps of the nucleus count (``nuclei_wells``:
    plate_id, well, nuclei_count, toxic), the median z and the inhibition (``wells``:
    plate_id, well, role, median_z, inhibition, toxic, used) of every well; wells not
    imaged or not scored are blank, toxic wells crossed, control wells ringed (red:
    infected, blue: non-infected). The plate format (96, 384, 1536) comes from the well
    names; each quantity has one colour scale over all plates."""
    keep = ["plate_id", "well", "nuclei_count", "toxic"]
    nuclei = nuclei_wells[[c for c in keep if c in nuclei_wells.columns]].rename(columns={"toxic": "toxic_nuclei"})
    merged = nuclei.merge(wells, on=["plate_id", "well"], how="outer", validate="one_to_one")
    toxic = merged.get("toxic", pd.Series(False, index=merged.index)).astype("boolean").fillna(False)
    if "toxic_nuclei" in merged.columns:
        toxic = toxic | merged["toxic_nuclei"].astype("boolean").fillna(False)
    merged["any_toxic"] = toxic.to_numpy(dtype=bool)
    plates = sorted(merged["plate_id"].unique())
    rows, columns = well_position(merged["well"])
    merged["row"], merged["column"] = rows, columns
    shape = plate_shape(rows, columns)
    panel_w = 3.4 * shape[1] / 24 + 0.9
    panel_h = 3.4 * shape[0] / 24 + 0.6
    figure, axes = plt.subplots(max(len(plates), 1), len(PLATE_MAP_PANELS), figsize=(panel_w * 3 + 0.8, panel_h * max(len(plates), 1) + 0.6),
                                squeeze=False)
    norms = {}
    for column, _, _, limits in PLATE_MAP_PANELS:
        values = merged[column].to_numpy(dtype=float) if column in merged.columns else np.array([])
        finite = values[np.isfinite(values)]
        low, high = limits if limits else ((finite.min(), finite.max()) if len(finite) else (0.0, 1.0))
        norms[column] = colors.Normalize(low, high if high > low else low + 1)
    role = merged["role"] if "role" in merged.columns else pd.Series("", index=merged.index)
    tick_step = max(1, shape[1] // 12)
    for p, plate in enumerate(plates):
        on_plate = merged[merged["plate_id"] == plate]
        for k, (column, label, cmap, _) in enumerate(PLATE_MAP_PANELS):
            ax = axes[p, k]
            values = on_plate[column] if column in on_plate.columns else pd.Series(np.nan, index=on_plate.index)
            grid = plate_grid(on_plate["row"], on_plate["column"], values, shape)
            colour_map = plt.get_cmap(cmap).with_extremes(bad="white")
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=colour_map, norm=norms[column], interpolation="nearest", aspect="equal")
            crossed = on_plate[on_plate["any_toxic"]]
            ax.scatter(crossed["column"], crossed["row"], marker="x", s=10, color="black", linewidths=0.7)
            for name, edge in (("infected_control", "#C44E52"), ("noninfected_control", "#4C72B0")):
                ringed = on_plate[role.loc[on_plate.index] == name]
                ax.scatter(ringed["column"], ringed["row"], marker="o", s=22, facecolors="none", edgecolors=edge, linewidths=0.8)
            ax.set_xticks(range(0, shape[1], tick_step), [str(c + 1) for c in range(0, shape[1], tick_step)], fontsize=5)
            ax.set_yticks(range(0, shape[0], max(1, tick_step)), [row_label(r) for r in range(0, shape[0], max(1, tick_step))], fontsize=5)
            ax.set_title(f"{plate}: {label}", fontsize=7)
            figure.colorbar(image, ax=ax, fraction=0.035, pad=0.02, extend="both" if column == "inhibition" else "neither").ax.tick_params(labelsize=5)
    if not plates:
        axes[0, 0].text(0.5, 0.5, "no plate", ha="center", va="center", transform=axes[0, 0].transAxes)
    figure.suptitle(f"model {model}: per-plate maps (x: toxic well; rings: infected (red) and non-infected (blue) controls)", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    return figure
