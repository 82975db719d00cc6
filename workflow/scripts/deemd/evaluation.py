"""Evaluation of the trained models on the untreated test sites (docs/method.md §6): average
precision against chance, and the test sites' scores taken from the inference shards.

The inference shards hold every held-out control site, the test sites among them, scored by
the same model with the same code, so evaluation reads them instead of scoring the test
sites again. Torch-free: nothing here runs a network.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

TEST_SCORE_COLUMNS = ["site_id", "model", "label", "score", "patch_probabilities"]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """sklearn's average precision; NaN where ``labels`` hold one class only."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(average_precision_score(labels, scores))


def chance_average_precision(labels: np.ndarray) -> float:
    """The average precision of a ranking that knows nothing: the share of positives."""
    return float(np.mean(np.asarray(labels) > 0.5))


def below_chance(ap: float, labels: np.ndarray) -> bool:
    """Whether ``ap`` is below chance on ``labels``: a model that ranks the sites worse
    than a coin has learned nothing usable (or the labels backwards), whatever its loss."""
    return bool(np.isfinite(ap) and ap < chance_average_precision(labels))


def chance_verdict(what: str, ap: float, labels: np.ndarray) -> dict:
    """The columns ``chance_ap`` and ``below_chance`` of a model scored at ``ap`` on
    ``labels``, with a warning naming ``what`` (e.g. "model M: test AP") in the log when
    it is below chance: that model has not trained validly and is not a result."""
    chance = chance_average_precision(labels)
    below = below_chance(ap, labels)
    if below:
        logging.getLogger("deemd.evaluation").warning(
            "%s %.3f is below chance (%.3f, the share of infected sites): the model has not learned the classes "
            "(check the split and train.batch_size / sites_per_step) and is not a result", what, ap, chance
        )
    return {"chance_ap": chance, "below_chance": below}


def evaluation_scores(split: pd.DataFrame, shards: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Per model, the untreated test sites of ``split`` (set "test", in its order) with
    their label and the ``score`` and ``patch_probabilities`` (None for W) of the inference
    ``shards`` (site_id, model, score, patch_probabilities). A test site a model's shards
    lack is a ValueError naming the model and the site."""
    test = split.loc[split["set"] == "test", ["site_id", "label"]].reset_index(drop=True)
    frames = []
    for model in models:
        scored = shards.loc[shards["model"] == model, ["site_id", "score", "patch_probabilities"]]
        if scored["site_id"].duplicated().any():
            raise ValueError(f"model {model}: site {scored.loc[scored['site_id'].duplicated(), 'site_id'].iloc[0]} is in two shards")
        frame = test.merge(scored, on="site_id", how="left", validate="one_to_one")
        missing = frame["score"].isna()
        if missing.any():
            raise ValueError(f"model {model}: {int(missing.sum())} test site(s) not in its inference shards, e.g. "
                             f"{frame.loc[missing, 'site_id'].iloc[0]}; rerun the infer rule")
        frames.append(frame.assign(model=model, label=frame["label"].astype(int)))
    if not frames:
        return pd.DataFrame(columns=TEST_SCORE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[TEST_SCORE_COLUMNS]
