"""Unit tests of deemd.grid: the patch grid of a site."""

import subprocess
import sys
from pathlib import Path

import pytest

from deemd.grid import PatchGrid, patch_grid

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


def test_patch_grid_scales_and_checks_tiling():
    grid = patch_grid(1024, 1024, 256, 128)
    assert (grid.patch_size, grid.stride, grid.grid, grid.n_patches) == (256, 128, 7, 49)
    assert patch_grid(128, 1024, 256, 128) == PatchGrid(128, 32, 16)
    with pytest.raises(ValueError, match="do not tile"):
        patch_grid(100, 100, 30, 20)
    with pytest.raises(ValueError, match="scale to"):
        patch_grid(64, 1024, 64, 32)


def test_grid_module_needs_no_torch():
    """The figure rules map patch probabilities with this module; it must not pull in torch."""
    code = "import sys, deemd.grid, deemd.maps; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(SCRIPTS)})
    assert out.stdout.strip() == "False"
