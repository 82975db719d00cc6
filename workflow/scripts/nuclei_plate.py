"""Snakemake glue: count nuclei in every well of one plate (the toxicity flags are set
across plates by nuclei_summary.py, which can pool an experiment's controls)."""

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from deemd.logs import start_rule_log
from deemd.metadata import well_table
from deemd.nuclei import count_nuclei, scale_params
from deemd.store import open_plate_store, site_slices
from deemd.io import write_parquet_atomic


def valid_pixels(site_valid: np.ndarray, layout, site_size) -> np.ndarray | None:
    """Pixel mask of the imaged sites of a well; None when all sites are there."""
    if site_valid.all():
        return None
    mask = np.zeros((len(layout) * site_size, len(layout[0]) * site_size), dtype=bool)
    for site, (ys, xs) in site_slices(layout, site_size).items():
        mask[ys, xs] = site_valid[site - 1]
    return mask


def main(sites_path, store_path, plate_id, output, params, threads, log):
    start_rule_log(log)
    dataset = params["dataset"]
    store = open_plate_store(store_path)
    nucleus_params = scale_params(params["nuclei"], store.site_size)
    logging.info("plate %s: %s", plate_id, nucleus_params)
    channel = dataset["channels"].index(dataset["nuclear_channel"])
    site_valid = store.site_valid
    layout, site_size = store.site_layout, store.site_size

    def count(index):
        nuclear = store.images[index, channel]
        return count_nuclei(nuclear, nucleus_params, valid_pixels(site_valid[index], layout, site_size))

    wells = store.wells
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        counts = []
        for done, value in enumerate(pool.map(count, range(len(wells))), start=1):
            counts.append(value)
            if done % max(1, len(wells) // 10) == 0 or done == len(wells):
                logging.info("counted %d/%d wells", done, len(wells))
    sites = pd.read_parquet(sites_path)
    table = well_table(sites[sites["plate_id"] == plate_id]).set_index("well").loc[wells].reset_index()
    table["n_sites_imaged"] = site_valid.sum(axis=1)
    table["nuclei_count"] = counts
    logging.info(
        "%d wells, median count %.0f, %d without nuclei",
        len(table), table["nuclei_count"].median(), (table["nuclei_count"] == 0).sum(),
    )
    write_parquet_atomic(table, output)


if "snakemake" in globals():
    main(
        snakemake.input.sites,
        snakemake.input.store,
        snakemake.wildcards.plate_id,
        snakemake.output[0],
        snakemake.params,
        snakemake.threads,
        snakemake.log[0],
    )
