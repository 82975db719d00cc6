"""JSON-schema validation of the config and of metadata tables, with errors that say
which key, column, row and value are wrong."""

from __future__ import annotations

import copy

import difflib
import math
import re
import string
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


def _strict_integer(checker, instance) -> bool:
    # JSON Schema counts 128.0 as an integer; Python code downstream (range, slicing,
    # array shapes) does not, so a count or size must be written without a decimal point.
    return isinstance(instance, int) and not isinstance(instance, bool)


# Draft 2020-12, except that "integer" means a Python int (not 128.0, not True).
StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


# Keys that configs once had, and what replaced them (said beside "unknown key").
REMOVED_KEYS = {"dataset.sites_per_well": "removed: the sites per well follow from dataset.site_layout"}


def _error_messages(error: jsonschema.ValidationError) -> list[str]:
    """One or more sentences for a schema violation: an unknown key is named by its full
    path (with the nearest known key), an integral float gets a hint."""
    path = _key_path(error)
    if error.validator == "additionalProperties" and error.validator_value is False and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        where = "the top level" if path == "(top level)" else path
        messages = []
        for key in sorted(set(error.instance) - set(known), key=str):
            full = str(key) if path == "(top level)" else f"{path}.{key}"
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if full in REMOVED_KEYS:
                hint = f" ({REMOVED_KEYS[full]})"
            messages.append(f"config key {full}: unknown key {key!r}{hint}; {where} takes {known}")
        return messages
    message = f"config key {path}: {error.message}"
    types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    if error.validator == "type" and "integer" in types and isinstance(error.instance, float) and error.instance.is_integer():
        message += f" (write {int(error.instance)}: counts and sizes are whole numbers, without a decimal point)"
    return [message]


def config_errors(config: dict, schema: dict) -> list[str]:
    """Every schema violation of ``config`` as a sentence naming the key and value."""
    validator = StrictValidator(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        messages.extend(_error_messages(error))
    return messages


# The fields of dataset.images and a sample value of each type (stitch.image_path fills
# site and channel as int, experiment, well and row_letter as str, row and column as int
# from the well's name, and plate as int or, for a barcode, str).
IMAGE_FIELDS = {"experiment": "HRCE-1", "plate": 1, "well": "A01", "row": 1, "column": 1, "row_letter": "A", "site": 1, "channel": 1}
# Without these, two plates (sites) would read the same file; a well is named by {well}, or
# by its row ({row} or {row_letter}) and {column}. Without {channel}, one file holds every
# channel of a site (a multi-page or multi-channel TIFF).
REQUIRED_IMAGE_FIELDS = ("plate", "site")


def image_pattern_errors(pattern: str, key: str = "dataset.images") -> list[str]:
    """What is wrong with an image path pattern (str.format syntax), as sentences naming
    ``key``: unbalanced braces, positional or unknown fields, a missing {plate}, {well},
    {site} or {channel}, or a format spec that does not fit its field's type (tried on
    sample values)."""
    prefix = f"config key {key}: {pattern!r}"
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as error:
        return [f"{prefix} is not a valid pattern ({error}); a literal brace is written {{{{ or }}}}"]
    fields = [re.split(r"[.\[]", field, maxsplit=1)[0] for _, field, _, _ in parsed if field is not None]
    messages = []
    if any(field == "" or field.isdigit() for field in fields):
        messages.append(f"{prefix} has a positional field ({{}} or {{0}}); name each field, e.g. {{site}}")
    unknown = sorted({field for field in fields if field and not field.isdigit()} - set(IMAGE_FIELDS))
    if unknown:
        messages.append(f"{prefix} has unknown field(s) {unknown}; the fields are {list(IMAGE_FIELDS)}")
    missing = [field for field in REQUIRED_IMAGE_FIELDS if field not in fields]
    if "well" not in fields and not ({"row", "row_letter"} & set(fields) and "column" in fields):
        missing.append("well")
    if missing:
        messages.append(
            f"{prefix} lacks the field(s) {missing}: each plate, well and site must have its own "
            f"file (without {{plate}}, plates that share a plate map would read the same images; a well is "
            f"{{well}}, or {{row}} or {{row_letter}} with {{column}})"
        )
    if not messages:
        try:
            pattern.format(**IMAGE_FIELDS)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as error:
            messages.append(
                f"{prefix} cannot be filled in ({type(error).__name__}: {error}); site, channel, row and column "
                f"are integers (e.g. {{site:02d}}), experiment, well and row_letter are text, plate is an integer "
                f"or a barcode"
            )
    return messages


def shared_image_errors(pattern: str, plates: pd.DataFrame, key: str = "dataset.images") -> list[str]:
    """Plates that ``pattern`` sends to the same files, e.g. two experiments' plate 1 when
    the pattern has no {experiment}, or that it cannot name (a barcode plate given a number
    format, ``{plate:03d}``). ``plates``: one row per plate with experiment (str), plate
    (int or barcode str) and plate_id; each plate's path is filled with well A01."""
    first = {}
    messages = []
    for row in plates.itertuples(index=False):
        plate = row.plate if isinstance(row.plate, str) else int(row.plate)
        try:
            path = pattern.format(**dict(IMAGE_FIELDS, experiment=row.experiment, plate=plate))
        except (ValueError, TypeError) as error:
            messages.append(f"config key {key}: {pattern!r} cannot name the files of plate {row.plate_id} ({error})")
            continue
        if path in first:
            messages.append(
                f"config key {key}: {pattern!r} gives plates {first[path]} and {row.plate_id} the same files "
                f"({path!r}); add {{experiment}} to it"
            )
        else:
            first[path] = row.plate_id
    return messages


def site_layout_errors(layout: list[list[int]], key: str = "dataset.site_layout") -> list[str]:
    """What is wrong with a layout of site numbers (rows of a grid, 0 for a field that
    was not imaged): rows of unequal length, or site numbers that are not 1..n each once."""
    if len({len(row) for row in layout}) != 1:
        return [f"config key {key}: {layout} has rows of different lengths {[len(row) for row in layout]}; it is a grid"]
    sites = sorted(site for row in layout for site in row if site)
    if not sites or sites != list(range(1, len(sites) + 1)):
        return [
            f"config key {key}: {layout} must hold each site 1..n once (n = the number of fields imaged, "
            f"0 for a field that was not), got sites {sites}"
        ]
    return []


def fill_defaults(config: dict, schema: dict) -> dict:
    """Set every key the schema gives a ``default`` and ``config`` lacks, in the objects
    ``config`` holds (recursively, through ``properties``), so that rules and scripts
    index config values instead of repeating defaults. Returns ``config``, changed in
    place; call it after :func:`check_config`."""
    for key, spec in schema.get("properties", {}).items():
        if not isinstance(spec, dict):
            continue
        if key not in config and "default" in spec:
            config[key] = copy.deepcopy(spec["default"])
        if isinstance(config.get(key), dict) and "properties" in spec:
            fill_defaults(config[key], spec)
    return config


def check_config(config: dict, schema: dict) -> None:
    """Raise ConfigError listing every violation, plus the cross-key rules a schema cannot say."""
    messages = config_errors(config, schema)
    dataset = config.get("dataset", {})
    if isinstance(dataset, dict) and isinstance(dataset.get("images"), str):
        messages.extend(image_pattern_errors(dataset["images"]))
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
        messages.extend(site_layout_errors(dataset["site_layout"]))
        if dataset["source"] == "synthetic":
            demo = config.get("demo")
            if not demo:
                messages.append("config key demo: required when dataset.source is 'synthetic'")
            elif demo.get("site_size") != dataset["site_size"]:
                messages.append(
                    f"config key demo.site_size: {demo.get('site_size')} differs from dataset.site_size {dataset['site_size']}"
                )
        inference = config.get("inference") or {}
        if inference.get("plates_per_job", 1) != 1 and inference.get("shards_per_plate", 1) > 1:
            messages.append(
                f"config key inference.shards_per_plate: {inference['shards_per_plate']} parts a plate need "
                f"inference.plates_per_job 1, not {inference['plates_per_job']}"
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
        validator = StrictValidator(properties[column])
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
