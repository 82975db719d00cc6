"""Tests of deemd.io, the one family of atomic writers, and PlateStore.read_site."""

import json

import numpy as np
import pandas as pd
import pytest

from deemd.io import atomic_directory, atomic_path, temporary_sibling, write_csv_atomic, write_json_atomic, write_text_atomic
from deemd.store import create_plate_store, open_plate_store, site_slices


def test_atomic_path_renames_on_success_and_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_path(path) as tmp:
        assert tmp.name == "out.txt.tmp" and tmp.parent.is_dir()
        tmp.write_text("one")
    assert path.read_text() == "one" and not tmp.exists()
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "one" and not tmp.exists()


def test_temporary_names():
    assert temporary_sibling("a/fig.png").name == "fig.png.tmp"
    assert temporary_sibling("a/fig.png", keep_suffix=True).name == "fig.tmp.png"  # matplotlib reads the suffix


def test_writers_round_trip(tmp_path):
    write_json_atomic({"a": [1, 2]}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2]} and (tmp_path / "x.json").read_text().endswith("\n")
    write_csv_atomic(pd.DataFrame({"v": [0.123456789]}), tmp_path / "x.csv", float_format="%.3g")
    assert (tmp_path / "x.csv").read_text() == "v\n0.123\n"
    write_text_atomic(tmp_path / "flag", "done\n", fsync=True, tmp=tmp_path / ".flag.part")
    assert (tmp_path / "flag").read_text() == "done\n" and not (tmp_path / ".flag.part").exists()


def test_atomic_directory_replaces_only_when_complete(tmp_path):
    target = tmp_path / "images"
    target.mkdir()
    (target / "old.png").write_text("old")
    with pytest.raises(OSError):
        with atomic_directory(target) as tmp:
            (tmp / "new.png").write_text("new")
            raise OSError("disk full")
    assert [p.name for p in target.iterdir()] == ["old.png"]  # the old folder is untouched
    with atomic_directory(target) as tmp:
        assert not any(tmp.iterdir())  # the leftover temporary was emptied
        (tmp / "new.png").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.png"] and not tmp.exists()


def test_plate_store_read_site_cuts_the_site_out_of_its_well(tmp_path):
    layout = [[1, 2], [3, 4]]
    store = create_plate_store(tmp_path / "p.zarr", ["A01", "A02"], ["a", "b"], 4, layout)
    wells = np.random.default_rng(0).integers(0, 255, (2, 2, 8, 8), dtype=np.uint8)
    store.images[:] = wells
    store.group.attrs["complete"] = True
    store = open_plate_store(tmp_path / "p.zarr")
    for site, (ys, xs) in site_slices(layout, 4).items():
        assert np.array_equal(store.read_site(1, site), wells[1, :, ys, xs])
    assert store.read_site(np.int64(0), np.int64(4)).shape == (2, 4, 4)


def test_store_paths_by_plate_reads_the_plate_from_the_name():
    from deemd.store import store_paths_by_plate

    paths = ["results/demo/store/HRCE-1_1.zarr", "results/demo/store/HRCE-1_2.zarr/"]
    assert store_paths_by_plate(paths) == {"HRCE-1_1": paths[0], "HRCE-1_2": paths[1]}
    with pytest.raises(ValueError, match="named"):
        store_paths_by_plate(["results/demo/store/HRCE-1_1"])
    with pytest.raises(ValueError, match="two stores"):
        store_paths_by_plate(["a/P.zarr", "b/P.zarr"])
