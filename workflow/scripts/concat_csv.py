"""Snakemake glue: concatenate the demo plates' metadata parts into metadata.csv."""

import logging

import pandas as pd

from deemd.io import write_csv_atomic
from deemd.logs import start_rule_log


def main(parts, output, log):
    start_rule_log(log)
    # Strings throughout: the CSV is rewritten exactly, with no type guessing.
    table = pd.concat([pd.read_csv(part, dtype=str, keep_default_na=False) for part in parts], ignore_index=True)
    write_csv_atomic(table, output)
    logging.info("%d rows from %d plates", len(table), len(parts))


if "snakemake" in globals():
    main(list(snakemake.input), snakemake.output[0], snakemake.log[0])
