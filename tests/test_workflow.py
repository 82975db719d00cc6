"""The workflow run for real with Snakemake on a tiny demo screen, end to end."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from workflow_utils import REPO, TINY, deep_merge, job_counts, snakemake, write_config

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One full run of the tiny demo; tests below read its outputs or rerun in copies."""
    directory = tmp_path_factory.mktemp("tiny")
    write_config(directory, TINY)
    result = snakemake(directory)
    return directory, result


def test_run_produces_the_per_well_table_and_figure(tiny_run):
    directory, _ = tiny_run
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
    directory, _ = tiny_run
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
    directory, _ = tiny_run
    result = snakemake(directory, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_adding_a_plate_reruns_only_that_plate_and_the_aggregates(tiny_run, tmp_path):
    source, _ = tiny_run
    directory = tmp_path / "added"
    shutil.copytree(source, directory, symlinks=True)
    write_config(directory, deep_merge(TINY, {"demo": {"plates": 3}}))
    result = snakemake(directory)
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
    assert "Nothing to be done" in snakemake(directory, "-n").stdout


def test_demo_is_deterministic(tiny_run, tmp_path):
    source, _ = tiny_run
    write_config(tmp_path, TINY)
    snakemake(tmp_path, "--until", "demo_metadata")
    png = sorted((source / "resources/tiny/images/HRCE-1/Plate2").glob("*_s2_w3.png"))[-1]
    for relative in ("resources/tiny/metadata.csv", "resources/tiny/truth/compounds.csv",
                     str(png.relative_to(source))):
        assert (tmp_path / relative).read_bytes() == (source / relative).read_bytes(), relative


def test_corrupt_png_is_an_error_naming_the_file_or_dropped_and_listed(tiny_run, tmp_path):
    source, _ = tiny_run
    directory = tmp_path / "bad"
    shutil.copytree(source, directory, symlinks=True)
    bad = sorted((directory / "resources/tiny/images/HRCE-1/Plate1").glob("*_s2_w1.png"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    shutil.rmtree(directory / "results/tiny")
    result = snakemake(directory, check=False)
    assert result.returncode != 0
    assert f"{bad.name}: corrupt or truncated PNG" in (directory / "logs/tiny/stitch/HRCE-1_1.log").read_text() + result.stderr
    assert not (directory / "results/tiny/store/HRCE-1_1.zarr").exists()
    write_config(directory, deep_merge(TINY, {"dataset": {"on_bad_image": "drop"}}))
    snakemake(directory)
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
    source, _ = tiny_run
    metadata = pd.read_csv(source / "resources/tiny/metadata.csv", dtype=str)
    metadata.loc[6, "disease_condition"] = "Infected"
    (tmp_path / "plates").mkdir()
    metadata.to_csv(tmp_path / "plates" / "metadata.csv", index=False)
    write_config(tmp_path, TINY, {"dataset": {"name": "bad", "source": "local",
                                              "metadata": str(tmp_path / "plates" / "metadata.csv"),
                                              "images": str(source / "resources/tiny/images/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png")}})
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs/bad/metadata/sites_table.log").read_text() + result.stderr
    assert "line 8, column 'disease_condition': value 'Infected'" in log


def test_facility_plates_with_column_mapping(tiny_run, tmp_path):
    """A facility's own CSV and file names, mapped through dataset.columns/values/defaults."""
    source, _ = tiny_run
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
    snakemake(tmp_path)
    ours = pd.read_parquet(tmp_path / "results/facility/nuclei/wells.parquet")
    demo = pd.read_parquet(source / "results/tiny/nuclei/wells.parquet")
    demo = demo[demo["plate_id"] == "HRCE-1_1"]
    assert ours["plate_id"].unique().tolist() == ["LAB-1_1"]
    assert np.array_equal(ours.sort_values("well")["nuclei_count"].to_numpy(), demo.sort_values("well")["nuclei_count"].to_numpy())


def test_lint_and_format_are_clean():
    lint = subprocess.run(["snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations" in lint.stdout + lint.stderr or "no issues" in (lint.stdout + lint.stderr).lower() or lint.stdout.strip() == ""
    fmt = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow/rules"], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
