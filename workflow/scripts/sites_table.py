"""Snakemake glue: metadata CSV -> validated, normalised sites table (Parquet)."""

import logging

from deemd.io import write_parquet_atomic
from deemd.logs import start_rule_log
from deemd.metadata import build_sites_table, infected_control_check, noninfected_control_check, read_metadata_csv
from deemd.validate import MetadataError, load_schema


def main(metadata_path, schema_path, output, dataset, log):
    start_rule_log(log)
    raw = read_metadata_csv(metadata_path)
    logging.info("%s: %d rows", metadata_path, len(raw))
    notes = []
    try:
        sites = build_sites_table(
            raw,
            load_schema(schema_path),
            source=metadata_path,
            columns=dataset.get("columns"),
            values=dataset.get("values"),
            defaults=dataset.get("defaults"),
            cell_types=dataset.get("cell_types"),
            experiments=dataset.get("experiments"),
            site_layout=dataset["site_layout"],
            notes=notes,
        )
    finally:
        # What was normalised (spaces, close doses) is logged even when a later check
        # fails: two site_ids made one by stripping fail as duplicates, and this says why.
        for note in notes:
            logging.warning("%s", note)
    logging.info("%d sites on %d plates after filtering", len(sites), sites["plate_id"].nunique())
    errors, pooled = infected_control_check(sites, metadata_path)
    noninfected_errors, noninfected_pooled = noninfected_control_check(sites, metadata_path)
    if errors + noninfected_errors:
        raise MetadataError("invalid metadata:\n  " + "\n  ".join(errors + noninfected_errors))
    for plate_id in pooled:
        logging.warning("plate %s has no untreated infected well: its toxicity reference is its experiment's", plate_id)
    for plate_id in noninfected_pooled:
        logging.warning("plate %s has no untreated Mock or UV well: its inhibition's 0 %% reference is its experiment's pooled controls",
                        plate_id)
    write_parquet_atomic(sites, output)


if "snakemake" in globals():
    main(snakemake.input.metadata, snakemake.input.schema, snakemake.output[0], snakemake.params.dataset, snakemake.log[0])
