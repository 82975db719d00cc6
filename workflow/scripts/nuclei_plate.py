"""Snakemake glue: count nuclei in every well of one plate (the toxicity flags are set
across plates by nuclei_summary.py, which can pool an experiment's controls)."""

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from deemd.logs import start_rule_log
from deemd.metadata import well_table
from deemd.nuclei import count_nuclei, estimate_diameter, estimate_wells, nucleus_params, valid_pixels
from deemd.store import open_plate_store
from deemd.io import write_parquet_atomic


def plate_diameter(read, valid, untreated: np.ndarray, config: dict, plate_id: str) -> tuple[float, str]:
    """The plate's nucleus diameter (px of the site) and where it came from: the config's
    number, or (``auto``) the estimate from its untreated wells (all wells where it has
    none). ``read(i)`` / ``valid(i)``: nuclear image and valid-pixel mask of well i."""
    if config["diameter"] != "auto":
        return float(config["diameter"]), "nuclei.diameter"
    for wells, source in ((untreated, "untreated wells"), (np.ones_like(untreated), "all wells (no untreated well holds a nucleus)")):
        chosen = estimate_wells(wells)
        diameter = estimate_diameter((read(i) for i in chosen), config["min_contrast"], (valid(i) for i in chosen))
        if np.isfinite(diameter):
            return diameter, f"estimated from {len(chosen)} {source}"
    raise ValueError(
        f"plate {plate_id}: nuclei.diameter is auto, but no well of the plate shows a single nucleus to estimate "
        "it from; set nuclei.diameter to the nucleus diameter in px of a site"
    )


def main(sites_path, store_path, plate_id, output, params, threads, log):
    start_rule_log(log)
    dataset = params["dataset"]
    store = open_plate_store(store_path)
    channel = dataset["channels"].index(dataset["nuclear_channel"])
    site_valid = store.site_valid
    layout, site_size = store.site_layout, store.site_size
    wells = store.wells
    sites = pd.read_parquet(sites_path)
    table = well_table(sites[sites["plate_id"] == plate_id]).set_index("well").loc[wells].reset_index()

    def read(index):
        return store.read_well(index, channel)

    def valid(index):
        return valid_pixels(site_valid[index], layout, site_size)

    diameter, source = plate_diameter(read, valid, table["treatment"].isna().to_numpy(), params["nuclei"], plate_id)
    segmentation = nucleus_params(params["nuclei"], diameter)
    logging.info("plate %s: nucleus diameter %.1f px (%s); %s", plate_id, diameter, source, segmentation)

    def count(index):
        return count_nuclei(read(index), segmentation, valid(index))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        counts = []
        for done, value in enumerate(pool.map(count, range(len(wells))), start=1):
            counts.append(value)
            if done % max(1, len(wells) // 10) == 0 or done == len(wells):
                logging.info("counted %d/%d wells", done, len(wells))
    table["n_sites_imaged"] = site_valid.sum(axis=1)
    table["nuclei_count"] = counts
    table["nucleus_diameter_px"] = diameter
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
