"""Snakemake glue: score every treated site and every held-out control site of one shard
(a plate, a part of one, or several plates: inference.plates_per_job) with a trained model
loaded once, keeping every patch probability, z_i, (M, V) the infected share a_i and the
mean of the site's infection map, and (W) the site's logit."""

import logging

import numpy as np
import pandas as pd
import torch

from deemd.data import SiteDataset
from deemd.inference import score_dataset, site_z
from deemd.sharding import shard_rows
from deemd.inhibition import scored_sites
from deemd.io import write_parquet_atomic
from deemd.logs import start_rule_log
from deemd.maps import map_readouts
from deemd.device import select_device
from deemd.store import store_paths_by_plate

COLUMNS = ["site_id", "well_id", "plate_id", "well", "site", "role", "treatment", "treatment_conc"]


def main(model_path, model, split_path, store_paths, shards, parts, output, device_settings, maps, threads, log):
    start_rule_log(log)
    torch.set_num_threads(max(1, threads))
    sites = pd.read_parquet(split_path)
    tables = []
    for plate_id, part in shards:
        tables.append(shard_rows(scored_sites(sites, plate_id), part, parts))
        logging.info("model %s, plate %s part %d/%d: %s", model, plate_id, part + 1, parts,
                     tables[-1]["role"].value_counts().to_dict())
    treated = pd.concat(tables, ignore_index=True)
    table = treated[COLUMNS].copy()
    table["model"] = model
    if len(treated):

        def progress(done, total):
            if done % max(1, total // 10) == 0 or done == total:
                logging.info("batch %d/%d", done, total)

        (scores, _, order, probabilities, logits), setup = score_dataset(
            model_path, SiteDataset(treated, store_paths), select_device(device_settings["device"]),
            device_settings["workers"], progress, device_settings["precision"],
        )
        table = table.iloc[order].reset_index(drop=True)
        table["score"] = scores
        table["z"] = site_z(setup, scores, probabilities)
        table["a"] = table["map_mean"] = np.nan
        table["logit"] = logits if logits is not None else np.nan
        if probabilities is not None:
            readouts = map_readouts(probabilities, setup.grid, maps["alpha"], maps["sigma"], maps["reference_site_size"], setup.eta)
            table["a"], table["map_mean"] = readouts["a"], readouts["map_mean"]
        table["patch_probabilities"] = list(probabilities.astype(np.float32)) if probabilities is not None else None
    else:
        table = table.assign(score=np.float32(0), z=np.float32(0), a=np.nan, map_mean=np.nan, logit=np.nan,
                             patch_probabilities=None)
    write_parquet_atomic(table, output)
    logging.info("wrote %d sites", len(table))


if "snakemake" in globals():
    main(
        snakemake.input.model,
        snakemake.wildcards.model,
        snakemake.input.split,
        store_paths_by_plate(snakemake.input.stores),
        snakemake.params.shards,
        snakemake.params.parts,
        snakemake.output[0],
        snakemake.params.device,
        snakemake.params.maps,
        snakemake.threads,
        snakemake.log[0],
    )
