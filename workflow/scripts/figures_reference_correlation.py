"""Snakemake glue: e(t) of each model against a reference score table (Spearman
correlation; precision and recall of E against the reference's effective set)."""

import logging

import pandas as pd

from deemd.io import write_table_atomic
from deemd.logs import start_rule_log
from deemd.plots import reference_correlation_figure, save_figure_atomic
from deemd.truth import effective_set_scores, reference_correlation, reference_scores, with_reference


def read_table(path):
    return pd.read_csv(path, sep=None, engine="python") if not str(path).endswith(".parquet") else pd.read_parquet(path)


def main(treatment_paths, models, reference_path, reference_cfg, zeta, label_top, output, log):
    start_rule_log(log)
    reference = reference_scores(read_table(reference_path), reference_cfg["treatment_column"], reference_cfg["score_column"])
    threshold = reference_cfg["effective_threshold"]
    logging.info("reference %s: %d treatments with a score, %d at or above %s", reference_path, len(reference),
                 int((reference["reference_score"] >= threshold).sum()), threshold)
    rows, merged = [], {}
    for model, path in zip(models, treatment_paths):
        treatments = pd.read_parquet(path)
        merged[model] = with_reference(treatments, reference)
        row = {"model": model, **reference_correlation(treatments, reference), **effective_set_scores(treatments, reference, threshold)}
        logging.info("model %s: %s", model, row)
        rows.append(row)
    write_table_atomic(pd.DataFrame(rows), output["table"], float_format="%.4g")
    figure = reference_correlation_figure(merged, zeta, threshold, f"reference: {reference_cfg['score_column']}", label_top=label_top)
    save_figure_atomic(figure, output["figure"], dpi=130)


if "snakemake" in globals():
    main(
        list(snakemake.input.treatments),
        snakemake.params.models,
        snakemake.input.reference,
        snakemake.params.reference,
        snakemake.params.zeta,
        snakemake.params.label_top,
        snakemake.output,
        snakemake.log[0],
    )
