"""Unit tests of deemd.evaluation: average precision against chance, and the test sites'
scores read from the inference shards."""

import logging

import numpy as np
import pandas as pd
import pytest

from deemd.evaluation import TEST_SCORE_COLUMNS, average_precision, below_chance, chance_average_precision, chance_verdict, evaluation_scores


def test_average_precision():
    assert average_precision(np.array([0, 1, 1]), np.array([0.1, 0.9, 0.8])) == 1.0
    assert np.isnan(average_precision(np.array([1, 1]), np.array([0.1, 0.2])))


def test_chance_level_is_the_share_of_positives_and_reversed_rankings_fall_below_it():
    assert chance_average_precision(np.array([0, 0, 0, 1])) == 0.25
    labels = np.array([0, 0, 1, 1])
    backwards = average_precision(labels, np.array([0.9, 0.8, 0.2, 0.1]))  # (1/3 + 2/4) / 2
    assert below_chance(backwards, labels) and not below_chance(1.0, labels)
    assert not below_chance(float("nan"), labels)  # one class: no verdict


def test_chance_verdict_gives_the_columns_and_warns_only_below_chance(caplog):
    labels = np.array([0, 0, 1, 1])
    with caplog.at_level(logging.WARNING):
        assert chance_verdict("model W: test AP", 1.0, labels) == {"chance_ap": 0.5, "below_chance": False}
        assert not caplog.records
        assert chance_verdict("model W: test AP", 0.42, labels) == {"chance_ap": 0.5, "below_chance": True}
    assert "model W: test AP 0.420 is below chance (0.500" in caplog.text


def split_and_shards():
    """Six sites: two test sites (one of each label), the rest in other sets; shards of M
    (patch probabilities) and W (none) holding every held-out site, in another order."""
    split = pd.DataFrame({
        "site_id": ["s1", "s2", "s3", "s4", "s5", "s6"],
        "set": ["train", "test", "val", "test", "treated", "train"],
        "label": [1, 0, 1, 1, np.nan, 0],
    })
    rows = []
    for model, maps in (("M", True), ("W", False)):
        for site, score in (("s5", 0.5), ("s4", 0.9), ("s3", 0.7), ("s2", 0.1)):
            rows.append({"site_id": site, "model": model, "score": score,
                         "patch_probabilities": np.full(4, score, dtype=np.float32) if maps else None})
    return split, pd.DataFrame(rows)


def test_test_scores_come_from_the_shards_in_split_order():
    split, shards = split_and_shards()
    scores = evaluation_scores(split, shards, ["M", "W"])
    assert scores.columns.tolist() == TEST_SCORE_COLUMNS
    assert scores[["site_id", "model", "label", "score"]].values.tolist() == [
        ["s2", "M", 0, 0.1], ["s4", "M", 1, 0.9], ["s2", "W", 0, 0.1], ["s4", "W", 1, 0.9]]
    assert scores.loc[0, "patch_probabilities"].tolist() == [pytest.approx(0.1)] * 4
    assert scores.loc[scores["model"] == "W", "patch_probabilities"].isna().all()
    assert average_precision(scores["label"], scores["score"]) == 1.0


def test_a_test_site_missing_from_the_shards_is_named():
    split, shards = split_and_shards()
    with pytest.raises(ValueError, match="model W: 1 test site\\(s\\) not in its inference shards, e.g. s4"):
        evaluation_scores(split, shards[~((shards["model"] == "W") & (shards["site_id"] == "s4"))], ["M", "W"])
    with pytest.raises(ValueError, match="model M: site s2 is in two shards"):
        evaluation_scores(split, pd.concat([shards, shards.iloc[[3]]]), ["M"])
