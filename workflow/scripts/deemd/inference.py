"""Loading a trained model and scoring sites with it."""

from __future__ import annotations

import numpy as np
import torch

from deemd.data import site_loader
from deemd.mil import build_resnet34
from deemd.train import Runtime, inference_sites_per_batch, site_scores


def load_trained(path: str, device: torch.device, precision: str = "fp32"):
    """A model file written by the train rule -> (model on device, setup, runtime)."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    setup = saved["setup"]
    model = build_resnet34(setup.in_channels)
    model.load_state_dict(saved["state_dict"])
    runtime = Runtime(device, saved["mean"], saved["std"], precision)
    return runtime.model(model).eval(), setup, runtime


def score_dataset(path: str, dataset, device: torch.device, workers: int, progress=None, precision: str = "fp32"):
    """Site scores (and patch probabilities for M and V) of every site of ``dataset``,
    read in order by ``workers`` DataLoader processes, with ``precision`` autocast."""
    model, setup, runtime = load_trained(path, device, precision)
    loader = site_loader(dataset, inference_sites_per_batch(setup), workers, None, pin_memory=runtime.cuda)
    return site_scores(setup, model, loader, runtime, progress), setup


def site_z(setup, scores, probabilities):
    """z_i of docs/method.md §7: the median of the site's top-k patch probabilities (M, V); the
    site probability itself for the whole-site model W."""
    if probabilities is None:
        return scores
    k = min(setup.k, probabilities.shape[1])
    return np.median(np.sort(probabilities, axis=1)[:, -k:], axis=1)


def shard_rows(table, part: int, parts: int):
    """Rows of one of ``parts`` shards of a plate: whole wells, wells dealt round-robin in
    order, so shards are balanced and a site never moves between shards."""
    if not 0 <= part < parts:
        raise ValueError(f"shard part {part} is outside 0..{parts - 1}")
    wells = sorted(table["well"].unique())
    chosen = set(wells[part::parts])
    return table[table["well"].isin(chosen)].reset_index(drop=True)
