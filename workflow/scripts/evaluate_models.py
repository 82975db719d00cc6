"""Snakemake glue: average precision and precision-recall curves of the trained models
on the untreated test sites, whose scores the inference shards already hold
(deemd/evaluation.py)."""

import logging

import pandas as pd

from deemd.evaluation import average_precision, chance_verdict, evaluation_scores
from deemd.io import write_parquet_atomic, write_table_atomic
from deemd.logs import start_rule_log
from deemd.plots import pr_curves_figure, save_figure_atomic

SHARD_COLUMNS = ["site_id", "model", "score", "patch_probabilities"]


def main(shard_paths, models, split_path, eta, output, log):
    start_rule_log(log)
    shards = pd.concat([pd.read_parquet(path, columns=SHARD_COLUMNS) for path in shard_paths], ignore_index=True)
    scores = evaluation_scores(pd.read_parquet(split_path), shards, models)
    table = []
    for model in models:
        own = scores[scores["model"] == model]
        labels, values = own["label"].to_numpy(), own["score"].to_numpy()
        ap = average_precision(labels, values)
        logging.info("model %s: AP %.4f on %d test sites", model, ap, len(own))
        table.append({"model": model, "average_precision": ap, **chance_verdict(f"model {model}: test AP", ap, labels),
                      "n_sites": len(own), "n_infected": int((labels > 0.5).sum()),
                      "accuracy_at_eta": float(((values >= eta) == (labels > 0.5)).mean())})
    ap = pd.DataFrame(table)
    write_parquet_atomic(scores, output["scores"])
    write_table_atomic(ap, output["table"], float_format="%.4f")
    save_figure_atomic(pr_curves_figure(scores, ap), output["figure"], dpi=150)


if "snakemake" in globals():
    main(
        list(snakemake.input.shards),
        snakemake.params.models,
        snakemake.input.split,
        snakemake.params.eta,
        snakemake.output,
        snakemake.log[0],
    )
