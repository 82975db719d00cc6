"""Snakemake glue: logistic dose-response fits of one model's dose efficacies, the ranked
treatment table with the fits, and the dose-response panels of the top treatments."""

import logging

import pandas as pd

from deemd.doseresponse import fit_dose_table
from deemd.figures import top_treatments
from deemd.io import write_table_atomic
from deemd.logs import start_rule_log
from deemd.plots import dose_response_figure, save_figure_atomic


def main(doses_path, treatments_path, output, model, zeta, top, columns, log):
    start_rule_log(log)
    doses = pd.read_parquet(doses_path)
    treatments = pd.read_parquet(treatments_path)
    # e(t,c) = 1 - an upper bound of a median probability: it lies in [0, 1].
    fits = fit_dose_table(doses, limits=(0.0, 1.0))
    logging.info("model %s: %d treatments, %d logistic fits; fit status counts: %s", model, len(treatments),
                 int((fits["status"] == "ok").sum()), fits["status"].str.split(":").str[0].value_counts().to_dict())
    ranked = treatments.merge(
        fits.drop(columns="n_points").rename(columns={"status": "fit_status"}), on="treatment", how="left", validate="one_to_one"
    ).sort_values("rank", kind="mergesort")
    write_table_atomic(ranked, output["table"], float_format="%.4g")
    shown = top_treatments(treatments, top)
    figure = dose_response_figure(doses, fits, shown, zeta, columns=columns, title=f"model {model}: top {len(shown)} treatments")
    save_figure_atomic(figure, output["figure"], dpi=130)


if "snakemake" in globals():
    main(
        snakemake.input.doses,
        snakemake.input.treatments,
        snakemake.output,
        snakemake.wildcards.model,
        snakemake.params.zeta,
        snakemake.params.top,
        snakemake.params.columns,
        snakemake.log[0],
    )
