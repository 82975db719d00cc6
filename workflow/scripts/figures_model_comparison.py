"""Snakemake glue: e(t) of the models M, W, V side by side (table and figure)."""

import logging

import pandas as pd

from deemd.figures import efficacy_wide
from deemd.io import write_table_atomic
from deemd.logs import start_rule_log
from deemd.plots import model_comparison_figure, save_figure_atomic


def main(treatment_paths, models, output, zeta, top, log):
    start_rule_log(log)
    wide = efficacy_wide({model: pd.read_parquet(path) for model, path in zip(models, treatment_paths)})
    for model in models:
        logging.info("model %s: %d effective of %d treatments", model, int(wide[f"effective_{model}"].fillna(False).sum()), len(wide))
    write_table_atomic(wide, output["table"], float_format="%.4g")
    figure = model_comparison_figure(wide, list(models), zeta, top=top)
    save_figure_atomic(figure, output["figure"], dpi=130)


if "snakemake" in globals():
    main(
        list(snakemake.input),
        snakemake.params.models,
        snakemake.output,
        snakemake.params.zeta,
        snakemake.params.top,
        snakemake.log[0],
    )
