"""Snakemake glue: the two calls of one model drawn: the hit scatter (inhibition_max
against -log10 q) and DEEMD's e(t) against inhibition_max."""

import logging

import pandas as pd

from deemd.inhibition_plots import deemd_vs_inhibition_figure, hit_scatter_figure
from deemd.logs import start_rule_log
from deemd.plots import save_figure_atomic


def main(treatments_path, output, model, zeta, bar, fdr, label_top, log):
    start_rule_log(log)
    treatments = pd.read_parquet(treatments_path)
    logging.info("model %s: %d treatments, %d hits, %d in E, %d without a q-value", model, len(treatments),
                 int(treatments["hit"].sum()), int(treatments["effective"].sum()), int(treatments["hit_q_value"].isna().sum()))
    save_figure_atomic(hit_scatter_figure(treatments, bar, fdr, model, label_top=label_top), output["hits"], dpi=130)
    save_figure_atomic(deemd_vs_inhibition_figure(treatments, zeta, bar, model, label_top=label_top), output["versus"], dpi=130)


if "snakemake" in globals():
    main(
        snakemake.input.treatments,
        snakemake.output,
        snakemake.wildcards.model,
        snakemake.params.zeta,
        snakemake.params.bar,
        snakemake.params.fdr,
        snakemake.params.label_top,
        snakemake.log[0],
    )
