"""Snakemake glue: split the untreated wells into train / val / test and the treated
wells into the treated set; list every exclusion with its reason."""

import logging

import pandas as pd

from deemd.io import write_parquet_atomic
from deemd.logs import start_rule_log
from deemd.split import make_split


def main(wells_path, sites_path, qc_paths, output, params, log):
    start_rule_log(log)
    config = params["split"]
    wells = pd.read_parquet(wells_path)
    sites = pd.read_parquet(sites_path)
    qc_tables = [pd.read_parquet(path) for path in qc_paths]
    logging.info("%d wells, %d sites, %d plates; split %s", len(wells), len(sites), len(qc_tables), config)
    used, excluded, summary = make_split(
        wells, sites, qc_tables, config["sizes"], config["seed"], config["balance_classes"]
    )
    reasons = excluded.groupby(["level", "reason"]).size()
    logging.info("excluded:\n%s", reasons.to_string() if len(reasons) else "nothing")
    logging.info("summary:\n%s", summary.to_string(index=False))
    write_parquet_atomic(excluded, output["excluded"])
    write_parquet_atomic(summary, output["summary"])
    write_parquet_atomic(used, output["sites"])


if "snakemake" in globals():
    main(
        snakemake.input.wells,
        snakemake.input.sites,
        list(snakemake.input.qc),
        snakemake.output,
        snakemake.params,
        snakemake.log[0],
    )
