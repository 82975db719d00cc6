"""Snakemake glue: gather the per-plate well tables, test infected vs non-infected
nucleus counts, draw the figure."""

import logging

import pandas as pd

from deemd.io import write_parquet_atomic
from deemd.logs import start_rule_log
from deemd.nuclei import infected_vs_noninfected
from deemd.plots import nuclei_count_figure, save_figure_atomic


def main(plate_tables, output, log):
    start_rule_log(log)
    wells = pd.concat([pd.read_parquet(path) for path in plate_tables], ignore_index=True)
    test = infected_vs_noninfected(wells)
    logging.info("%d wells from %d plates; %s", len(wells), len(plate_tables), test)
    write_parquet_atomic(wells, output["wells"])
    write_parquet_atomic(pd.DataFrame([test]), output["test"])
    figure = nuclei_count_figure(wells, test)
    save_figure_atomic(figure, output["figure"], dpi=150)


if "snakemake" in globals():
    main(list(snakemake.input), snakemake.output, snakemake.log[0])
