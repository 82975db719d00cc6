import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from deemd.validate import (
    ConfigError,
    check_config,
    config_errors,
    image_pattern_errors,
    load_schema,
    metadata_errors,
    shared_image_errors,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")
META_SCHEMA = load_schema(REPO / "workflow" / "schemas" / "metadata.schema.yaml")


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "rxrx19a.yaml", "facility.yaml", "operetta.yaml", "diffuse.yaml"])
def test_shipped_configs_are_valid(name):
    merged = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    override = yaml.safe_load((REPO / "config" / name).read_text())
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    check_config(merged, SCHEMA)


def test_rxrx19a_config_replaces_the_demos_per_model_values():
    """Snakemake merges a configfile into config/config.yaml key by key (update_config):
    the demo's train.by_model must not survive into an RxRx19a run."""
    from snakemake.utils import update_config

    merged = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(merged, yaml.safe_load((REPO / "config" / "rxrx19a.yaml").read_text()))
    train = merged["train"]
    for model in train["models"]:
        values = {**train, **train["by_model"].get(model, {})}
        assert (values["epochs"], values["batch_size"]) == (150, 128), model


def test_out_of_range_value_names_key_and_value(config):
    config["dataset"]["site_size"] = 100
    with pytest.raises(ConfigError, match=r"dataset\.site_size: 100 is not a multiple of 8"):
        check_config(config, SCHEMA)


def test_unknown_key_and_bad_enum_are_both_reported(config):
    config["dataset"]["on_bad_image"] = "ignore"
    config["nuclei"]["smoothing_sigmaa"] = 2
    messages = config_errors(config, SCHEMA)
    assert any("dataset.on_bad_image: 'ignore' is not one of" in m for m in messages)
    assert any("nuclei" in m and "smoothing_sigmaa" in m for m in messages)


def test_model_overrides_are_checked(config):
    config["train"]["by_model"] = {"M": {"batch_size": 0, "k": 3}, "X": {"epochs": 2}}
    messages = config_errors(config, SCHEMA)
    assert any("train.by_model.M.batch_size: 0 is less than the minimum of 1" in m for m in messages), messages
    assert any("train.by_model.M" in m and "'k'" in m for m in messages), messages
    assert any("train.by_model" in m and "'X'" in m for m in messages), messages


def test_cross_key_rules(config):
    bad = copy.deepcopy(config)
    bad["dataset"]["nuclear_channel"] = 9
    with pytest.raises(ConfigError, match="nuclear_channel: 9 is not one of dataset.channels"):
        check_config(bad, SCHEMA)
    bad = copy.deepcopy(config)
    bad["dataset"]["channel_names"] = ["a", "b"]
    with pytest.raises(ConfigError, match="2 names for 5 channels"):
        check_config(bad, SCHEMA)
    bad = copy.deepcopy(config)
    bad["dataset"]["site_layout"] = [[1, 1], [3, 4]]
    with pytest.raises(ConfigError, match="site_layout"):
        check_config(bad, SCHEMA)
    bad = copy.deepcopy(config)
    bad["inference"] = {"shards_per_plate": 2, "plates_per_job": 0}
    with pytest.raises(ConfigError, match="inference.shards_per_plate: 2 parts a plate need inference.plates_per_job 1, not 0"):
        check_config(bad, SCHEMA)


def _sites(**overrides):
    table = pd.DataFrame(
        {
            "site_id": ["E_1_A01_1", "E_1_A01_2"],
            "well_id": ["E_1_A01", "E_1_A01"],
            "cell_type": ["HRCE", "HRCE"],
            "experiment": ["E", "E"],
            "plate": pd.array([1, 1], dtype="Int64"),
            "well": ["A01", "A01"],
            "site": pd.array([1, 2], dtype="Int64"),
            "disease_condition": ["Mock", "Mock"],
            "treatment": [None, None],
            "treatment_conc": [np.nan, np.nan],
            "SMILES": [None, None],
        }
    )
    for column, (row, value) in overrides.items():
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
    return table


def test_valid_metadata_has_no_errors():
    assert metadata_errors(_sites(), META_SCHEMA, "m.csv") == []


def test_metadata_error_names_file_line_column_value():
    messages = metadata_errors(_sites(disease_condition=(1, "Infected")), META_SCHEMA, "m.csv")
    assert len(messages) == 1
    assert "m.csv, line 3, column 'disease_condition': value 'Infected'" in messages[0]


def test_metadata_missing_required_value_and_column():
    messages = metadata_errors(_sites(cell_type=(0, None)), META_SCHEMA, "m.csv")
    assert messages == ["m.csv, line 2, column 'cell_type': empty, but the column is required"]
    messages = metadata_errors(_sites().drop(columns=["well"]), META_SCHEMA, "m.csv")
    assert "missing column(s) ['well']" in messages[0]


def test_metadata_range_errors():
    messages = metadata_errors(_sites(site=(1, 0), well=(0, "A1")), META_SCHEMA, "m.csv")
    assert any("column 'site': value 0" in m for m in messages)
    assert any("column 'well': value 'A1'" in m for m in messages)


def test_every_schema_object_refuses_unknown_keys(config):
    """issue 11: a typo'd section or a demo key is an error naming its path, not ignored."""
    config["trian"] = {"epochs": 3}
    config["demo"]["platez"] = 2
    config["demo"]["cells"]["radius"] = 0.1
    config["download"]["archives"]["images"]["md6"] = "x"
    messages = config_errors(config, SCHEMA)
    assert any(m.startswith("config key trian: unknown key 'trian' (did you mean 'train'?)") for m in messages), messages
    assert any(m.startswith("config key demo.platez: unknown key") for m in messages), messages
    assert any(m.startswith("config key demo.cells.radius: unknown key") for m in messages), messages
    assert any(m.startswith("config key download.archives.images.md6: unknown key") for m in messages), messages


def _objects_without_closed_keys(schema, path="(top level)"):
    """Paths of schema objects (type object) that would accept an undeclared key."""
    found = []
    if isinstance(schema, dict):
        types = schema.get("type")
        if types == "object" or (isinstance(types, list) and "object" in types):
            if "additionalProperties" not in schema and "propertyNames" not in schema:
                found.append(path)
        for key, value in schema.items():
            if isinstance(value, dict):
                found += _objects_without_closed_keys(value, f"{path}.{key}")
    return found


def test_no_schema_object_is_left_open():
    assert _objects_without_closed_keys(SCHEMA) == []


@pytest.mark.parametrize(
    "key,value",
    [("dataset.site_size", 128.0), ("store.batch_wells", 16.0), ("train.epochs", 6.0), ("demo.plates", True)],
)
def test_integral_float_is_not_an_integer(config, key, value):
    """issue 11: site_size: 128.0 passed the schema and failed later with a TypeError."""
    section, name = key.split(".")
    config[section][name] = value
    messages = config_errors(config, SCHEMA)
    assert any(m.startswith(f"config key {key}: {value!r} is not of type 'integer'") for m in messages), messages
    if isinstance(value, float):
        assert any(f"(write {int(value)}:" in m for m in messages), messages


def test_image_pattern_without_plate_is_refused(config):
    """issue 11: without {plate}, two plates sharing a plate map read plate 1's images."""
    config["dataset"]["images"] = "images/{experiment}/{well}_s{site}_w{channel}.png"
    with pytest.raises(ConfigError, match=r"config key dataset\.images: .* lacks the field\(s\) \['plate'\]"):
        check_config(config, SCHEMA)


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("x/{plate}/{rows}{well}_{site}_{channel}.png", r"unknown field\(s\) \['rows'\]"),
        ("x/{plate}/{well:d}_{site}_{channel}.png", r"cannot be filled in \(ValueError: Unknown format code 'd'"),
        ("x/{plate}/{well}_{site:02q}_{channel}.png", r"cannot be filled in"),
        ("x/{plate/{well}_{site}_{channel}.png", r"is not a valid pattern"),
        ("x/{plate}/{well}_{site}_{channel}}.png", r"is not a valid pattern"),
        ("x/{}/{plate}/{well}_{site}_{channel}.png", r"positional field"),
    ],
    ids=["unknown-field", "bad-spec", "unknown-spec", "unbalanced-open", "unbalanced-close", "positional"],
)
def test_bad_image_pattern_stops_at_start_up_naming_the_key(config, pattern, expected):
    config["dataset"]["images"] = pattern
    with pytest.raises(ConfigError, match=r"config key dataset\.images: .*" + expected):
        check_config(config, SCHEMA)


def test_facility_image_pattern_with_format_spec_is_accepted():
    assert image_pattern_errors("/data/{plate}/{well}_f{site:02d}_c{channel}.png") == []


def test_vendor_patterns_rows_columns_and_one_file_per_site():
    """issue 15: Operetta-style r02c05f03 names, row letters, and one multi-channel TIFF
    per site (no {channel}); a well needs {well} or a row with {column}."""
    assert image_pattern_errors("/d/{plate}/r{row:02d}c{column:02d}f{site:02d}p01-ch{channel}sk1fk1fl1.tiff") == []
    assert image_pattern_errors("/d/{plate}_{row_letter}{column:02d}_s{site}.tif") == []
    assert any("lacks the field(s) ['well']" in m for m in image_pattern_errors("/d/{plate}/c{column}f{site}.tif"))
    assert any("lacks the field(s) ['site']" in m for m in image_pattern_errors("/d/{plate}/{well}.tif"))


def test_site_layout_any_grid_with_gaps(config):
    from deemd.validate import site_layout_errors

    assert site_layout_errors([[1, 2, 3], [4, 5, 6], [7, 8, 9]]) == []
    assert site_layout_errors([[2, 3, 4], [9, 1, 5], [8, 7, 6]]) == []  # a spiral, as Harmony numbers fields
    assert site_layout_errors([[1, 2, 3], [4, 0, 5]]) == []  # 2 x 3 with the middle field not imaged
    assert "rows of different lengths" in site_layout_errors([[1, 2], [3]])[0]
    assert "got sites [1, 3]" in site_layout_errors([[1, 0], [3, 0]])[0]
    assert "got sites []" in site_layout_errors([[0]])[0]
    config["dataset"]["site_layout"] = [[1, 2, 3, 4]] * 4
    with pytest.raises(ConfigError, match=r"dataset\.site_layout: .* must hold each site 1\.\.n once"):
        check_config(config, SCHEMA)
    config["dataset"]["site_layout"] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    check_config(config, SCHEMA)


def test_removed_sites_per_well_says_what_replaced_it(config):
    config["dataset"]["sites_per_well"] = 4
    with pytest.raises(ConfigError, match=r"dataset\.sites_per_well: unknown key 'sites_per_well' \(removed: the sites per well follow from dataset\.site_layout\)"):
        check_config(config, SCHEMA)


def test_barcode_plates_and_number_formats():
    """A barcode plate cannot take a number format; a plate number can."""
    plates = pd.DataFrame({"experiment": ["S-1", "S-1"], "plate": ["BC01A", "BC01B"], "plate_id": ["S-1_BC01A", "S-1_BC01B"]})
    assert shared_image_errors("img/{plate}/{well}_{site}_{channel}.tif", plates) == []
    messages = shared_image_errors("img/{plate:03d}/{well}_{site}_{channel}.tif", plates)
    assert len(messages) == 2 and "cannot name the files of plate S-1_BC01A" in messages[0]


def test_plates_sharing_image_files_are_an_error():
    """Without {experiment}, two experiments' plate 1 would read the same images."""
    plates = pd.DataFrame({"experiment": ["A-1", "B-1", "B-1"], "plate": [1, 1, 2], "plate_id": ["A-1_1", "B-1_1", "B-1_2"]})
    messages = shared_image_errors("img/P{plate}/{well}_{site}_{channel}.png", plates)
    assert messages == [
        "config key dataset.images: 'img/P{plate}/{well}_{site}_{channel}.png' gives plates A-1_1 and B-1_1 the same "
        "files ('img/P1/A01_1_1.png'); add {experiment} to it"
    ]
    assert shared_image_errors("img/{experiment}/P{plate}/{well}_{site}_{channel}.png", plates) == []


def test_fill_defaults_sets_missing_keys_from_the_schema():
    from deemd.validate import fill_defaults

    schema = {
        "properties": {
            "a": {"type": "object", "properties": {"x": {"default": 3}, "y": {"default": [1]}}},
            "b": {"default": "auto"},
            "c": {"type": "object", "properties": {"z": {"default": 1}}},
        }
    }
    config = {"a": {"x": 5}}
    filled = fill_defaults(config, schema)
    assert filled is config
    # Given values stay, missing ones come from the schema, absent objects stay absent.
    assert config == {"a": {"x": 5, "y": [1]}, "b": "auto"}
    config["a"]["y"].append(2)
    assert schema["properties"]["a"]["properties"]["y"]["default"] == [1]


def test_shipped_schema_defaults_fill_a_minimal_section():
    from deemd.validate import fill_defaults, load_schema

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    del config["efficacy"]["fdr"], config["train"]["ap_tolerance"], config["qc"]
    config["qc"] = {}
    fill_defaults(config, load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert config["efficacy"]["fdr"] == 0.05 and config["train"]["ap_tolerance"] == 0.0
    assert config["qc"] == {"min_zprime": 0.0, "min_control_wells": 3}
