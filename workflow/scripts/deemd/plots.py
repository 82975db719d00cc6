"""Figures (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from deemd.metadata import INFECTED, MOCK, UV  # noqa: E402

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
        value = ap.loc[ap["model"] == model, "average_precision"].item()
        ax.plot(recall, precision, label=f"{model}: AP {value:.3f}", color=MODEL_COLOURS.get(model))
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
    expectation, and validation AP per k."""
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
    ax_ap.set_xscale("log")
    ax_ap.set_xticks(ks, [str(k) for k in ks])
    ax_ap.set_xlabel("k")
    ax_ap.set_ylabel("validation average precision")
    figure.tight_layout()
    return figure
