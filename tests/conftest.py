import os
import sys
from pathlib import Path

import pytest
from filelock import FileLock  # installed with torch (requirements.txt)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_utils import TINY, snakemake, write_config  # noqa: E402

# The suite runs two workers on as few as 2 cores, so the torch jobs of their Snakemake runs
# share cores. OpenMP's default of spinning while it waits then costs 3 to 4 times the
# wall time (two V trainings of the tiny demo side by side: 199 s each; passive: 75 s).
# Results are bit-identical either way. Set before any torch is loaded; jobs inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _make_tiny_run(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    write_config(directory, TINY)
    snakemake(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id):
    """The directory of one full local run of the tiny demo. Workflow tests read its outputs
    or rerun in copies of it, and the SLURM test compares its own run with it. Nothing
    changes it (other tests copy it meanwhile): in it run only dry runs and the report.

    Under pytest-xdist (pytest.ini runs the suite on 2 workers) the workers share one run:
    the first that needs it makes it while holding a file lock, the others wait for it."""
    if worker_id == "master":
        return _make_tiny_run(tmp_path_factory.mktemp("tiny"))
    shared = tmp_path_factory.getbasetemp().parent  # one basetemp per worker, below this
    directory, done = shared / "tiny", shared / "tiny.done"
    with FileLock(str(shared / "tiny.lock")):
        if not done.exists():
            if directory.exists():  # a worker that failed to make it left this
                raise RuntimeError(f"the tiny run in {directory} failed in another worker (its output is there)")
            _make_tiny_run(directory)
            done.touch()
    return directory


def pytest_collection_modifyitems(items):
    """Order the tests so that 2 workers are kept busy and end together: the SLURM module
    first (it makes the tiny run meanwhile), then the workflow tests that do not need the
    tiny run, the unit tests, and last the tests that read the tiny run, which by then is
    made. (pytest.ini keeps this order: --no-loadscope-reorder.)"""

    def rank(item):
        if item.module.__name__ == "test_slurm":
            return 0
        if "tiny_run" in item.fixturenames:
            return 3
        return 1 if item.get_closest_marker("workflow") else 2

    items.sort(key=rank)  # stable: collection order within a rank
