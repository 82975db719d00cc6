"""Snakemake glue: per-channel mean and std of the training sites, streamed from the
per-plate stores."""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from deemd.channel_stats import training_channel_stats
from deemd.io import write_json_atomic
from deemd.logs import start_rule_log
from deemd.store import open_plate_store


def main(split_path, store_paths, output, params, threads, log):
    start_rule_log(log)
    split = pd.read_parquet(split_path)
    stores = {}
    for path in store_paths:
        store = open_plate_store(path)
        stores[store.group.attrs.get("plate_id", Path(path).name.removesuffix(".zarr"))] = store
    n_train = int((split["set"] == "train").sum())
    logging.info("%d training sites from %d plate stores", n_train, len(stores))
    step = max(1, params["batch_wells"])

    def progress(done, total):
        if done % (10 * step) < step or done == total:
            logging.info("read %d/%d training wells", done, total)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        stats = training_channel_stats(split, stores, params["batch_wells"], pool, progress)
    for name, mean, std in zip(stats["channels"], stats["mean"], stats["std"]):
        logging.info("%-12s mean %8.3f  std %8.3f", name, mean, std)
    write_json_atomic(stats, output)


if "snakemake" in globals():
    main(
        snakemake.input.split,
        list(snakemake.input.stores),
        snakemake.output[0],
        snakemake.params,
        snakemake.threads,
        snakemake.log[0],
    )
