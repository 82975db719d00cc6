"""Loading a trained model and scoring sites with it."""

from __future__ import annotations

import torch

from deemd.mil import build_resnet34
from deemd.train import Runtime, inference_sites_per_batch, site_scores


def load_trained(path: str, device: torch.device):
    """A model file written by the train rule -> (model on device, setup, runtime)."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    setup = saved["setup"]
    model = build_resnet34(setup.in_channels)
    model.load_state_dict(saved["state_dict"])
    runtime = Runtime(device, saved["mean"], saved["std"])
    return runtime.model(model), setup, runtime


def score_dataset(path: str, dataset, device: torch.device, loader_factory, progress=None):
    """Site scores (and patch probabilities for M and V) of every site of ``dataset``."""
    model, setup, runtime = load_trained(path, device)
    loader = loader_factory(dataset, inference_sites_per_batch(setup), runtime)
    return site_scores(setup, model, loader, runtime, progress), setup
