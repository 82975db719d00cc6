"""How the DAG scales: `snakemake -n` on a synthetic metadata.csv of RxRx19a's size.

Writes a metadata.csv with RxRx19a's shape (305,520 sites; 50 plates of 1536 wells, rows
A-AF, columns 01-48, 4 sites per well; a few plates partly filled), builds the sites table
(the checkpoint), then times `snakemake -n` of the whole workflow and prints the job
count per rule. Usage: python benchmarks/dag_scale.py [workdir]
"""

from __future__ import annotations

import re
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
ROWS = list(string.ascii_uppercase) + ["A" + c for c in "ABCDEF"]  # A..Z, AA..AF: 32 rows
COLUMNS = [f"{c:02d}" for c in range(1, 49)]


def rxrx19a_sized_metadata(n_sites: int = 305_520, n_plates: int = 50, seed: int = 0) -> pd.DataFrame:
    """A metadata table with RxRx19a's columns, vocabularies and size."""
    rng = np.random.default_rng(seed)
    wells = [r + c for r in ROWS for c in COLUMNS]
    n_wells = n_sites // 4
    plate_of = np.arange(n_wells) // len(wells) + 1
    well_of = np.arange(n_wells) % len(wells)
    assert plate_of.max() <= n_plates
    experiment = np.where(plate_of <= n_plates // 2, "HRCE-1", "HRCE-2")
    plate = np.where(plate_of <= n_plates // 2, plate_of, plate_of - n_plates // 2)
    condition = rng.choice(["Active SARS-CoV-2", "Mock", "UV Inactivated SARS-CoV-2"], n_wells, p=[0.9, 0.05, 0.05])
    treated = (condition == "Active SARS-CoV-2") & (rng.random(n_wells) < 0.9)
    compound = np.array([f"CPD-{i:04d}" for i in range(1672)])[rng.integers(0, 1672, n_wells)]
    conc = rng.choice([0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0], n_wells)
    well_table = pd.DataFrame(
        {
            "well_id": [f"{e}_{p}_{wells[w]}" for e, p, w in zip(experiment, plate, well_of)],
            "cell_type": "HRCE",
            "experiment": experiment,
            "plate": plate,
            "well": [wells[w] for w in well_of],
            "disease_condition": condition,
            "treatment": np.where(treated, compound, None),
            "treatment_conc": np.where(treated, conc, np.nan),
            "SMILES": np.where(treated, "CCO", None),
        }
    )
    sites = well_table.loc[well_table.index.repeat(4)].reset_index(drop=True)
    sites.insert(0, "site", np.tile([1, 2, 3, 4], n_wells))
    sites.insert(0, "site_id", sites["well_id"] + "_" + sites["site"].astype(str))
    return sites[["site_id", "well_id", "cell_type", "experiment", "plate", "well", "site", "disease_condition", "treatment", "treatment_conc", "SMILES"]]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
               "--configfile", str(workdir / "config.yaml"), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True)


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[-1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def main(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    metadata = rxrx19a_sized_metadata()
    metadata.to_csv(workdir / "metadata.csv", index=False)
    print(f"metadata.csv: {len(metadata)} sites, {metadata['well_id'].nunique()} wells, "
          f"{metadata.groupby(['experiment', 'plate']).ngroups} plates ({time.perf_counter() - started:.1f} s to write)")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["dataset"].update(
        name="scale",
        source="local",
        metadata=str(workdir / "metadata.csv"),
        images=f"{workdir}/images/{{experiment}}/Plate{{plate}}/{{well}}_s{{site}}_w{{channel}}.png",
        site_size=1024,
    )
    config["reference"] = None  # the demo's truth table does not exist for these plates
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    snakemake(workdir, "--until", "sites_table")
    print(f"sites table (checkpoint: read, validate, normalise): {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    result = snakemake(workdir, "-n", "--quiet", "rules")
    elapsed = time.perf_counter() - started
    counts = job_counts(result.stdout + result.stderr)
    print(f"snakemake -n (whole workflow): {elapsed:.1f} s, {counts.get('total')} jobs")
    for rule, count in counts.items():
        if rule != "total":
            print(f"  {rule:20s} {count}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="deemd-dag-")))
