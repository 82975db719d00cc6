"""Snakemake glue: gather one model's inference shards; DEEMD's per-dose sign-test
intervals (R, rstatix) and ranked e(t) on the treated sites; beside them the inhibition
statistics (docs/method.md §10): per-plate control normalisation and QC, per-dose
inhibition, a 4PL per treatment and FDR-controlled hit calls."""

import logging

import pandas as pd

from deemd.efficacy import check_z, efficacy_tables, sign_test_intervals
from deemd.inhibition import TREATED, inhibition_settings, quantitative_efficacy, rank_by_hit
from deemd.io import write_parquet_atomic
from deemd.logs import start_rule_log


def read_shards(paths, model, readout) -> pd.DataFrame:
    """The inference tables of one model, each checked to hold the inhibition readout."""
    tables = []
    for path in paths:
        table = pd.read_parquet(path).drop(columns=["patch_probabilities"], errors="ignore")
        if len(table) and (readout not in table.columns or table[readout].isna().all()):
            raise ValueError(
                f"{path}: inference table of model {model} has no values of readout {readout!r}; it was written "
                "by an older infer rule or for another readout: rerun it (snakemake --forcerun infer)"
            )
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def main(inference_tables, nuclei_path, output, log, efficacy, qc, readout, model=None):
    start_rule_log(log)
    sites = read_shards(inference_tables, model, readout)
    if model is not None and "model" in sites.columns:
        other = sorted(set(sites["model"].astype(str)) - {model})
        if other:
            raise ValueError(f"inference tables of model {model} hold rows of model(s) {other}")
    if "role" not in sites.columns:
        raise ValueError(f"inference tables of model {model} have no 'role' column; rerun the infer rule")
    if "z" in sites.columns:
        check_z(sites)  # the controls' too: plate QC reads them
    treated = sites[sites["role"] == TREATED]
    zeta, confidence = efficacy["zeta"], efficacy["confidence"]
    logging.info(
        "model %s: %d treated and %d held-out control sites from %d tables; zeta %s, confidence %s",
        model, len(treated), len(sites) - len(treated), len(inference_tables), zeta, confidence,
    )
    doses, treatments = efficacy_tables(treated, zeta=zeta, conf_level=confidence)
    too_small = doses["status"] != "ok"
    logging.info(
        "DEEMD: %d doses of %d treatments; %d doses too small for an interval; %d treatments "
        "without any interval; %d effective treatments",
        len(doses), len(treatments), int(too_small.sum()),
        int(treatments["e_t"].isna().sum()), int(treatments["effective"].sum()),
    )
    for row in doses.loc[too_small].itertuples():
        logging.info("  %s at %s µM: %s", row.treatment, row.treatment_conc, row.status)

    settings = inhibition_settings(efficacy, qc)
    quantitative = quantitative_efficacy(sites, pd.read_parquet(nuclei_path), model, readout, settings, sign_test_intervals)
    plate_qc = quantitative["plate_qc"]
    logging.info("inhibition from readout %s; plate QC:\n%s", readout, plate_qc.to_string(index=False))
    for row in plate_qc[plate_qc["control_source"] != "plate"].drop_duplicates("plate_id").itertuples():
        logging.warning("plate %s: too few held-out control wells (< %d of a kind); pooled controls of its experiment used",
                        row.plate_id, qc["min_control_wells"])
    for row in plate_qc[~plate_qc["passes"]].drop_duplicates("plate_id").itertuples():
        logging.warning("plate %s fails QC (Z' on %s below %s): its treated wells are left out of hit calling",
                        row.plate_id, readout, qc["min_zprime"])
    toxic = quantitative["doses"]
    by_curve = toxic["toxic_reason"] == "viability curve"
    logging.info("%d toxic doses, %d of them by the viability curve (fitted viability relative to the compound's untoxic level < %s)",
                 int(toxic["toxic"].sum()), int(by_curve.sum()), settings["min_viability"])
    for row in toxic.loc[by_curve].itertuples():
        logging.info("  %s at %s µM: relative viability %.2f (fitted %.2f, wells' median %.2f of the infected controls' cells)",
                     row.treatment, row.treatment_conc, row.viability_relative, row.viability_fitted, row.viability_median)
    noise = quantitative["noise"]
    if noise.empty:
        logging.info("too few replicate wells for a noise trend: every well's noise is taken as equal in the curves' errors")
    else:
        logging.info("spread of well inhibition between replicate wells, by level (it shapes the curves' errors):\n%s",
                     noise.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    wells = quantitative["wells"]
    reasons = wells.loc[wells["role"] == TREATED, "reason"].replace("", "used").value_counts()
    logging.info("treated wells: %s", reasons.to_dict())

    doses = doses.merge(quantitative["doses"], on=["treatment", "treatment_conc"], how="outer")
    doses["n_wells_used"] = doses["n_wells_used"].fillna(0).astype("int64")
    doses["toxic"] = doses["toxic"].fillna(False).astype(bool)
    doses["toxic_reason"] = doses["toxic_reason"].fillna("")
    treatments = treatments.rename(columns={"rank": "deemd_rank"}).merge(quantitative["treatments"], on="treatment", how="outer")
    # A treatment whose every dose was toxic has no treated site left, so no DEEMD row.
    no_sites = treatments["n_doses"].isna()
    treatments = treatments.fillna(
        {"n_doses": 0, "n_doses_with_interval": 0, "n_effective_doses": 0, "effective": False}
    ).astype({"n_doses": "int64", "n_doses_with_interval": "int64", "n_effective_doses": "int64", "effective": bool})
    treatments.loc[no_sites, "status"] = "no treated site: every well toxic or excluded"
    treatments["deemd_rank"] = treatments["deemd_rank"].astype("Int64")
    treatments = rank_by_hit(treatments)
    logging.info(
        "%d hits (q <= %s that the inhibition at the best non-toxic dose exceeds %s); DEEMD effective: %d",
        int(treatments["hit"].sum()), settings["fdr"], settings["inhibition_bar"],
        int(treatments["effective"].fillna(False).astype(bool).sum()),
    )
    write_parquet_atomic(doses, output["doses"])
    write_parquet_atomic(wells, output["wells"])
    write_parquet_atomic(plate_qc, output["plate_qc"])
    write_parquet_atomic(treatments, output["treatments"])


if "snakemake" in globals():
    main(
        list(snakemake.input.shards),
        snakemake.input.nuclei,
        snakemake.output,
        snakemake.log[0],
        snakemake.params.efficacy,
        snakemake.params.qc,
        snakemake.params.readout,
        snakemake.wildcards.model,
    )
