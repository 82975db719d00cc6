"""Inference (docs/method.md §5, §7): every patch or whole site of a trained model scored,
site scores, z_i, average precision; and loading a model file written by the train rule.
Training imports this module, never the reverse."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from deemd.data import site_loader
from deemd.grid import PatchGrid
from deemd.mil import TrainSetup, build_resnet34, extract_patches, kth_largest
from deemd.device import DevicePrecision


def forward_in_chunks(network, images: torch.Tensor, device_precision: DevicePrecision, chunk: int) -> torch.Tensor:
    """The network's float outputs for ``images``, ``chunk`` of them a forward pass, each
    pass laid out and autocast for inference."""
    outputs = []
    for start in range(0, len(images), chunk):
        with device_precision.autocast():
            outputs.append(network(device_precision.layout(images[start : start + chunk], inference=True)).float())
    return torch.cat(outputs)


@torch.inference_mode()
def infer_patches(network, loader, grid: PatchGrid, device_precision: DevicePrecision, chunk: int, progress=None):
    """Every patch of every site, ``chunk`` patches a forward pass: (probabilities
    (n_sites, N) float32, labels, rows)."""
    network.eval()
    probabilities, labels, rows = [], [], []
    for step, (sites, label, index) in enumerate(loader):
        patches = extract_patches(device_precision.prepare(sites), grid)
        logits = forward_in_chunks(network, patches.reshape(-1, *patches.shape[2:]), device_precision, chunk)
        probabilities.append(torch.sigmoid(logits).view(len(sites), grid.n_patches).cpu())
        labels.append(label)
        rows.append(index)
        if progress is not None:
            progress(step + 1, len(loader))
    return torch.cat(probabilities).numpy(), torch.cat(labels).numpy(), torch.cat(rows).numpy()


@torch.inference_mode()
def infer_sites(network, loader, device_precision: DevicePrecision, chunk: int, progress=None):
    """Whole-site model W: (logits (n_sites,) float32, labels, rows), ``chunk`` sites a
    forward pass. The logit is kept rather than the probability: a float32 sigmoid rounds
    every logit above about 17 to exactly 1, which a readout needs to tell apart."""
    network.eval()
    logits, labels, rows = [], [], []
    for step, (sites, label, index) in enumerate(loader):
        logits.append(forward_in_chunks(network, device_precision.prepare(sites), device_precision, chunk).view(-1).cpu())
        labels.append(label)
        rows.append(index)
        if progress is not None:
            progress(step + 1, len(loader))
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), torch.cat(rows).numpy()


# Pixels an inference batch holds at least: 1024 patches of 32 px, 64 sites of 128 px. A
# CPU runs small inputs far faster in large forward passes, and an eval-mode network's
# outputs do not depend on the batch.
INFERENCE_PIXELS = 1 << 20
# Pixels a forward pass on a CPU holds at most: 32 patches of 256 px, 2 sites of 1024 px.
# Larger ones run slower there (ResNet34 at 256 px: 11-19 % slower in passes of 512
# patches than of 32-128, the outputs bit for bit the same), their activations being
# memory the process must fetch anew each pass; at 32 px, 128 to 2048 patches a pass run
# alike. A GPU takes a whole batch in one pass.
CPU_FORWARD_PIXELS = 1 << 21


def inference_patches_per_batch(setup: TrainSetup) -> int:
    """Patches per inference batch of M and V: 4 training batches' worth, or
    INFERENCE_PIXELS worth of patches where that is more."""
    return max(4 * setup.batch_size, INFERENCE_PIXELS // setup.grid.patch_size**2)


def inference_sites_per_batch(setup: TrainSetup) -> int:
    """Sites per inference batch: the sites of inference_patches_per_batch patches (W:
    ``whole_batch_size`` sites, or INFERENCE_PIXELS worth of sites where that is more)."""
    if setup.kind == "W":
        return max(setup.whole_batch_size, INFERENCE_PIXELS // setup.grid.site_size**2)
    return max(1, inference_patches_per_batch(setup) // setup.grid.n_patches)


def forward_size(per_batch: int, pixels_each: int, cuda: bool) -> int:
    """Inputs (patches or sites) of ``pixels_each`` pixels per forward pass, of a batch of
    ``per_batch``: all of them on a GPU, at most CPU_FORWARD_PIXELS worth on a CPU."""
    return per_batch if cuda else max(1, min(per_batch, CPU_FORWARD_PIXELS // pixels_each))


def inference_patches_per_forward(setup: TrainSetup, cuda: bool) -> int:
    """Patches per inference forward pass of M and V (forward_size)."""
    return forward_size(inference_patches_per_batch(setup), setup.grid.patch_size**2, cuda)


def inference_sites_per_forward(setup: TrainSetup, cuda: bool) -> int:
    """Whole sites per inference forward pass of W (forward_size)."""
    return forward_size(inference_sites_per_batch(setup), setup.grid.site_size**2, cuda)


class SiteScores(NamedTuple):
    """What scoring a set of sites gives: ``scores`` (the k-th largest patch probability of
    M and V, the site probability of W), ``labels``, ``rows`` (the dataset index of each
    site, in the order scored), ``patch_probabilities`` (n_sites x N; M and V, else None)
    and ``logits`` (W's pre-sigmoid output, the mean of its class activation map over the
    site; else None)."""

    scores: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    patch_probabilities: np.ndarray | None
    logits: np.ndarray | None


def site_scores(setup: TrainSetup, network, loader, device_precision: DevicePrecision, progress=None) -> SiteScores:
    """Site scores of any model (:class:`SiteScores`)."""
    if setup.kind == "W":
        chunk = inference_sites_per_forward(setup, device_precision.cuda)
        logits, labels, rows = infer_sites(network, loader, device_precision, chunk, progress)
        return SiteScores(torch.sigmoid(torch.from_numpy(logits)).numpy(), labels, rows, None, logits)
    chunk = inference_patches_per_forward(setup, device_precision.cuda)
    probabilities, labels, rows = infer_patches(network, loader, setup.grid, device_precision, chunk, progress)
    return SiteScores(kth_largest(probabilities, setup.k), labels, rows, probabilities, None)


def load_model_file(path: str) -> dict:
    """A model file written by the train rule (tensors and builtins only, read with
    ``weights_only=True``), its ``setup`` turned back into a TrainSetup."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types for a foreign pickle
        raise ValueError(f"{path}: not a model file of this version of deemd ({error}); rerun the train rule") from error
    return {**saved, "setup": TrainSetup.from_dict(saved["setup"])}


def load_trained(path: str, device: torch.device, precision: str = "fp32"):
    """A model file written by the train rule -> (model on device, setup, device_precision)."""
    saved = load_model_file(path)
    setup = saved["setup"]
    network = build_resnet34(setup.in_channels)
    network.load_state_dict(saved["state_dict"])
    device_precision = DevicePrecision(device, saved["mean"], saved["std"], precision)
    return device_precision.place(network, inference=True).eval(), setup, device_precision


def score_dataset(path: str, dataset, device: torch.device, workers: int, progress=None, precision: str = "fp32"):
    """(:class:`SiteScores`, setup) of every site of ``dataset`` scored with the model file
    ``path``, read in order by ``workers`` DataLoader processes, with ``precision`` autocast."""
    network, setup, device_precision = load_trained(path, device, precision)
    loader = site_loader(dataset, inference_sites_per_batch(setup), workers, None, pin_memory=device_precision.cuda)
    return site_scores(setup, network, loader, device_precision, progress), setup


def site_z(setup, scores, probabilities):
    """z_i of docs/method.md §7: the median of the site's top-k patch probabilities (M, V); the
    site probability itself for the whole-site model W."""
    if probabilities is None:
        return scores
    k = min(setup.k, probabilities.shape[1])
    return np.median(np.sort(probabilities, axis=1)[:, -k:], axis=1)
