import numpy as np
import pandas as pd
import pytest
import torch

from deemd.data import SiteDataset, site_loader
from deemd.inference import load_model_file, load_trained, site_z
from deemd.grid import PatchGrid
from deemd.mil import TrainSetup, build_resnet34
from deemd.store import create_plate_store


def tiny_store(path, n_wells=3, size=8):
    store = create_plate_store(path, [f"A0{i + 1}" for i in range(n_wells)], ["a", "b"], size, [[1, 2], [3, 4]])
    images = np.zeros((n_wells, 2, 2 * size, 2 * size), dtype=np.uint8)
    for w in range(n_wells):
        for s, (y, x) in enumerate([(0, 0), (0, size), (size, 0), (size, size)], start=1):
            images[w, 0, y : y + size, x : x + size] = 10 * w + s
            images[w, 1, y : y + size, x : x + size] = 100 + 10 * w + s
    store.images[:] = images
    store.group.attrs["complete"] = True
    return str(path)


def test_site_dataset_cuts_the_site_quadrant(tmp_path):
    path = tiny_store(tmp_path / "p.zarr")
    sites = pd.DataFrame({"plate_id": "P_1", "well_index": [2, 0], "site": [3, 1], "label": pd.array([1, pd.NA], dtype="Int64")})
    dataset = SiteDataset(sites, {"P_1": path})
    pixels, label, index = dataset[0]
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 8, 8)
    assert (pixels[0] == 23).all() and (pixels[1] == 123).all() and label == 1 and index == 0
    assert dataset[1][1] == -1  # unknown label
    batches = list(site_loader(dataset, 2, 0))
    assert batches[0][0].shape == (2, 2, 8, 8)
    # Picklable without open handles (DataLoader workers get their own).
    import pickle

    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._stores == {} and (clone[1][0][0] == 1).all()


def test_site_loader_with_workers_reads_the_same(tmp_path):
    path = tiny_store(tmp_path / "p.zarr")
    sites = pd.DataFrame({"plate_id": "P_1", "well_index": [0, 1, 2, 1], "site": [1, 2, 3, 4]})
    dataset = SiteDataset(sites, {"P_1": path})
    serial = torch.cat([b[0] for b in site_loader(dataset, 2, 0)])
    parallel = torch.cat([b[0] for b in site_loader(dataset, 2, 2)])
    assert torch.equal(serial, parallel)


def setup(kind):
    return TrainSetup(kind=kind, k=2, eta=0.5, grid=PatchGrid(16, 8, 4), epochs=1, patience=1, batch_size=4,
                      whole_batch_size=2, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, seed=0, in_channels=2)


def test_site_z_is_the_median_of_the_top_k():
    probabilities = np.array([[0.1, 0.9, 0.5, 0.7], [0.2, 0.2, 0.0, 0.1]])
    assert np.allclose(site_z(setup("M"), None, probabilities), [0.8, 0.2])
    assert np.allclose(site_z(setup("W"), np.array([0.3, 0.6]), None), [0.3, 0.6])


def test_load_trained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_resnet34(2)
    path = tmp_path / "model.pt"
    saved = {"kind": "M", "state_dict": model.state_dict(), "setup": setup("M").to_dict(), "mean": [1.0, 2.0], "std": [3.0, 4.0]}
    torch.save(saved, path)
    loaded, loaded_setup, device_precision = load_trained(str(path), torch.device("cpu"))
    assert loaded_setup == setup("M") and device_precision.mean.tolist() == [1.0, 2.0]
    x = torch.randn(1, 2, 8, 8)
    model.eval()
    assert torch.allclose(loaded(x), model(x))
    # Plain data: the file loads without unpickling any class of deemd.
    assert torch.load(path, weights_only=True)["setup"]["grid"] == {"site_size": 16, "patch_size": 8, "stride": 4}


def test_setup_round_trips_as_plain_data_and_old_model_files_are_named(tmp_path):
    data = setup("V").to_dict()
    assert TrainSetup.from_dict(data) == setup("V") and isinstance(data["grid"], dict) and data["betas"] == [0.9, 0.999]
    old = tmp_path / "old.pt"
    torch.save({"setup": setup("V")}, old)  # the former format: a pickled TrainSetup
    with pytest.raises(ValueError, match="old.pt: not a model file of this version"):
        load_model_file(str(old))
