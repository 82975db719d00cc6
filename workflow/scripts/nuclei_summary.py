"""Snakemake glue: gather the per-plate well tables, flag no-nuclei and toxic wells (a plate
without untreated infected wells is compared with its experiment's), test infected vs
non-infected nucleus counts, draw the figure."""

import logging

import pandas as pd

from deemd.io import write_parquet_atomic
from deemd.logs import start_rule_log
from deemd.nuclei import flag_wells, infected_vs_noninfected
from deemd.plots import nuclei_count_figure, save_figure_atomic


def main(plate_tables, output, toxicity, log):
    start_rule_log(log)
    wells = pd.concat([pd.read_parquet(path) for path in plate_tables], ignore_index=True)
    wells = flag_wells(wells, toxicity)
    for plate_id, plate in wells.groupby("plate_id", sort=True):
        logging.info(
            "plate %s: %d toxic, %d without nuclei; reference %.1f nuclei per imaged site, the median of "
            "the %s's untreated infected wells",
            plate_id, plate["toxic"].sum(), plate["no_nuclei"].sum(),
            plate["infected_control_median"].iloc[0], plate["toxicity_reference"].iloc[0],
        )
    test = infected_vs_noninfected(wells)
    logging.info("%d wells from %d plates; %s", len(wells), len(plate_tables), test)
    write_parquet_atomic(wells, output["wells"])
    write_parquet_atomic(pd.DataFrame([test]), output["test"])
    figure = nuclei_count_figure(wells, test)
    save_figure_atomic(figure, output["figure"], dpi=150)


if "snakemake" in globals():
    main(list(snakemake.input), snakemake.output, snakemake.params.toxicity, snakemake.log[0])
