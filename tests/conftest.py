import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_utils import TINY, snakemake, write_config  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One full local run of the tiny demo; workflow tests read its outputs or rerun in
    copies, and the SLURM test compares its own run with it."""
    directory = tmp_path_factory.mktemp("tiny")
    write_config(directory, TINY)
    result = snakemake(directory)
    return directory, result
