"""The OME-NGFF HCS export (deemd/hcs.py), read back with ome-zarr-py's own Reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Plate, Reader, Well

import zarr

from deemd.hcs import (
    FieldCopier,
    channel_color,
    display_windows,
    field_attributes,
    halve_by_local_mean,
    local_mean_pyramid,
    multiscales_block,
    omero_metadata,
    plate_layout,
    pyramid_factors,
    tree_size,
    write_field,
    write_hcs_plate,
)
from deemd.store import create_plate_store, open_plate_store

CHANNELS = ["Hoechst", "ConA", "Phalloidin", "Syto14", "WGA"]
WELLS = ["A01", "A03", "B12", "H01"]


@pytest.fixture
def store(tmp_path):
    """A finished 4-well store of 16 px sites with random pixels; site 3 of B12 dropped."""
    path = tmp_path / "P_1.zarr"
    plate = create_plate_store(path, WELLS, CHANNELS, 16, [[1, 2], [3, 4]])
    plate.images[:] = np.random.default_rng(0).integers(0, 256, plate.images.shape, dtype=np.uint8)
    valid = np.ones((len(WELLS), 4), dtype=bool)
    valid[2, 2] = False
    plate.write_site_valid(valid)
    plate.group.attrs["complete"] = True
    return open_plate_store(path)


def read(path):
    return list(Reader(parse_url(str(path), fmt=FormatV04()))())


def test_pyramid_factors_halve_down_to_the_smallest_level():
    assert pyramid_factors(1024, 64) == [2, 4, 8, 16]
    assert pyramid_factors(128, 64) == [2]
    assert pyramid_factors(100, 64) == []
    with pytest.raises(ValueError, match="positive"):
        pyramid_factors(0, 64)


def test_plate_layout_is_the_smallest_standard_plate():
    rows, columns, paths = plate_layout(["A01", "B12", "H03"])
    assert rows == list("ABCDEFGH") and columns == [str(c) for c in range(1, 13)]
    assert paths == ["A/1", "B/12", "H/3"]
    rows, columns, paths = plate_layout(["P24"])
    assert len(rows) == 16 and len(columns) == 24 and paths == ["P/24"]
    with pytest.raises(ValueError, match="one plate position"):
        plate_layout(["A1", "A01"])


def test_channels_are_named_and_coloured_like_the_stains():
    assert [channel_color(name, i) for i, name in enumerate(CHANNELS)] == ["0000FF", "00FF00", "FF0000", "00FFFF", "FF00FF"]
    assert channel_color("my stain", 6) == "FFFFFF"
    windows = display_windows(np.stack([np.zeros((4, 4)), np.full((4, 4), 7.0)]))
    assert windows == [(0.0, 1.0), (7.0, 8.0)]
    block = omero_metadata(["a", "b"], windows)
    assert [c["label"] for c in block["channels"]] == ["a", "b"] and block["channels"][1]["window"]["end"] == 8.0
    with pytest.raises(ValueError, match="2 contrast windows for 3 channels"):
        omero_metadata(["a", "b", "c"], windows)


def test_reader_finds_plate_wells_fields_and_the_stores_pixels(store, tmp_path):
    out = tmp_path / "P_1.ome.zarr"
    summary = write_hcs_plate(store, out, "P_1", min_level_size=8)
    assert summary == {"wells": 4, "fields": 15, "field_shape": [5, 16, 16], "levels": [16, 8]}
    [plate_node] = read(out)
    plate = next(spec for spec in plate_node.specs if isinstance(spec, Plate))
    assert plate.row_names == list("ABCDEFGH") and len(plate.col_names) == 12
    assert sorted(plate.well_paths) == ["A/1", "A/3", "B/12", "H/1"]
    for index, well in enumerate(WELLS):
        well_path = out / plate_layout(WELLS)[2][index]
        [well_node] = read(well_path)
        assert any(isinstance(spec, Well) for spec in well_node.specs)
        fields = json.loads((well_path / ".zattrs").read_text())["well"]["images"]
        assert len(fields) == (3 if well == "B12" else 4)
        for field in fields:
            [image] = read(well_path / field["path"])
            assert any(isinstance(spec, Multiscales) for spec in image.specs)
            assert image.metadata["channel_names"] == CHANNELS
            origin = json.loads((well_path / field["path"] / ".zattrs").read_text())["deemd"]
            assert origin["well"] == well
            assert [tuple(level.shape) for level in image.data] == [(5, 16, 16), (5, 8, 8)]
            np.testing.assert_array_equal(np.asarray(image.data[0]), store.read_site(index, origin["site"]))
    sites_b12 = {json.loads((out / "B/12" / f / ".zattrs").read_text())["deemd"]["site"] for f in "012"}
    assert sites_b12 == {1, 2, 4}  # the dropped site 3 is not exported
    files, size = tree_size(out)
    assert files > 15 and size > 15 * 5 * 16 * 16 * 0.5


def test_export_refuses_to_overwrite(store, tmp_path):
    out = tmp_path / "P_1.ome.zarr"
    write_hcs_plate(store, out, "P_1")
    with pytest.raises(Exception):
        write_hcs_plate(store, out, "P_1")


def test_glue_writes_through_a_temporary_directory(store, tmp_path, monkeypatch):
    import export_hcs

    out = tmp_path / "hcs" / "P_1.ome.zarr"

    def fail(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(export_hcs, "write_hcs_plate", fail)
    with pytest.raises(RuntimeError, match="killed"):
        export_hcs.main(store.path, out, "P_1", 8, tmp_path / "log.txt")
    assert not out.exists()
    monkeypatch.undo()
    export_hcs.main(store.path, out, "P_1", 8, tmp_path / "log.txt")
    assert (out / ".zattrs").exists() and not (tmp_path / "hcs" / "P_1.ome.zarr.tmp").exists()
    assert "4 wells, 15 fields" in (tmp_path / "log.txt").read_text()


def test_napari_reader_opens_the_plate(store, tmp_path):
    napari_ome_zarr = pytest.importorskip(
        "napari_ome_zarr", reason="napari-ome-zarr is not installed (it brings all of napari and Qt; not in requirements.txt)"
    )
    out = tmp_path / "P_1.ome.zarr"
    write_hcs_plate(store, out, "P_1", min_level_size=8)
    reader = napari_ome_zarr.napari_get_reader(str(out))
    assert reader is not None
    layers = reader(str(out))
    assert layers, "napari-ome-zarr found no layer in the plate"


def test_local_mean_pyramid_halves_each_level_by_2x2_means():
    pixels = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    pyramid = local_mean_pyramid(pixels, 2)
    assert [level.shape for level in pyramid] == [(2, 4, 4), (2, 2, 2), (2, 1, 1)]
    assert all(level.dtype == np.uint8 for level in pyramid)
    assert pyramid[0] is pixels or np.array_equal(pyramid[0], pixels)
    # Block (0, 0) of channel 0 holds 0, 1, 4, 5: mean 2.5, truncated to the dtype as ome-zarr-py does.
    assert pyramid[1][0, 0, 0] == 2 and pyramid[2][0, 0, 0] == int(pyramid[1][0].mean())
    assert local_mean_pyramid(pixels, 0)[0].shape == (2, 4, 4)


@pytest.mark.parametrize("shape, dtype", [((5, 64, 64), np.uint8), ((3, 35, 17), np.uint8), ((2, 9, 9), np.uint16),
                                          ((1, 1, 1), np.uint8), ((2, 6, 5), np.float32), ((2, 4, 4), np.int16)])
def test_halving_equals_skimage_local_mean_cast_to_the_dtype(shape, dtype):
    from skimage.transform import downscale_local_mean

    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    pixels = (rng.integers(info.min, int(info.max) + 1, shape) if info else rng.normal(0, 100, shape)).astype(dtype)
    halved = halve_by_local_mean(pixels)
    expected = downscale_local_mean(pixels, (1, 2, 2)).astype(dtype)  # odd edges padded with zeros
    assert halved.dtype == pixels.dtype and halved.shape == expected.shape and np.array_equal(halved, expected)
    assert halve_by_local_mean(np.full((1, 2, 2), 255, np.uint8))[0, 0, 0] == 255  # no overflow


def test_multiscales_block_scales_and_centres_each_level():
    (block,) = multiscales_block([(5, 8, 8), (5, 4, 4)], "A01 site 1")
    assert block["name"] == "A01 site 1" and block["version"] == "0.4"
    assert [axis["name"] for axis in block["axes"]] == ["c", "y", "x"]
    assert [axis["type"] for axis in block["axes"]] == ["channel", "space", "space"]
    assert [d["path"] for d in block["datasets"]] == ["s0", "s1"]
    scale, translation = block["datasets"][1]["coordinateTransformations"]
    assert scale == {"type": "scale", "scale": [1.0, 2.0, 2.0]}
    # A level-1 pixel covers level-0 pixels 0 and 1: its centre is at 0.5.
    assert translation == {"type": "translation", "translation": [0.0, 0.5, 0.5]}


def test_field_copier_writes_the_files_zarr_writes(tmp_path):
    """A field copied from a zarr-written template has byte for byte the files zarr itself
    writes for it, and reads back through zarr; a field of another shape is refused."""
    rng = np.random.default_rng(1)
    first, second = (rng.integers(0, 256, (5, 16, 16), dtype=np.uint8) for _ in range(2))
    omero = omero_metadata(CHANNELS, [(0.0, 255.0)] * 5)
    by_zarr = zarr.open_group(str(tmp_path / "zarr"), mode="w", zarr_format=2)
    for name, pixels in (("0", first), ("1", second)):
        write_field(by_zarr, name, pixels, 1, omero, {"well": "A01", "site": int(name) + 1})
    copier = FieldCopier(tmp_path / "zarr" / "0")
    pyramid = local_mean_pyramid(second, 1)
    copier.write(tmp_path / "copy" / "1", pyramid, field_attributes(pyramid, omero, {"well": "A01", "site": 2}))
    written = sorted(p.relative_to(tmp_path / "zarr" / "1") for p in (tmp_path / "zarr" / "1").rglob("*") if p.is_file())
    copied = sorted(p.relative_to(tmp_path / "copy" / "1") for p in (tmp_path / "copy" / "1").rglob("*") if p.is_file())
    assert copied == written and len(written) == 8  # .zgroup, .zattrs, 2 levels x (.zarray, .zattrs, chunk)
    for name in written:
        assert (tmp_path / "copy" / "1" / name).read_bytes() == (tmp_path / "zarr" / "1" / name).read_bytes(), name
    assert np.array_equal(zarr.open_array(str(tmp_path / "copy" / "1" / "s0"), mode="r")[:], second)
    with pytest.raises(ValueError, match="the template's is"):
        copier.write(tmp_path / "copy" / "2", local_mean_pyramid(second[:, :8, :8], 1), {})
