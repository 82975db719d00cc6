"""Figures (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from deemd.io import write_atomic  # noqa: E402
from deemd.metadata import INFECTED, MOCK, UV  # noqa: E402


def save_figure_atomic(figure, path: str | Path, **kwargs) -> None:
    """Save a matplotlib figure under a temporary name, rename it into place, and close
    it (pyplot keeps every open figure alive)."""
    write_atomic(path, lambda tmp: figure.savefig(tmp, **kwargs), keep_suffix=True)  # the suffix picks the format
    plt.close(figure)


GROUP_COLOURS = {"non-infected": "#4C72B0", "infected": "#C44E52"}


def nuclei_count_figure(wells: pd.DataFrame, test: dict):
    """Nucleus counts per well, untreated infected vs non-infected (Mock + UV), overall
    (violin + points, Mann-Whitney p in the title) and per plate (box plots)."""
    untreated = wells[wells["treatment"].isna() & ~wells["no_nuclei"]].copy()
    untreated["group"] = np.where(untreated["disease_condition"] == INFECTED, "infected", "non-infected")
    untreated = untreated[untreated["disease_condition"].isin([INFECTED, MOCK, UV])]
    plates = sorted(untreated["plate_id"].unique())
    figure, (ax_all, ax_plate) = plt.subplots(
        1, 2, figsize=(4 + 0.9 * max(len(plates), 2), 4), gridspec_kw={"width_ratios": [1, max(len(plates), 2) / 2]}
    )
    groups = ["non-infected", "infected"]
    data = [untreated.loc[untreated["group"] == g, "nuclei_count"].to_numpy() for g in groups]
    present = [i for i, d in enumerate(data) if len(d)]
    if present:
        parts = ax_all.violinplot([data[i] for i in present], positions=present, showmedians=True)
        for body, i in zip(parts["bodies"], present):
            body.set_facecolor(GROUP_COLOURS[groups[i]])
    rng = np.random.default_rng(0)
    for i, values in enumerate(data):
        ax_all.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=6, color=GROUP_COLOURS[groups[i]], alpha=0.6)
    ax_all.set_xticks([0, 1], [f"{g}\n(n={len(d)})" for g, d in zip(groups, data)])
    ax_all.set_ylabel("nuclei per well")
    p = test.get("p_value", np.nan)
    ax_all.set_title(f"Mann-Whitney two-sided p = {p:.2g}" if np.isfinite(p) else "Mann-Whitney: too few wells")
    width = 0.38
    for j, group in enumerate(groups):
        series = [untreated.loc[(untreated["plate_id"] == plate) & (untreated["group"] == group), "nuclei_count"] for plate in plates]
        positions = np.arange(len(plates)) + (j - 0.5) * width
        box = ax_plate.boxplot(series, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False)
        for patch in box["boxes"]:
            patch.set_facecolor(GROUP_COLOURS[group])
    ax_plate.set_xticks(np.arange(len(plates)), plates, rotation=45, ha="right")
    ax_plate.set_title("per plate")
    ax_plate.legend(
        [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLOURS[g]) for g in groups], groups, loc="lower right", fontsize=8
    )
    figure.tight_layout()
    return figure


def training_curves_figure(history: pd.DataFrame, title: str):
    """Training loss and validation average precision per epoch; the best epoch marked."""
    figure, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(8, 3.2))
    ax_loss.plot(history["epoch"], history["train_loss"], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (weighted BCE)")
    ax_ap.plot(history["epoch"], history["val_ap"], marker="o", color="#C44E52")
    best = history[history["best"]]
    if len(best):
        last_best = best.iloc[-1]
        ax_ap.axvline(last_best["epoch"], color="grey", linestyle=":", label=f"best: epoch {int(last_best['epoch'])}")
        ax_ap.legend(loc="lower right", fontsize=8)
    ax_ap.set_xlabel("epoch")
    ax_ap.set_ylabel("validation average precision")
    ax_ap.set_ylim(min(0.5, float(history["val_ap"].min()) - 0.02), 1.005)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


MODEL_COLOURS = {"M": "#C44E52", "W": "#4C72B0", "V": "#55A868"}


def pr_curves_figure(scores: pd.DataFrame, ap: pd.DataFrame):
    """Precision-recall curves per model (columns model, label, score), AP in the legend."""
    from sklearn.metrics import precision_recall_curve

    figure, ax = plt.subplots(figsize=(4.5, 4))
    for model, group in scores.groupby("model", sort=False):
        precision, recall, _ = precision_recall_curve(group["label"], group["score"])
        row = ap.loc[ap["model"] == model].iloc[0]
        mark = " (below chance)" if row.get("below_chance", False) else ""
        ax.plot(recall, precision, label=f"{model}: AP {row['average_precision']:.3f}{mark}", color=MODEL_COLOURS.get(model))
    prevalence = scores.groupby("model")["label"].mean().iloc[0] if len(scores) else 0
    ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_title("untreated test sites")
    ax.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return figure


def k_selection_figure(table: pd.DataFrame, expected_area: float, moi: float):
    """Infection-map area above eta per k (infected validation sites) against the Poisson
    expectation, and validation AP per k; with columns chance_ap and below_chance, the
    chance level and a red cross on every k whose model ranks below it."""
    figure, (ax_area, ax_ap) = plt.subplots(1, 2, figsize=(8, 3.4))
    ks = table["k"].to_numpy()
    ax_area.plot(ks, table["area_infected_median"], marker="o", color="#C44E52", label="infected sites (median)")
    ax_area.fill_between(ks, table["area_infected_q25"], table["area_infected_q75"], color="#C44E52", alpha=0.2)
    ax_area.plot(ks, table["area_non_infected_median"], marker="o", color="#4C72B0", label="non-infected sites (median)")
    ax_area.axhline(expected_area, color="black", linestyle="--", label=f"1 - exp(-MOI) = {expected_area:.2f} (MOI {moi:g})")
    ax_area.set_xscale("log")
    ax_area.set_xticks(ks, [str(k) for k in ks])
    ax_area.set_xlabel("k")
    ax_area.set_ylabel("map area above eta")
    ax_area.set_ylim(0, 1)
    ax_area.legend(fontsize=7, loc="upper right")
    ax_ap.plot(ks, table["val_ap"], marker="o", color="black")
    if "chance_ap" in table:
        ax_ap.axhline(table["chance_ap"].iloc[0], color="grey", linestyle=":", linewidth=1, label="chance (share infected)")
        broken = table[table["below_chance"].astype(bool)]
        if len(broken):
            ax_ap.scatter(broken["k"], broken["val_ap"], marker="x", s=80, color="#C44E52", zorder=3,
                          label="below chance: not a result (k = " + ", ".join(str(k) for k in broken["k"]) + ")")
        ax_ap.legend(fontsize=7, loc="lower left")
    ax_ap.set_ylim(0, 1.02)
    ax_ap.set_xscale("log")
    ax_ap.set_xticks(ks, [str(k) for k in ks])
    ax_ap.set_xlabel("k")
    ax_ap.set_ylabel("validation average precision")
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------
# Figures and report (docs/method.md §11): dose-response panels, infection maps, model comparison,
# correlation with a reference score table.


def _panel_grid(n: int, columns: int, width: float, height: float):
    """A figure with ``n`` panels in rows of ``columns``; unused axes hidden."""
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return figure, axes.ravel()[:n]


def log_concentration_axis(ax, grid) -> None:
    """A log concentration x axis over ``grid`` (µM), ticked at 1 and 3 per decade
    (half-log doses) and labelled as plain numbers."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 3.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(grid[0], grid[-1])


def concentration_grid(doses: pd.DataFrame, n: int = 200) -> np.ndarray:
    """``n`` log-spaced concentrations (µM) from the lowest positive dose / 1.5 to the
    highest x 1.5 of a dose table (0.01-10 µM when it has none)."""
    positive = doses.loc[doses["treatment_conc"] > 0, "treatment_conc"]
    c_min, c_max = (positive.min(), positive.max()) if len(positive) else (0.01, 10.0)
    return np.geomspace(c_min / 1.5, c_max * 1.5, n)


def panel_legend(figure, axes, ncol: int = 6) -> bool:
    """One legend below the panels with each label of any panel once, in rows of at most
    ``ncol`` entries; False when there is none."""
    legend = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), ncol), fontsize=8, frameon=False)
    return bool(legend)


def dose_response_figure(doses: pd.DataFrame, fits: pd.DataFrame, treatments: pd.DataFrame, zeta: float, columns: int = 4, title: str | None = None):
    """One panel per treatment of ``treatments`` (in its order: rank, treatment, e_t):
    the dose efficacy e(t,c) against concentration (log axis) with the sign-test interval
    of 1 - median z as error bar (e(t,c) is its lower end), doses too small for an interval
    as grey crosses at 1 - median z, the fitted logistic curve (``fits``: one row per
    treatment, from deemd.doseresponse.fit_dose_table) and the line e = zeta."""
    from deemd.doseresponse import fitted_curve

    fits = fits.set_index("treatment") if "treatment" in fits.columns else fits
    n = max(len(treatments), 1)
    figure, axes = _panel_grid(n, columns, 3.0, 2.6)
    if len(treatments) == 0:
        axes[0].text(0.5, 0.5, "no treatment with a score", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    grid = concentration_grid(doses)
    for ax, top in zip(axes, treatments.itertuples()):
        rows = doses[doses["treatment"] == top.treatment].sort_values("treatment_conc")
        with_ci = rows[rows["e_dose"].notna()]
        upper = 1.0 - with_ci["ci_lower"].to_numpy()
        ax.errorbar(
            with_ci["treatment_conc"], with_ci["e_dose"],
            yerr=[np.zeros(len(with_ci)), upper - with_ci["e_dose"].to_numpy()],
            fmt="o", color="#C44E52", ecolor="#C44E52", elinewidth=1, capsize=2, markersize=4, label="e(t,c)",
        )
        ax.plot(with_ci["treatment_conc"], 1.0 - with_ci["median_z"], "_", color="black", markersize=7, label="1 - median z")
        without = rows[rows["e_dose"].isna()]
        if len(without):
            ax.plot(without["treatment_conc"], 1.0 - without["median_z"], "x", color="grey", label="no interval")
        fit = fits.loc[top.treatment] if top.treatment in fits.index else None
        if fit is not None and fit["status"] == "ok":
            ax.plot(grid, fitted_curve(fit, grid), color="black", linewidth=1.2, label="logistic fit")
            ax.text(0.03, 0.95, f"EC50 {fit['ec50_um']:.3g} µM", transform=ax.transAxes, va="top", fontsize=7)
        elif fit is not None:
            ax.text(0.03, 0.95, f"no fit: {fit['status']}", transform=ax.transAxes, va="top", fontsize=6, color="grey")
        ax.axhline(zeta, color="#4C72B0", linestyle="--", linewidth=1, label=f"zeta = {zeta:g}")
        log_concentration_axis(ax, grid)
        ax.set_ylim(-0.05, 1.05)
        e_t = f"{top.e_t:.2f}" if np.isfinite(top.e_t) else "NA"
        ax.set_title(f"#{top.rank} {top.treatment}  e(t) = {e_t}", fontsize=9)
        ax.tick_params(labelsize=7)
    per_row = axes[0].get_subplotspec().get_gridspec().ncols
    for i, ax in enumerate(axes):
        if i + per_row >= len(axes):  # no panel below
            ax.set_xlabel("concentration (µM)", fontsize=8)
        if i % per_row == 0:
            ax.set_ylabel("dose efficacy e(t,c)", fontsize=8)
    legend = panel_legend(figure, axes)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.05 if legend else 0, 1, 1))
    return figure


def stretch_contrast(image: np.ndarray, low: float = 1.0, high: float = 99.5) -> np.ndarray:
    """A channel scaled to [0, 1] between its ``low`` and ``high`` percentiles (a flat
    image becomes zeros)."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0, 1)


def infection_map_figure(images: np.ndarray, maps: np.ndarray, channel_names: list[str], labels: list[str], masks: np.ndarray | None = None,
                         overlay_alpha: float = 0.45, cmap: str = "turbo", title: str | None = None):
    """One row per site, one column per channel: the stain in grey (percentile stretch)
    with the site's infection map as a translucent colour overlay (0..1, one colour bar);
    ``masks`` (optional, bool (n, S, S)) outlines the true infected cells in white.
    ``images`` (n, C, S, S), ``maps`` (n, S, S), ``labels`` one per site."""
    from matplotlib import colors

    images = np.asarray(images)
    maps = np.asarray(maps)
    n = images.shape[0] if images.ndim == 4 else 0
    channels = images.shape[1] if n else len(channel_names)
    if maps.shape[0] != n or len(labels) != n or (n and maps.shape[1:] != images.shape[2:]):
        raise ValueError(f"images {images.shape}, maps {maps.shape} and {len(labels)} labels do not match")
    if len(channel_names) != channels:
        raise ValueError(f"{len(channel_names)} channel names for {channels} channels")
    rows = max(n, 1)
    figure = plt.figure(figsize=(1.9 * channels + 0.7, 1.9 * rows + 0.4))
    grid = figure.add_gridspec(rows, channels + 1, width_ratios=[1] * channels + [0.07])
    axes = np.array([[figure.add_subplot(grid[i, c]) for c in range(channels)] for i in range(rows)])
    norm = colors.Normalize(0, 1)
    for i in range(n):
        for c in range(channels):
            ax = axes[i, c]
            ax.imshow(stretch_contrast(images[i, c]), cmap="gray", interpolation="nearest")
            ax.imshow(maps[i], cmap=cmap, norm=norm, alpha=overlay_alpha, interpolation="bilinear")
            if masks is not None and masks[i].any():
                ax.contour(masks[i].astype(float), levels=[0.5], colors="white", linewidths=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(channel_names[c], fontsize=9)
        axes[i, 0].set_ylabel(labels[i], fontsize=7)
    if n == 0:
        for c in range(channels):
            axes[0, c].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no sites", ha="center", va="center", transform=axes[0, 0].transAxes)
    bar_ax = figure.add_subplot(grid[:, -1])
    figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax, label="infection map")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.98 if title else 1))
    return figure


def model_comparison_figure(wide: pd.DataFrame, models: list[str], zeta: float, top: int = 40):
    """Efficacy of the models side by side (the paper's Fig. 4). Top row: e(t) of each pair
    of models against each other, one point per treatment (red: effective in both, orange:
    in one), with the diagonal, zeta and the Spearman rho. Bottom: e(t) of every model for
    the ``top`` treatments best ranked by the first model, as grouped bars. ``wide`` is
    deemd.figures.efficacy_wide."""
    from itertools import combinations

    from deemd.truth import spearman

    pairs = list(combinations(models, 2))
    shown = wide.head(top)
    width = max(3.6 * max(len(pairs), 1), 0.28 * len(shown) * max(len(models), 1) / 2 + 2, 6)
    figure = plt.figure(figsize=(width, 7.4 if pairs else 3.8))
    grid = figure.add_gridspec(2 if pairs else 1, max(len(pairs), 1), height_ratios=[1.1, 1] if pairs else [1])
    for j, (a, b) in enumerate(pairs):
        ax = figure.add_subplot(grid[0, j])
        x, y = wide[f"e_t_{a}"].to_numpy(dtype=float), wide[f"e_t_{b}"].to_numpy(dtype=float)
        in_a = wide[f"effective_{a}"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        in_b = wide[f"effective_{b}"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        for selected, colour, label in (
            (~in_a & ~in_b, "grey", "effective in neither"),
            (in_a ^ in_b, "#DD8452", "effective in one"),
            (in_a & in_b, "#C44E52", "effective in both"),
        ):
            if selected.any():
                ax.scatter(x[selected], y[selected], s=16, color=colour, alpha=0.8, label=label)
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle=":")
        ax.axhline(zeta, color="#4C72B0", linestyle="--", linewidth=0.8)
        ax.axvline(zeta, color="#4C72B0", linestyle="--", linewidth=0.8)
        result = spearman(x, y)
        rho = f"{result['rho']:.2f}" if np.isfinite(result["rho"]) else "NA"
        ax.set_title(f"{a} vs {b}: Spearman rho = {rho} (n={result['n']})", fontsize=9)
        ax.set_xlabel(f"e(t), model {a}")
        ax.set_ylabel(f"e(t), model {b}")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="upper left")
    ax = figure.add_subplot(grid[-1, :])
    positions = np.arange(len(shown))
    bar = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        ax.bar(positions + (i - (len(models) - 1) / 2) * bar, shown[f"e_t_{model}"].fillna(0), width=bar,
               color=MODEL_COLOURS.get(model), label=model)
    ax.axhline(zeta, color="black", linestyle="--", linewidth=0.8, label=f"zeta = {zeta:g}")
    ax.set_xticks(positions, shown["treatment"], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, max(len(shown), 1) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("e(t)")
    ax.set_title(f"the {len(shown)} treatments ranked best by model {models[0]}" if models else "", fontsize=9)
    ax.legend(fontsize=7, loc="upper right", ncol=len(models) + 1)
    figure.tight_layout()
    return figure


def reference_correlation_figure(merged_by_model: dict[str, pd.DataFrame], zeta: float, threshold: float, reference_name: str, label_top: int = 5):
    """One panel per model: e(t) against the reference score, one point per treatment
    (red: in E), lines at zeta and at the reference's effective threshold, Spearman rho
    in the title; the ``label_top`` best-ranked treatments are named."""
    from deemd.truth import spearman

    figure, axes = _panel_grid(max(len(merged_by_model), 1), 3, 3.8, 3.6)
    for ax, (model, merged) in zip(axes, merged_by_model.items()):
        effective = merged["effective"].astype(bool).to_numpy()
        for selected, colour, label in ((~effective, "grey", "not in E"), (effective, MODEL_COLOURS.get(model, "#C44E52"), "in E")):
            if selected.any():
                ax.scatter(merged.loc[selected, "reference_score"], merged.loc[selected, "e_t"], s=16, color=colour, alpha=0.8, label=label)
        ax.axhline(zeta, color="#4C72B0", linestyle="--", linewidth=0.8)
        ax.axvline(threshold, color="black", linestyle=":", linewidth=0.8)
        for row in merged.nsmallest(label_top, "rank").itertuples():
            ax.annotate(row.treatment, (row.reference_score, row.e_t), fontsize=6, xytext=(3, 2), textcoords="offset points")
        result = spearman(merged["e_t"], merged["reference_score"])
        rho = f"{result['rho']:.2f}, p = {result['p_value']:.2g}" if np.isfinite(result["rho"]) else f"NA ({result['status']})"
        ax.set_title(f"model {model}: rho = {rho} (n={result['n']})", fontsize=9)
        ax.set_xlabel(reference_name, fontsize=8)
        ax.set_ylabel("e(t)", fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    return figure
