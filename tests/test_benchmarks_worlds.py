"""benchmarks/worlds.py: its pure helpers (the --set overrides, merged as Snakemake merges
config files). The sweep itself runs the whole workflow and is not part of the suite."""

from __future__ import annotations

import pytest

from workflow_utils import load_benchmark


@pytest.fixture(scope="module")
def worlds():
    return load_benchmark("worlds")


def test_set_overrides_nest_and_read_values_as_yaml(worlds):
    overrides = worlds.config_overrides(["efficacy.min_viability=0.9", "qc.min_zprime=-0.5", "efficacy.map_readout=a"])
    assert overrides == {"efficacy": {"min_viability": 0.9, "map_readout": "a"}, "qc": {"min_zprime": -0.5}}
    merged = worlds.deep_merge({"efficacy": {"fdr": 0.05, "min_viability": 0.8}}, overrides)
    assert merged["efficacy"] == {"fdr": 0.05, "min_viability": 0.9, "map_readout": "a"}


@pytest.mark.parametrize("pair", ["efficacy.min_viability", "=0.9"])
def test_set_without_key_or_value_stops_naming_it(worlds, pair):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        worlds.config_overrides([pair])
