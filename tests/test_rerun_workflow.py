"""Reruns that must happen: a damaged plate store, and changed images of a local dataset.
Each starts from a copy of the tiny run (conftest.py) and runs up to the per-well table
only (no training)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest

from workflow_utils import REPO, TINY, WELLS, copy_run, deep_merge, job_counts, snakemake, write_config

pytestmark = pytest.mark.workflow


def test_damaged_store_fails_naming_store_and_well_then_rerun_restitches(tiny_run, tmp_path):
    directory = tmp_path / "damaged"
    copy_run(tiny_run, directory)
    store = directory / "results/tiny/store/HRCE-1_1.zarr"
    (store / "images" / "c.2.0.0.0").unlink()
    # Anything that reads the store now fails, naming the store and the well, in its log.
    result = snakemake(directory, WELLS, "--forcerun", "nuclei", check=False)
    assert result.returncode != 0
    log = (directory / "logs/tiny/nuclei/HRCE-1_1.log").read_text()
    assert "ERROR failed: StoreIntegrityError: results/tiny/store/HRCE-1_1.zarr: chunk images/c.2.0.0.0" in log
    assert "is missing" in log and "rerun the same snakemake command" in log
    assert (directory / "results/tiny/store/HRCE-1_1.zarr.damaged").exists()
    # Rerunning the same command restitches that plate only, then nothing is left to do.
    result = snakemake(directory, WELLS)
    output = result.stdout + result.stderr
    assert job_counts(output).get("stitch") == 1 and "plate_id=HRCE-1_1" in output.split("rule stitch")[1][:2000]
    assert (store / "images" / "c.2.0.0.0").exists()
    assert "Nothing to be done" in snakemake(directory, "-n", WELLS).stdout


def test_changed_image_of_a_local_dataset_reruns_its_plate(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "resources/tiny/images", tmp_path / "plates")
    shutil.copy(tiny_run / "resources/tiny/metadata.csv", tmp_path / "plates" / "metadata.csv")
    local = {"dataset": {"name": "lab", "source": "local", "metadata": str(tmp_path / "plates" / "metadata.csv"),
                         "images": str(tmp_path / "plates/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png"),
                         "on_bad_image": "drop"}}
    write_config(tmp_path, deep_merge(TINY, local))
    target = "results/lab/nuclei/wells.parquet"
    png = sorted((tmp_path / "plates/HRCE-1/Plate2").glob("*_s3_w1.png"))[0]
    good = png.read_bytes()
    png.write_bytes(good[:100])  # a truncated export: the site is dropped
    snakemake(tmp_path, target)
    site_id = f"HRCE-1_2_{png.name.split('_')[0]}_3"
    assert pd.read_parquet(tmp_path / "results/lab/store/HRCE-1_2.qc.parquet")["site_id"].tolist() == [site_id]
    assert "Nothing to be done" in snakemake(tmp_path, "-n", target).stdout
    # The repaired file reruns its plate's stitch (and what follows), not the other plate's.
    png.write_bytes(good)
    os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 10**9))
    result = snakemake(tmp_path, target)
    output = result.stdout + result.stderr
    assert job_counts(output).get("stitch") == 1
    assert "plate_id=HRCE-1_2" in output and "plate_id=HRCE-1_1" not in output
    assert pd.read_parquet(tmp_path / "results/lab/store/HRCE-1_2.qc.parquet").empty
    wells = pd.read_parquet(tmp_path / target)
    assert wells.loc[wells["well_id"] == site_id.rsplit("_", 1)[0], "n_sites_imaged"].item() == 4
    assert "Nothing to be done" in snakemake(tmp_path, "-n", target).stdout


def test_killed_snakemake_leaves_a_lock_that_unlock_removes(tiny_run, tmp_path):
    """What the README says to do after a kill: the rerun stops with a LockException,
    `snakemake --unlock` removes the stale lock, and the same command then redoes the
    killed jobs (rerun-incomplete, default profile)."""
    directory = tmp_path / "killed"
    copy_run(tiny_run, directory, without=("results",))
    command = ["snakemake", WELLS, "-s", str(REPO / "Snakefile"), "--directory",
               str(directory), "--cores", "2", "--configfile", str(directory / "config.yaml")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    # Killed while a stitch job writes its store (its temporary copy exists).
    store = directory / "results/tiny/store"
    while not list(store.glob("*.zarr.tmp")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert list((directory / ".snakemake/locks").iterdir()), "the kill left no lock"
    result = snakemake(directory, WELLS, check=False)
    assert result.returncode != 0 and "LockException" in result.stdout + result.stderr
    assert "--unlock" in result.stdout + result.stderr
    snakemake(directory, "--unlock")
    result = snakemake(directory, WELLS)
    assert job_counts(result.stdout + result.stderr).get("stitch", 0) >= 1 and (directory / WELLS).exists()
    assert "Nothing to be done" in snakemake(directory, "-n", WELLS).stdout
