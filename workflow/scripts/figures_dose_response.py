"""Snakemake glue: logistic dose-response fits of one model's dose efficacies, the ranked
treatment table (both calls, hit and E, by the default rank) with the fits, the DEEMD
e(t,c) panels of the treatments DEEMD ranks best, and the inhibition panels of the
treatments ranked best by the default rank."""

import logging

import pandas as pd

from deemd.doseresponse import fit_dose_table
from deemd.figures import ranking_table, top_treatments
from deemd.inhibition_plots import inhibition_dose_response_figure
from deemd.io import write_table_atomic
from deemd.logs import start_rule_log
from deemd.plots import dose_response_figure, save_figure_atomic


def main(inputs, output, model, zeta, bar, top, columns, log):
    start_rule_log(log)
    doses = pd.read_parquet(inputs["doses"])
    treatments = pd.read_parquet(inputs["treatments"])
    wells = pd.read_parquet(inputs["wells"])
    # e(t,c) = 1 - an upper bound of a median probability: it lies in [0, 1].
    fits = fit_dose_table(doses, limits=(0.0, 1.0))
    logging.info("model %s: %d treatments, %d logistic fits; fit status counts: %s", model, len(treatments),
                 int((fits["status"] == "ok").sum()), fits["status"].str.split(":").str[0].value_counts().to_dict())
    ranked = ranking_table(treatments, fits)
    logging.info("model %s: %d hits, %d in E, %d both", model, int(ranked["hit"].sum()), int(ranked["effective"].sum()),
                 int((ranked["hit"] & ranked["effective"]).sum()))
    write_table_atomic(ranked, output["table"], float_format="%.4g")
    # DEEMD's panels keep DEEMD's own ranking by e(t).
    shown = top_treatments(treatments.assign(rank=treatments["deemd_rank"]), top)
    figure = dose_response_figure(doses, fits, shown, zeta, columns=columns, title=f"model {model}: top {len(shown)} treatments by DEEMD e(t)")
    save_figure_atomic(figure, output["figure"], dpi=130)
    shown = top_treatments(treatments, top, score="inhibition_max")
    figure = inhibition_dose_response_figure(doses, wells, shown, bar, columns=columns,
                                             title=f"model {model}: top {len(shown)} treatments by hit, then inhibition")
    save_figure_atomic(figure, output["inhibition"], dpi=130)


if "snakemake" in globals():
    main(
        snakemake.input,
        snakemake.output,
        snakemake.wildcards.model,
        snakemake.params.zeta,
        snakemake.params.bar,
        snakemake.params.top,
        snakemake.params.columns,
        snakemake.log[0],
    )
