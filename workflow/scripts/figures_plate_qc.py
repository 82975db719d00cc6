"""Snakemake glue: per-plate QC of every model (robust Z' and SSMD of the held-out
controls, on z and on the infected share a), failing plates marked."""

import logging

import pandas as pd

from deemd.inhibition_plots import plate_qc_figure
from deemd.logs import start_rule_log
from deemd.plots import save_figure_atomic


def main(qc_paths, models, min_zprime, output, log):
    start_rule_log(log)
    qc = pd.concat([pd.read_parquet(path).assign(model=model) for model, path in zip(models, qc_paths)], ignore_index=True)
    failing = qc.loc[~qc["passes"].astype(bool), ["model", "plate_id"]].drop_duplicates()
    logging.info("%d plate QC rows; %d (model, plate) fail min_zprime %s: %s", len(qc), len(failing), min_zprime,
                 failing.to_dict("records"))
    save_figure_atomic(plate_qc_figure(qc, min_zprime), output[0], dpi=130)


if "snakemake" in globals():
    main(list(snakemake.input), snakemake.params.models, snakemake.params.min_zprime, snakemake.output, snakemake.log[0])
