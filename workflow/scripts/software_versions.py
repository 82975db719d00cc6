"""Snakemake glue: the versions of one conda env's packages (Python, and R's through
Rscript), as JSON for the report's metadata (deemd/run_metadata.py)."""

from deemd.io import write_json_atomic
from deemd.logs import start_rule_log
from deemd.run_metadata import python_versions, r_versions


def main(output, python_packages, r_packages, log):
    logger = start_rule_log(log)
    versions = python_versions(python_packages)
    if r_packages:
        versions.update(r_versions(r_packages))
    logger.info("versions: %s", versions)
    write_json_atomic(versions, output)


if "snakemake" in globals():
    main(snakemake.output[0], snakemake.params.python, snakemake.params.r, snakemake.log[0])
