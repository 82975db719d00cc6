"""Snakemake glue: extract metadata.csv from the metadata archive (rule unpack_metadata)."""

import csv

from deemd.download import extract_single_member
from deemd.logs import start_rule_log


def main(archive: str, member: str, output: str, log: str | None = None) -> None:
    """Extract ``member`` (e.g. ``metadata.csv``, found at any depth) to ``output``, atomically."""
    logger = start_rule_log(log)
    logger.info("extracting %s from %s -> %s", member, archive, output)
    extract_single_member(archive, member, output)
    with open(output, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = sum(1 for _ in reader)
    logger.info("%s: %d rows, columns: %s", output, rows, ", ".join(header))


if "snakemake" in globals():
    main(
        archive=snakemake.input[0],
        member=snakemake.params.member,
        output=snakemake.output[0],
        log=snakemake.log[0],
    )
