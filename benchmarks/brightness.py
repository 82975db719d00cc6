"""How much inhibition each model of a finished run reads from brightness alone.

The held-out (validation and test) untreated control sites of a run are read from its
stores, every channel's intensity multiplied by a gain g (as a dimmer exposure, a weaker
stain or dying cells would), scored again by each model, and turned into inhibition with
the run's own readouts (M, V: the map readout; W: the whole-site readout) between the
medians of the unchanged controls, as the efficacy rule does (docs/method.md §10). The
infected controls did not change their infection, so a model that reads infection and not
brightness gives them about 0 at every gain, and the non-infected ones about 1.

    python3 benchmarks/brightness.py RUN_DIR [--gains 0.8 0.9 0.95 1 1.05 1.1] [--sites 48]

RUN_DIR is a working directory the workflow ran in (with config.yaml, as
benchmarks/worlds.py makes them) or --results DIR --config FILE. Prints one table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from snakemake.utils import update_config, validate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
from deemd.data import SiteDataset  # noqa: E402
from deemd.inference import load_trained, site_scores  # noqa: E402
from deemd.inhibition import inhibition  # noqa: E402
from deemd.maps import map_readouts  # noqa: E402
from deemd.store import store_paths_by_plate  # noqa: E402


def run_config(path: Path) -> dict:
    """A run's config as the workflow read it: config/config.yaml, the run's file merged
    over it, and the schema's defaults."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load(path.read_text()))
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    return config


def held_out_controls(split: pd.DataFrame, per_class: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_class`` validation or test sites of each label (1 infected, 0 not)."""
    held = split[split["set"].isin(["val", "test"]) & split["label"].isin([0, 1])]
    return pd.concat([group.sample(min(per_class, len(group)), random_state=seed) for _, group in held.groupby("label")])


def read_sites(results: Path, sites: pd.DataFrame) -> torch.Tensor:
    """The sites' pixels (n, C, S, S) uint8, read as training and inference read them."""
    dataset = SiteDataset(sites, store_paths_by_plate(sorted((results / "store").glob("*.zarr"))))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def rescaled(images: torch.Tensor, gain: float) -> torch.Tensor:
    """uint8 images with every intensity multiplied by ``gain`` (rounded, clipped)."""
    return (images.float() * gain).round().clamp(0, 255).to(torch.uint8)


def readouts(model, images: torch.Tensor, config: dict) -> np.ndarray:
    """Each site's efficacy readout under the run's config (map readout or W's readout);
    ``model`` is what load_trained returns."""
    network, setup, device_precision = model
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(len(images)), torch.arange(len(images)))
    scored = site_scores(setup, network, torch.utils.data.DataLoader(dataset, batch_size=16), device_precision)
    if setup.kind == "W":
        return scored.logits if config["efficacy"]["whole_site_readout"] == "logit" else scored.scores
    maps = config["maps"]
    values = map_readouts(scored.patch_probabilities, setup.grid, maps["alpha"], maps["sigma"], maps["reference_site_size"], setup.eta)
    return values[config["efficacy"]["map_readout"]]


def brightness_table(results: Path, config: dict, gains: list[float], per_class: int) -> pd.DataFrame:
    sites = held_out_controls(pd.read_parquet(results / "split" / "sites.parquet"), per_class)
    images = read_sites(results, sites)
    infected = sites["label"].to_numpy() == 1
    rows = []
    for model_file in sorted((results / "models").glob("*/model.pt")):
        model = load_trained(str(model_file), torch.device("cpu"), config["train"]["precision"])
        unchanged = readouts(model, images, config)
        references = np.median(unchanged[infected]), np.median(unchanged[~infected])
        for gain in gains:
            values = unchanged if gain == 1 else readouts(model, rescaled(images, gain), config)
            share = inhibition(values, *references)
            rows.append({"model": model_file.parent.name, "gain": gain,
                         "infected_controls": float(np.median(share[infected])),
                         "noninfected_controls": float(np.median(share[~infected]))})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="a workflow working directory with config.yaml")
    parser.add_argument("--results", type=Path, help="results/<name> folder (instead of RUN)")
    parser.add_argument("--config", type=Path, help="the run's config (instead of RUN)")
    parser.add_argument("--gains", nargs="+", type=float, default=[0.8, 0.9, 0.95, 1.0, 1.05, 1.1])
    parser.add_argument("--sites", type=int, default=48, help="held-out control sites of each kind")
    args = parser.parse_args(argv)
    config_file = args.config or (args.run / "config.yaml" if args.run else None)
    if config_file is None:
        parser.error("give RUN or --results and --config")
    config = run_config(config_file)
    results = args.results or args.run / "results" / config["dataset"]["name"]
    table = brightness_table(results, config, args.gains, args.sites)
    wide = table.pivot(index="gain", columns="model", values="infected_controls")
    print(f"{results}: median inhibition read from held-out infected control sites with every intensity x gain")
    print("(0: still infected, as they are; 1: read as non-infected)")
    print(wide.round(3).to_string())
    print("non-infected control sites (1 as they are):")
    print(table.pivot(index="gain", columns="model", values="noninfected_controls").round(3).to_string())


if __name__ == "__main__":
    main()
