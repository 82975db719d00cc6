"""Snakemake glue: per-plate heatmaps (rows x columns) of one model: nucleus count,
median z and inhibition of every well."""

import logging

import pandas as pd

from deemd.inhibition_plots import plate_maps_figure
from deemd.logs import start_rule_log
from deemd.plots import save_figure_atomic


def main(nuclei_path, wells_path, output, model, log):
    start_rule_log(log)
    nuclei = pd.read_parquet(nuclei_path)
    wells = pd.read_parquet(wells_path)
    logging.info("model %s: %d plates, %d scored wells, %d wells with a nucleus count", model, wells["plate_id"].nunique(),
                 len(wells), len(nuclei))
    figure = plate_maps_figure(nuclei, wells, model)
    # Many plates make a tall figure; a lower resolution keeps the report light.
    save_figure_atomic(figure, output[0], dpi=110 if wells["plate_id"].nunique() <= 8 else 70)


if "snakemake" in globals():
    main(snakemake.input.nuclei, snakemake.input.wells, snakemake.output, snakemake.wildcards.model, snakemake.log[0])
