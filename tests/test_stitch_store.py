import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

import tifffile

from deemd.stitch import (
    ImageReadError,
    histogram_percentiles,
    image_manifest_digest,
    image_path,
    linear_luts,
    majority_pixel_type,
    plate_pixel_type,
    png_header_dtype,
    read_site,
    reference_wells,
    rescale_rule,
    site_paths_by_well,
    stitch_plate,
    stitch_well_fields,
    well_fields,
)
from deemd.store import (
    ChunkCodec,
    PlateStore,
    StoreIntegrityError,
    create_plate_store,
    damage_marker,
    has_checksums,
    layout_fields,
    open_plate_store,
    site_slices,
)

LAYOUT = [[1, 2], [3, 4]]
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflow", "scripts")
PATTERN = "{root}/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png"


def test_image_path_accepts_format_specs():
    assert image_path("x/{plate}/{well}_f{site:02d}_c{channel}.png", "E", 3, "B07", 2, 5) == "x/3/B07_f02_c5.png"


def test_site_slices_follow_layout():
    slices = site_slices([[2, 1], [4, 3]], 8)
    assert slices[2] == (slice(0, 8), slice(0, 8))
    assert slices[3] == (slice(8, 16), slice(8, 16))
    # A 0 is a gap: not a site, but a field of the layout.
    with_gap = [[1, 0], [0, 2]]
    assert list(site_slices(with_gap, 8)) == [1, 2]
    assert layout_fields(with_gap) == [(1, 0, 0), (0, 0, 1), (0, 1, 0), (2, 1, 1)]


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_read_site_errors_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    write_png(good, np.arange(64, dtype=np.uint8).reshape(8, 8))
    assert read_site([str(good)], 8)[0, 1, 1] == 9
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        read_site([str(tmp_path / "missing.png")], 8)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ImageReadError, match="truncated.png: corrupt or truncated PNG"):
        read_site([str(truncated)], 8)
    with pytest.raises(ImageReadError, match="good.png: size 8x8, expected 16x16"):
        read_site([str(good)], 16)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(ImageReadError, match="rgb.png: mode 'RGB'"):
        read_site([str(rgb)], 8)


def test_read_site_16_bit_png_and_tiff_per_channel(tmp_path):
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    write_png(tmp_path / "w.png", wide)
    tifffile.imwrite(tmp_path / "w.tif", wide + 1)
    site = read_site([str(tmp_path / "w.png"), str(tmp_path / "w.tif")], 8)
    assert site.dtype == np.uint16 and site.shape == (2, 8, 8)
    assert (site[0] == wide).all() and (site[1] == wide + 1).all()
    with pytest.raises(ImageReadError, match="w.png: pixel type uint16, but the plate's other images are uint8"):
        read_site([str(tmp_path / "w.png")], 8, dtype=np.uint8)
    tifffile.imwrite(tmp_path / "float.tif", wide.astype(np.float32))
    with pytest.raises(ImageReadError, match="float.tif: pixel type float32, expected 8-bit"):
        read_site([str(tmp_path / "float.tif")], 8)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageReadError, match="bad.tif: corrupt or truncated TIFF"):
        read_site([str(tmp_path / "bad.tif")], 8)


def test_read_site_into_a_strided_well_decodes_pngs_in_place(tmp_path):
    png = np.arange(64, dtype=np.uint8).reshape(8, 8)
    write_png(tmp_path / "a.png", png)
    tifffile.imwrite(tmp_path / "b.tif", png + 1)
    well = np.zeros((2, 16, 16), np.uint8)
    place = well[:, 8:, :8]  # site 3 of a 2 x 2 layout: a strided view
    assert read_site([str(tmp_path / "a.png"), str(tmp_path / "b.tif")], 8, out=place) is place
    assert (well[0, 8:, :8] == png).all() and (well[1, 8:, :8] == png + 1).all()
    assert not well[:, :8].any() and not well[:, :, 8:].any()
    # A file that does not fit its place is decoded afresh, and the checks name it.
    write_png(tmp_path / "wide.png", png.astype(np.uint16) * 1000)
    with pytest.raises(ImageReadError, match="wide.png: pixel type uint16, but the plate's other images are uint8"):
        read_site([str(tmp_path / "wide.png")], 8, 1, dtype=np.uint8, out=np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ImageReadError, match="a.png: size 8x8, expected 16x16"):
        read_site([str(tmp_path / "a.png")], 16, 1, dtype=np.uint8, out=np.zeros((1, 16, 16), np.uint8))


def test_read_site_multi_page_and_channels_last_tiff(tmp_path):
    pages = np.stack([np.full((8, 8), 100 * c, dtype=np.uint16) for c in range(3)])  # 3 channels
    tifffile.imwrite(tmp_path / "site.tif", pages, photometric="minisblack")
    assert (read_site([str(tmp_path / "site.tif")], 8, 3) == pages).all()
    tifffile.imwrite(tmp_path / "last.tif", np.moveaxis(pages, 0, -1), planarconfig="contig")
    assert (read_site([str(tmp_path / "last.tif")], 8, 3, channel_axis=-1) == pages).all()
    with pytest.raises(ImageReadError, match=r"site.tif: holds 3 channel page\(s\) along axis 0, expected 4"):
        read_site([str(tmp_path / "site.tif")], 8, 4)


def test_well_fields_and_vendor_image_paths():
    assert well_fields("B05") == {"row": 2, "column": 5, "row_letter": "B"}
    assert well_fields("AF48") == {"row": 32, "column": 48, "row_letter": "AF"}  # 1536-well plate
    with pytest.raises(ValueError, match="'5B'"):
        well_fields("5B")
    operetta = "{plate}/Images/r{row:02d}c{column:02d}f{site:02d}p01-ch{channel}sk1fk1fl1.tiff"
    assert image_path(operetta, "S", "BC24A017", "B05", 3, 2) == "BC24A017/Images/r02c05f03p01-ch2sk1fk1fl1.tiff"
    assert image_path("{plate}_{row_letter}{column}_s{site}_w{channel}.tif", "S", 7, "C11", 1, 4) == "7_C11_s1_w4.tif"


def test_intensity_rule_maps_percentiles_to_the_8_bit_range():
    hist = np.zeros((2, 65536), dtype=np.int64)
    hist[0, 1000:2000] = 1  # channel 0: uniform over 1000..1999
    hist[1, 500] = 10  # channel 1: constant 500 (high is then low + 1)
    levels = histogram_percentiles(hist, [0, 50, 100])
    assert levels[0].tolist() == [1000, 1499, 1999] and levels[1].tolist() == [500, 500, 500]
    luts = linear_luts([1000, 500], [2000, 500])
    assert luts.shape == (2, 65536) and luts.dtype == np.uint8
    assert luts[0, [0, 1000, 1500, 2000, 65535]].tolist() == [0, 0, 128, 255, 255]
    assert luts[1, [499, 500, 501]].tolist() == [0, 0, 255]
    rule = rescale_rule(hist, 0.0, 100.0, ["A01"])
    assert rule.attrs["low"] == [1000.0, 500.0] and rule.attrs["high"] == [1999.0, 501.0]
    site = np.array([[[1000, 1999]], [[500, 600]]], dtype=np.uint16)
    assert rule.apply(site).tolist() == [[[0, 255]], [[0, 255]]]
    with pytest.raises(ValueError, match="no pixel"):
        histogram_percentiles(np.zeros((1, 10), dtype=np.int64), [50])


def test_reference_wells_are_untreated_and_spread():
    sites = pd.DataFrame({"well": ["A01", "A02", "A03", "A04"], "treatment": [None, "x", None, None]})
    assert reference_wells(sites, ["A01", "A02", "A03", "A04"], 2) == ["A01", "A04"]
    assert reference_wells(sites.assign(treatment="x"), ["A01", "A02", "A03", "A04"], 1) == ["A01"]


def make_plate(tmp_path, wells=("A01", "A02", "B01"), site_size=8, channels=(1, 2)):
    rows = []
    for w, well in enumerate(wells):
        for site in range(1, 5):
            rows.append({"site_id": f"E_1_{well}_{site}", "experiment": "E", "plate": 1, "well": well, "site": site})
            for channel in channels:
                value = np.uint8(w * 50 + site * 10 + channel)
                write_png(tmp_path / "E" / "Plate1" / f"{well}_s{site}_w{channel}.png", np.full((site_size, site_size), value))
    pattern = PATTERN.replace("{root}", str(tmp_path))
    return pd.DataFrame(rows), pattern


def test_read_site_stacks_channels(tmp_path):
    _, pattern = make_plate(tmp_path)
    site = read_site([image_path(pattern, "E", 1, "A02", 3, c) for c in (1, 2)], 8)
    assert site.shape == (2, 8, 8) and site[0, 0, 0] == 50 + 30 + 1 and site[1, 0, 0] == 50 + 30 + 2


def test_stitch_plate_round_trip_through_store(tmp_path):
    sites, pattern = make_plate(tmp_path)
    store = create_plate_store(tmp_path / "p.zarr", ["A01", "A02", "B01"], ["a", "b"], 8, LAYOUT)
    with ThreadPoolExecutor(2) as pool:
        dropped = stitch_plate(sites, store, pattern, [1, 2], "error", pool)
    assert dropped == []
    with pytest.raises(ValueError, match="not finished"):
        open_plate_store(tmp_path / "p.zarr")
    store.group.attrs["complete"] = True
    reopened = open_plate_store(tmp_path / "p.zarr")
    assert reopened.wells == ["A01", "A02", "B01"] and reopened.site_size == 8
    images = reopened.read_wells()
    assert images.shape == (3, 2, 16, 16)
    # well B01 (index 2), site 4 (bottom right), channel 2
    assert images[2, 1, 12, 12] == 2 * 50 + 40 + 2
    assert reopened.read_wells(1, 2, channel=0)[0, 0, 9] == 50 + 20 + 1
    assert reopened.site_valid.all()


def test_bad_png_stops_or_is_dropped_and_listed(tmp_path):
    sites, pattern = make_plate(tmp_path)
    (tmp_path / "E" / "Plate1" / "A02_s3_w2.png").write_bytes(b"not a png")
    store = create_plate_store(tmp_path / "p.zarr", ["A01", "A02", "B01"], ["a", "b"], 8, LAYOUT)
    with ThreadPoolExecutor(2) as pool, pytest.raises(ImageReadError, match="A02_s3_w2.png"):
        stitch_plate(sites, store, pattern, [1, 2], "error", pool)
    with ThreadPoolExecutor(2) as pool:
        dropped = stitch_plate(sites, store, pattern, [1, 2], "drop", pool)
    assert [(d["well"], d["site"]) for d in dropped] == [("A02", 3)]
    assert "A02_s3_w2.png" in dropped[0]["reason"]
    valid = store.site_valid
    assert valid[1].tolist() == [True, True, False, True] and valid[[0, 2]].all()


def stitched_fields(well_sites, layout, on_bad_image="error", channels=2, size=8):
    """stitch_well_fields into a (channel, y, x) well that starts all 255 (stale content
    must not survive), and the order the fields were written in."""
    out = np.full((channels, len(layout) * size, len(layout[0]) * size), 255, dtype=np.uint8)
    order = []

    def write_field(r, c, pixels):
        order.append((r, c))
        out[:, r * size : (r + 1) * size, c * size : (c + 1) * size] = pixels

    buffer = np.full((channels, size, size), 7, dtype=np.uint8)
    valid, dropped = stitch_well_fields(write_field, buffer, well_sites, layout, size, on_bad_image)
    return out, order, valid, dropped


def test_stitch_well_fields_writes_every_field_and_drops_bad_sites(tmp_path):
    sites, pattern = make_plate(tmp_path, wells=("A01",))
    (tmp_path / "E" / "Plate1" / "A01_s1_w1.png").unlink()
    by_well = site_paths_by_well(sites, pattern, [1, 2])
    assert by_well["A01"][0] == (1, "E_1_A01_1", [image_path(pattern, "E", 1, "A01", 1, c) for c in (1, 2)])
    out, order, valid, dropped = stitched_fields(by_well["A01"], LAYOUT, "drop")
    assert valid.tolist() == [False, True, True, True] and dropped[0]["site"] == 1
    assert sorted(order) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # each field once
    assert (out[:, :8, :8] == 0).all()
    assert (out[1, :8, 8:] == 20 + 2).all() and (out[0, 8:, :8] == 30 + 1).all() and (out[1, 8:, 8:] == 40 + 2).all()
    with pytest.raises(ImageReadError, match="A01_s1_w1.png: file not found"):
        stitched_fields(by_well["A01"], LAYOUT)
    # A site missing from the metadata is simply absent, and zero.
    out, order, valid, dropped = stitched_fields(by_well["A01"][2:], [[2, 1], [4, 3]])
    assert valid.tolist() == [False, False, True, True] and dropped == [] and len(order) == 4
    assert (out[0, 8:, 8:] == 30 + 1).all() and (out[:, :8, :] == 0).all()
    # A gap of the layout (0) is written as zeros too.
    out, order, valid, dropped = stitched_fields(by_well["A01"][1:3], [[2, 1], [0, 3]])
    assert valid.tolist() == [False, True, True] and (out[1, :8, :8] == 20 + 2).all() and (out[0, 8:, 8:] == 30 + 1).all()
    assert (out[:, 8:, :8] == 0).all() and (out[:, :8, 8:] == 0).all() and len(order) == 4  # the gap, and site 1 (absent)


def test_open_plate_store_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a deemd plate store"):
        open_plate_store(tmp_path / "nothing.zarr")


def finished_store(tmp_path):
    """A finished three-well store of tmp_path/p.zarr, as the stitch job leaves it."""
    sites, pattern = make_plate(tmp_path)
    store = create_plate_store(tmp_path / "p.zarr", ["A01", "A02", "B01"], ["a", "b"], 8, LAYOUT)
    with ThreadPoolExecutor(2) as pool:
        stitch_plate(sites, store, pattern, [1, 2], "error", pool)
    store.group.attrs["complete"] = True
    return tmp_path / "p.zarr"


def test_store_chunks_carry_checksums(tmp_path):
    path = finished_store(tmp_path)
    store = open_plate_store(path)
    assert has_checksums(store.group["images"]) and has_checksums(store.group["site_valid"])
    assert not damage_marker(path).exists()
    # DataLoader workers get the stores pickled, opened or not.
    store.images[0]
    copy = pickle.loads(pickle.dumps(store))
    assert np.array_equal(copy.images[2], store.images[2]) and copy.path == path


@pytest.mark.parametrize("shuffle", ["bitshuffle", "shuffle", "noshuffle"])
def test_store_codec_shuffle_is_as_asked_and_round_trips(tmp_path, shuffle):
    store = create_plate_store(tmp_path / "P.zarr", ["A01", "A02"], ["a", "b"], 16, [[1, 2], [3, 4]], shuffle=shuffle)
    blosc = store.group["images"].compressors[0]
    assert blosc.cname.value == "lz4" and blosc.shuffle.value == shuffle
    # Dark microscopy-like pixels: the high bits are empty, which bitshuffle packs.
    pixels = np.random.default_rng(1).poisson(6, store.images.shape).astype(np.uint8)
    store.images[:] = pixels
    assert np.array_equal(store.images[:], pixels)


@pytest.mark.parametrize("codec,shuffle,dtype", [("lz4", "bitshuffle", "uint8"), ("zstd", "shuffle", "uint8"), ("lz4", "bitshuffle", "uint16")])
def test_write_field_stores_the_bytes_zarr_writes(tmp_path, codec, shuffle, dtype):
    pixels = np.random.default_rng(2).poisson(6, (3, 2, 32, 32)).astype(dtype)
    paths = {}
    for how in ("zarr", "write_field"):
        paths[how] = tmp_path / f"{how}.zarr"
        store = create_plate_store(paths[how], ["A01", "A02", "B01"], ["a", "b"], 16, [[1, 2], [3, 4]], codec=codec, shuffle=shuffle, dtype=dtype)
        for index, well in enumerate(pixels):
            if how == "zarr":
                store.images[index] = well
            else:
                for r in range(2):
                    for c in range(2):
                        store.write_field(index, r, c, np.ascontiguousarray(well[:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]))
    assert store.group["images"].chunks == (1, 2, 16, 16)  # a chunk per site
    for index in range(3):
        for r in range(2):
            for c in range(2):
                chunk = f"images/c.{index}.0.{r}.{c}"
                assert (paths["zarr"] / chunk).read_bytes() == (paths["write_field"] / chunk).read_bytes()
    reread = zarr.open_group(str(paths["write_field"]), mode="r")["images"][:]
    assert np.array_equal(reread, pixels)


def test_chunk_encoder_refuses_other_codecs_and_shapes(tmp_path):
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(2, 4), chunks=(1, 4), dtype="uint8", compressors=[zarr.codecs.ZstdCodec()])
    assert not ChunkCodec.supports(plain)
    with pytest.raises(ValueError, match="only bytes, Blosc, CRC-32C"):
        ChunkCodec(plain)
    store = create_plate_store(tmp_path / "P.zarr", ["A01"], ["a"], 8, [[1]])
    with pytest.raises(ValueError, match="chunks are"):
        ChunkCodec(store.group["images"]).encode(np.zeros((1, 1, 8, 9), np.uint8))


@pytest.mark.parametrize("damage", ["deleted", "truncated", "flipped", "emptied"])
def test_damaged_chunk_is_an_error_naming_store_and_well(damage, tmp_path):
    path = finished_store(tmp_path)
    chunk = path / "images" / "c.1.0.0.0"  # well A02
    data = chunk.read_bytes()
    if damage == "deleted":
        chunk.unlink()
    elif damage == "truncated":
        chunk.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        chunk.write_bytes(data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])
    else:
        chunk.write_bytes(b"")
    store = open_plate_store(path)
    # The other wells still read; the damaged one never reads as zeros or garbage.
    assert store.images[0, 0, 0, 0] == 0 * 50 + 10 + 1
    assert store.images[2].shape == (2, 16, 16)
    reason = "is missing" if damage == "deleted" else "is corrupt"
    for read in (lambda: store.images[1], lambda: store.read_wells(), lambda: store.read_wells(1, 2, channel=0),
                 lambda: store.images[1, :, :8, :8], lambda: store.images[...], lambda: store.read_site(1, 1)):
        with pytest.raises(StoreIntegrityError, match=rf"p\.zarr: chunk images/c\.1\.0\.0\.0 \(images of well A02, site 1\) {reason}"):
            read()
    # A read that does not touch the damaged site's chunk is not stopped by it.
    assert store.read_site(1, 2).shape == (2, 8, 8) and store.images[1, 0, 8:, :].shape == (8, 16)
    # Marked for restitching: the marker is an input of the stitch rule.
    marker = damage_marker(path)
    assert marker == tmp_path / "p.zarr.damaged" and "A02" in marker.read_text()


def test_damaged_site_valid_and_store_without_checksums(tmp_path):
    path = finished_store(tmp_path)
    (path / "site_valid" / zarr.open_array(str(path / "site_valid")).metadata.encode_chunk_key((0, 0))).unlink()
    with pytest.raises(StoreIntegrityError, match=r"p\.zarr: chunk site_valid/c/0/0 \(site_valid of wells A01, A02, B01\) is missing"):
        open_plate_store(path).site_valid
    # A store written without checksums (an older version) is refused and marked.
    old = tmp_path / "old.zarr"
    group = zarr.open_group(str(old), mode="w")
    group.create_array("images", shape=(1, 1, 4, 4), chunks=(1, 1, 4, 4), dtype="uint8")
    group.create_array("site_valid", shape=(1, 4), chunks=(1, 4), dtype="bool")
    group.attrs.update({"wells": ["A01"], "complete": True})
    with pytest.raises(StoreIntegrityError, match=r"old\.zarr: array 'images' has no checksums"):
        open_plate_store(old)
    assert damage_marker(old).exists()


def test_image_manifest_digest_follows_the_plates_own_files(tmp_path):
    sites, pattern = make_plate(tmp_path)
    png = tmp_path / "E" / "Plate1" / "A02_s3_w2.png"
    other = tmp_path / "E" / "Plate2" / "A01_s1_w1.png"
    write_png(other, np.zeros((8, 8), dtype=np.uint8))
    digest = image_manifest_digest(sites, pattern, [1, 2])
    assert image_manifest_digest(sites, pattern, [1, 2], threads=1) == digest
    other.write_bytes(b"another plate's file")
    assert image_manifest_digest(sites, pattern, [1, 2]) == digest
    # Re-exported with the same bytes: a new mtime is a change.
    stat = png.stat()
    os.utime(png, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = image_manifest_digest(sites, pattern, [1, 2])
    assert touched != digest
    png.unlink()
    missing = image_manifest_digest(sites, pattern, [1, 2])
    assert missing not in (digest, touched)
    write_png(png, np.full((8, 8), 7, dtype=np.uint8))
    assert image_manifest_digest(sites, pattern, [1, 2]) not in (digest, touched, missing)


NINE = [[1, 2, 3], [4, 0, 5], [6, 7, 8]]  # 3 x 3 fields, the centre not imaged


def test_16_bit_tiffs_in_a_3x3_layout_with_a_gap_stitch_to_8_bits(tmp_path):
    """issue 15: one multi-page 16-bit TIFF per site, 8 fields of a 3 x 3 grid, 3 channels:
    stitched through the plate's rescale rule, which the store records."""
    rng = np.random.default_rng(1)
    rows = []
    for well, treatment in (("B02", None), ("B03", "drug")):
        for site in range(1, 9):
            rows.append({"site_id": f"E_BC1_{well}_{site}", "experiment": "E", "plate": "BC1", "well": well, "site": site, "treatment": treatment})
            pixels = rng.integers(1000, 3000, size=(3, 8, 8)).astype(np.uint16)
            pixels[:, 0, 0] = [1000, 2000, 2999]
            (tmp_path / "BC1").mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / "BC1" / f"r02c{int(well[1:]):02d}f{site:02d}.tiff", pixels, photometric="minisblack")
    sites = pd.DataFrame(rows)
    pattern = str(tmp_path) + "/{plate}/r{row:02d}c{column:02d}f{site:02d}.tiff"
    store = create_plate_store(tmp_path / "p.zarr", ["B02", "B03"], ["a", "b", "c"], 8, NINE)
    rescale = {"low_percentile": 0.0, "high_percentile": 100.0, "reference_wells": 8}
    with ThreadPoolExecutor(2) as pool:
        assert stitch_plate(sites, store, pattern, [1, 2, 3], "error", pool, rescale=rescale) == []
    images = store.images[:]
    assert images.shape == (2, 3, 24, 24) and images.dtype == np.uint8
    assert (images[:, :, 8:16, 8:16] == 0).all()  # the gap
    assert store.site_valid.shape == (2, 8) and store.site_valid.all()
    intensity = store.group.attrs["intensity"]
    assert intensity["source_dtype"] == "uint16" and intensity["reference_wells"] == ["B02"]
    low, high = np.array(intensity["low"]), np.array(intensity["high"])
    raw = tifffile.imread(tmp_path / "BC1" / "r02c03f05.tiff")  # well B03, site 5: middle right
    expected = np.clip(np.rint((raw - low[:, None, None]) * 255 / (high - low)[:, None, None]), 0, 255)
    assert (images[1, :, 8:16, 16:24] == expected).all()
    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="needs a rescale rule"):
        stitch_plate(sites, store, pattern, [1, 2, 3], "error", pool)


def test_a_plate_mixing_8_and_16_bit_images_names_the_odd_file(tmp_path):
    sites, pattern = make_plate(tmp_path, wells=("A01",))
    write_png(tmp_path / "E" / "Plate1" / "A01_s3_w2.png", np.full((8, 8), 300, dtype=np.uint16))
    store = create_plate_store(tmp_path / "p.zarr", ["A01"], ["a", "b"], 8, LAYOUT)
    with ThreadPoolExecutor(2) as pool, pytest.raises(ImageReadError, match="A01_s3_w2.png: pixel type uint16, but the plate's other images are uint8"):
        stitch_plate(sites, store, pattern, [1, 2], "error", pool)


def test_png_header_dtype_reads_the_pixel_type_without_decoding(tmp_path):
    import imagecodecs

    grey8, grey16, rgb = tmp_path / "g8.png", tmp_path / "g16.png", tmp_path / "rgb.png"
    grey8.write_bytes(imagecodecs.png_encode(np.zeros((4, 5), np.uint8)))
    grey16.write_bytes(imagecodecs.png_encode(np.zeros((4, 5), np.uint16)))
    rgb.write_bytes(imagecodecs.png_encode(np.zeros((4, 5, 3), np.uint8)))
    assert png_header_dtype(str(grey8)) == np.uint8
    assert png_header_dtype(str(grey16)) == np.uint16
    # Anything else is left to the decoder, which names the fault.
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(grey8.read_bytes()[:20])
    not_png = tmp_path / "x.png"
    not_png.write_bytes(b"not an image at all, but long enough to hold a header")
    for path in (rgb, truncated, not_png, tmp_path / "missing.png"):
        assert png_header_dtype(str(path)) is None


def test_reads_of_sites_and_wells_match_zarr_on_a_layout_with_a_gap(tmp_path):
    layout = [[2, 0], [1, 3]]
    store = create_plate_store(tmp_path / "P.zarr", ["A01", "A02", "B01"], ["a", "b"], 8, layout)
    pixels = np.random.default_rng(3).poisson(6, store.images.shape).astype(np.uint8)
    pixels[:, :, :8, 8:] = 0  # the gap: a chunk of zeros, written as the stitch writes it
    for index, well in enumerate(pixels):
        for _, r, c in layout_fields(layout):
            store.write_field(index, r, c, np.ascontiguousarray(well[:, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]))
    store.group.attrs["complete"] = True
    store = open_plate_store(tmp_path / "P.zarr")
    assert np.array_equal(store.read_wells(), pixels) and np.array_equal(store.read_wells(1, 3), pixels[1:3])
    assert np.array_equal(store.read_wells(channel=1), pixels[:, 1]) and store.read_wells(2, 2).shape == (0, 2, 16, 16)
    assert np.array_equal(store.read_well(1), pixels[1]) and np.array_equal(store.read_well(2, channel=0), pixels[2, 0])
    assert np.array_equal(store.read_site(2, 2), pixels[2, :, :8, :8]) and np.array_equal(store.read_site(0, 3), pixels[0, :, 8:, 8:])
    assert store.read_site(1, 1).flags.writeable  # as zarr's reads are (torch.from_numpy warns otherwise)


def test_writes_through_a_reopened_store_keep_chunks_equal_to_the_fill_value(tmp_path):
    """zarr keeps write_empty_chunks on the handle that created an array only: a reopened
    store must still store an all-False site_valid and an all-zero site, or every read
    finds them missing."""
    create_plate_store(tmp_path / "p.zarr", ["A01", "A02"], ["a", "b"], 8, LAYOUT, attrs={"complete": True})
    # Fresh handles, as stitch_plate's group["site_valid"] was.
    store = PlateStore(zarr.open_group(str(tmp_path / "p.zarr"), mode="r+"), tmp_path / "p.zarr")
    store.write_site_valid(np.zeros((2, 4), dtype=bool))
    assert (tmp_path / "p.zarr" / "site_valid" / "c" / "0" / "0").is_file()
    assert not open_plate_store(tmp_path / "p.zarr").site_valid.any()
    store.images[:] = np.zeros(store.images.shape, dtype=np.uint8)  # through zarr, not write_field
    assert len(list((tmp_path / "p.zarr" / "images").glob("c.*"))) == 2 * 4
    assert not open_plate_store(tmp_path / "p.zarr").read_wells().any()
    assert pickle.loads(pickle.dumps(store.images)).config.write_empty_chunks


def test_png_of_another_bit_depth_or_colour_type_is_an_error_saying_what_it_is(tmp_path):
    """libpng widens a 1-bit PNG to 0/255 uint8 and a palette one to RGB: the header is
    checked first, so neither is stored or misnamed."""
    grey = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    cases = {
        "1": ("one.png", r"one.png: 1-bit greyscale \(mode '1', black and white\), expected 8-bit"),
        "P": ("palette.png", r"palette.png: mode 'P' \(palette colour\), expected 8-bit"),
        "LA": ("alpha.png", r"alpha.png: mode 'LA' \(greyscale with alpha\), expected 8-bit"),
        "RGB": ("rgb.png", r"rgb.png: mode 'RGB' \(colour\), expected 8-bit"),
    }
    for mode, (name, message) in cases.items():
        Image.fromarray(grey).convert(mode).save(tmp_path / name)
        # Decoded afresh and in place (the stitch step's path) alike.
        for out in (None, np.zeros((1, 8, 8), np.uint8)):
            with pytest.raises(ImageReadError, match=message):
                read_site([str(tmp_path / name)], 8, 1, dtype=np.uint8, out=out)
    four = tmp_path / "four.png"
    Image.fromarray(grey >> 4).save(four, bits=4)
    with pytest.raises(ImageReadError, match=r"four.png: 4-bit greyscale, expected 8-bit"):
        read_site([str(four)], 8)
    assert png_header_dtype(str(tmp_path / "one.png")) is None and png_header_dtype(str(four)) is None
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert (read_site([str(tmp_path / "grey.png")], 8) == grey).all()


def test_a_missing_file_says_whether_its_folder_is_missing(tmp_path):
    with pytest.raises(ImageReadError, match=r"Plate2/A01_s1_w1.png: file not found \(its folder \S+Plate2 does not exist\)"):
        read_site([str(tmp_path / "Plate2" / "A01_s1_w1.png")], 8)
    with pytest.raises(ImageReadError, match=r"A01_s1_w1.png: file not found$"):
        read_site([str(tmp_path / "A01_s1_w1.png")], 8)


def as_16_bit(tmp_path, names=None, keep=()):
    """Rewrite the plate's PNGs (all, or those named) as 16-bit (value * 100), but ``keep``."""
    for path in sorted((tmp_path / "E" / "Plate1").glob("*.png")):
        if (names is None or path.name in names) and path.name not in keep:
            write_png(path, np.asarray(Image.open(path)).astype(np.uint16) * 100)


RESCALE = {"low_percentile": 0.0, "high_percentile": 100.0, "reference_wells": 8}


def test_majority_pixel_type_takes_the_common_type_or_names_a_mix():
    u8, u16 = np.dtype(np.uint8), np.dtype(np.uint16)
    assert majority_pixel_type({"a.png": u8, "b.png": u16, "c.png": u16}, "P", "drop") == u16
    assert majority_pixel_type({"a.png": u16, "b.png": u8}, "P", "drop") == u16  # a tie: the first file's
    assert majority_pixel_type({"a.png": u8, "b.png": u8}, "P", "error") == u8
    with pytest.raises(ImageReadError, match=r"plate P mixes 8-bit and 16-bit images .*uint8 \(8-bit\): a.png; uint16 \(16-bit\): b.png, c.png, d.png and 1 more"):
        majority_pixel_type({"a.png": u8, "b.png": u16, "c.png": u16, "d.png": u16, "e.png": u16}, "P", "error")


def test_a_16_bit_plate_whose_first_file_is_8_bit_drops_that_site_only(tmp_path):
    """issue: the first file alone set the plate's type, so every other site was dropped
    as 'pixel type uint16, but the plate's other images are uint8'."""
    sites, pattern = make_plate(tmp_path)
    as_16_bit(tmp_path, keep={"A01_s1_w1.png"})
    by_well = site_paths_by_well(sites, pattern, [1, 2])
    assert plate_pixel_type("P", by_well, "drop") == np.uint16
    store = create_plate_store(tmp_path / "p.zarr", ["A01", "A02", "B01"], ["a", "b"], 8, LAYOUT)
    with ThreadPoolExecutor(2) as pool:
        dropped = stitch_plate(sites, store, pattern, [1, 2], "drop", pool, rescale=RESCALE)
    assert [(d["well"], d["site"]) for d in dropped] == [("A01", 1)]
    assert "A01_s1_w1.png: pixel type uint8, but the plate's other images are uint16" in dropped[0]["reason"]
    assert store.group.attrs["intensity"]["source_dtype"] == "uint16" and store.site_valid.sum() == 11
    # With on_bad_image: error the mix is named, with files of each type.
    with ThreadPoolExecutor(2) as pool, pytest.raises(ImageReadError, match=r"plate 1 \(experiment E\) mixes 8-bit and 16-bit images .*uint8 \(8-bit\): \S+A01_s1_w1.png; uint16 \(16-bit\): \S+A01_s1_w2.png"):
        stitch_plate(sites, store, pattern, [1, 2], "error", pool, rescale=RESCALE)


def test_a_plate_whose_nuclear_channel_alone_is_16_bit_is_named_as_mixed(tmp_path):
    sites, pattern = make_plate(tmp_path)
    as_16_bit(tmp_path, names={f"{well}_s{site}_w1.png" for well in ("A01", "A02", "B01") for site in range(1, 5)})
    store = create_plate_store(tmp_path / "p.zarr", ["A01", "A02", "B01"], ["a", "b"], 8, LAYOUT)
    with ThreadPoolExecutor(2) as pool, pytest.raises(ImageReadError, match=r"plate 1 \(experiment E\) mixes .*uint16 \(16-bit\): \S+A01_s1_w1.png, \S+A02_s1_w1.png, \S+B01_s1_w1.png; uint8 \(8-bit\): \S+A01_s1_w2.png"):
        stitch_plate(sites, store, pattern, [1, 2], "error", pool, rescale=RESCALE)
    # Dropping the odd files leaves no site: an error that says why, not an empty store.
    with ThreadPoolExecutor(2) as pool, pytest.raises(ImageReadError, match=r"plate 1 \(experiment E\): .*first reasons: \S+_w2.png: pixel type uint8, but the plate's other images are uint16"):
        stitch_plate(sites, store, pattern, [1, 2], "drop", pool, rescale=RESCALE)


def test_a_plate_with_no_readable_image_is_an_error_naming_it_not_an_empty_store(tmp_path):
    sites, pattern = make_plate(tmp_path)
    by_well = site_paths_by_well(sites, pattern, [1, 2])
    (tmp_path / "E" / "Plate1").rename(tmp_path / "E" / "elsewhere")
    store = create_plate_store(tmp_path / "p.zarr", ["A01", "A02", "B01"], ["a", "b"], 8, LAYOUT)
    message = r"plate 1 \(experiment E\): no image of it could be read \(24 files of 12 sites tried\), so it cannot be stitched .*first reasons: \S+A01_s1_w1.png: file not found \(its folder \S+Plate1 does not exist\);"
    with pytest.raises(ImageReadError, match=message):
        plate_pixel_type("1 (experiment E)", by_well, "drop")
    with ThreadPoolExecutor(2) as pool, pytest.raises(ImageReadError, match=message):
        stitch_plate(sites, store, pattern, [1, 2], "drop", pool)
    # Sampled files unreadable, another readable: the plate's type comes from that one.
    (tmp_path / "E" / "elsewhere").rename(tmp_path / "E" / "Plate1")
    for path in (tmp_path / "E" / "Plate1").glob("*_s1_*.png"):
        path.unlink()
    assert plate_pixel_type("P", by_well, "drop") == np.uint8
    with pytest.raises(ImageReadError, match="A01_s1_w1.png: file not found$"):
        plate_pixel_type("P", by_well, "error")
    # Every site unreadable although files are (a channel missing everywhere): an error too.
    for path in (tmp_path / "E" / "Plate1").glob("*_w2.png"):
        path.unlink()
    with ThreadPoolExecutor(2) as pool, pytest.raises(ImageReadError, match=r"plate 1 \(experiment E\): none of its 12 sites could be read \(every one was dropped\)"):
        stitch_plate(sites, store, pattern, [1, 2], "drop", pool)
    assert "complete" not in store.group.attrs


def test_the_stitch_job_of_an_unreadable_plate_fails_in_its_log_and_leaves_no_store(tmp_path):
    """issue: a plate whose image folder was missing got a store of dropped sites that
    said it was complete, and its nuclei job then failed (and restitched) forever."""
    sites, pattern = make_plate(tmp_path)
    (tmp_path / "E" / "Plate1").rename(tmp_path / "E" / "elsewhere")
    columns = {"plate_id": "E_1", "well_id": sites["well"], "cell_type": "c", "disease_condition": None, "treatment": None, "treatment_conc": None}
    sites.assign(**columns).to_parquet(tmp_path / "sites.parquet")
    params = {
        "dataset": {"images": pattern, "site_size": 8, "site_layout": LAYOUT, "channels": [1, 2], "channel_names": ["a", "b"], "channel_axis": 0, "on_bad_image": "drop"},
        "store": {"codec": "lz4", "clevel": 5, "shuffle": "bitshuffle", "rescale": RESCALE},
    }
    script = tmp_path / "run.py"
    script.write_text(
        f"import sys; sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "from stitch_plate import main\n"
        f"main({str(tmp_path / 'sites.parquet')!r}, 'E_1', 'out/E_1.zarr', 'out/E_1.qc.parquet', {params!r}, 2, 'stitch.log')\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    log = (tmp_path / "stitch.log").read_text()
    assert "ERROR failed: ImageReadError: plate E_1: no image of it could be read" in log and "Plate1 does not exist" in log
    assert not (tmp_path / "out" / "E_1.zarr").exists() and not (tmp_path / "out" / "E_1.qc.parquet").exists()
    assert "complete" not in zarr.open_group(str(tmp_path / "out" / "E_1.zarr.tmp"), mode="r").attrs
