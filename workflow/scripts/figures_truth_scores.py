"""Snakemake glue (demo only): every model scored against the demo's hidden truth:
precision and recall of E against the truly effective compounds, Spearman rho of e(t)
with the true maximum efficacy, and the localisation ROC AUC of the infection maps
(M, V) of the untreated infected test sites against their true infected-cell masks; and
the quantitative call: precision and recall of hit (and of E) with partial compounds
excluded, Spearman rho and median error of inhibition_max, and EC50 agreement, against
the truth's best_nontoxic_efficacy."""

import logging

import numpy as np
import pandas as pd

from deemd.grid import PatchGrid
from deemd.io import write_table_atomic
from deemd.logs import start_rule_log
from deemd.maps import site_maps
from deemd.truth import (
    effective_set_scores,
    quantitative_truth_scores,
    truth_classes,
    truth_efficacy_column,
    load_masks,
    map_localisation_auc,
    map_localisation_auc_per_site,
    reference_correlation,
    reference_scores,
)


def main(inputs, models, threshold, maps_cfg, grid, output, log):
    start_rule_log(log)
    compounds = pd.read_csv(inputs["truth"])
    truth = reference_scores(compounds, "treatment", "max_efficacy")
    efficacy_column = truth_efficacy_column(compounds)
    if efficacy_column != "best_nontoxic_efficacy":
        logging.warning("%s has no best_nontoxic_efficacy column: the quantitative scores use %s instead",
                        inputs["truth"], efficacy_column)
    classes = truth_classes(compounds, threshold, efficacy_column)
    logging.info("truth (%s >= %s): %s", efficacy_column, threshold, classes["truth_class"].value_counts().to_dict())
    test = pd.read_parquet(inputs["test_scores"])
    if "patch_probabilities" not in test.columns:
        raise ValueError(f"{inputs['test_scores']} has no patch_probabilities column; rerun the evaluate rule")
    rows = []
    for model, treatments_path, doses_path in zip(models, inputs["treatments"], inputs["doses"]):
        treatments = pd.read_parquet(treatments_path)
        correlation = reference_correlation(treatments, truth)
        row = {
            "model": model,
            **effective_set_scores(treatments, truth, threshold),
            "spearman_rho": correlation["rho"],
            "spearman_p": correlation["p_value"],
            "map_roc_auc": np.nan,
            "map_roc_auc_site_median": np.nan,
            "n_map_sites": 0,
            **quantitative_truth_scores(treatments, pd.read_parquet(doses_path), classes),
            "truth_efficacy_column": efficacy_column,
        }
        infected = test[(test["model"] == model) & (test["label"] == 1)]
        has_maps = len(infected) and infected["patch_probabilities"].notna().all()
        if has_maps:
            maps = site_maps(np.stack(list(infected["patch_probabilities"])), PatchGrid(**grid), maps_cfg["alpha"], maps_cfg["sigma"], maps_cfg["reference_site_size"])
            masks = load_masks(inputs["masks"], infected["site_id"])
            row.update(
                map_roc_auc=map_localisation_auc(maps, masks),
                map_roc_auc_site_median=float(np.nanmedian(map_localisation_auc_per_site(maps, masks))),
                n_map_sites=len(infected),
            )
        logging.info("model %s: %s", model, row)
        rows.append(row)
    write_table_atomic(pd.DataFrame(rows), output[0], float_format="%.4f")


if "snakemake" in globals():
    main(
        snakemake.input,
        snakemake.params.models,
        snakemake.params.threshold,
        snakemake.params.maps,
        snakemake.params.grid,
        snakemake.output,
        snakemake.log[0],
    )
