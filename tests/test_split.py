import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from deemd.channel_stats import channel_histograms, stats_from_histograms, training_channel_stats
from deemd.metadata import INFECTED, MOCK, UV, well_table
from deemd.split import (
    assign_sets,
    balance_classes,
    dropped_sites,
    largest_remainder,
    make_split,
    screen_wells,
    set_shares,
    split_sites,
    summarise,
    usable_site_counts,
    well_indices,
    well_labels,
)
from deemd.store import create_plate_store, open_plate_store, site_slices
from workflow_utils import TINY

LAYOUT = [[1, 2], [3, 4]]
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def well_names(n, start=0):
    return [f"{'ABCDEFGHIJKLMNOP'[i // 24]}{i % 24 + 1:02d}" for i in range(start, start + n)]


def screen(plates, sites_per_well=4, seed=0):
    """A sites table and its wells table: plates maps plate_id -> list of
    (disease_condition, treatment) per well; wells get shuffled names."""
    rng = np.random.default_rng(seed)
    rows = []
    for plate_id, wells in plates.items():
        experiment, plate = plate_id.rsplit("_", 1)
        names = well_names(len(wells))
        rng.shuffle(names)
        for well, (condition, treatment) in zip(names, wells):
            for site in range(1, sites_per_well + 1):
                rows.append({
                    "site_id": f"{plate_id}_{well}_{site}", "well_id": f"{plate_id}_{well}", "cell_type": "HRCE",
                    "experiment": experiment, "plate": int(plate), "well": well, "site": site,
                    "disease_condition": condition, "treatment": treatment,
                    "treatment_conc": 1.0 if treatment else np.nan, "plate_id": plate_id,
                })
    sites = pd.DataFrame(rows).sample(frac=1, random_state=seed).reset_index(drop=True)
    sites["plate"] = sites["plate"].astype("Int64")
    sites["site"] = sites["site"].astype("Int64")
    wells = well_table(sites).assign(no_nuclei=False, toxic=False, nuclei_count=100)
    return sites, wells


def controls(mock=0, uv=0, infected=0, treated=0):
    return [(MOCK, None)] * mock + [(UV, None)] * uv + [(INFECTED, None)] * infected + [(INFECTED, "DRUG")] * treated


def no_drops(sites):
    return usable_site_counts(sites, dropped_sites([], sites))


# --- labels, store order, exclusions ------------------------------------------------


def test_well_labels():
    wells = pd.DataFrame({
        "disease_condition": [MOCK, UV, INFECTED, INFECTED, MOCK],
        "treatment": [None, None, None, "X", "Y"],
    })
    assert well_labels(wells).tolist() == [0, 0, 1, pd.NA, pd.NA]
    assert str(well_labels(wells).dtype) == "Int64"


def test_well_indices_follow_store_order_per_plate():
    sites, _ = screen({"E_1": controls(mock=3), "E_2": controls(infected=2)})
    index = well_indices(sites)
    for plate_id, plate in sites.groupby("plate_id"):
        names = sorted(plate["well"].unique())
        for position, name in enumerate(names):
            assert index[f"{plate_id}_{name}"] == position


def test_well_index_comes_from_the_full_sites_table_not_the_used_wells():
    sites, wells = screen({"E_1": controls(mock=2, infected=2)})
    first = sorted(wells["well"])[0]
    wells.loc[wells["well"] == first, "no_nuclei"] = True
    used, _, _ = make_split(wells, sites, [], {"train": 0.5, "val": 0.25, "test": 0.25}, seed=1, balance=False)
    assert first not in set(used["well"])
    expected = {name: i for i, name in enumerate(sorted(wells["well"]))}
    assert (used["well_index"] == used["well"].map(expected)).all()


def test_dropped_sites_are_site_level_exclusions():
    sites, _ = screen({"E_1": controls(mock=2)})
    site_id = sites["site_id"].iloc[0]
    qc = pd.DataFrame({"site_id": [site_id], "well": ["x"], "site": [1], "reason": ["corrupt PNG"], "plate_id": ["E_1"]})
    dropped = dropped_sites([qc, qc.iloc[:0]], sites)
    assert dropped[["level", "site_id", "reason", "detail"]].values.tolist() == [["site", site_id, "dropped_site", "corrupt PNG"]]
    assert dropped["well_id"].item() == sites.set_index("site_id").loc[site_id, "well_id"]
    assert dropped_sites([], sites).empty
    with pytest.raises(ValueError, match="not in the sites table"):
        dropped_sites([qc.assign(site_id="E_1_Z99_1")], sites)


def test_screen_wells_gives_each_excluded_well_its_first_reason():
    sites, wells = screen({"E_1": controls(mock=3, infected=2, treated=3) + [(MOCK, "DRUG")]})
    wells = wells.sort_values("well_id").reset_index(drop=True)
    untreated_mock = wells.index[(wells["disease_condition"] == MOCK) & wells["treatment"].isna()]
    treated = wells.index[wells["treatment"].notna() & (wells["disease_condition"] == INFECTED)]
    wells.loc[untreated_mock[0], "no_nuclei"] = True
    wells.loc[treated[0], ["no_nuclei", "toxic"]] = True  # no_nuclei wins
    wells.loc[treated[1], "toxic"] = True
    usable = no_drops(sites)
    usable[wells.loc[untreated_mock[1], "well_id"]] = 0
    kept, excluded = screen_wells(wells, usable)
    reasons = excluded.set_index("well_id")["reason"].to_dict()
    assert reasons == {
        wells.loc[untreated_mock[0], "well_id"]: "no_nuclei",
        wells.loc[treated[0], "well_id"]: "no_nuclei",
        wells.loc[untreated_mock[1], "well_id"]: "no_sites",
        wells.loc[treated[1], "well_id"]: "toxic",
        wells.loc[(wells["treatment"].notna()) & (wells["disease_condition"] == MOCK), "well_id"].item(): "treated_non_infected",
    }
    assert (excluded["level"] == "well").all() and excluded["site_id"].isna().all()
    assert len(kept) + len(excluded) == len(wells) and not set(kept["well_id"]) & set(excluded["well_id"])
    assert kept["n_sites_used"].eq(4).all()


def test_screen_wells_rejects_wells_missing_from_the_sites_table():
    sites, wells = screen({"E_1": controls(mock=2)})
    with pytest.raises(ValueError, match="not in the sites table"):
        screen_wells(wells, no_drops(sites[sites["well_id"] != wells["well_id"].iloc[0]]))


# --- balance and allocation -----------------------------------------------------------


def test_balance_classes_per_plate_and_surplus_listed():
    sites, wells = screen({"E_1": controls(mock=3, uv=2, infected=9), "E_2": controls(mock=6, uv=6, infected=4)})
    kept, _ = screen_wells(wells, no_drops(sites))
    balanced, surplus = balance_classes(kept, np.random.default_rng(0))
    counts = balanced.groupby(["plate_id", "label"]).size()
    assert counts.to_dict() == {("E_1", 0): 5, ("E_1", 1): 5, ("E_2", 0): 4, ("E_2", 1): 4}
    assert len(surplus) == 4 + 8 and (surplus["reason"] == "class_balance").all()
    assert set(surplus["well_id"]) | set(balanced["well_id"]) == set(kept["well_id"])
    again, _ = balance_classes(kept, np.random.default_rng(0))
    other, _ = balance_classes(kept, np.random.default_rng(1))
    assert again["well_id"].tolist() == balanced["well_id"].tolist()
    assert other["well_id"].tolist() != balanced["well_id"].tolist()


def test_largest_remainder():
    assert largest_remainder(10, [0.6, 0.2, 0.2, 0.0]).tolist() == [6, 2, 2, 0]
    assert largest_remainder(32, [0.6, 0.2, 0.2]).tolist() == [19, 7, 6]
    assert largest_remainder(32, [0.6, 0.2, 0.2], priority=[0, 0, 1]).tolist() == [19, 6, 7]
    assert largest_remainder(7, [0.5, 0.25, 0.25]).tolist() == [3, 2, 2]  # remainders .5 < .75
    assert largest_remainder(0, [0.6, 0.4]).tolist() == [0, 0]
    for n in range(50):
        assert largest_remainder(n, [0.3, 0.3, 0.1, 0.3]).sum() == n
    with pytest.raises(ValueError):
        largest_remainder(5, [0.6, 0.6])


def test_set_shares_fractions_and_site_counts(caplog):
    assert set_shares(FRACTIONS, 100) == (FRACTIONS, "fractions")
    shares, mode = set_shares({"train": 50, "val": 10, "test": 20}, 160)
    assert mode == "sites" and shares == {"train": 50 / 160, "val": 10 / 160, "test": 20 / 160}
    with caplog.at_level(logging.WARNING):
        shares, _ = set_shares({"train": 200, "val": 100, "test": 100}, 100)
    assert "asks for 400 sites but only 100" in caplog.text
    assert shares == {"train": 0.5, "val": 0.25, "test": 0.25}
    with pytest.raises(ValueError, match="all three must be"):
        set_shares({"train": 0.5, "val": 10, "test": 10}, 100)
    with pytest.raises(ValueError, match="sum to"):
        set_shares({"train": 0.6, "val": 0.3, "test": 0.3}, 100)


def assigned_screen(seed=7, sizes=FRACTIONS, balance=True, **kwargs):
    sites, wells = screen({
        "E_1": controls(mock=10, uv=10, infected=24, treated=6),
        "E_2": controls(mock=5, uv=10, infected=12, treated=6),
        "F_1": controls(mock=20, infected=20),
    }, **kwargs)
    kept, _ = screen_wells(wells, no_drops(sites))
    return sites, kept, *assign_sets(kept, sizes, seed, balance)


def test_assign_sets_stratifies_by_plate_and_class_and_balances():
    _, kept, assigned, excluded = assigned_screen()
    untreated = assigned[assigned["set"] != "treated"]
    counts = untreated.groupby(["plate_id", "set", "label"]).size().unstack("label")
    assert (counts[0] == counts[1]).all(), counts  # balanced within every plate and set
    per_plate = untreated.groupby(["plate_id", "set"]).size().unstack("set") / untreated.groupby("plate_id").size().to_numpy()[:, None]
    assert np.allclose(per_plate[["train", "val", "test"]], [0.6, 0.2, 0.2], atol=0.1), per_plate
    assert (excluded["reason"] == "class_balance").sum() == 4 + 3
    assert (assigned["set"] == "treated").sum() == 12 and assigned.loc[assigned["set"] == "treated", "label"].isna().all()
    # Every kept well once: in a set or excluded.
    assert sorted(assigned["well_id"].tolist() + excluded["well_id"].tolist()) == sorted(kept["well_id"])


def test_assign_sets_is_deterministic_by_seed():
    _, _, first, _ = assigned_screen(seed=3)
    _, _, again, _ = assigned_screen(seed=3)
    _, _, other, _ = assigned_screen(seed=4)
    pd.testing.assert_frame_equal(first, again)
    def pairs(table):
        return set(zip(table["well_id"], table["set"]))

    assert pairs(first) != pairs(other)


def test_assign_sets_without_balance_keeps_all_untreated_wells():
    _, kept, assigned, excluded = assigned_screen(balance=False)
    assert excluded.empty and len(assigned) == len(kept)


def test_fractions_below_one_leave_wells_unused_with_a_reason():
    _, _, assigned, excluded = assigned_screen(sizes={"train": 0.3, "val": 0.1, "test": 0.1})
    untreated = (assigned["set"] != "treated").sum()
    sampled = (excluded["reason"] == "not_sampled").sum()
    assert untreated == pytest.approx(sampled, abs=3)


def test_site_counts_become_whole_wells_near_the_asked_sizes():
    sizes = {"train": 120, "val": 40, "test": 40}
    sites, _, assigned, excluded = assigned_screen(sizes=sizes)
    got = assigned[assigned["set"] != "treated"].groupby("set")["n_sites_used"].sum()
    for name, asked in sizes.items():
        assert abs(got[name] - asked) <= 4 * 3, (name, got[name])  # a well per plate at most
    assert (excluded["reason"] == "not_sampled").any()
    # More than exists: everything is used, nothing beyond.
    _, kept, assigned, excluded = assigned_screen(sizes={"train": 1000, "val": 500, "test": 500})
    assert not (excluded["reason"] == "not_sampled").any()
    assert assigned.groupby("set").size()[["train", "val", "test"]].sum() == len(kept) - (excluded["reason"] == "class_balance").sum() - 12


# --- site table, summary, whole split ------------------------------------------------


def test_make_split_never_splits_a_well_and_accounts_for_everything():
    sites, wells = screen({"E_1": controls(mock=8, uv=8, infected=17, treated=10), "E_2": controls(mock=4, uv=4, infected=8, treated=4)})
    wells = wells.sort_values("well_id").reset_index(drop=True)
    infected = wells.index[(wells["disease_condition"] == INFECTED) & wells["treatment"].isna()]
    wells.loc[infected[0], "no_nuclei"] = True
    treated = wells.index[wells["treatment"].notna()]
    wells.loc[treated[:2], "toxic"] = True
    dropped_id = sites.loc[sites["well_id"] == wells.loc[infected[1], "well_id"], "site_id"].iloc[0]
    qc = pd.DataFrame({"site_id": [dropped_id], "well": ["?"], "site": [1], "reason": ["missing"], "plate_id": ["E_1"]})
    used, excluded, summary = make_split(wells, sites, [qc], FRACTIONS, seed=7)
    assert used.groupby("well_id")["set"].nunique().max() == 1
    assert used.groupby("well_id")["label"].nunique(dropna=False).max() == 1
    assert dropped_id not in set(used["site_id"])
    assert excluded.loc[excluded["site_id"] == dropped_id, "reason"].item() == "dropped_site"
    well_level = excluded[excluded["level"] == "well"]
    assert not set(well_level["well_id"]) & set(used["well_id"])
    assert set(well_level["well_id"]) | set(used["well_id"]) == set(wells["well_id"])
    assert well_level["well_id"].is_unique
    assert well_level.set_index("well_id").loc[wells.loc[infected[0], "well_id"], "reason"] == "no_nuclei"
    assert (well_level["reason"] == "toxic").sum() == 2
    assert list(used.columns) == ["site_id", "well_id", "plate_id", "well", "site", "well_index", "set", "label",
                                  "disease_condition", "treatment", "treatment_conc"]
    assert str(used["label"].dtype) == "Int64"
    assert ((used["set"] == "treated") == used["label"].isna()).all()
    assert (used.loc[used["label"] == 0, "disease_condition"].isin([MOCK, UV])).all()
    assert (used.loc[used["label"] == 1, "disease_condition"] == INFECTED).all()
    assert used.loc[used["set"] != "treated", "treatment"].isna().all()
    # Summary totals agree with the site table.
    overall = summary[summary["plate_id"] == "all"]
    assert overall["n_sites"].sum() == len(used) and overall["n_wells"].sum() == used["well_id"].nunique()
    assert summary[summary["plate_id"] != "all"]["n_sites"].sum() == len(used)


def test_split_sites_expands_wells_minus_dropped_sites():
    sites, wells = screen({"E_1": controls(mock=2, infected=2)})
    assigned = wells.assign(set=["train", "val", "test", "train"], label=pd.array([0, 0, 1, 1], dtype="Int64"))
    dropped = sites.iloc[:1].assign(level="site")
    table = split_sites(sites, assigned, dropped)
    assert len(table) == 4 * 4 - 1
    assert table.groupby("well_id")["set"].first().to_dict() == assigned.set_index("well_id")["set"].to_dict()


def test_summarise_counts_wells_and_sites():
    split = pd.DataFrame({
        "plate_id": ["P_1"] * 5 + ["P_2"] * 2,
        "well_id": ["a", "a", "b", "c", "c", "d", "d"],
        "site_id": list("1234567"),
        "set": ["train", "train", "train", "treated", "treated", "val", "val"],
        "label": pd.array([1, 1, 0, None, None, 0, 0], dtype="Int64"),
    })
    summary = summarise(split)
    rows = {(r.plate_id, r.set, None if pd.isna(r.label) else int(r.label)): (r.n_wells, r.n_sites) for r in summary.itertuples()}
    assert rows == {
        ("all", "train", 0): (1, 1), ("all", "train", 1): (1, 2), ("all", "val", 0): (1, 2), ("all", "treated", None): (1, 2),
        ("P_1", "train", 0): (1, 1), ("P_1", "train", 1): (1, 2), ("P_1", "treated", None): (1, 2), ("P_2", "val", 0): (1, 2),
    }
    assert summary["set"].tolist()[:4] == ["train", "train", "val", "treated"]


# --- channel statistics --------------------------------------------------------------


def test_channel_histograms_and_stats_match_numpy():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(3, 16, 16), dtype=np.uint8)
    hist = channel_histograms(image, [2, 3], LAYOUT, 8)
    pixels = np.concatenate([image[:, :8, 8:].reshape(3, -1), image[:, 8:, :8].reshape(3, -1)], axis=1).astype(float)
    mean, std = stats_from_histograms(hist)
    assert np.allclose(mean, pixels.mean(axis=1)) and np.allclose(std, pixels.std(axis=1))
    wide = image.astype(np.uint16) * 257  # 16-bit pixels: 65536 levels, same statistics x 257
    wide_hist = channel_histograms(wide, [2, 3], LAYOUT, 8)
    assert wide_hist.shape == (3, 65536) and wide_hist.sum() == hist.sum()
    wide_mean, wide_std = stats_from_histograms(wide_hist)
    assert np.allclose(wide_mean, 257 * mean) and np.allclose(wide_std, 257 * std)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        channel_histograms(image.astype(np.float32), [1], LAYOUT, 8)


def tiny_store(path, wells, seed, site_size=8, channels=("A", "B", "C")):
    rng = np.random.default_rng(seed)
    store = create_plate_store(path, wells, list(channels), site_size, LAYOUT)
    images = rng.integers(0, 256, size=(len(wells), len(channels), 2 * site_size, 2 * site_size), dtype=np.uint8)
    images[:, 0] //= 4  # channels differ
    store.images[:] = images
    valid = np.ones((len(wells), 4), dtype=bool)
    valid[1, 3] = False
    store.write_site_valid(valid)
    store.group.attrs["complete"] = True
    return open_plate_store(path), images


def test_training_channel_stats_against_numpy(tmp_path):
    stores, images = {}, {}
    for seed, plate_id in enumerate(["E_1", "E_2"]):
        stores[plate_id], images[plate_id] = tiny_store(tmp_path / f"{plate_id}.zarr", ["A01", "A02", "B01"], seed)
    split = pd.DataFrame([
        {"plate_id": plate_id, "well": well, "well_index": index, "site": site, "set": set_name}
        for plate_id in stores
        for index, well in enumerate(["A01", "A02", "B01"])
        for site in range(1, 5)
        for set_name in [("train" if (index + site) % 3 else "val")]
        if not (index == 1 and site == 4)
    ])
    placement = site_slices(LAYOUT, 8)
    train = split[split["set"] == "train"]
    pixels = np.concatenate([
        images[r.plate_id][r.well_index][:, placement[r.site][0], placement[r.site][1]].reshape(3, -1) for r in train.itertuples()
    ], axis=1).astype(np.float64)
    for batch, pool in ((1, None), (2, ThreadPoolExecutor(2)), (100, None)):
        stats = training_channel_stats(split, stores, batch_wells=batch, pool=pool)
        assert stats["channels"] == ["A", "B", "C"] and stats["n_sites"] == len(train) and stats["site_size"] == 8
        assert np.allclose(stats["mean"], pixels.mean(axis=1), rtol=0, atol=1e-9)
        assert np.allclose(stats["std"], pixels.std(axis=1), rtol=0, atol=1e-9)
    assert stats["mean"][0] < stats["mean"][1]
    json.dumps(stats)
    with pytest.raises(ValueError, match="holds well"):
        training_channel_stats(split.assign(well_index=split["well_index"].map({0: 1, 1: 2, 2: 0})), stores)
    with pytest.raises(ValueError, match="not imaged"):
        training_channel_stats(pd.DataFrame([{"plate_id": "E_1", "well": "A02", "well_index": 1, "site": 4, "set": "train"}]), stores)
    with pytest.raises(ValueError, match="no plate store"):
        training_channel_stats(split, {"E_1": stores["E_1"]})
    with pytest.raises(ValueError, match="no training site"):
        training_channel_stats(split.assign(set="val"), stores)


def test_glue_scripts_write_the_outputs(tmp_path):
    import channel_stats
    import split_sets

    sites, wells = screen({"E_1": controls(mock=2, uv=2, infected=4, treated=2)})
    sites = sites.sort_values(["plate_id", "well", "site"]).reset_index(drop=True)
    sites.to_parquet(tmp_path / "sites.parquet")
    wells.to_parquet(tmp_path / "wells.parquet")
    pd.DataFrame(columns=["site_id", "well", "site", "reason"]).assign(plate_id="E_1").to_parquet(tmp_path / "qc.parquet")
    output = {name: str(tmp_path / "split" / f"{name}.parquet") for name in ("sites", "excluded", "summary")}
    split_sets.main(tmp_path / "wells.parquet", tmp_path / "sites.parquet", [tmp_path / "qc.parquet"], output,
                    {"split": {"seed": 7, "sizes": {"train": 0.5, "val": 0.25, "test": 0.25}, "balance_classes": True}},
                    str(tmp_path / "split.log"))
    used = pd.read_parquet(output["sites"])
    assert set(used["set"]) == {"train", "val", "test", "treated"}
    assert "summary" in (tmp_path / "split.log").read_text()
    tiny_store(tmp_path / "E_1.zarr", sorted(wells["well"]), 0, channels=("A", "B", "C"))
    channel_stats.main(output["sites"], [str(tmp_path / "E_1.zarr")], tmp_path / "split" / "stats.json",
                       {"batch_wells": 2}, 2, str(tmp_path / "stats.log"))
    stats = json.loads((tmp_path / "split" / "stats.json").read_text())
    assert stats["n_sites"] == (used["set"] == "train").sum() and len(stats["mean"]) == 3


# --- the workflow on the tiny demo ---------------------------------------------------


@pytest.mark.workflow
def test_workflow_split_on_the_tiny_demo(tiny_run):
    directory = tiny_run
    results = directory / "results" / "tiny"
    used = pd.read_parquet(results / "split" / "sites.parquet")
    excluded = pd.read_parquet(results / "split" / "excluded.parquet")
    summary = pd.read_parquet(results / "split" / "summary.parquet")
    wells = pd.read_parquet(results / "nuclei" / "wells.parquet")
    truth = pd.concat(pd.read_parquet(p) for p in sorted((directory / "resources/tiny/truth/sites").glob("*.parquet")))
    truth["well_id"] = truth["site_id"].str.rsplit("_", n=1).str[0]
    seeded = truth.groupby("well_id")["n_nuclei"].sum() > 0
    # Failed (unseeded) wells are never used.
    assert not set(seeded.index[~seeded]) & set(used["well_id"])
    # Every untreated seeded well: in exactly one set, or excluded with a reason.
    untreated = wells[wells["treatment"].isna() & wells["well_id"].map(seeded)]
    sets = used.groupby("well_id")["set"].agg(["nunique", "first"])
    well_level = excluded[excluded["level"] == "well"].set_index("well_id")["reason"]
    for well_id in untreated["well_id"]:
        in_set = well_id in sets.index
        assert in_set != (well_id in well_level.index), well_id
        if in_set:
            assert sets.loc[well_id, "nunique"] == 1 and sets.loc[well_id, "first"] in {"train", "val", "test"}
        else:
            assert well_level[well_id] in {"no_nuclei", "class_balance", "not_sampled"}
    # Classes balanced per plate (wells), and every set holds both classes.
    labelled = used[used["set"] != "treated"].drop_duplicates("well_id")
    per_plate = labelled.groupby(["plate_id", "label"]).size().unstack()
    assert (per_plate[0] == per_plate[1]).all(), per_plate
    assert set(labelled["set"]) == {"train", "val", "test"}
    assert set(used["plate_id"]) == {f"HRCE-1_{p}" for p in range(1, TINY["demo"]["plates"] + 1)}
    assert summary.loc[summary["plate_id"] == "all", "n_sites"].sum() == len(used)
    # The stores hold each used well at its well_index; the statistics are those of its training sites.
    stats = json.loads((results / "split" / "channel_stats.json").read_text())
    train = used[used["set"] == "train"]
    total = np.zeros(len(stats["channels"]))
    total_sq = np.zeros(len(stats["channels"]))
    for plate_id, plate in used.groupby("plate_id"):
        store = open_plate_store(results / "store" / f"{plate_id}.zarr")
        assert [store.wells[i] for i in plate["well_index"]] == plate["well"].tolist()
        placement = site_slices(store.site_layout, store.site_size)
        for r in train[train["plate_id"] == plate_id].itertuples():
            ys, xs = placement[r.site]
            pixels = store.images[r.well_index][:, ys, xs].reshape(len(total), -1).astype(np.float64)
            total += pixels.sum(axis=1)
            total_sq += (pixels**2).sum(axis=1)
    n = len(train) * stats["site_size"] ** 2
    assert stats["n_sites"] == len(train)
    assert np.allclose(stats["mean"], total / n) and np.allclose(stats["std"], np.sqrt(total_sq / n - (total / n) ** 2))
    assert (directory / "logs/tiny/split/split_sets.log").read_text().count("summary") == 1
