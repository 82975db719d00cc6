import numpy as np
import pytest

from deemd.maps import area_above, infection_maps, scaled_sigma, smooth_maps
from deemd.grid import PatchGrid

GRID = PatchGrid(16, 8, 4)  # 3 x 3 patches


def reference_map(probabilities, grid, alpha):
    """The definition, pixel by pixel."""
    size = grid.site_size
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            covering = [
                probabilities[i * grid.grid + j]
                for i in range(grid.grid)
                for j in range(grid.grid)
                if i * grid.stride <= y < i * grid.stride + grid.patch_size and j * grid.stride <= x < j * grid.stride + grid.patch_size
            ]
            out[y, x] = np.mean(np.power(covering, 1 / alpha)) ** alpha
    return out


def test_infection_map_equals_the_definition():
    rng = np.random.default_rng(0)
    probabilities = rng.random((2, 9))
    maps = infection_maps(probabilities, GRID, alpha=0.2)
    assert maps.shape == (2, 16, 16)
    for i in range(2):
        assert np.allclose(maps[i], reference_map(probabilities[i], GRID, 0.2), atol=1e-5)


def test_high_patch_is_not_washed_out_by_low_neighbours():
    probabilities = np.zeros((1, 9))
    probabilities[0, 4] = 0.9  # centre patch covers pixels 4..11, overlapping all others
    generalised = infection_maps(probabilities, GRID, alpha=0.2)[0]
    arithmetic = infection_maps(probabilities, GRID, alpha=1.0)[0]
    assert generalised[8, 8] > 0.5 > arithmetic[8, 8]
    assert generalised[0, 0] == 0


def test_uniform_probabilities_give_a_flat_map():
    maps = infection_maps(np.full((1, 9), 0.3), GRID)
    assert np.allclose(maps, 0.3, atol=1e-6)


def test_shape_is_checked():
    with pytest.raises(ValueError, match=r"expected \(n_sites, 9\)"):
        infection_maps(np.zeros((1, 4)), GRID)


def test_smoothing_and_area():
    maps = np.zeros((1, 16, 16), dtype=np.float32)
    maps[0, 4:12, 4:12] = 1
    smooth = smooth_maps(maps, 2.0)
    assert 0.9 < smooth[0, 8, 8] < 1 and 0 < smooth[0, 2, 8] < 0.5 and smooth[0, 0, 0] < 0.01
    assert smooth_maps(maps, 0) is maps
    assert area_above(maps, 0.5).tolist() == [0.25]
    assert scaled_sigma(60, 128, 1024) == 7.5


def test_map_readouts_share_above_eta_and_mean_in_batches():
    from deemd.maps import infected_share, map_readouts, site_maps

    grid = PatchGrid(64, 16, 8)
    rng = np.random.default_rng(5)
    probabilities = rng.uniform(0, 1, (5, grid.n_patches))
    probabilities[0] = 0.0  # a clean site
    probabilities[1] = 1.0  # a wholly infected one
    readouts = map_readouts(probabilities, grid, 0.2, 60, 1024, 0.5, batch_sites=2)
    maps = site_maps(probabilities, grid, 0.2, 60, 1024)
    assert readouts["a"] == pytest.approx((maps >= 0.5).mean(axis=(1, 2)))
    assert readouts["map_mean"] == pytest.approx(maps.mean(axis=(1, 2)), rel=1e-6)
    assert readouts["a"][0] == 0 and readouts["a"][1] == 1
    assert infected_share(probabilities, grid, 0.2, 60, 1024, 0.5) == pytest.approx(readouts["a"])
    with pytest.raises(ValueError, match="probabilities"):
        map_readouts(probabilities[:, :3], grid, 0.2, 60, 1024, 0.5)
