"""Deployment as a module with snakedeploy (README "Deploying with snakedeploy"): the
deployed workflow plans the whole tiny demo and runs its first job through
`use rule * from deemd` (the script, its conda env path, its log)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from workflow_utils import REPO, TINY, write_config

pytestmark = pytest.mark.workflow


def tracked_copy(destination):
    """The repository's tracked files (as they are in the work tree) copied to ``destination``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def test_snakedeploy_module_plans_the_tiny_demo_and_runs_its_first_job(tmp_path):
    if shutil.which("snakedeploy") is None:
        pytest.skip("snakedeploy is not installed (pip install snakedeploy, requirements.txt)")
    source, deployed = tmp_path / "deemd", tmp_path / "my-screen"
    source.mkdir()
    tracked_copy(source)
    run = subprocess.run(["snakedeploy", "deploy-workflow", str(source), str(deployed), "--branch", "main"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    snakefile = deployed / "workflow" / "Snakefile"
    text = snakefile.read_text()
    assert "module deemd:" in text and "use rule * from deemd" in text, text
    assert (deployed / "config" / "config.yaml").exists() and (deployed / "config" / "README.md").exists()
    # snakedeploy's local provider writes the module's path relative ("Snakefile"); from
    # GitHub it writes github("<owner>/deemd", path="Snakefile", ...). Point it at the copy.
    snakefile.write_text(re.sub(r'snakefile:\s*\n\s*"Snakefile"', f'snakefile:\n        "{source / "Snakefile"}"', text))
    write_config(deployed / "config", TINY)
    plan = subprocess.run(["snakemake", "-n", "--cores", "2"], cwd=deployed, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-6000:]
    assert re.search(r"demo_plate\s+2", plan.stdout), plan.stdout[-3000:]
    result = subprocess.run(["snakemake", "--cores", "1", "resources/tiny/truth/compounds.csv"], cwd=deployed,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert (deployed / "resources/tiny/truth/compounds.csv").stat().st_size > 0
    assert (deployed / "logs/tiny/demo/library.log").exists()
