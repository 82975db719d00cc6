"""Snakemake glue: one plate's store exported as an OME-NGFF 0.4 HCS plate (deemd/hcs.py)."""

import logging

from deemd.hcs import tree_size, write_hcs_plate
from deemd.io import atomic_directory
from deemd.logs import start_rule_log
from deemd.store import open_plate_store


def main(store_path, output, plate_id, min_level_size, log):
    start_rule_log(log)
    store = open_plate_store(store_path)
    # Written into {output}.tmp and renamed at the end: a killed job never leaves a plate
    # that looks complete.
    with atomic_directory(output, create=False) as tmp:
        summary = write_hcs_plate(store, tmp, plate_id, min_level_size=min_level_size)
    files, size = tree_size(output)
    logging.info("plate %s: %d wells, %d fields of %s, pyramid levels %s px; %d files, %d bytes",
                 plate_id, summary["wells"], summary["fields"], summary["field_shape"], summary["levels"], files, size)


if "snakemake" in globals():
    main(
        snakemake.input.store,
        snakemake.output[0],
        snakemake.wildcards.plate_id,
        snakemake.params.min_level_size,
        snakemake.log[0],
    )
