"""benchmarks/brightness.py: its helpers, and one short pass over the tiny demo's models
(the numbers it prints are measurements, not pass/fail; here only their shape and the
identities that hold by construction)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_utils import load_benchmark


@pytest.fixture(scope="module")
def brightness():
    return load_benchmark("brightness")


def test_rescaled_multiplies_rounds_and_clips(brightness):
    images = torch.tensor([[[[0, 10, 100, 250]]]], dtype=torch.uint8)
    assert brightness.rescaled(images, 0.5).tolist() == [[[[0, 5, 50, 125]]]]
    assert brightness.rescaled(images, 1.1).tolist() == [[[[0, 11, 110, 255]]]]
    assert brightness.rescaled(images, 1.1).dtype == torch.uint8


def test_held_out_controls_takes_validation_and_test_sites_of_both_labels(brightness):
    split = pd.DataFrame({
        "set": ["train", "val", "test", "val", "test", "val", "excluded"],
        "label": [1, 1, 1, 0, 0, -1, 0],
        "site_id": list("abcdefg"),
    })
    chosen = brightness.held_out_controls(split, per_class=5)
    assert sorted(chosen["site_id"]) == ["b", "c", "d", "e"]
    assert sorted(brightness.held_out_controls(split, per_class=1)["label"]) == [0, 1]


def test_brightness_table_on_the_tiny_demo(brightness, tiny_run):
    config = brightness.run_config(tiny_run / "config.yaml")
    results = tiny_run / "results" / config["dataset"]["name"]
    table = brightness.brightness_table(results, config, [0.9, 1.0], per_class=4)
    assert set(table["model"]) == set(config["train"]["models"])
    assert sorted(table["gain"].unique()) == [0.9, 1.0]
    unchanged = table[table["gain"] == 1.0]
    # At gain 1 the sites are the references themselves: infected 0 and non-infected 1,
    # wherever a model's references separate at all (else NaN).
    for column, level in (("infected_controls", 0.0), ("noninfected_controls", 1.0)):
        values = unchanged[column].to_numpy()
        assert np.all(np.isnan(values) | np.isclose(values, level))
