"""Unit tests of deemd.synth_diffuse (the second synthetic world, demo.world: diffuse) and
of the truth column both worlds share (best_nontoxic_efficacy)."""

import copy
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy import ndimage as ndi

from deemd import synth
from deemd import synth_diffuse as sd
from deemd.validate import config_errors, load_schema

REPO = Path(__file__).resolve().parents[1]


def tiny_demo(**overrides) -> dict:
    """A tiny diffuse screen: 4 compounds x 2 doses (1-2 wells each) + 6 controls on a 4 x 6 plate."""
    demo = copy.deepcopy(synth.DEFAULT_DEMO)
    demo.update(
        world="diffuse",
        plate_rows=4,
        plate_columns=6,
        site_size=64,
        compounds=4,
        concentrations_um=[0.1, 10.0],
        controls_per_plate={synth.MOCK: 2, synth.UV: 2, synth.INFECTED: 2},
        compound_classes={"effective": 0.5, "toxic": 0.25, "inactive": 0.25},
        diffuse={"cells": {"per_site": 40}},
    )
    demo.update(overrides)
    return demo


def fate(seed, moi_effective, n=280, tox=0.0, site_size=128, **infection):
    """Cells of one well field after the diffuse infection model."""
    cfg = sd.diffuse_config({"diffuse": {"infection": infection}})
    rng = synth.rng_from("diffuse test", seed)
    cells = synth.make_cells(rng, n, site_size, cfg["cells"])
    return sd.apply_fate(rng, cells, site_size, moi_effective, tox, cfg["infection"])


# ------------------------------------------------------------------ config and seeding


def test_defaults_fill_every_level():
    cfg = sd.diffuse_config({"diffuse": {"cells": {"per_site": 30}, "infection": {"cpe_strength": {"max": 2.0}}}})
    assert cfg["cells"]["per_site"] == 30 and cfg["cells"]["nucleus_radius"] == 0.035
    assert cfg["infection"]["cpe_strength"] == {"min": 0.6, "max": 2.0}
    assert cfg["replicates_per_plate"] == {"min": 1, "max": 2}
    assert sd.diffuse_config({}) == sd.DEFAULTS


def test_digest_reads_only_this_worlds_keys():
    demo = tiny_demo()
    digest = lambda d: synth.config_digest(d, sd.DIGEST_IGNORED)  # noqa: E731
    # the foci world's own sections and the plate count do not change a diffuse plate
    assert digest(demo) == digest({**demo, "plates": 9, "cells": {"per_site": 3}, "infection": {"foci_per_site": 9}, "replicates_per_plate": 4})
    assert digest(demo) != digest({**demo, "diffuse": {"cells": {"per_site": 41}}})
    assert digest(demo) != digest({**demo, "moi": 0.5})
    # and the diffuse section does not change a foci plate
    foci = copy.deepcopy(synth.DEFAULT_DEMO)
    assert synth.config_digest(foci) == synth.config_digest({**foci, "world": "foci", "diffuse": {"cells": {"per_site": 99}}})


def test_schema_takes_the_diffuse_keys_and_refuses_others():
    schema = load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    overlay = yaml.safe_load((REPO / "config" / "diffuse.yaml").read_text())
    merged = copy.deepcopy(config)
    merged["dataset"].update(overlay["dataset"])
    merged["demo"].update(overlay["demo"])
    assert config_errors(merged, schema) == []
    assert set(overlay["demo"]["diffuse"]) == set(sd.DEFAULTS)  # the overlay shows every section
    bad = copy.deepcopy(merged)
    bad["demo"]["diffuse"]["cells"]["per_site"] = 200  # 20-150 cells per site
    bad["demo"]["diffuse"]["infection"]["spread"] = 1
    errors = "\n".join(config_errors(bad, schema))
    assert "demo.diffuse.cells.per_site" in errors and "unknown key 'spread'" in errors
    # a diffuse section under the foci world would be ignored: refused
    foci = copy.deepcopy(config)
    foci["demo"]["diffuse"] = {"cells": {"per_site": 70}}
    assert any("demo.diffuse" in e for e in config_errors(foci, schema))


# ------------------------------------------------------------------ library and truth


def test_share_removed_is_the_drop_of_the_infection_probability():
    moi = 0.4
    e = np.array([0.0, 0.5, 0.87, 1.0])
    p = 1 - np.exp(-moi * (1 - e))
    assert np.allclose(synth.share_removed(e, moi), 1 - p / p[0])
    assert synth.share_removed(0.0, moi) == 0 and synth.share_removed(1.0, moi) == 1
    # removing 87 % of the MOI removes a little less of the infected cells
    assert 0.84 < synth.share_removed(0.87, moi) < 0.87


def test_best_nontoxic_efficacy_skips_doses_that_kill_30_percent():
    concs = [0.1, 1.0, 10.0]
    lib = pd.DataFrame(
        {
            "emax": [1.0, 1.0, 0.0, 0.8],
            "ec50_um": [1.0, 1.0, np.nan, 0.01],
            "hill": [1.0, 1.0, np.nan, 1.0],
            # 2: toxic at every dose; 1: kills 20 % at 1 uM (under 30 %) and ~71 % at 10 uM
            "tox_ic50_um": [np.nan, 2.0, 0.01, np.nan],
            "tox_max": [0.0, 0.72, 0.9, 0.0],
        }
    )
    got = synth.best_nontoxic_efficacy(lib, concs, 0.4)
    effect = lambda c, ec50, top=1.0: top / (1 + ec50 / c)  # noqa: E731
    kill_1um = 0.72 / (1 + (2.0 / 1.0) ** synth.TOX_HILL)
    assert kill_1um < synth.NONTOXIC_KILL < 0.72 / (1 + (2.0 / 10.0) ** synth.TOX_HILL)
    assert got[0] == pytest.approx(synth.share_removed(effect(10.0, 1.0), 0.4), rel=1e-5)
    assert got[1] == pytest.approx(synth.share_removed(effect(1.0, 1.0), 0.4), rel=1e-5)
    assert got[2] == 0.0  # no non-toxic dose
    assert got[3] == pytest.approx(synth.share_removed(effect(10.0, 0.01, 0.8), 0.4), rel=1e-5)


def test_make_library():
    demo = tiny_demo(compounds=200, concentrations_um=[0.03, 0.1, 0.3, 1.0, 3.0, 10.0], compound_classes=synth.DEFAULT_DEMO["compound_classes"])
    lib = sd.make_library(demo)
    assert list(lib.columns) == synth.LIBRARY_COLUMNS
    assert lib["kind"].value_counts().to_dict() == synth.class_counts(200, demo["compound_classes"])
    assert lib.equals(sd.make_library(demo)) and not lib.equals(sd.make_library({**demo, "seed": 3}))
    foci = synth.make_library({k: v for k, v in demo.items() if k != "world"})
    assert not lib[["ec50_um", "emax"]].equals(foci[["ec50_um", "emax"]])  # its own draws
    antiviral = lib["kind"].isin(["effective", "partial", "effective_toxic"])
    inside = lib.loc[antiviral, "ec50_um"].between(0.03, 10.0)
    assert 0.75 < inside.mean() < 1.0  # most inside the tested range, some outside
    assert (lib.loc[~antiviral, ["max_efficacy", "best_nontoxic_efficacy"]] == 0).all().all()
    assert (lib["best_nontoxic_efficacy"] <= lib["max_efficacy"] + 1e-9).all()
    assert (lib.loc[lib["kind"] == "partial", "emax"].between(0.3, 0.75)).all()
    # the column is the function of the other columns
    assert np.allclose(lib["best_nontoxic_efficacy"], synth.best_nontoxic_efficacy(lib, demo["concentrations_um"], demo["moi"]))
    assert "best_nontoxic_efficacy" in synth.make_library(synth.DEFAULT_DEMO).columns


# ------------------------------------------------------------------ infection model


def test_susceptibility_is_standard_normal_and_weakly_clustered():
    rng = synth.rng_from("latent")
    yx = np.array([[0.0, 0.0], [2.0, 0.0], [500.0, 500.0]])
    z = np.stack([sd.susceptibility(rng, yx, 0.3, 5.0) for _ in range(4000)])
    assert np.allclose(z.mean(0), 0, atol=0.06) and np.allclose(z.std(0), 1, atol=0.04)
    r = np.corrcoef(z.T)
    assert r[0, 1] == pytest.approx(0.3 * np.exp(-4 / 50), abs=0.05) and abs(r[0, 2]) < 0.05
    assert np.array_equal(sd.susceptibility(synth.rng_from(1), yx, 0.0, 5.0), synth.rng_from(1).standard_normal(3))


def test_infected_share_follows_the_effect():
    """Per cell p = 1 - exp(-MOI (1 - effect)); over ~8000 cells per dose the share sits
    within 4 sd of it (the latent clustering inflates the variance: a design effect of 3)."""
    moi = 0.4
    shares, any_infected = [], []
    for effect in (0.0, 0.5, 0.87, 1.0):
        p = 1 - np.exp(-moi * (1 - effect))
        infected = n = 0
        sites = []
        for seed in range(30):
            c = fate(seed, moi * (1 - effect))
            infected += c["infected"].sum()
            n += len(c["infected"])
            alive_inf = c["infected"] & ~c["dead"]
            sites += [alive_inf[c["site"] == k].any() for k in range(4)]
        share = infected / n
        assert abs(share - p) <= 4 * np.sqrt(3 * p * (1 - p) / n) + 1e-12, (effect, share, p)
        shares.append(share)
        any_infected.append(np.mean(sites))
    assert shares[-1] == 0 and np.all(np.diff(shares) < 0)
    # at 87 % inhibition most sites still hold a few living infected cells (not the foci world)
    assert any_infected[2] > 0.8 and any_infected[0] == 1.0


def test_infection_is_spread_over_the_site():
    """Infected cells are spread: their mean distance to each other is near that of all
    cells (foci would pull it far down)."""
    c = fate(5, 0.4, n=560)
    yx, inf = c["yx"], c["infected"]
    mean_d = lambda p: np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)).mean()  # noqa: E731
    assert inf.sum() > 100 and mean_d(yx[inf]) > 0.85 * mean_d(yx)


def test_death_of_infected_cells_and_toxic_death():
    cells = [fate(s, 0.8, death_rate=0.3) for s in range(20)]
    inf = np.concatenate([c["infected"] for c in cells])
    dead = np.concatenate([c["dead"] for c in cells])
    assert dead[inf].mean() == pytest.approx(0.3, abs=0.04) and not dead[~inf].any()
    tox = [fate(s, 0.0, tox=0.5) for s in range(10)]
    assert np.concatenate([c["dead"] for c in tox]).mean() == pytest.approx(0.5, abs=0.04)
    c = cells[0]
    assert not c["syncytial"].any() and np.array_equal(c["body"], np.arange(len(c["body"])))
    assert not (c["fragmented"] & ~(c["infected"] & ~c["dead"])).any()


# ------------------------------------------------------------------ wells and images


def _well(demo, toxic_kill=0.0, moi_effective=0.4, seed=0):
    s = int(demo["site_size"])
    rng = synth.rng_from("well", seed)
    optics = synth.plate_effects(synth.rng_from("optics"), s, synth.PLATE_DEFAULTS)
    bank = synth.texture_bank(synth.rng_from("bank"), s, sd.cells_config(demo))
    state = {"density": 1.0, "cpe_strength": 1.0}
    well = {"failed": False, "moi_effective": moi_effective, "toxic_kill": toxic_kill}
    return sd.synth_well(rng, well, demo, optics, bank, state)


def _per_nucleus_means(images: np.ndarray) -> np.ndarray:
    """Per channel (5,): Hoechst inside nuclei, channels 2-5 in a 3 px ring around them
    (each cell's own territory, so the density of its neighbours hardly matters)."""
    out = []
    for site in images.astype(float):
        nuc = ndi.binary_opening(site[0] > 2.5 * np.median(site[0]) + 10)
        ring = ndi.binary_dilation(nuc, iterations=3) & ~nuc
        out.append([site[0][nuc].mean()] + [site[c][ring].mean() for c in range(1, 5)])
    return np.mean(out, 0)


def test_toxicity_kills_without_dimming():
    demo = tiny_demo(site_size=128)
    ref = np.mean([_per_nucleus_means(_well(demo, 0.0, 0.0, seed)[0]) for seed in range(3)], 0)
    tox = np.mean([_per_nucleus_means(_well(demo, 0.6, 0.0, seed)[0]) for seed in range(3)], 0)
    counts = _well(demo, 0.6, 0.0, 0)[2]
    assert counts["n_nuclei"].sum() < 0.55 * counts["n_cells"].sum()
    assert np.allclose(tox / ref, 1.0, atol=0.1), tox / ref
    # the foci world's renderer dims survivors by 1 - kill / 2 in channels 2-5 (before the
    # plate's background offset); the measure sees it (the seeds are fixed: no flakiness)
    cells = synth.make_cells(synth.rng_from("x"), 160, 128, sd.cells_config(demo))
    bank = synth.texture_bank(synth.rng_from("bank"), 128, sd.cells_config(demo))
    optics = synth.plate_effects(synth.rng_from("optics"), 128, synth.PLATE_DEFAULTS)
    dimmed = [
        synth.form_images(synth.rng_from("f"), synth.render_well(synth.rng_from("r"), cells, 128, 1.0, kill, bank)[0], optics, synth.PLATE_DEFAULTS, 128)
        for kill in (0.0, 0.6)
    ]
    assert (_per_nucleus_means(dimmed[1]) / _per_nucleus_means(dimmed[0]))[1:].max() < 0.88


def test_infected_cells_look_different_in_channels_2_to_5():
    demo = tiny_demo(site_size=128)
    images, masks, counts = _well(demo, 0.0, 1.2)
    assert counts["n_infected"].sum() > 20
    img = images.astype(float)  # (4, 5, S, S)
    cell = img[:, 2] > np.percentile(img[:, 2], 40)  # cell bodies (phalloidin)
    inf, other = masks, cell & ~masks
    for ch in (1, 3):  # ConA, Syto14 brighter in infected cells
        assert img[:, ch][inf].mean() > 1.15 * img[:, ch][other].mean(), ch


def test_failed_wells_and_counts():
    demo = tiny_demo()
    s = demo["site_size"]
    optics = synth.plate_effects(synth.rng_from("o"), s, synth.PLATE_DEFAULTS)
    bank = synth.texture_bank(synth.rng_from("b"), s, sd.cells_config(demo))
    images, masks, counts = sd.synth_well(synth.rng_from("w"), {"failed": True, "moi_effective": 0.4, "toxic_kill": 0.0}, demo, optics, bank, {"density": 1.0, "cpe_strength": 1.0})
    assert images.shape == (4, 5, s, s) and images.dtype == np.uint8 and not masks.any()
    assert all(counts[k].sum() == 0 for k in counts)


# ------------------------------------------------------------------ plates


def test_layout_has_the_foci_worlds_form_and_its_own_replicates():
    demo = tiny_demo()
    lib = sd.make_library(demo)
    layout = sd.plate_layout(lib, demo, "HRCE-1", 1)
    foci_demo = {k: v for k, v in demo.items() if k not in ("world", "diffuse")}
    foci = synth.plate_layout(synth.make_library(foci_demo), foci_demo, "HRCE-1", 1)
    assert list(layout.columns) == list(foci.columns)
    assert all(layout[c].dtype == foci[c].dtype for c in layout.columns)
    per_dose = layout.dropna(subset=["treatment"]).groupby(["treatment", "treatment_conc"]).size()
    per_compound = per_dose.groupby(level=0).agg(["min", "max"])
    assert (per_compound["min"] == per_compound["max"]).all() and per_dose.between(1, 2).all()
    # draws per plate and compound: over 6 plates every compound gets 1 and 2 somewhere
    reps = pd.DataFrame([sd.plate_replicates(demo, lib, sd.plate_entropy(demo, "HRCE-1", p, lib)) for p in range(1, 7)])
    assert set(np.unique(reps.to_numpy())) == {1, 2}
    wide = tiny_demo(diffuse={"replicates_per_plate": {"min": 3, "max": 3}}, plate_rows=8)
    assert (sd.plate_layout(lib, wide, "HRCE-1", 1).dropna(subset=["treatment"]).groupby(["treatment", "treatment_conc"]).size() == 3).all()
    with pytest.raises(ValueError, match="replicates_per_plate"):
        sd.plate_replicates(tiny_demo(diffuse={"replicates_per_plate": {"min": 2, "max": 1}}), lib, [1])
    meta = synth.metadata_table(layout, "HRCE-1", 1)
    assert list(meta.columns) == synth.METADATA_COLUMNS and len(meta) == 4 * len(layout)
    assert set(meta["disease_condition"]) <= set(synth.CONDITIONS)


def test_iter_plate_is_deterministic_and_plate_count_free():
    demo = tiny_demo()
    lib = sd.make_library(demo)

    def first(d, plate):
        row, images, masks, rows = next(sd.iter_plate(d, "HRCE-1", plate, lib))
        return images, masks, rows

    a = first(demo, 2)
    b = first({**demo, "plates": 10, "infection": {"foci_per_site": 5.0}}, 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert pd.DataFrame(a[2]).equals(pd.DataFrame(b[2]))  # NaN treatment: compare as tables
    assert not np.array_equal(a[0], first(demo, 1)[0])
    assert not np.array_equal(a[0], first({**demo, "diffuse": {"cells": {"per_site": 60}}}, 2)[0])
    assert set(a[2][0]) == set(synth.TRUTH_COLUMNS)


def test_glue_scripts_write_the_demo_files_for_the_diffuse_world(tmp_path):
    import synth_library
    import synth_plate

    def run(demo, root):
        lib_path = root / "truth" / "compounds.csv"
        synth_library.main({"demo": demo}, {}, {"library": str(lib_path)}, str(root / "lib.log"))
        out = {
            "images": str(root / "images" / "HRCE-1" / "Plate1"),
            "metadata": str(root / "parts" / "HRCE-1_1.csv"),
            "truth": str(root / "truth" / "sites" / "HRCE-1_1.parquet"),
            "masks": str(root / "truth" / "masks" / "HRCE-1_1.npz"),
        }
        synth_plate.main({"demo": demo}, {"experiment": "HRCE-1", "plate": "1"}, out, str(root / "plate.log"), {"library": str(lib_path)})
        logging.shutdown()
        return pd.read_csv(lib_path), out

    demo = tiny_demo()
    lib, out = run(demo, tmp_path / "diffuse")
    foci_lib, foci_out = run({k: v for k, v in demo.items() if k not in ("world", "diffuse")}, tmp_path / "foci")
    assert list(lib.columns) == list(foci_lib.columns) == synth.LIBRARY_COLUMNS
    meta, foci_meta = pd.read_csv(out["metadata"]), pd.read_csv(foci_out["metadata"])
    assert list(meta.columns) == list(foci_meta.columns) and (meta.dtypes == foci_meta.dtypes).all()
    pattern = r"^[A-Z]\d{2}_s[1-4]_w[1-5]\.png$"
    names = pd.Series(sorted(p.name for p in Path(out["images"]).iterdir()))
    assert names.str.match(pattern).all() and len(names) == len(meta) * 5
    img = Image.open(Path(out["images"]) / f"{meta.loc[0, 'well']}_s1_w1.png")
    assert img.mode == "L" and img.size == (64, 64)
    truth, foci_truth = pd.read_parquet(out["truth"]), pd.read_parquet(foci_out["truth"])
    assert list(truth.columns) == list(foci_truth.columns) == synth.TRUTH_COLUMNS
    assert (truth.dtypes == foci_truth.dtypes).all() and list(truth["site_id"]) == list(meta["site_id"])
    masks = np.load(out["masks"])
    assert masks["infected"].shape == (len(meta), 64, 64) and list(masks["site_id"]) == list(meta["site_id"])
    assert "world diffuse" in (tmp_path / "diffuse" / "plate.log").read_text()
