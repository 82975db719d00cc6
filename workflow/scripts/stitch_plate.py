"""Snakemake glue: stitch one plate's site images into its per-plate store."""

import logging
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from deemd.io import atomic_directory, write_parquet_atomic
from deemd.logs import start_rule_log
from deemd.metadata import well_table
from deemd.stitch import stitch_plate
from deemd.store import create_plate_store


def main(sites_path, plate_id, output_store, output_qc, params, threads, log):
    start_rule_log(log)
    dataset, store_cfg = params["dataset"], params["store"]
    sites = pd.read_parquet(sites_path)
    plate_sites = sites[sites["plate_id"] == plate_id]
    if plate_sites.empty:
        raise ValueError(f"{sites_path}: plate {plate_id!r} has no sites")
    wells = well_table(plate_sites)["well"].tolist()
    logging.info("plate %s: %d wells, %d sites", plate_id, len(wells), len(plate_sites))
    # Written under a temporary name and renamed at the end: a killed job never leaves a
    # store that looks finished (open_plate_store also checks the 'complete' attribute).
    with atomic_directory(output_store, create=False) as tmp:
        store = create_plate_store(
            tmp,
            wells,
            dataset["channel_names"],
            dataset["site_size"],
            dataset["site_layout"],
            codec=store_cfg["codec"],
            clevel=store_cfg["clevel"],
            shuffle=store_cfg["shuffle"],
            attrs={"plate_id": plate_id},
        )
        step = max(1, len(wells) // 10)

        def progress(done, total):
            if done % step == 0 or done == total:
                logging.info("stitched %d/%d wells", done, total)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            dropped = stitch_plate(
                plate_sites, store, dataset["images"], dataset["channels"], dataset["on_bad_image"],
                pool, progress, dataset["channel_axis"], store_cfg["rescale"],
            )
        logging.info("intensity: %s", store.group.attrs["intensity"])
        for record in dropped:
            logging.warning("dropped site %s: %s", record["site_id"], record["reason"])
        qc = pd.DataFrame(dropped, columns=["site_id", "well", "site", "reason"]).assign(plate_id=plate_id)
        store.group.attrs["complete"] = True
        write_parquet_atomic(qc, output_qc)
    logging.info("done: %d wells, %d dropped sites", len(wells), len(dropped))


if "snakemake" in globals():
    main(
        snakemake.input.sites,
        snakemake.wildcards.plate_id,
        snakemake.output.store,
        snakemake.output.qc,
        snakemake.params,
        snakemake.threads,
        snakemake.log[0],
    )
