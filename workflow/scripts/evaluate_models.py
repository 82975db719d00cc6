"""Snakemake glue: average precision and precision-recall curves of the trained models
on the untreated test sites."""

import logging

import pandas as pd
import torch

from deemd.data import SiteDataset
from deemd.inference import average_precision, chance_verdict, score_dataset
from deemd.io import write_parquet_atomic, write_table_atomic
from deemd.logs import start_rule_log
from deemd.plots import pr_curves_figure, save_figure_atomic
from deemd.device import select_device
from deemd.store import store_paths_by_plate


def main(model_paths, models, split_path, store_paths, output, device_settings, threads, log):
    start_rule_log(log)
    torch.set_num_threads(max(1, threads))
    device = select_device(device_settings["device"])
    sites = pd.read_parquet(split_path)
    test = sites[sites["set"] == "test"].reset_index(drop=True)
    dataset = SiteDataset(test, store_paths)
    rows, table = [], []
    for model, path in zip(models, model_paths):
        (scores, labels, order, probabilities, _), setup = score_dataset(
            path, dataset, device, device_settings["workers"], precision=device_settings["precision"]
        )
        ap = average_precision(labels, scores)
        logging.info("model %s: AP %.4f on %d test sites", model, ap, len(scores))
        table.append({"model": model, "average_precision": ap, **chance_verdict(f"model {model}: test AP", ap, labels),
                      "n_sites": len(scores), "n_infected": int((labels > 0.5).sum()),
                      "accuracy_at_eta": float(((scores >= setup.eta) == (labels > 0.5)).mean())})
        frame = pd.DataFrame({"site_id": test["site_id"].to_numpy()[order], "model": model, "label": labels.astype(int), "score": scores})
        # Every patch probability (M, V) is kept for infection maps of the test sites.
        frame["patch_probabilities"] = list(probabilities.astype("float32")) if probabilities is not None else None
        rows.append(frame)
    scores = pd.concat(rows, ignore_index=True)
    ap = pd.DataFrame(table)
    write_parquet_atomic(scores, output["scores"])
    write_table_atomic(ap, output["table"], float_format="%.4f")
    figure = pr_curves_figure(scores, ap)
    save_figure_atomic(figure, output["figure"], dpi=150)


if "snakemake" in globals():
    main(
        list(snakemake.input.models),
        snakemake.params.models,
        snakemake.input.split,
        store_paths_by_plate(snakemake.input.stores),
        snakemake.output,
        snakemake.params.device,
        snakemake.threads,
        snakemake.log[0],
    )
