"""Helpers for tests that run the workflow with Snakemake on tiny configs."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from snakemake.utils import update_config

REPO = Path(__file__).resolve().parents[1]

# A tiny demo screen: two 4x6 plates of 128 px sites, 3 compounds at 2 doses.
TINY = {
    "dataset": {"name": "tiny", "site_size": 128, "metadata": "resources/tiny/metadata.csv",
                "images": "resources/tiny/images/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png"},
    "demo": {
        "plates": 2,
        "plate_rows": 4,
        "plate_columns": 6,
        "site_size": 128,
        "compounds": 3,
        "concentrations_um": [0.3, 3.0],
        "controls_per_plate": {"Mock": 3, "UV Inactivated SARS-CoV-2": 3, "Active SARS-CoV-2": 6},
        "failed_wells_per_plate": 1,
    },
    "store": {"batch_wells": 4},
    "train": {"epochs": 2, "by_model": {"M": {"epochs": 2, "batch_size": 64}, "V": {"epochs": 1}},
              "early_stopping_patience": 2, "batch_size": 64,
              "checkpoint_minutes": 0},  # a checkpoint every epoch: a test kills M after its first
}

# Targets up to the per-well table, for tests about the image steps.
WELLS = "results/tiny/nuclei/wells.parquet"


def load_benchmark(name: str):
    """benchmarks/<name>.py imported as a module (the benchmarks are scripts, not a package);
    registered in sys.modules, where dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(f"deemd_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` updated recursively by ``override``, as Snakemake merges config files."""
    merged = copy.deepcopy(base)
    update_config(merged, copy.deepcopy(override))
    return merged


def write_config(directory: Path, *overrides: dict, name: str = "config.yaml") -> Path:
    """The default config with overrides merged in, written to directory/name."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for override in overrides:
        config = deep_merge(config, override)
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def copy_run(source: Path, destination: Path, without: tuple[str, ...] = ()) -> Path:
    """A copy of the workflow directory ``source`` (links kept; file times kept, so that
    Snakemake finds it up to date) without the paths ``without``, relative to ``source``."""
    left_out = {Path(source) / path for path in without}
    shutil.copytree(source, destination, symlinks=True,
                    ignore=lambda folder, names: [name for name in names if Path(folder) / name in left_out])
    return Path(destination)


def at_nice(nice: int):
    """A ``preexec_fn`` for subprocess that runs the child at ``nice`` (None for 0)."""
    return (lambda: os.nice(nice)) if nice else None


def snakemake(directory: Path, *args: str, config: Path | None = None, check: bool = True,
              nice: int = 0) -> subprocess.CompletedProcess:
    """Run the workflow in ``directory`` (its own results/ and resources/), at ``nice``."""
    # Targets first: --configfile takes several values and would swallow them.
    command = ["snakemake", *args, "-s", str(REPO / "Snakefile"), "--directory", str(directory), "--cores", "2",
               "--configfile", str(config or Path(directory) / "config.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, preexec_fn=at_nice(nice))
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def job_counts(output: str) -> dict[str, int]:
    """Rule -> job count from the last 'Job stats' table Snakemake printed."""
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:")[-1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts
