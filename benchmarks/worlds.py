"""Score the workflow against the hidden truth over both synthetic worlds and several seeds.

Each run is a clean run of the whole workflow on one world (foci: config/config.yaml;
diffuse: config/diffuse.yaml on top of it) at the demo's size, with demo.seed, split.seed
and train.seed all set from one seed, in its own directory. The per-model truth scores
(results/<name>/figures/truth_scores.tsv: DEEMD's E and the inhibition hit calls against
the truth) and the per-plate Z' are gathered into one table.

    python3 benchmarks/worlds.py                      # foci and diffuse, seeds 1 2 3
    python3 benchmarks/worlds.py --worlds diffuse --seeds 4 --cores 2

Each run takes about as long as the demo (minutes on 2 cores). Runs already finished in
--workdir are reused (Snakemake reruns nothing), so an interrupted sweep resumes.

``--score DIR ...`` runs nothing: it scores finished run directories ({world}_seed{seed},
from any --workdir) with this checkout's code, e.g. to pool sweeps made at different times.

``--readouts a map_mean logit z`` also recomputes, from each run's inference shards, the
inhibition statistics with each site readout in turn (the efficacy rule's code, in this
process) and scores them against the truth, to compare readouts on the same models.
``--set efficacy.min_viability=0.9`` (with ``--readouts``) recomputes them with other
config values, to compare settings on the same models.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from snakemake.utils import update_config, validate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
WORLD_CONFIGS = {"foci": [], "diffuse": ["config/diffuse.yaml"]}


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` updated recursively by ``override``, as Snakemake merges config files."""
    merged = copy.deepcopy(base)
    update_config(merged, copy.deepcopy(override))
    return merged


def config_overrides(pairs: list[str]) -> dict:
    """``["efficacy.min_viability=0.9", ...]`` as a nested config dict (values read as YAML)."""
    overrides: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        *parents, leaf = key.split(".")
        node = overrides
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    return overrides


def run_config(world: str, seed: int) -> dict:
    """The full config of one run: config.yaml, the world's overlay, and the seeds."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for overlay in WORLD_CONFIGS[world]:
        config = deep_merge(config, yaml.safe_load((REPO / overlay).read_text()))
    return deep_merge(config, {"demo": {"seed": seed}, "split": {"seed": seed}, "train": {"seed": seed}})


def run(world: str, seed: int, workdir: Path, cores: int) -> tuple[Path, dict, float]:
    directory = workdir / f"{world}_seed{seed}"
    directory.mkdir(parents=True, exist_ok=True)
    config = run_config(world, seed)
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    name = config["dataset"]["name"]
    target = f"results/{name}/figures/truth_scores.tsv"
    command = ["snakemake", target, "-s", str(REPO / "Snakefile"), "--directory", str(directory), "--cores", str(cores),
               "--configfile", str(directory / "config.yaml")]
    start = time.monotonic()
    with open(directory / "snakemake.log", "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{world} seed {seed}: snakemake failed; see {directory / 'snakemake.log'}")
    return directory / "results" / name, config, seconds


def finished_run(directory: Path) -> tuple[str, int, Path, dict]:
    """(world, seed, results folder, config) of a run directory this script made."""
    world, _, seed = directory.name.rpartition("_seed")
    if world not in WORLD_CONFIGS or not seed.isdigit():
        raise SystemExit(f"{directory}: not a run directory of this script (expected <world>_seed<N>)")
    config = yaml.safe_load((directory / "config.yaml").read_text())
    results = directory / "results" / config["dataset"]["name"]
    if not (results / "figures" / "truth_scores.tsv").exists():
        raise SystemExit(f"{directory}: the run has not finished ({results / 'figures' / 'truth_scores.tsv'} is missing)")
    return world, int(seed), results, config


def gather(results: Path, world: str, seed: int, seconds: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    scores = pd.read_csv(results / "figures" / "truth_scores.tsv", sep="\t").assign(world=world, seed=seed, wall_s=None if seconds != seconds else round(seconds))
    qc = [pd.read_parquet(path) for path in sorted((results / "efficacy").glob("*/plate_qc.parquet"))]
    qc = pd.concat(qc, ignore_index=True).assign(world=world, seed=seed) if qc else pd.DataFrame()
    return scores, qc


def readout_scores(results: Path, config: dict, readouts: list[str], world: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model and readout its shards hold: the inhibition statistics recomputed from the
    run's shards and nucleus counts with that readout, scored against the truth (docs/method.md §10), and
    the recomputed per-plate QC rows (plate_id, model, readout, zprime, ssmd, ...)."""
    from deemd.efficacy import efficacy_tables, sign_test_intervals
    from deemd.inhibition import TREATED, inhibition_settings, quantitative_efficacy
    from deemd.nuclei import flag_wells
    from deemd.truth import quantitative_truth_scores, truth_classes, truth_efficacy_column

    compounds = pd.read_csv(results.parents[1] / "resources" / config["dataset"]["name"] / "truth" / "compounds.csv")
    classes = truth_classes(compounds, config["figures"]["truth_effective_threshold"], truth_efficacy_column(compounds))
    # A run's config as this checkout's schema reads it: keys added since take their defaults.
    config = copy.deepcopy(config)
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    # The run's counts with this checkout's QC flags (deemd.nuclei.flag_wells).
    nuclei = flag_wells(pd.read_parquet(results / "nuclei" / "wells.parquet"), config["nuclei"]["toxicity"])
    settings = inhibition_settings(config["efficacy"], config["qc"])
    rows, plate_rows = [], []
    for model_dir in sorted((results / "inference").iterdir()):
        paths = sorted(model_dir.glob("*.parquet"))
        if not paths:
            continue
        sites = pd.concat([pd.read_parquet(p).drop(columns="patch_probabilities") for p in paths], ignore_index=True)
        _, deemd = efficacy_tables(sites[sites["role"] == TREATED], config["efficacy"]["zeta"], config["efficacy"]["confidence"])
        for readout in readouts:
            if readout not in sites or sites[readout].isna().all():
                continue
            tables = quantitative_efficacy(sites, nuclei, model_dir.name, readout, settings, sign_test_intervals)
            treatments = deemd.merge(tables["treatments"], on="treatment", how="outer")
            treatments["effective"] = treatments["effective"].fillna(False).astype(bool)
            qc = tables["plate_qc"]
            scores = quantitative_truth_scores(treatments, tables["doses"], classes)
            zprime = qc.loc[qc["readout"] == readout, "zprime"]
            plate_rows.append(qc[qc["readout"] == readout].assign(world=world, seed=seed))
            rows.append({"world": world, "seed": seed, "model": model_dir.name, "readout": readout,
                         "zprime_min": float(zprime.min()), **scores})
    return pd.DataFrame(rows), (pd.concat(plate_rows, ignore_index=True) if plate_rows else pd.DataFrame())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=list(WORLD_CONFIGS), choices=list(WORLD_CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/deemd-worlds"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="TSV of every run's scores (default: WORKDIR/scores.tsv)")
    parser.add_argument("--readouts", nargs="*", default=[], help="also score these shard readouts offline (a, map_mean, logit, z)")
    parser.add_argument("--score", nargs="+", type=Path, default=None, metavar="DIR", help="run nothing: score these finished run directories")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="with --readouts: recompute with these config values, e.g. efficacy.min_viability=0.9")
    args = parser.parse_args(argv)
    overrides = config_overrides(args.overrides)
    all_scores, all_qc, all_readouts, all_readout_qc = [], [], [], []
    if args.score:
        runs = [finished_run(directory) for directory in args.score]
    else:
        runs = [(world, seed, None, None) for world in args.worlds for seed in args.seeds]
    for world, seed, results, config in runs:
        seconds = float("nan")
        if results is None:
            results, config, seconds = run(world, seed, args.workdir, args.cores)
        scores, qc = gather(results, world, seed, seconds)
        all_scores.append(scores)
        all_qc.append(qc)
        if args.readouts:
            table, plate_qc = readout_scores(results, deep_merge(config, overrides), args.readouts, world, seed)
            all_readouts.append(table)
            all_readout_qc.append(plate_qc)
        print(f"{world} seed {seed}: " + ("scored" if seconds != seconds else f"{seconds:.0f} s"), file=sys.stderr, flush=True)
    scores = pd.concat(all_scores, ignore_index=True)
    first = ["world", "seed", "model"]
    scores = scores[first + [c for c in scores.columns if c not in first]]
    output = args.output or args.workdir / "scores.tsv"
    scores.to_csv(output, sep="\t", index=False, float_format="%.3f")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(scores.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    qc = pd.concat(all_qc, ignore_index=True)
    if len(qc):
        table = qc.pivot_table(index=["world", "seed", "plate_id"], columns=["model", "readout"], values="zprime")
        print("\nrobust Z' per plate (held-out control wells), by model and readout:")
        print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    if all_readouts:
        readouts = pd.concat(all_readouts, ignore_index=True)
        readouts.to_csv(output.with_name(output.stem + "_readouts.tsv"), sep="\t", index=False, float_format="%.3f")
        columns = ["world", "seed", "model", "readout", "zprime_min", "hit_precision", "hit_recall", "inhibition_spearman_rho",
                   "inhibition_median_abs_error", "ec50_within_half_log", "ec50_within_half_log_effective", "e_precision_excl_partial", "e_recall_excl_partial"]
        print("\nreadouts recomputed from the shards:")
        print(readouts[[c for c in columns if c in readouts]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        plate_qc = pd.concat(all_readout_qc, ignore_index=True)
        if len(plate_qc):
            table = plate_qc.pivot_table(index=["world", "seed", "plate_id"], columns=["model", "readout"], values="zprime")
            print("\nrobust Z' per plate, recomputed from the shards, by model and readout:")
            print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    print(f"\nscores written to {output}")


if __name__ == "__main__":
    main()
