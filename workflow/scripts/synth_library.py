"""Snakemake glue: the demo screen's compound library with its hidden truth (CSV)."""

import logging
from pathlib import Path

from deemd.io import write_csv_atomic
from deemd.logs import start_rule_log
from deemd.worlds import world_module, world_name


def main(params: dict, wildcards: dict, output: dict, log: str) -> None:
    start_rule_log(log)
    world = world_name(params["demo"])
    library = world_module(params["demo"]).make_library(params["demo"])
    path = Path(output["library"] if "library" in output else list(output.values())[0])
    write_csv_atomic(library, path, float_format="%.6g")  # a kill never leaves a complete-looking library
    logging.info("world %s, %d compounds: %s", world, len(library), library["kind"].value_counts().to_dict())


if "snakemake" in globals():
    main(
        dict(snakemake.params.items()),
        dict(snakemake.wildcards.items()),
        {"library": snakemake.output[0], **dict(snakemake.output.items())},
        snakemake.log[0],
    )
