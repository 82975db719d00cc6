import numpy as np
import pytest

from deemd.synth import field_sites
from deemd.vendor_export import camera_counts, join_sites, regrid_sites


def test_join_sites_inverts_field_sites():
    field = np.arange(2 * 8 * 8).reshape(2, 8, 8)
    assert (join_sites(field_sites(field)) == field).all()
    with pytest.raises(ValueError, match="4 sites"):
        join_sites(np.zeros((3, 4, 4)))


def test_regrid_sites_cuts_the_well_field_into_the_layout():
    field = np.arange(12 * 12).reshape(1, 12, 12)
    fields = regrid_sites(field_sites(field), [[1, 2, 3], [4, 0, 5], [6, 7, 8]])
    assert sorted(fields) == [1, 2, 3, 4, 5, 6, 7, 8]  # the gap (0) is left out
    assert fields[1].shape == (1, 4, 4) and (fields[5] == field[:, 4:8, 8:12]).all() and (fields[6] == field[:, 8:, :4]).all()
    with pytest.raises(ValueError, match="does not divide"):
        regrid_sites(field_sites(field), [[1] * 5] * 5)
    with pytest.raises(ValueError, match="not a square grid"):
        regrid_sites(field_sites(field), [[1, 2, 3], [4, 5, 6]])


def test_camera_counts_are_offset_gain_and_dither_within_a_grey_level():
    image = np.array([[[0, 1, 255]], [[10, 20, 30]]], dtype=np.uint8)
    counts = camera_counts(image, np.random.default_rng(0), 100, [160, 90])
    assert counts.dtype == np.uint16
    back = (counts.astype(float) - 100) // np.array([160, 90])[:, None, None]
    assert (back == image).all()  # each count lies within its grey level's step
    with pytest.raises(ValueError, match="beyond 16 bits"):
        camera_counts(image, np.random.default_rng(0), 100, [300, 90])
    with pytest.raises(ValueError, match="1 gains for 2 channels"):
        camera_counts(image, np.random.default_rng(0), 100, [160])
