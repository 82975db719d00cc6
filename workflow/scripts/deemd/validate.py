"""JSON-schema validation of the config and of metadata tables, with errors that say
which key, column, row and value are wrong."""

from __future__ import annotations

import math
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import yaml


class ConfigError(ValueError):
    """The config does not match its schema."""


class MetadataError(ValueError):
    """A metadata table does not match its schema."""


def load_schema(path: str | Path) -> dict:
    """Read a YAML or JSON schema file."""
    with open(path) as handle:
        return yaml.safe_load(handle)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def config_errors(config: dict, schema: dict) -> list[str]:
    """Every schema violation of ``config`` as a sentence naming the key and value."""
    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        messages.append(f"config key {_key_path(error)}: {error.message}")
    return messages


def check_config(config: dict, schema: dict) -> None:
    """Raise ConfigError listing every violation, plus the cross-key rules a schema cannot say."""
    messages = config_errors(config, schema)
    dataset = config.get("dataset", {})
    if not messages:
        channels, names = dataset["channels"], dataset["channel_names"]
        if len(channels) != len(names):
            messages.append(
                f"config key dataset.channel_names: {len(names)} names for {len(channels)} channels {channels}"
            )
        if dataset["nuclear_channel"] not in channels:
            messages.append(
                f"config key dataset.nuclear_channel: {dataset['nuclear_channel']} is not one of dataset.channels {channels}"
            )
        layout_sites = sorted(s for row in dataset["site_layout"] for s in row)
        if layout_sites != list(range(1, dataset["sites_per_well"] + 1)):
            messages.append(
                f"config key dataset.site_layout: {dataset['site_layout']} must hold each site 1..{dataset['sites_per_well']} once"
            )
        if dataset["source"] == "synthetic":
            demo = config.get("demo")
            if not demo:
                messages.append("config key demo: required when dataset.source is 'synthetic'")
            elif demo.get("site_size") != dataset["site_size"]:
                messages.append(
                    f"config key demo.site_size: {demo.get('site_size')} differs from dataset.site_size {dataset['site_size']}"
                )
        if dataset["source"] == "rxrx19a" and not config.get("download"):
            messages.append("config key download: required when dataset.source is 'rxrx19a'")
    if messages:
        raise ConfigError("invalid config:\n  " + "\n  ".join(messages))


def _json_value(value):
    """A table cell as JSON sees it: NaN/None -> None, numpy scalars -> Python scalars,
    integral floats -> int (CSV readers turn int columns with gaps into floats)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else value
    if hasattr(value, "item"):
        return _json_value(value.item())
    return value


def metadata_errors(table: pd.DataFrame, schema: dict, source: str, max_errors: int = 20) -> list[str]:
    """Schema violations of a sites table, each naming file, row, column and value.

    Every column is validated once per distinct value (RxRx19a has 305,520 rows but few
    distinct values per column), against that column's sub-schema, so the check stays fast;
    the row reported is the first row (1-based CSV line, header = line 1) holding the value.
    """
    messages = []
    missing = [c for c in schema.get("required", []) if c not in table.columns]
    if missing:
        return [f"{source}: missing column(s) {missing}; columns present: {list(table.columns)}"]
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    for column in table.columns:
        if column not in properties:
            continue
        validator = jsonschema.Draft202012Validator(properties[column])
        values = table[column].to_numpy(dtype=object)
        codes, _ = pd.factorize(table[column], use_na_sentinel=False)
        _, first_positions = np.unique(codes, return_index=True)
        for position in np.sort(first_positions):
            value = _json_value(values[position])
            line = int(position) + 2
            if value is None and column in required:
                messages.append(f"{source}, line {line}, column {column!r}: empty, but the column is required")
            else:
                for error in validator.iter_errors(value):
                    messages.append(f"{source}, line {line}, column {column!r}: value {value!r}: {error.message}")
            if len(messages) >= max_errors:
                return messages
    return messages
