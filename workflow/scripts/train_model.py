"""Snakemake glue: train one model (M, W or V) on the training sites, early-stopped on
the validation sites, resuming from its checkpoint after a kill."""

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import torch

from deemd.data import SiteDataset, site_loader
from deemd.evaluation import chance_verdict
from deemd.io import write_atomic, write_parquet_atomic
from deemd.logs import start_rule_log
from deemd.grid import patch_grid
from deemd.mil import TrainSetup
from deemd.plots import save_figure_atomic, training_curves_figure
from deemd.device import DevicePrecision, select_device
from deemd.store import store_paths_by_plate
from deemd.train import fit


def make_setup(kind, train, site_size, in_channels):
    return TrainSetup(
        kind=kind,
        k=train["k"],
        eta=train["eta"],
        grid=patch_grid(site_size, train["reference_site_size"], train["patch_size"], train["patch_stride"]),
        epochs=train["epochs"],
        patience=train["early_stopping_patience"],
        batch_size=train["batch_size"],
        whole_batch_size=train["whole_batch_size"],
        lr=train["lr"],
        betas=tuple(train["betas"]),
        weight_decay=train["weight_decay"],
        seed=train["seed"],
        in_channels=in_channels,
        pretrained_weights=train["pretrained_weights"],
        ap_tolerance=train["ap_tolerance"],
        augment=train["augment"],
        intensity_jitter=train["intensity_jitter"],
        batchnorm_steps=train["batchnorm_steps"],
        sites_per_step=train["sites_per_step"],
    )


def data_digest(setup, sites, stats):
    """What a checkpoint must match to be resumed: the setup, the sites, the statistics."""
    text = json.dumps(
        {"setup": repr(setup), "sites": sites[["site_id", "set", "label"]].astype(str).values.tolist(), "stats": stats},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def main(kind, split_path, stats_path, store_paths, output, params, threads, log, stop_after=None):
    start_rule_log(log)
    torch.set_num_threads(max(1, threads))
    train = params["train"]
    stats = json.loads(Path(stats_path).read_text())
    sites = pd.read_parquet(split_path)
    sites = sites[sites["set"].isin(["train", "val"])].reset_index(drop=True)
    setup = make_setup(kind, train, stats["site_size"], len(stats["mean"]))
    device = select_device(train["device"])
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    device_precision = DevicePrecision(device, stats["mean"], stats["std"], train["precision"])
    logging.info("model %s on %s (%s): %s", kind, device, device_precision.precision, setup)
    train_data = SiteDataset(sites[sites["set"] == "train"], store_paths)
    val_data = SiteDataset(sites[sites["set"] == "val"], store_paths)
    logging.info("%d training sites, %d validation sites", len(train_data), len(val_data))

    def loaders(dataset, batch_size, shuffle_seed):
        return site_loader(dataset, batch_size, train["workers"], shuffle_seed, pin_memory=device_precision.cuda)

    checkpoint = Path(output["model"]).parent / "checkpoint" / "last.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    result = fit(setup, train_data, val_data, loaders, device_precision, checkpoint, data_digest(setup, sites, stats), logging.info, stop_after,
                 checkpoint_seconds=60 * train["checkpoint_minutes"])
    if not result["finished"]:
        logging.info("stopped after epoch %d on request; rerun to resume", result["epoch"])
        return result
    history = pd.DataFrame(result["history"])
    write_parquet_atomic(history, output["history"])
    figure = training_curves_figure(history, f"model {kind}")
    save_figure_atomic(figure, output["curves"], dpi=120)
    saved = {
            "kind": kind,
            "state_dict": result["best_state"],
            "setup": setup.to_dict(),  # plain data: the file loads with weights_only=True
            "best_epoch": result["best_epoch"],
            "best_val_ap": result["best_ap"],
            "channel_names": stats["channels"],
            "mean": stats["mean"],
            "std": stats["std"],
    }
    write_atomic(output["model"], lambda tmp: torch.save(saved, tmp))
    # Only a rerun after a kill needs the checkpoint, and it is 4 times the model's size.
    checkpoint.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: a set-aside unreadable checkpoint stays
        checkpoint.parent.rmdir()
    logging.info("best epoch %d, validation AP %.4f", result["best_epoch"], result["best_ap"])
    chance_verdict(f"model {kind}: best validation AP", result["best_ap"], val_data.label)
    return result


if "snakemake" in globals():
    main(
        snakemake.params.get("kind") or snakemake.wildcards.model,
        snakemake.input.split,
        snakemake.input.stats,
        store_paths_by_plate(snakemake.input.stores),
        snakemake.output,
        snakemake.params,
        snakemake.threads,
        snakemake.log[0],
    )
