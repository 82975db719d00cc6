"""Snakemake glue: gather one model's per-plate inference tables, compute the per-dose
sign-test intervals (R, rstatix) and the ranked treatment table."""

import logging

import pandas as pd

from deemd.efficacy import efficacy_tables
from deemd.io import write_parquet_atomic


def main(inference_tables, output, log, efficacy, model=None):
    logging.basicConfig(filename=log, level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    sites = pd.concat([pd.read_parquet(path) for path in inference_tables], ignore_index=True)
    if model is not None and "model" in sites.columns:
        other = sorted(set(sites["model"].astype(str)) - {model})
        if other:
            raise ValueError(f"inference tables of model {model} hold rows of model(s) {other}")
    zeta, confidence = efficacy["zeta"], efficacy["confidence"]
    logging.info(
        "model %s: %d treated sites from %d tables; zeta %s, confidence %s",
        model, len(sites), len(inference_tables), zeta, confidence,
    )
    doses, treatments = efficacy_tables(sites, zeta=zeta, conf_level=confidence)
    too_small = doses["status"] != "ok"
    logging.info(
        "%d doses of %d treatments; %d doses too small for an interval; %d treatments "
        "without any interval; %d effective treatments",
        len(doses), len(treatments), int(too_small.sum()),
        int(treatments["e_t"].isna().sum()), int(treatments["effective"].sum()),
    )
    for row in doses.loc[too_small].itertuples():
        logging.info("  %s at %s µM: %s", row.treatment, row.treatment_conc, row.status)
    write_parquet_atomic(doses, output["doses"])
    write_parquet_atomic(treatments, output["treatments"])


if "snakemake" in globals():
    main(
        list(snakemake.input),
        snakemake.output,
        snakemake.log[0],
        snakemake.params.efficacy,
        snakemake.wildcards.model,
    )
