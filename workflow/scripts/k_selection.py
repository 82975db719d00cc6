"""Snakemake glue: infection-map area above eta and AP per k on the validation sites."""

import logging

import numpy as np
import pandas as pd
import torch

from deemd.data import SiteDataset
from deemd.evaluation import average_precision, chance_verdict
from deemd.inference import score_dataset
from deemd.io import write_table_atomic
from deemd.logs import start_rule_log
from deemd.maps import infected_share
from deemd.plots import k_selection_figure, save_figure_atomic
from deemd.device import select_device
from deemd.store import store_paths_by_plate


def main(model_paths, ks, moi, maps_cfg, split_path, store_paths, output, device_settings, threads, log):
    start_rule_log(log)
    torch.set_num_threads(max(1, threads))
    device = select_device(device_settings["device"])
    sites = pd.read_parquet(split_path)
    val = sites[sites["set"] == "val"].reset_index(drop=True)
    dataset = SiteDataset(val, store_paths)
    rows = []
    for k, path in zip(ks, model_paths):
        (scores, labels, _, probabilities, _), setup = score_dataset(
            path, dataset, device, device_settings["workers"], precision=device_settings["precision"]
        )
        if k > setup.grid.n_patches:
            raise ValueError(f"k_selection.ks: k = {k} is more than the {setup.grid.n_patches} patches of a site")
        area = infected_share(probabilities, setup.grid, maps_cfg["alpha"], maps_cfg["sigma"], maps_cfg["reference_site_size"], setup.eta)
        infected, healthy = area[labels > 0.5], area[labels < 0.5]
        ap = average_precision(labels, scores)
        rows.append(
            {
                "k": k,
                "val_ap": ap,
                **chance_verdict(f"k = {k}: validation AP", ap, labels),
                "area_infected_median": float(np.median(infected)),
                "area_infected_q25": float(np.quantile(infected, 0.25)),
                "area_infected_q75": float(np.quantile(infected, 0.75)),
                "area_non_infected_median": float(np.median(healthy)),
                "expected_area": 1 - np.exp(-moi),
            }
        )
        logging.info("k = %d: %s", k, rows[-1])
    table = pd.DataFrame(rows)
    write_table_atomic(table, output["table"], float_format="%.4f")
    figure = k_selection_figure(table, 1 - np.exp(-moi), moi)
    save_figure_atomic(figure, output["figure"], dpi=150)


if "snakemake" in globals():
    main(
        list(snakemake.input.models),
        snakemake.params.ks,
        snakemake.params.moi,
        snakemake.params.maps,
        snakemake.input.split,
        store_paths_by_plate(snakemake.input.stores),
        snakemake.output,
        snakemake.params.device,
        snakemake.threads,
        snakemake.log[0],
    )
