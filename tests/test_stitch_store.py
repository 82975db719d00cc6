import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from deemd.stitch import ImageReadError, image_manifest_digest, image_path, read_png, read_site, read_well_into, site_paths_by_well, stitch_plate
from deemd.store import (
    StoreIntegrityError,
    create_plate_store,
    damage_marker,
    has_checksums,
    open_plate_store,
    site_slices,
)

LAYOUT = [[1, 2], [3, 4]]
PATTERN = "{root}/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png"


def test_image_path_accepts_format_specs():
    assert image_path("x/{plate}/{well}_f{site:02d}_c{channel}.png", "E", 3, "B07", 2, 5) == "x/3/B07_f02_c5.png"


def test_site_slices_follow_layout():
    slices = site_slices([[2, 1], [4, 3]], 8)
    assert slices[2] == (slice(0, 8), slice(0, 8))
    assert slices[3] == (slice(8, 16), slice(8, 16))


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_read_png_errors_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    write_png(good, np.arange(64, dtype=np.uint8).reshape(8, 8))
    assert read_png(str(good), 8)[1, 1] == 9
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        read_png(str(tmp_path / "missing.png"), 8)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ImageReadError, match="truncated.png: corrupt or truncated"):
        read_png(str(truncated), 8)
    with pytest.raises(ImageReadError, match="good.png: size 8x8, expected 16x16"):
        read_png(str(good), 16)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(ImageReadError, match="rgb.png: mode 'RGB'"):
        read_png(str(rgb), 8)


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
        dropped = stitch_plate(sites, store, pattern, [1, 2], "error", 2, pool)
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
        stitch_plate(sites, store, pattern, [1, 2], "error", 2, pool)
    with ThreadPoolExecutor(2) as pool:
        dropped = stitch_plate(sites, store, pattern, [1, 2], "drop", 2, pool)
    assert [(d["well"], d["site"]) for d in dropped] == [("A02", 3)]
    assert "A02_s3_w2.png" in dropped[0]["reason"]
    valid = store.site_valid
    assert valid[1].tolist() == [True, True, False, True] and valid[[0, 2]].all()


def test_read_well_into_places_sites_and_drops_bad_ones(tmp_path):
    sites, pattern = make_plate(tmp_path, wells=("A01",))
    (tmp_path / "E" / "Plate1" / "A01_s1_w1.png").unlink()
    by_well = site_paths_by_well(sites, pattern, [1, 2])
    assert by_well["A01"][0] == (1, "E_1_A01_1", [image_path(pattern, "E", 1, "A01", 1, c) for c in (1, 2)])
    out = np.full((2, 16, 16), 255, dtype=np.uint8)  # stale content must not survive
    valid, dropped = read_well_into(out, by_well["A01"], LAYOUT, 8, "drop")
    assert valid.tolist() == [False, True, True, True] and dropped[0]["site"] == 1
    assert (out[:, :8, :8] == 0).all()
    assert (out[1, :8, 8:] == 20 + 2).all() and (out[0, 8:, :8] == 30 + 1).all() and (out[1, 8:, 8:] == 40 + 2).all()
    with pytest.raises(ImageReadError, match="A01_s1_w1.png: file not found"):
        read_well_into(out, by_well["A01"], LAYOUT, 8, "error")
    # A site missing from the metadata is simply absent.
    valid, dropped = read_well_into(out, by_well["A01"][2:], [[2, 1], [4, 3]], 8, "error")
    assert valid.tolist() == [False, False, True, True] and dropped == []
    assert (out[0, 8:, 8:] == 30 + 1).all() and (out[:, :8, :] == 0).all()


def test_open_plate_store_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a deemd plate store"):
        open_plate_store(tmp_path / "nothing.zarr")


def finished_store(tmp_path):
    """A finished three-well store of tmp_path/p.zarr, as the stitch job leaves it."""
    sites, pattern = make_plate(tmp_path)
    store = create_plate_store(tmp_path / "p.zarr", ["A01", "A02", "B01"], ["a", "b"], 8, LAYOUT)
    with ThreadPoolExecutor(2) as pool:
        stitch_plate(sites, store, pattern, [1, 2], "error", 2, pool)
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
                 lambda: store.images[1, :, :8, :8], lambda: store.images[...]):
        with pytest.raises(StoreIntegrityError, match=rf"p\.zarr: chunk images/c\.1\.0\.0\.0 \(images of well A02\) {reason}"):
            read()
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
