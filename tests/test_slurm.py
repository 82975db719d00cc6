"""The workflow on a real (one-node) SLURM cluster, with the repository's SLURM profile.

A slurmctld and a slurmd are started for this module (tests/slurm_cluster.py); the tiny demo
runs with the slurm executor through profiles/slurm, changed only where this CPU-only test
cluster differs from a real one (no GPU request, its partition, 2 CPUs, fast status
polling). To keep the suite short the cluster runs a smaller case than the local run: model
M alone (``train.models: [M]``), to its efficacy tables, the evaluation and one figure. That
still holds a job of every stage and of both kinds of rule (CPU, and the GPU rules train,
infer). Every job must have run inside an sbatch job (the profile's job groups
put several in one), and M's results must equal those of the local run (the ``tiny_run``
session fixture), which trains M the same way beside W and V.

Skipped when SLURM is not installed, unless DEEMD_REQUIRE_SLURM=1 (CI), where that fails.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import slurm_cluster
from deemd.hardware import local_gpu_present, network_rule_threads
from workflow_utils import REPO, TINY, write_config

# One worker of pytest-xdist runs the whole module: it has one cluster.
pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("slurm")]

GPU_RULES = ("train", "train_k", "k_selection", "infer")
# The cluster's case: the tiny demo with model M alone, to these targets.
SLURM_CONFIG = {"train": {"models": ["M"]}}
SLURM_TARGETS = ["results/tiny/efficacy/M/treatments.parquet", "results/tiny/evaluation/average_precision.tsv",
                 "results/tiny/figures/dose_response/M.png"]
# How profiles/slurm asks for a GPU; a CPU-only cluster, like this one, drops all three.
GPU_RESOURCES = ("gpu", "gpu_model", "cpus_per_gpu")
NODE_CPUS = 2


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node cluster; its environment (SLURM_CONF) for clients and Snakemake."""
    reason = slurm_cluster.missing()
    if reason:
        if os.environ.get("DEEMD_REQUIRE_SLURM") == "1":
            pytest.fail(f"DEEMD_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    # Its jobs yield the CPU to the local tiny run beside them, which most tests wait for.
    with slurm_cluster.slurm_cluster(tmp_path_factory.mktemp("slurm-cluster"), cpus=NODE_CPUS, memory_mb=20000,
                                     nice=10) as env:
        yield env


def profile_for_test_cluster(directory: Path) -> Path:
    """profiles/slurm as it is, but for a CPU-only 2-CPU cluster and a quick test."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert set(GPU_RULES) <= set(profile["set-resources"]), "profiles/slurm must ask for every GPU rule's GPU"
    assert all(profile["set-resources"][rule]["gpu"] == 1 for rule in GPU_RULES)
    assert all(profile["set-threads"][rule] == profile["set-resources"][rule]["cpus_per_gpu"] for rule in GPU_RULES)
    assert "gpu" not in str(profile.get("resources", "")), "no global GPU limit on a cluster"
    profile["default-resources"]["slurm_partition"] = slurm_cluster.PARTITION
    for resources in profile["set-resources"].values():
        for name in GPU_RESOURCES:
            resources.pop(name, None)
        resources["slurm_partition"] = slurm_cluster.PARTITION
    # The GPU rules with the threads of the local run beside it (--cores 2), so that both
    # train the same models to the bit: a thread count changes torch's floating point sums.
    local_threads = min(network_rule_threads(local_gpu_present("auto"), 2), 2)
    profile["set-threads"] = {rule: local_threads for rule in profile["set-threads"]}
    profile.update({
        "max-threads": NODE_CPUS,  # the other rules' threads above 2 do not fit
        "slurm-no-account": True,  # no accounting here: nothing to charge, no account to guess
        "slurm-init-seconds-before-status-checks": 1,  # then +10 s per check while no job ends
        "seconds-between-status-checks": 1,
        "slurm-keep-successful-logs": True,  # one SLURM log per sbatch job, counted below
        "latency-wait": 5,  # one local file system
    })
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory, request):
    """The cluster's case (SLURM_CONFIG, SLURM_TARGETS) of the tiny demo: (directory,
    Snakemake's output, seconds, the local run ``tiny_run``).

    The local run goes on meanwhile, if it has not run yet: this run spends much of its time
    waiting between status checks, and the two share the machine's CPUs. (So no test here
    asks for ``tiny_run`` itself: pytest would set the session fixture up first, alone.)"""
    directory = tmp_path_factory.mktemp("tiny-slurm")
    write_config(directory, TINY, SLURM_CONFIG)
    profile = profile_for_test_cluster(directory.parent / f"{directory.name}-profile")
    # Targets go before --configfile, which takes several values.
    command = ["snakemake", *SLURM_TARGETS, "--workflow-profile", str(profile), "-s", str(REPO / "Snakefile"),
               "--directory", str(directory), "--configfile", str(directory / "config.yaml")]
    log = directory.parent / f"{directory.name}.log"
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=slurm)
    try:
        local = request.getfixturevalue("tiny_run")
        returncode = process.wait(timeout=1800)
    finally:
        if process.poll() is None:
            process.terminate()  # Snakemake cancels its SLURM jobs
            process.wait(60)
    seconds = time.monotonic() - start
    output = log.read_text()
    assert returncode == 0, output[-12000:]
    return directory, output, seconds, local


def _finished_rules(output: str) -> collections.Counter:
    return collections.Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output))


def test_every_job_ran_through_sbatch(slurm, slurm_run):
    directory, output, seconds, _ = slurm_run
    finished = _finished_rules(output)
    # A job of every stage, both kinds of rule, and M alone.
    assert {"stitch", "nuclei", "split_sets", "train", "evaluate", "infer", "efficacy", "dose_response"} <= set(finished)
    assert finished["train"] == 1 and finished["infer"] == 1, finished
    submitted = re.findall(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/((?:rule|group)_\w+)/",
                           output)
    # The profile's groups took effect: one sbatch job per plate for stitch and nuclei, and
    # the GPU rules alone.
    kinds = collections.Counter(kind for _, kind in submitted)
    assert kinds["group_plate_nuclei_stitch"] == 2 and kinds["rule_infer"] == 1 and kinds["rule_train"] == 1, kinds
    jobids = [jobid for jobid, _ in submitted]
    assert len(set(jobids)) == len(jobids)
    logs = sorted((directory / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert sorted(log.stem for log in logs) == sorted(jobids)
    # Every job but `all` (no code; Snakemake itself ticks it off) ran inside one of those
    # sbatch jobs: its job step's Snakemake ran it there as a local rule (or checkpoint).
    ran_in_slurm = collections.Counter(rule for log in logs
                                       for rule in re.findall(r"^local(?:rule|checkpoint) (\w+):$", log.read_text(), re.M))
    assert ran_in_slurm == finished - collections.Counter(["all"])
    # The controller saw each of them end well (squeue lists ended jobs for MinJobAge).
    queue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T"], capture_output=True, text=True,
                           env=slurm, check=True).stdout.split()
    states = dict(line.split("|") for line in queue)
    assert {jobid: states.get(jobid) for jobid in jobids} == {jobid: "COMPLETED" for jobid in jobids}
    print(f"\nSLURM run of the tiny demo's M case: {sum(ran_in_slurm.values())} jobs in {len(jobids)} sbatch jobs,"
          f" {seconds:.0f} s wall time (alongside the local run, unless that had run before)")


# Compared with the local run: these must be equal to the bit (no torch in them) ...
EXACT = ["nuclei/wells.parquet", "split/sites.parquet", "split/excluded.parquet", "split/summary.parquet"]
# ... and these, downstream of torch, within 1e-5 (same seeds and threads, so in practice
# also to the bit; the test prints which are). The evaluation tables are M's rows.
TORCH = ["evaluation/test_scores.parquet", "evaluation/average_precision.tsv", "models/M/history.parquet",
         "inference/M/*.parquet", "efficacy/M/*.parquet", "figures/ranking/M.tsv"]


def _tables(results: Path, patterns: list[str]) -> list[str]:
    return [str(path.relative_to(results)) for pattern in patterns for path in sorted(results.glob(pattern))]


def _read(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t") if path.suffix == ".tsv" else pd.read_parquet(path)
    if "model" in table.columns:  # the evaluation tables, of every model in the local run
        table = table[table["model"] == "M"].reset_index(drop=True)
    # Training histories hold epoch timings.
    return table.drop(columns=[column for column in table.columns if column.endswith("seconds")])


def _compare(local: pd.DataFrame, remote: pd.DataFrame) -> str:
    """'exact', or 'close' (floats within rtol 1e-5, atol 1e-6; everything else equal), or raises."""
    if local.equals(remote):
        return "exact"
    assert list(local.columns) == list(remote.columns) and list(local.dtypes) == list(remote.dtypes)
    for column in local.columns:
        a, b = local[column], remote[column]
        if a.dtype.kind == "f":
            assert np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True), column
        elif a.dtype == object and any(isinstance(value, np.ndarray) for value in a):
            assert all(np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True) for x, y in zip(a, b)), column
        else:
            assert a.equals(b), column
    return "close"


def test_results_equal_the_local_run(slurm_run):
    directory, _, _, local_directory = slurm_run
    local, remote = local_directory / "results" / "tiny", directory / "results" / "tiny"
    for patterns in (EXACT, TORCH):
        assert _tables(remote, patterns) == _tables(local, patterns)
    for name in EXACT:
        pd.testing.assert_frame_equal(_read(remote / name), _read(local / name))
    names = _tables(local, TORCH)
    assert {name.split("/")[0] for name in names} == {"evaluation", "models", "inference", "efficacy", "figures"}
    verdicts = {name: _compare(_read(local / name), _read(remote / name)) for name in names}
    for model in ("M",):
        weights = [torch.load(results / "models" / model / "model.pt", weights_only=True)["state_dict"]
                   for results in (local, remote)]
        exact = all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
        assert exact or all(torch.allclose(weights[0][key].float(), weights[1][key].float(), rtol=1e-5, atol=1e-6)
                            for key in weights[0]), model
        verdicts[f"models/{model}/model.pt"] = "exact" if exact else "close"
    print("\nSLURM vs local run, exactly equal:", ", ".join(EXACT + [n for n, v in verdicts.items() if v == "exact"]))
    print("SLURM vs local run, within 1e-5 only:", ", ".join(n for n, v in verdicts.items() if v != "exact") or "none")
