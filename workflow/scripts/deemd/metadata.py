"""The sites table: metadata.csv (RxRx19a columns, or a facility's CSV mapped onto them)
normalised, checked and filtered, one row per site."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pandas as pd

from deemd.store import layout_sites
from deemd.validate import MetadataError, metadata_errors

COLUMNS = [
    "site_id",
    "well_id",
    "cell_type",
    "experiment",
    "plate",
    "well",
    "site",
    "disease_condition",
    "treatment",
    "treatment_conc",
    "SMILES",
]
INFECTED = "Active SARS-CoV-2"
MOCK = "Mock"
UV = "UV Inactivated SARS-CoV-2"
CONDITIONS = (INFECTED, MOCK, UV)


def duplicate_column_errors(names: list[str], source: str) -> list[str]:
    """A header naming a column twice (pandas would silently rename the second 'x.1')."""
    positions: dict[str, list[int]] = {}
    for position, name in enumerate(names, start=1):
        positions.setdefault(name, []).append(position)
    return [
        f"{source}, line 1: column {name!r} appears {len(where)} times (columns {where}); each column needs its own name"
        for name, where in positions.items()
        if len(where) > 1
    ]


def wrong_separator(header: list[str]) -> str | None:
    """The separator (';' or a tab) a CSV header read with ',' seems to use instead: set
    where the header is one column holding it (a spreadsheet's 'CSV' in some locales),
    else None."""
    if len(header) == 1:
        for separator in (";", "\t"):
            if separator in header[0]:
                return separator
    return None


def read_metadata_csv(path: str) -> pd.DataFrame:
    """Read a metadata CSV as strings (no type guessing: that is the schema's job).
    An empty file, a header naming a column twice or a file separated by ';' or tabs
    instead of commas is a MetadataError naming the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except UnicodeDecodeError as error:
        raise MetadataError(f"{path}: cannot be read as CSV: {error}") from error
    if not header or not any(name.strip() for name in header):
        raise MetadataError(f"{path}: empty file; expected a header line of column names and one row per imaged site")
    separator = wrong_separator(header)
    if separator:
        raise MetadataError(
            f"{path}, line 1: the header is one column {header[0]!r}: the file seems to be separated by "
            f"{separator!r}; deemd reads comma-separated CSV (save it with ',' between the columns)"
        )
    duplicates = duplicate_column_errors(header, path)
    if duplicates:
        raise MetadataError("invalid metadata:\n  " + "\n  ".join(duplicates))
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MetadataError(f"{path}: cannot be read as CSV: {error}") from error


def map_columns(
    raw: pd.DataFrame, columns: dict | None, values: dict | None, defaults: dict | None, source: str
) -> pd.DataFrame:
    """Rename a CSV's columns to the standard ones, translate its vocabularies and fill
    columns it lacks from ``defaults``; site_id and well_id are derived when absent."""
    columns, values, defaults = columns or {}, values or {}, defaults or {}
    duplicates = duplicate_column_errors([str(name) for name in raw.columns], source)
    if duplicates:
        raise MetadataError("invalid metadata:\n  " + "\n  ".join(duplicates))
    missing = [name for name in columns.values() if name not in raw.columns]
    if missing:
        raise MetadataError(f"{source}: column(s) {missing} named in dataset.columns are not in the CSV {list(raw.columns)}")
    messages = []
    targets: dict[str, list[str]] = {}
    for standard, name in columns.items():
        targets.setdefault(name, []).append(standard)
    for name, standards in targets.items():
        if len(standards) > 1:
            messages.append(f"{source}: dataset.columns maps the CSV column {name!r} to {len(standards)} columns {standards}")
    for standard, name in columns.items():
        # A CSV column already named like the target would give two columns of one name.
        if standard != name and standard in raw.columns and standard not in columns.values():
            messages.append(
                f"{source}: dataset.columns maps {name!r} to {standard!r}, but the CSV already has a column "
                f"{standard!r}; drop one of them or map that column too"
            )
    if messages:
        raise MetadataError("invalid dataset.columns:\n  " + "\n  ".join(messages))
    table = raw.rename(columns={csv: std for std, csv in columns.items()})
    for name, value in defaults.items():
        if name not in table.columns:
            table[name] = str(value)
    for name, mapping in values.items():
        if name in table.columns:
            table[name] = table[name].map(lambda v, m=mapping: m.get(v, v) if isinstance(v, str) else v)
    if "treatment_conc" not in table.columns:
        table["treatment_conc"] = pd.NA
    for name in ("treatment", "SMILES"):
        if name not in table.columns:
            table[name] = pd.NA
    if "well_id" not in table.columns and {"experiment", "plate", "well"} <= set(table.columns):
        table["well_id"] = table["experiment"] + "_" + table["plate"].astype(str) + "_" + table["well"]
    if "site_id" not in table.columns and {"well_id", "site"} <= set(table.columns):
        table["site_id"] = table["well_id"] + "_" + table["site"].astype(str)
    return table


def plates_are_numbers(plates: pd.Series) -> bool:
    """Whether a plate column (text) holds plate numbers (every value an integer, as in
    RxRx19a) rather than barcodes, which then stay text. A leading zero ('01') makes the
    column text: the number 1 would name its images img/1/ instead of img/01/."""
    text = plates.dropna().astype(str).str.strip()
    return bool(text.str.fullmatch(r"(0|[1-9]\d*)(\.0*)?").all())


def plate_spelling_errors(table: pd.DataFrame, source: str) -> list[str]:
    """Text plates of one experiment that differ only by leading zeros ('1' and '01'):
    most likely one plate spelt two ways, which would become two plates."""
    plates = table[["experiment", "plate"]].dropna().astype(str).drop_duplicates()
    plates = plates[plates["plate"].str.fullmatch(r"\d+")]
    messages = []
    for (experiment, _), group in plates.groupby([plates["experiment"], plates["plate"].str.lstrip("0")], sort=True):
        if len(group) > 1:
            spellings = sorted(group["plate"])
            named = (table["experiment"] == experiment) & (table["plate"].astype(str) == spellings[1])
            row = int(np.flatnonzero(named.to_numpy())[0])
            messages.append(
                f"{source}, line {row + 2}, column 'plate': value {spellings[1]!r}: experiment {experiment!r} has plates "
                f"{spellings}, which differ only by leading zeros; spell each plate one way"
            )
    return messages


def coerce_types(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Turn the numeric columns into numbers; a value that is not one is an error naming
    its line, column and value (the schema then checks ranges and vocabularies). The
    plate column becomes integers where every plate is a number without leading zeros
    (plates_are_numbers), and stays text (barcodes, '01') otherwise."""
    table = table.copy()
    numeric = (("site", "int"), ("treatment_conc", "float"))
    if plates_are_numbers(table["plate"]):
        numeric = (("plate", "int"),) + numeric
    for column, kind in numeric:
        text = table[column]
        numbers = pd.to_numeric(text, errors="coerce")
        bad = numbers.isna() & text.notna()
        if kind == "int":
            bad |= numbers.notna() & (numbers != np.round(numbers))
        # inf (or 1e999) is a number to pandas, but no concentration or index.
        infinite = numbers.notna() & ~np.isfinite(numbers.astype(float))
        bad |= infinite
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            what = "an integer" if kind == "int" else "a number"
            if infinite.iloc[row] or text.iloc[row].strip().lower() == "nan":
                what = "a finite number"
            raise MetadataError(f"{source}, line {row + 2}, column {column!r}: value {text.iloc[row]!r} is not {what}")
        table[column] = numbers.astype("Int64") if kind == "int" else numbers.astype(float)
    return table


def site_errors(table: pd.DataFrame, site_layout: list[list[int]], source: str) -> list[str]:
    """A site number that ``site_layout`` (rows of site numbers, 0 for a gap) does not
    place, as an error naming the first such line, the column and the value."""
    sites = layout_sites(site_layout)
    outside = ~table["site"].isin(sites)
    if not outside.any():
        return []
    row = int(np.flatnonzero(outside.to_numpy())[0])
    return [
        f"{source}, line {row + 2}, column 'site': value {table['site'].iloc[row]} is not a site of "
        f"dataset.site_layout {site_layout} (sites {sites[0]}..{sites[-1]}); {int(outside.sum())} such row(s)"
    ]


def consistency_errors(table: pd.DataFrame, source: str, max_errors: int = 20) -> list[str]:
    """Rules across columns and rows that a per-row schema cannot state."""
    messages = []

    def report(mask: pd.Series, text: str) -> None:
        if mask.any() and len(messages) < max_errors:
            row = int(np.flatnonzero(mask.to_numpy())[0])
            messages.append(f"{source}, line {row + 2}: {text} (site_id {table['site_id'].iloc[row]!r}); {int(mask.sum())} such row(s)")

    treated = table["treatment"].notna()
    report(treated & table["treatment_conc"].isna(), "treated site without treatment_conc")
    report(~treated & table["treatment_conc"].notna(), "treatment_conc given but treatment is empty")
    report(table["site_id"].duplicated(keep="first"), "site_id appears more than once")
    report(table.duplicated(["experiment", "plate", "well", "site"], keep="first"), "the same experiment, plate, well and site appear twice")
    per_well = table.groupby("well_id")[["disease_condition", "treatment", "treatment_conc"]].nunique(dropna=False)
    mixed = table["well_id"].map((per_well > 1).any(axis=1))
    report(mixed, "the sites of one well disagree on condition, treatment or concentration")
    if len(messages) < max_errors:
        messages += well_id_errors(table, source)
    return messages


def well_id_errors(table: pd.DataFrame, source: str) -> list[str]:
    """well_id and (experiment, plate, well) must name the same wells, one to one: later
    steps join on either. A row is reported where it disagrees with the most common
    pairing of its well (so the odd row is named, not its well's first row)."""
    key = table["experiment"].astype(str) + "/" + table["plate"].astype(str) + "/" + table["well"].astype(str)
    pairs = pd.DataFrame({"key": key, "well_id": table["well_id"]}).value_counts().reset_index()
    usual_id = pairs.drop_duplicates("key").set_index("key")["well_id"]
    usual_key = pairs.drop_duplicates("well_id").set_index("well_id")["key"]
    odd_id = table["well_id"] != key.map(usual_id)
    shared_id = (key != table["well_id"].map(usual_key)) & ~odd_id
    messages = []
    for mask, text in (
        (odd_id, "the other sites of {key} have well_id {other!r}"),
        (shared_id, "well_id {well_id!r} also names {other}"),
    ):
        if mask.any():
            row = int(np.flatnonzero(mask.to_numpy())[0])
            well_id, row_key = table["well_id"].iloc[row], key.iloc[row]
            other = usual_id[row_key] if "{key}" in text else usual_key[well_id]
            messages.append(
                f"{source}, line {row + 2}, column 'well_id': value {well_id!r} disagrees with experiment/plate/well "
                f"{row_key}: " + text.format(key=row_key, other=other, well_id=well_id) + f"; {int(mask.sum())} such row(s)"
            )
    return messages


# Concentrations of one treatment closer than this (relative) are one dose: a CSV written
# from computed values carries float noise (3 and 3.0000001) that would split a dose.
DOSE_RELATIVE_TOLERANCE = 1e-6


def strip_values(raw: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[str]]:
    """Remove surrounding whitespace (spaces, tabs, no-break spaces) from every text value,
    so that 'DEMO-001 ' and 'DEMO-001' are one treatment; a value of only whitespace
    becomes empty. No identifier means something else for a trailing space, and where two
    sites or wells become one the duplicate checks name them.

    Returns the table and a note per column changed (file, count, first line and value)."""
    table = raw.copy()
    notes = []
    for column in table.columns:
        values = table[column]
        if not pd.api.types.is_object_dtype(values) and not pd.api.types.is_string_dtype(values):
            continue
        # .str gives NaN for a value that is no text (a number in a built table): keep it.
        stripped = values.str.strip()
        stripped = stripped.where(stripped.notna(), values)
        changed = values.notna() & (stripped != values)
        if changed.any():
            row = int(np.flatnonzero(changed.to_numpy())[0])
            notes.append(
                f"{source}, column {column!r}: surrounding spaces removed from {int(changed.sum())} value(s), "
                f"first line {row + 2}: {values.iloc[row]!r}"
            )
            table[column] = stripped.where(stripped != "", np.nan)
    return table, notes


def dose_groups(concentrations: np.ndarray, relative_tolerance: float = DOSE_RELATIVE_TOLERANCE) -> np.ndarray:
    """A group number for each of a treatment's sorted distinct concentrations (> 0):
    a group starts at its smallest value and holds the values within
    ``relative_tolerance`` of it (so a group never spans more than that)."""
    groups = np.zeros(len(concentrations), dtype=int)
    start = concentrations[0] if len(concentrations) else 0.0
    for index in range(1, len(concentrations)):
        if concentrations[index] > start * (1 + relative_tolerance):
            start = concentrations[index]
            groups[index] = groups[index - 1] + 1
        else:
            groups[index] = groups[index - 1]
    return groups


def merge_close_doses(
    table: pd.DataFrame, source: str, relative_tolerance: float = DOSE_RELATIVE_TOLERANCE
) -> tuple[pd.DataFrame, list[str]]:
    """Make a treatment's concentrations that agree within ``relative_tolerance``
    (dose_groups) one dose: each becomes its group's most common value (the smaller one
    on a tie), so the spelling most rows use wins. Concentrations must be finite and > 0
    (the schema's check).

    Returns the table and a note per merged group (treatment, values, lines changed)."""
    treated = table[["treatment", "treatment_conc"]].dropna()
    counts = treated.value_counts().sort_index()
    table = table.copy()
    notes = []
    for treatment, per_dose in counts.groupby(level=0, sort=True):
        if len(per_dose) < 2:
            continue
        concentrations = per_dose.index.get_level_values(1).to_numpy(dtype=float)
        groups = dose_groups(concentrations, relative_tolerance)
        for group in np.unique(groups):
            members = np.flatnonzero(groups == group)
            if len(members) < 2:
                continue
            best = min(members, key=lambda i: (-int(per_dose.iloc[i]), concentrations[i]))
            others = [concentrations[i] for i in members if i != best]
            changed = (table["treatment"] == treatment) & table["treatment_conc"].isin(others)
            row = int(np.flatnonzero(changed.to_numpy())[0])
            notes.append(
                f"{source}: treatment {treatment!r}: concentrations {[float(c) for c in concentrations[members]]} agree "
                f"within {relative_tolerance:g} (relative) and are one dose, {float(concentrations[best])!r}; "
                f"{int(changed.sum())} row(s) changed, first line {row + 2}: {float(table['treatment_conc'].iloc[row])!r}"
            )
            table.loc[changed, "treatment_conc"] = concentrations[best]
    return table, notes


def build_sites_table(
    raw: pd.DataFrame,
    schema: dict,
    source: str,
    columns: dict | None = None,
    values: dict | None = None,
    defaults: dict | None = None,
    cell_types: list | None = None,
    experiments: list | None = None,
    site_layout: list[list[int]] | None = None,
    notes: list[str] | None = None,
) -> pd.DataFrame:
    """Normalise, validate and filter a raw metadata table into the sites table.

    Adds ``plate_id`` (experiment_plate), the unit of work of the workflow; every site
    must be one of ``site_layout`` (dataset.site_layout) where it is given. Surrounding
    spaces of every value are removed (strip_values) and a treatment's concentrations
    that agree within DOSE_RELATIVE_TOLERANCE are one dose (merge_close_doses); what
    either changed is appended to ``notes`` (for the rule's log) where it is a list.
    Raises MetadataError naming file, line, column and value on the first batch of problems.
    """
    notes = [] if notes is None else notes
    if raw.empty:
        raise MetadataError(f"{source}: no rows, only the header {list(raw.columns)}; expected one row per imaged site")
    raw, stripped = strip_values(raw, source)
    notes.extend(stripped)
    table = map_columns(raw, columns, values, defaults, source)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise MetadataError(f"{source}: missing column(s) {missing}; map them with dataset.columns or dataset.defaults")
    table = coerce_types(table[COLUMNS], source)
    messages = metadata_errors(table, schema, source)
    if not messages:
        messages = plate_spelling_errors(table, source)
    if not messages and site_layout is not None:
        messages = site_errors(table, site_layout, source)
    if not messages:
        table, merged = merge_close_doses(table, source)
        notes.extend(merged)
        messages = consistency_errors(table, source)
    if messages:
        raise MetadataError("invalid metadata:\n  " + "\n  ".join(messages))
    if cell_types:
        table = table[table["cell_type"].isin(cell_types)]
    if experiments:
        table = table[table["experiment"].isin(experiments)]
    if table.empty:
        raise MetadataError(f"{source}: no site left after selecting cell types {cell_types} and experiments {experiments}")
    table = table.assign(plate_id=table["experiment"] + "_" + table["plate"].astype(str))
    table = table.sort_values(["plate_id", "well", "site"], kind="stable").reset_index(drop=True)
    return table


def _control_check(sites: pd.DataFrame, control: pd.Series, source: str, kind: str, needed_by: str) -> tuple[list[str], list[str]]:
    """(errors, pooled) of one kind of control wells (``control``: a mask of the sites):
    an error per experiment none of whose plates has one, and the plate_ids without one
    whose experiment has some."""
    with_controls = set(sites.loc[control, "plate_id"])
    errors, pooled = [], []
    for experiment, plates in sites.groupby("experiment", sort=True)["plate_id"]:
        plates = sorted(set(plates))
        lacking = [plate for plate in plates if plate not in with_controls]
        if len(lacking) == len(plates):
            errors.append(f"{source}: experiment {experiment!r} (plate(s) {plates}) has no untreated {kind} well (treatment empty); {needed_by}")
        else:
            pooled += lacking
    return errors, pooled


def infected_control_check(sites: pd.DataFrame, source: str) -> tuple[list[str], list[str]]:
    """Which plates of a sites table lack untreated Active SARS-CoV-2 wells, the reference
    of the toxicity flag (deemd.nuclei.flag_wells).

    Returns (errors, pooled): an error per experiment none of whose plates has one (no
    reference at all), and the plate_ids that have none themselves but whose experiment
    does (flag_wells compares them with the experiment's pooled controls).
    """
    control = (sites["disease_condition"] == INFECTED) & sites["treatment"].isna()
    return _control_check(sites, control, source, repr(INFECTED),
                          "the toxicity flag and training need them as the infected reference")


def noninfected_control_check(sites: pd.DataFrame, source: str) -> tuple[list[str], list[str]]:
    """Which plates of a sites table lack untreated Mock or UV-inactivated wells, the
    non-infected reference of the inhibition (deemd.inhibition.control_references: the
    plate's own, else its experiment's pooled). Returns (errors, pooled) as
    infected_control_check: an experiment without any cannot be normalised, and the run
    would fail at the efficacy step, after training and inference."""
    control = sites["disease_condition"].isin([MOCK, UV]) & sites["treatment"].isna()
    return _control_check(sites, control, source, f"{MOCK!r} or {UV!r}",
                          "percent inhibition needs them as its 0 % reference and training as its negatives")


# What a plate's store depends on: its sites, where their images are, and which wells are
# untreated (a 16-bit plate's intensity reference, deemd.stitch).
STORE_COLUMNS = ["site_id", "well_id", "experiment", "plate", "well", "site"]


def plate_digests(sites: pd.DataFrame, columns: list[str] | None = None) -> dict[str, str]:
    """A short content hash of each plate's rows (``columns`` of them; default COLUMNS),
    so that a per-plate job reruns exactly when its own plate's metadata changes (used as
    a Snakemake param)."""
    row_hashes = pd.util.hash_pandas_object(sites[COLUMNS if columns is None else columns], index=False).to_numpy()
    digests = {}
    for plate_id, rows in sites.groupby("plate_id", sort=True).indices.items():
        digests[plate_id] = hashlib.sha1(row_hashes[rows].tobytes()).hexdigest()[:16]
    return digests


def store_digests(sites: pd.DataFrame) -> dict[str, str]:
    """plate_digests of what each plate's store depends on (STORE_COLUMNS and whether each
    site's well is untreated): a treated well's new treatment or concentration reruns the
    plate's nucleus count, which records them, but not its stitch."""
    return plate_digests(sites.assign(untreated=sites["treatment"].isna()), [*STORE_COLUMNS, "untreated"])


def well_table(sites: pd.DataFrame) -> pd.DataFrame:
    """One row per well of a sites table, in store order (plate_id, well)."""
    wells = sites.groupby(["plate_id", "well"], sort=True, as_index=False).agg(
        well_id=("well_id", "first"),
        experiment=("experiment", "first"),
        plate=("plate", "first"),
        cell_type=("cell_type", "first"),
        disease_condition=("disease_condition", "first"),
        treatment=("treatment", "first"),
        treatment_conc=("treatment_conc", "first"),
        n_sites=("site", "size"),
    )
    return wells
