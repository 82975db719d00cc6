"""Unit tests of deemd.sharding: the infer jobs of a model and the wells of a plate's parts."""

import pandas as pd
import pytest

from deemd.sharding import inference_batches, shard_rows

PLATES = ["E_1", "E_2", "E_3"]


def test_one_job_per_plate_part_keeps_the_shard_names():
    assert inference_batches(PLATES[:2], 1, 2) == {
        "E_1.part0": [["E_1", 0]], "E_1.part1": [["E_1", 1]], "E_2.part0": [["E_2", 0]], "E_2.part1": [["E_2", 1]]}


def test_every_plate_in_one_job_or_n_plates_a_job():
    assert inference_batches(PLATES, 0, 1) == {"all_plates": [["E_1", 0], ["E_2", 0], ["E_3", 0]]}
    assert inference_batches(PLATES, 2, 1) == {"plates1": [["E_1", 0], ["E_2", 0]], "plates2": [["E_3", 0]]}
    assert inference_batches(PLATES, 5, 1) == {"plates1": [["E_1", 0], ["E_2", 0], ["E_3", 0]]}
    assert inference_batches([], 0, 1) == {} and inference_batches([], 1, 1) == {}
    # Every shard is in exactly one job, whatever the grouping.
    for per_job in (0, 1, 2, 3):
        shards = [tuple(s) for batch in inference_batches(PLATES, per_job, 1).values() for s in batch]
        assert sorted(shards) == [(plate, 0) for plate in PLATES]


def test_parts_of_a_plate_need_one_plate_a_job():
    with pytest.raises(ValueError, match="2 parts a plate need one plate a job, not 0"):
        inference_batches(PLATES, 0, 2)
    with pytest.raises(ValueError, match="need >= 0 and >= 1"):
        inference_batches(PLATES, -1, 1)


def test_shard_rows_deals_whole_wells():
    table = pd.DataFrame({"well": ["A01", "A01", "A02", "B01", "B01", "B02"], "site": [1, 2, 1, 1, 2, 1]})
    parts = [shard_rows(table, i, 3) for i in range(3)]
    assert sorted(sum((p["well"].tolist() for p in parts), [])) == sorted(table["well"])
    assert [sorted(p["well"].unique()) for p in parts] == [["A01", "B02"], ["A02"], ["B01"]]
    with pytest.raises(ValueError, match="outside 0..2"):
        shard_rows(table, 3, 3)
