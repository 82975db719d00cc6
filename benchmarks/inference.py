"""Exhaustive patch inference (the MIL epoch's step (a)) against the bare model forward.

Usage: python benchmarks/inference.py [--sites N] [--device auto|cpu|cuda] [--workers W]
Needs the demo's stores and split (run the workflow first). Times, on the same device:
  pass     the real pass: sites read from the per-plate stores by the DataLoader, moved to
           the device, normalised, cut into patches there, ResNet34 forward (bf16 and
           channels-last on CUDA);
  forward  ResNet34 forward alone on random tensors of the same patch batches.
Prints patches/s of both and their ratio (target >= 0.8), and on CUDA the projected time
of one MIL epoch's inference over RxRx19a's 20,000 training sites (49 patches of 256 px).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
from deemd.data import SiteDataset, site_loader  # noqa: E402
from deemd.grid import PatchGrid, patch_grid  # noqa: E402
from deemd.mil import build_resnet34  # noqa: E402
from deemd.inference import infer_patches  # noqa: E402
from deemd.device import DevicePrecision, select_device  # noqa: E402


def forward_only(network, device_precision: DevicePrecision, n_patches: int, grid: PatchGrid, chunk: int, channels: int) -> float:
    batch = torch.randn(chunk, channels, grid.patch_size, grid.patch_size, device=device_precision.device)
    batch = device_precision.layout(batch, inference=True)
    done = 0
    if device_precision.cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        while done < n_patches:
            with device_precision.autocast():
                network(batch).float()
            done += chunk
    if device_precision.cuda:
        torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(REPO / "results" / "demo"))
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    stats = json.loads((results / "split" / "channel_stats.json").read_text())
    sites = pd.read_parquet(results / "split" / "sites.parquet")
    sites = sites[sites["set"] == "train"].head(args.sites).reset_index(drop=True)
    stores = {p: str(results / "store" / f"{p}.zarr") for p in sites["plate_id"].unique()}
    device = select_device(args.device)
    device_precision = DevicePrecision(device, stats["mean"], stats["std"], args.precision)
    grid = patch_grid(stats["site_size"], 1024, 256, 128)
    network = device_precision.place(build_resnet34(len(stats["mean"])), inference=True).eval()
    chunk = 4 * args.batch_size
    loader = site_loader(SiteDataset(sites, stores), max(1, chunk // grid.n_patches), args.workers, None, pin_memory=device_precision.cuda)
    n_patches = len(sites) * grid.n_patches
    infer_patches(network, loader, grid, device_precision, chunk)  # warm-up (cudnn autotune, page cache)
    forward_only(network, device_precision, chunk * 2, grid, chunk, len(stats["mean"]))
    passes, forwards = [], []
    for _ in range(3):  # interleaved
        if device_precision.cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        infer_patches(network, loader, grid, device_precision, chunk)
        if device_precision.cuda:
            torch.cuda.synchronize()
        passes.append(n_patches / (time.perf_counter() - started))
        forwards.append(forward_only(network, device_precision, n_patches, grid, chunk, len(stats["mean"])))
    real, bare = sorted(passes)[1], sorted(forwards)[1]
    print(f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device_precision.cuda else ''}, {args.threads} threads, {args.workers} workers, {device_precision.precision}")
    print(f"{len(sites)} sites of {stats['site_size']} px, {grid.n_patches} patches of {grid.patch_size} px each ({n_patches} patches)")
    print(f"exhaustive inference pass {real:10.1f} patches/s")
    print(f"bare model forward        {bare:10.1f} patches/s")
    print(f"ratio {real / bare:.2f} (target >= 0.8)")
    if device_precision.cuda:
        big = PatchGrid(1024, 256, 128)
        rate = forward_only(network, device_precision, chunk * 20, big, chunk, len(stats["mean"]))
        print(f"ResNet34 at 256x256, bf16, channels-last: {rate:.0f} patches/s; one MIL epoch's inference "
              f"over 20,000 RxRx19a sites (980,000 patches): {980_000 / rate / 60:.1f} min at the bare-forward rate")


if __name__ == "__main__":
    main()
