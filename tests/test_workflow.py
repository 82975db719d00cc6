"""The workflow run for real with Snakemake on a tiny demo screen, end to end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr
from scipy.special import expit

from deemd.hardware import local_gpu_present
from deemd.mil import TrainSetup
from workflow_utils import REPO, TINY, WELLS, copy_run, deep_merge, job_counts, snakemake, write_config

pytestmark = pytest.mark.workflow


# tiny_run, one full local run of the tiny demo, is a session fixture in conftest.py (the
# SLURM test compares its run with it).


def test_run_produces_the_per_well_table_and_figure(tiny_run):
    directory = tiny_run
    results = directory / "results" / "tiny"
    wells = pd.read_parquet(results / "nuclei" / "wells.parquet")
    sites = pd.read_parquet(results / "metadata" / "sites.parquet")
    assert len(wells) == sites["well_id"].nunique() == len(pd.read_csv(directory / "resources/tiny/metadata.csv")) // 4
    assert {"plate_id", "well", "disease_condition", "treatment", "treatment_conc", "nuclei_count", "no_nuclei", "toxic"} <= set(wells.columns)
    assert (results / "nuclei" / "nuclei_counts.png").stat().st_size > 10_000
    for rule_log in ("stitch/HRCE-1_1.log", "nuclei/HRCE-1_2.log", "metadata/sites_table.log", "nuclei/summary.log"):
        assert (directory / "logs" / "tiny" / rule_log).stat().st_size > 0
    assert (directory / "benchmarks" / "results" / "tiny" / "stitch" / "HRCE-1_1.tsv").exists()


def test_counts_match_the_synthetic_truth(tiny_run):
    directory = tiny_run
    wells = pd.read_parquet(directory / "results/tiny/nuclei/wells.parquet")
    truth = pd.concat(pd.read_parquet(p) for p in sorted((directory / "resources/tiny/truth/sites").glob("*.parquet")))
    truth["well_id"] = truth["site_id"].str.rsplit("_", n=1).str[0]
    true_counts = truth.groupby("well_id")["n_nuclei"].sum()
    merged = wells.set_index("well_id").join(true_counts.rename("true_count"))
    seeded = merged[merged["true_count"] > 0]
    error = (seeded["nuclei_count"] - seeded["true_count"]).abs() / seeded["true_count"]
    assert error.median() <= 0.15, error.describe()
    # Failed (unseeded) wells are found and flagged.
    assert merged.loc[merged["true_count"] == 0, "no_nuclei"].all()
    assert (merged["true_count"] == 0).sum() == TINY["demo"]["failed_wells_per_plate"] * TINY["demo"]["plates"]


def test_second_run_does_nothing(tiny_run):
    directory = tiny_run
    result = snakemake(directory, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_network_rules_share_the_cores_without_a_gpu(tiny_run):
    # A dry run of the tiny run's trainings with 6 cores: on the CPU alone each takes half
    # of them and no GPU slot; with a GPU, 4 threads and the one slot.
    # The target goes before --configfile, which takes several values.
    command = ["snakemake", "results/tiny/models/M/model.pt", "-n", "--forcerun", "train", "--cores", "6",
               "-s", str(REPO / "Snakefile"), "--directory", str(tiny_run), "--configfile", str(tiny_run / "config.yaml")]
    plan = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    job = plan[plan.index("rule train:"):].split("\n\n")[0]
    gpu = local_gpu_present(TINY["train"].get("device", "auto"))
    assert ("threads: 4" if gpu else "threads: 3") in job, job
    assert f"gpu={int(gpu)}" in job, job


def test_infer_jobs_follow_plates_per_job(tiny_run, tmp_path):
    """A dry run of M's efficacy with each grouping of the infer jobs lists the shards it
    would read: one per plate part, one per N plates, or one for every plate."""
    cases = [
        ({"plates_per_job": 1, "shards_per_plate": 2}, ["HRCE-1_1.part0", "HRCE-1_1.part1", "HRCE-1_2.part0", "HRCE-1_2.part1"]),
        ({"plates_per_job": 1, "shards_per_plate": 1}, ["HRCE-1_1.part0", "HRCE-1_2.part0"]),
        ({"plates_per_job": 2}, ["plates1"]),
        ({"plates_per_job": 0}, ["all_plates"]),
    ]
    for index, (inference, shards) in enumerate(cases):
        config = write_config(tmp_path, TINY, {"inference": inference}, name=f"config{index}.yaml")
        command = ["snakemake", "results/tiny/efficacy/M/treatments.parquet", "-n", "--forcerun", "efficacy", "--cores", "2",
                   "-s", str(REPO / "Snakefile"), "--directory", str(tiny_run), "--configfile", str(config)]
        plan = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        job = plan[plan.index("rule efficacy:"):].split("\n\n")[0]
        listed = sorted(re.findall(r"inference/M/([^,\s]+)\.parquet", job.split("output:")[0]))
        assert listed == shards, (inference, job)


def test_adding_a_plate_reruns_only_that_plate_and_the_aggregates(tiny_run, tmp_path):
    source = tiny_run
    directory = tmp_path / "added"
    copy_run(source, directory)
    write_config(directory, deep_merge(TINY, {"demo": {"plates": 3}}))
    result = snakemake(directory, WELLS)
    counts = job_counts(result.stdout + result.stderr)
    # The metadata checkpoint reruns first; after it, only plate 3's jobs and the aggregates.
    log = result.stdout + result.stderr
    assert "HRCE-1_3" in log
    for plate in ("HRCE-1_1", "HRCE-1_2"):
        assert f"wildcards: plate_id={plate}" not in log, f"{plate} was rerun"
        assert f"Plate{plate[-1]}" not in log.split("rule demo_plate")[-1] if "rule demo_plate" in log else True
    assert counts.get("demo_plate", 0) <= 1
    wells = pd.read_parquet(directory / "results/tiny/nuclei/wells.parquet")
    assert sorted(wells["plate_id"].unique()) == ["HRCE-1_1", "HRCE-1_2", "HRCE-1_3"]
    assert "Nothing to be done" in snakemake(directory, "-n", WELLS).stdout


def test_demo_is_deterministic(tiny_run, tmp_path):
    source = tiny_run
    write_config(tmp_path, TINY)
    snakemake(tmp_path, "--until", "demo_metadata")
    png = sorted((source / "resources/tiny/images/HRCE-1/Plate2").glob("*_s2_w3.png"))[-1]
    for relative in ("resources/tiny/metadata.csv", "resources/tiny/truth/compounds.csv",
                     str(png.relative_to(source))):
        assert (tmp_path / relative).read_bytes() == (source / relative).read_bytes(), relative


def test_corrupt_png_is_an_error_naming_the_file_or_dropped_and_listed(tiny_run, tmp_path):
    source = tiny_run
    directory = tmp_path / "bad"
    copy_run(source, directory, without=("results",))
    bad = sorted((directory / "resources/tiny/images/HRCE-1/Plate1").glob("*_s2_w1.png"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    result = snakemake(directory, WELLS, check=False)
    assert result.returncode != 0
    assert f"{bad.name}: corrupt or truncated PNG" in (directory / "logs/tiny/stitch/HRCE-1_1.log").read_text() + result.stderr
    assert not (directory / "results/tiny/store/HRCE-1_1.zarr").exists()
    write_config(directory, deep_merge(TINY, {"dataset": {"on_bad_image": "drop"}}))
    snakemake(directory, WELLS)
    qc = pd.read_parquet(directory / "results/tiny/store/HRCE-1_1.qc.parquet")
    assert qc["site_id"].tolist() == [f"HRCE-1_1_{bad.name.split('_')[0]}_2"]
    wells = pd.read_parquet(directory / "results/tiny/nuclei/wells.parquet")
    assert wells.loc[wells["well_id"] == qc["site_id"].iloc[0].rsplit("_", 1)[0], "n_sites_imaged"].item() == 3


def test_bad_config_value_stops_at_start_up(tmp_path):
    write_config(tmp_path, TINY, {"nuclei": {"toxicity": {"fraction": 1.5}}})
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "config key nuclei.toxicity.fraction: 1.5 is greater than the maximum of 1" in result.stderr + result.stdout


def test_malformed_metadata_row_stops_naming_line_column_value(tiny_run, tmp_path):
    source = tiny_run
    metadata = pd.read_csv(source / "resources/tiny/metadata.csv", dtype=str)
    metadata.loc[6, "disease_condition"] = "Infected"
    (tmp_path / "plates").mkdir()
    metadata.to_csv(tmp_path / "plates" / "metadata.csv", index=False)
    write_config(tmp_path, TINY, {"dataset": {"name": "bad", "source": "local",
                                              "metadata": str(tmp_path / "plates" / "metadata.csv"),
                                              "images": str(source / "resources/tiny/images/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png")}})
    result = snakemake(tmp_path, "results/bad/nuclei/wells.parquet", check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs/bad/metadata/sites_table.log").read_text() + result.stderr
    assert "line 8, column 'disease_condition': value 'Infected'" in log


def test_facility_plates_with_column_mapping(tiny_run, tmp_path):
    """A facility's own CSV and file names, mapped through dataset.columns/values/defaults."""
    source = tiny_run
    metadata = pd.read_csv(source / "resources/tiny/metadata.csv", dtype=str)
    metadata = metadata[metadata["plate"] == "1"]
    facility = pd.DataFrame({
        "Barcode": "1", "Well": metadata["well"], "Field": metadata["site"],
        "Infection": metadata["disease_condition"].map({"Active SARS-CoV-2": "infected", "Mock": "uninfected", "UV Inactivated SARS-CoV-2": "uv_virus"}),
        "Compound": metadata["treatment"], "Dose_uM": metadata["treatment_conc"],
    })
    (tmp_path / "plates" / "1").mkdir(parents=True)
    facility.to_csv(tmp_path / "plates" / "map.csv", index=False)
    for png in (source / "resources/tiny/images/HRCE-1/Plate1").glob("*.png"):
        well, site, channel = png.stem.split("_")
        (tmp_path / "plates" / "1" / f"{well}_f{int(site[1:]):02d}_c{channel[1:]}.png").symlink_to(png)
    write_config(tmp_path, TINY, {"dataset": {
        "name": "facility", "source": "local", "metadata": str(tmp_path / "plates" / "map.csv"),
        "images": str(tmp_path / "plates" / "{plate}" / "{well}_f{site:02d}_c{channel}.png"),
        "columns": {"plate": "Barcode", "well": "Well", "site": "Field", "disease_condition": "Infection",
                    "treatment": "Compound", "treatment_conc": "Dose_uM"},
        "values": {"disease_condition": {"infected": "Active SARS-CoV-2", "uninfected": "Mock", "uv_virus": "UV Inactivated SARS-CoV-2"}},
        "defaults": {"experiment": "LAB-1", "cell_type": "HRCE"},
    }})
    snakemake(tmp_path, "results/facility/nuclei/wells.parquet")
    ours = pd.read_parquet(tmp_path / "results/facility/nuclei/wells.parquet")
    demo = pd.read_parquet(source / "results/tiny/nuclei/wells.parquet")
    demo = demo[demo["plate_id"] == "HRCE-1_1"]
    assert ours["plate_id"].unique().tolist() == ["LAB-1_1"]
    assert np.array_equal(ours.sort_values("well")["nuclei_count"].to_numpy(), demo.sort_values("well")["nuclei_count"].to_numpy())


def test_operetta_like_export_runs_end_to_end(tmp_path):
    """issue 15: an imager's export as it comes (16-bit TIFFs named r..c..f..p..-ch..,
    3 x 3 fields, barcode plates, 4 stains), written from the demo's world by
    tests/operetta_export.py, runs through the whole workflow with config/operetta.yaml
    (and the tiny demo's training settings, one epoch). Model M alone: W and V read the store as M
    does, and the run also checks a workflow with one model."""
    from deemd.store import open_plate_store
    from operetta_export import write_operetta_export

    truth = write_operetta_export(tmp_path)
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "operetta.yaml").read_text()),
                 # One epoch: the run checks the images are learnt from, not how well.
                 {"train": deep_merge(TINY["train"], {"models": ["M"], "by_model": {"M": {"epochs": 1}}}),
                  "store": TINY["store"]})
    snakemake(tmp_path, nice=10)  # it yields the CPU to the tiny run, which most tests wait for
    results = tmp_path / "results" / "operetta"
    store = open_plate_store(results / "store" / "OPERETTA-1_BC24A017.zarr")
    assert store.images.dtype == np.uint8 and store.images.shape == (18, 4, 384, 384)
    assert store.site_valid.shape == (18, 9) and store.site_valid.all()
    intensity = store.group.attrs["intensity"]
    assert intensity["source_dtype"] == "uint16" and len(intensity["low"]) == 4
    # The rule undoes the camera's offset: each channel's darkest percentile sits near it.
    assert all(100 <= low < 140 for low in intensity["low"]), intensity
    wells = pd.read_parquet(results / "nuclei" / "wells.parquet").merge(truth, on=["plate", "well"], validate="one_to_one")
    assert len(wells) == len(truth) == 36 and set(wells["plate_id"]) == {"OPERETTA-1_BC24A017", "OPERETTA-1_BC24A018"}
    counted = wells["n_nuclei"] > 0
    error = (wells["nuclei_count"] - wells["n_nuclei"]).abs()[counted] / wells["n_nuclei"][counted]
    assert error.median() < 0.02 and error.max() < 0.10, wells[["plate", "well", "nuclei_count", "n_nuclei"]]
    assert (wells.loc[~counted, "nuclei_count"] == 0).all()
    ap = pd.read_csv(results / "evaluation" / "average_precision.tsv", sep="\t").set_index("model")
    assert ap.index.tolist() == ["M"] and ap["average_precision"].between(0, 1).all()
    assert ap.loc["M", "average_precision"] > ap.loc["M", "chance_ap"], ap  # 0.83 at 2 epochs when measured (validation AP 0.80 after 1)
    hcs = zarr.open_group(str(results / "hcs" / "OPERETTA-1_BC24A017.ome.zarr"), mode="r")
    assert hcs.attrs["plate"]["field_count"] == 9 and len(hcs.attrs["plate"]["wells"]) == 18
    assert (results / "figures" / "plate_maps" / "M.png").stat().st_size > 10_000


def test_lint_and_format_are_clean():
    lint = subprocess.run(["snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations" in lint.stdout + lint.stderr or "no issues" in (lint.stdout + lint.stderr).lower() or lint.stdout.strip() == ""
    fmt = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow/rules"], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_training_and_evaluation_outputs(tiny_run):
    directory = tiny_run
    results = directory / "results" / "tiny"
    table = pd.read_csv(results / "evaluation" / "average_precision.tsv", sep="\t")
    assert table["model"].tolist() == ["M", "W", "V"]
    assert table["average_precision"].between(0, 1).all() and (table["n_sites"] > 0).all()
    scores = pd.read_parquet(results / "evaluation" / "test_scores.parquet")
    split = pd.read_parquet(results / "split" / "sites.parquet")
    assert set(scores["site_id"]) == set(split.loc[split["set"] == "test", "site_id"])
    for model in ("M", "W", "V"):
        saved = torch.load(results / "models" / model / "model.pt", weights_only=True)
        assert saved["kind"] == model and TrainSetup.from_dict(saved["setup"]).grid.n_patches == 49
        history = pd.read_parquet(results / "models" / model / "history.parquet")
        assert len(history) == (1 if model == "V" else 2)
        assert (directory / "logs/tiny/train" / f"{model}.log").read_text().count("epoch ") >= len(history)
    assert (results / "evaluation" / "pr_curves.png").stat().st_size > 10_000


def test_inference_shards_keep_each_models_readouts(tiny_run):
    """M's shards hold its map readouts and no logit; W's hold its logit, whose sigmoid is
    z, and no map readouts; each model's plate QC is on z and on its inhibition readout."""
    results = tiny_run / "results" / "tiny"
    for model, present, absent, readout in (("M", ["a", "map_mean"], ["logit"], "map_mean"), ("W", ["logit"], ["a", "map_mean"], "logit")):
        shards = pd.concat([pd.read_parquet(path) for path in sorted((results / "inference" / model).glob("*.parquet"))])
        assert len(shards) and shards[present].notna().all().all() and shards[absent].isna().all().all()
        if model == "W":
            np.testing.assert_allclose(shards["z"], expit(shards["logit"].to_numpy(np.float64)), rtol=1e-5, atol=1e-7)
        qc = pd.read_parquet(results / "efficacy" / model / "plate_qc.parquet")
        assert set(qc["readout"]) == {"z", readout}


def _popen(directory, *args):
    command = ["snakemake", *args, "-s", str(REPO / "Snakefile"), "--directory", str(directory), "--cores", "2",
               "--configfile", str(directory / "config.yaml")]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_killed_training_resumes_and_ends_as_an_uninterrupted_run(tiny_run, tmp_path):
    """M is killed after its first epoch's checkpoint, then resumed; the tiny run trained
    the same M (same config, seed and threads) without a break, and training is
    bit-repeatable on one machine, so the two models and histories must be equal."""
    source = tiny_run
    target = "results/tiny/models/M/model.pt"
    killed = tmp_path / "killed"
    copy_run(source, killed, without=("results/tiny/models/M",))
    checkpoint = killed / "results/tiny/models/M/checkpoint/last.pt"
    process = _popen(killed, target)
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert checkpoint.exists(), "no checkpoint was written"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / target).exists()
    epochs_done = torch.load(checkpoint, weights_only=True)["state"]["epoch"]
    assert epochs_done < TINY["train"]["by_model"]["M"]["epochs"]
    snakemake(killed, "--unlock")
    snakemake(killed, target, "--rerun-incomplete")
    log = (killed / "logs/tiny/train/M.log").read_text()
    assert f"resumed from {checkpoint.relative_to(killed)} after epoch {epochs_done}" in log
    assert not checkpoint.parent.exists(), "a finished model's checkpoint is removed"

    whole = torch.load(source / target, weights_only=True)
    resumed = torch.load(killed / target, weights_only=True)
    assert whole["best_epoch"] == resumed["best_epoch"] and whole["best_val_ap"] == resumed["best_val_ap"]
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    history_whole = pd.read_parquet(source / "results/tiny/models/M/history.parquet")
    history_resumed = pd.read_parquet(killed / "results/tiny/models/M/history.parquet")
    columns = ["epoch", "train_loss", "val_ap", "lr", "best"]
    pd.testing.assert_frame_equal(history_whole[columns], history_resumed[columns])


def test_k_selection_target(tiny_run, tmp_path):
    source = tiny_run
    directory = tmp_path / "k"
    copy_run(source, directory)
    write_config(directory, deep_merge(TINY, {"train": {"by_model": {"M": {"epochs": 1}}}, "k_selection": {"ks": [1, 2]}}))
    result = snakemake(directory, "k_selection")
    assert job_counts(result.stdout + result.stderr).get("train_k") == 2
    table = pd.read_csv(directory / "results/tiny/k_selection/k_selection.tsv", sep="\t")
    assert table["k"].tolist() == [1, 2]
    assert np.allclose(table["expected_area"], 1 - np.exp(-0.4), atol=1e-4)
    assert table["chance_ap"].between(0, 1).all() and table["below_chance"].dtype == bool
    assert table[["area_infected_median", "area_non_infected_median"]].stack().between(0, 1).all()
    assert (directory / "results/tiny/k_selection/k_selection.png").stat().st_size > 10_000


def test_report_collects_every_figure(tiny_run, tmp_path):
    directory = tiny_run
    report = tmp_path / "report.html"
    metadata = directory / "results/tiny/report/metadata.yaml"
    snakemake(directory, "--report", str(report), "--report-metadata", str(metadata))
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000
    for name in ("nuclei_counts.png", "pr_curves.png", "model_comparison.png", "training_curves.png", "infection_maps",
                 "plate_qc.png", "plate_maps", "deemd_vs_inhibition",
                 # The captions of the inhibition panels and the hit scatter, names that other figures share.
                 "Inhibition dose response of", "The hit call of model",
                 # The interactive hit tables and the run's metadata (issue 13).
                 "hit_table", "Interactive hit table of model", "run_metadata.tsv", "config sha256", "rstatix"):
        assert name in html, name
    record = yaml.safe_load(metadata.read_text())
    assert record["dataset"] == "tiny (synthetic)" and len(record["config sha256"]) == 64
    assert {"deemd", "torch", "rstatix", "date"} <= set(record)


def test_hcs_export_of_the_tiny_run_reads_back(tiny_run):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Plate, Reader

    from deemd.store import open_plate_store

    directory = tiny_run
    path = directory / "results/tiny/hcs/HRCE-1_1.ome.zarr"
    [node] = list(Reader(parse_url(str(path), fmt=FormatV04()))())
    plate = next(spec for spec in node.specs if isinstance(spec, Plate))
    store = open_plate_store(directory / "results/tiny/store/HRCE-1_1.zarr")
    assert len(plate.well_paths) == len(store.wells)
    [image] = list(Reader(parse_url(str(path / plate.well_paths[0] / "0"), fmt=FormatV04()))())
    assert np.array_equal(np.asarray(image.data[0]), store.read_site(0, 1))
    assert image.metadata["channel_names"] == store.channel_names


@pytest.mark.parametrize(
    "change,expected",
    [
        # A nucleus parameter: nuclei and everything after, never the demo or stitching.
        ({"nuclei": {"diameter": 7.0}}, {"nuclei": 2, "nuclei_summary": 1, "split_sets": 1}),
        # A figure parameter: only that figure.
        ({"figures": {"top_compounds": 3}}, {"dose_response": 3}),
        # An efficacy parameter: efficacy and the figures after it, not training or inference.
        ({"efficacy": {"zeta": 0.6}}, {"efficacy": 3, "dose_response": 3, "model_comparison": 1}),
        # One model's own training value: that model only (V: 2 plates to infer).
        ({"train": {"by_model": {"V": {"epochs": 2}}}}, {"train": 1, "infer": 1, "evaluate": 1, "efficacy": 1}),
    ],
    ids=["nucleus-parameter", "figure-parameter", "efficacy-parameter", "one-model-parameter"],
)
def test_changing_a_parameter_reruns_exactly_what_uses_it(tiny_run, tmp_path, change, expected):
    source = tiny_run
    directory = tmp_path / "changed"
    copy_run(source, directory)
    write_config(directory, deep_merge(TINY, change))
    counts = job_counts(snakemake(directory, "-n").stdout)
    counts.pop("all", None)
    counts.pop("total", None)
    for rule, count in expected.items():
        assert counts.get(rule) == count, (rule, counts)
    never = {"demo_plate", "demo_library", "stitch", "sites_table"}
    if "nuclei" not in change:
        never |= {"nuclei", "split_sets", "channel_stats"}
    if "nuclei" not in change and "train" not in change:
        never |= {"train", "infer"}
    assert not never & set(counts), counts
    if "figures" in change:
        # report_metadata records the config's digest, so any config change rewrites it
        assert set(counts) == {"dose_response", "report_metadata"}, counts


# The second synthetic world at the tiny size: 40 cells a site, 1-2 wells a dose.
TINY_DIFFUSE = {
    "dataset": {"name": "tinydiffuse", "metadata": "resources/tinydiffuse/metadata.csv",
                "images": "resources/tinydiffuse/images/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png"},
    "demo": {"world": "diffuse", "diffuse": {"cells": {"per_site": 40}}},
}


def test_diffuse_world_runs_to_the_per_well_table(tmp_path):
    write_config(tmp_path, TINY, TINY_DIFFUSE)
    snakemake(tmp_path, "results/tinydiffuse/nuclei/wells.parquet")
    wells = pd.read_parquet(tmp_path / "results/tinydiffuse/nuclei/wells.parquet")
    truth = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "resources/tinydiffuse/truth/sites").glob("*.parquet")))
    library = pd.read_csv(tmp_path / "resources/tinydiffuse/truth/compounds.csv")
    assert "best_nontoxic_efficacy" in library.columns and len(library) == TINY["demo"]["compounds"]
    assert "world diffuse" in (tmp_path / "logs/tinydiffuse/demo/HRCE-1_1.log").read_text()
    true_counts = truth.groupby("well_id")["n_nuclei"].sum()
    merged = wells.set_index("well_id").join(true_counts.rename("true_count"))
    seeded = merged[merged["true_count"] > 0]
    assert ((seeded["nuclei_count"] - seeded["true_count"]).abs() / seeded["true_count"]).median() <= 0.15
    untreated = truth[(truth["disease_condition"] == "Active SARS-CoV-2") & truth["treatment"].isna() & ~truth["failed"]]
    assert (untreated["n_infected"] > 0).mean() > 0.9  # infection spread over (nearly) every site
    # the world is a param of the demo jobs: switching back to foci reruns them
    write_config(tmp_path, TINY, {"dataset": TINY_DIFFUSE["dataset"]}, name="foci.yaml")
    dry = snakemake(tmp_path, "-n", "results/tinydiffuse/nuclei/wells.parquet", config=tmp_path / "foci.yaml")
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts.get("demo_library") == 1 and counts.get("demo_plate") == TINY["demo"]["plates"], counts
