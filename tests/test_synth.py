"""Unit tests of deemd.synth (the demo screen synthesiser) and its two glue scripts."""

import copy
import io
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi
from scipy import stats
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed
import yaml

from deemd import synth


def small_demo(**overrides) -> dict:
    """A tiny screen: 4 compounds x 2 concentrations + 6 controls on a 4 x 6 plate."""
    demo = copy.deepcopy(synth.DEFAULT_DEMO)
    demo.update(
        plate_rows=4,
        plate_columns=6,
        site_size=64,
        compounds=4,
        concentrations_um=[0.1, 10.0],
        controls_per_plate={synth.MOCK: 2, synth.UV: 2, synth.INFECTED: 2},
        compound_classes={"effective": 0.5, "toxic": 0.25, "inactive": 0.25},
    )
    demo.update(overrides)
    return demo


@pytest.fixture(scope="module")
def library():
    return synth.make_library(small_demo())


def cfgs(demo=None):
    demo = demo or synth.DEFAULT_DEMO
    return (
        synth.config_section(demo, "cells", synth.CELL_DEFAULTS),
        synth.config_section(demo, "infection", synth.INFECTION_DEFAULTS),
        synth.config_section(demo, "plate_effects", synth.PLATE_DEFAULTS),
    )


def well_cells(seed, moi, site_size=128, n=180, tox=0.0):
    cells_cfg, inf_cfg, _ = cfgs()
    rng = synth.rng_from("test", seed)
    cells = synth.make_cells(rng, n, site_size, cells_cfg)
    return rng, synth.apply_fate(rng, cells, site_size, moi, tox, inf_cfg)


def count_nuclei(nuclear: np.ndarray, site_size: int) -> int:
    """Reference counter (the workflow's method): Gaussian smoothing, Otsu, small-object
    removal, distance transform, peak_local_max, watershed. Config values at 1024 px scaled."""
    r = site_size / 1024
    smooth = ndi.gaussian_filter(nuclear.astype(np.float32), 8 * r)
    if smooth.max() - smooth.min() < 12:
        return 0
    mask = smooth > threshold_otsu(smooth)
    lab, n = ndi.label(mask)
    sizes = np.bincount(lab.ravel())
    mask &= (sizes >= 700 * r * r)[lab]
    dist = ndi.distance_transform_edt(mask)
    comps, _ = ndi.label(mask)
    peaks = peak_local_max(dist, min_distance=max(1, round(40 * r)), labels=comps, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    seeded = np.unique(comps[tuple(peaks.T)])
    unseeded = np.setdiff1d(np.unique(comps[mask]), seeded)
    return int(watershed(-dist, markers, mask=mask).max()) + len(unseeded)


# ------------------------------------------------------------------ seeding and digests


def test_rng_from_is_stable_and_sensitive():
    a = synth.rng_from(1, "HRCE-1", 2).random(5)
    assert np.array_equal(a, synth.rng_from(1, "HRCE-1", 2).random(5))
    assert not np.array_equal(a, synth.rng_from(1, "HRCE-1", 3).random(5))
    assert not np.array_equal(a, synth.rng_from(1, "HRCE-2", 2).random(5))
    # strings enter via crc32, not the per-process salted hash()
    assert synth._entropy_word("HRCE-1") == 0xFFFFFFFF & __import__("zlib").crc32(b"HRCE-1")


def test_config_digest_ignores_plate_count_only():
    demo = small_demo()
    assert synth.config_digest(demo) == synth.config_digest({**demo, "plates": 99})
    assert synth.config_digest(demo) != synth.config_digest({**demo, "moi": 0.5})


def test_library_digest_survives_csv_round_trip(library):
    buf = io.StringIO()
    library.to_csv(buf, index=False, float_format="%.6g")
    back = pd.read_csv(io.StringIO(buf.getvalue()))
    assert synth.library_digest(back) == synth.library_digest(library)
    changed = library.copy()
    changed.loc[0, "emax"] = 0.5
    assert synth.library_digest(changed) != synth.library_digest(library)


# ------------------------------------------------------------------ library


def test_hill_curve():
    c = np.array([0.0, 1.0, 100.0])
    e = synth.hill(c, 0.8, 1.0, 2.0)
    assert e[0] == 0 and e[1] == pytest.approx(0.4) and e[2] == pytest.approx(0.8, abs=1e-3)
    assert np.all(synth.hill(c, 0.0, np.nan, np.nan) == 0)  # no curve, no effect
    assert np.all(np.diff(synth.hill(np.logspace(-2, 2, 20), 1.0, 0.5, 1.5)) > 0)


def test_class_counts():
    counts = synth.class_counts(24, synth.DEFAULT_DEMO["compound_classes"])
    assert sum(counts.values()) == 24
    assert counts == {"effective": 6, "partial": 4, "toxic": 4, "effective_toxic": 2, "inactive": 8}
    with pytest.raises(ValueError):
        synth.class_counts(3, {"a": 0.0})


def test_random_smiles_is_well_formed():
    rng = synth.rng_from(3)
    for _ in range(50):
        s = synth.random_smiles(rng)
        assert s.count("(") == s.count(")") and s.count("[") == s.count("]")
        assert all(s.count(d) % 2 == 0 for d in "123456789")  # every ring closed
        assert re.fullmatch(r"[A-Za-z0-9()\[\]=#@+\-]+", s)


def test_default_demo_is_the_configs_demo():
    """synth.DEFAULT_DEMO must not drift from the demo block of config/config.yaml."""
    demo = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())["demo"]
    demo.pop("world", None)
    assert synth.DEFAULT_DEMO == demo


def test_make_library():
    demo = dict(synth.DEFAULT_DEMO)
    lib = synth.make_library(demo)
    assert list(lib.columns) == synth.LIBRARY_COLUMNS
    assert list(lib["treatment"][:2]) == ["DEMO-001", "DEMO-002"] and lib["treatment"].is_unique
    assert lib["kind"].value_counts().to_dict() == synth.class_counts(24, demo["compound_classes"])
    no_antiviral = lib["kind"].isin(["toxic", "inactive"])
    assert (lib.loc[no_antiviral, "max_efficacy"] == 0).all()
    assert (lib.loc[lib["kind"] == "effective", "max_efficacy"] > 0.5).all()
    assert lib.loc[lib["kind"].isin(["toxic", "effective_toxic"]), "tox_ic50_um"].notna().all()
    assert (lib.loc[lib["kind"].isin(["inactive", "effective", "partial"]), "tox_max"] == 0).all()
    assert lib.equals(synth.make_library(demo))
    assert not lib.equals(synth.make_library({**demo, "seed": 1}))


# ------------------------------------------------------------------ layout and metadata


def test_well_names():
    names = synth.well_names(16, 24)
    assert len(names) == 384 and names[0] == "A01" and names[23] == "A24" and names[-1] == "P24"


def test_well_effects(library):
    eff = library.loc[library["kind"] == "effective", "treatment"].iloc[0]
    tox = library.loc[library["kind"] == "toxic", "treatment"].iloc[0]
    moi, kill = synth.well_effects(library, [eff, eff, tox], [0.001, 1000.0, 1000.0], 0.4)
    assert moi[0] == pytest.approx(0.4, rel=1e-2) and moi[1] < 0.1 and moi[2] == pytest.approx(0.4)
    assert kill[0] == 0 and kill[1] == 0 and kill[2] > 0.5


def test_plate_layout(library):
    demo = small_demo(failed_wells_per_plate=2)
    lay = synth.plate_layout(library, demo, "HRCE-1", 1)
    assert len(lay) == 6 + 4 * 2 and lay["well"].is_unique
    assert lay["disease_condition"].value_counts().to_dict() == {synth.INFECTED: 10, synth.MOCK: 2, synth.UV: 2}
    treated = lay["treatment"].notna()
    assert (lay.loc[treated, "disease_condition"] == synth.INFECTED).all()
    assert lay.loc[~treated, "treatment_conc"].isna().all() and lay.loc[~treated, "SMILES"].isna().all()
    assert (lay.loc[lay["disease_condition"] != synth.INFECTED, "moi_effective"] == 0).all()
    assert lay["failed"].sum() == 2
    order = synth.well_names(4, 6)
    assert list(lay["well"]) == sorted(lay["well"], key=order.index)
    assert lay.equals(synth.plate_layout(library, {**demo, "plates": 7}, "HRCE-1", 1))
    assert not lay["well"].equals(synth.plate_layout(library, demo, "HRCE-1", 2)["well"])
    with pytest.raises(ValueError):
        synth.plate_layout(library, small_demo(plate_rows=2, plate_columns=2), "HRCE-1", 1)


def test_metadata_table(library):
    lay = synth.plate_layout(library, small_demo(), "HRCE-1", 3)
    meta = synth.metadata_table(lay, "HRCE-1", 3)
    assert list(meta.columns) == synth.METADATA_COLUMNS
    assert len(meta) == 4 * len(lay) and meta["site_id"].is_unique
    first = meta.iloc[0]
    assert first["site_id"] == f"HRCE-1_3_{first['well']}_1" and first["well_id"] == f"HRCE-1_3_{first['well']}"
    assert set(meta["site"]) == {1, 2, 3, 4} and (meta["cell_type"] == "HRCE").all() and (meta["plate"] == 3).all()
    assert set(meta["disease_condition"]) <= set(synth.CONDITIONS)
    assert meta["treatment"].isna().sum() == 4 * 6


# ------------------------------------------------------------------ optics and textures


def test_plate_effects():
    fx = synth.plate_effects(synth.rng_from(1), 32, synth.PLATE_DEFAULTS)
    assert fx["gain"].shape == (5,) and fx["offset"].shape == (5,) and fx["illumination"].shape == (5, 32, 32)
    ill = fx["illumination"]
    assert ill.max() <= 1.0 and ill.min() > 0.5
    assert (ill[:, 0, 0] < ill[:, 16, 16]).all()  # vignetting: corners darker


def test_smooth_noise_scale_and_periodicity():
    fine = synth.smooth_noise(synth.rng_from(1), 64, 0.5)
    coarse = synth.smooth_noise(synth.rng_from(1), 64, 8.0)
    for f in (fine, coarse):
        assert f.shape == (64, 64) and f.dtype == np.float32
        assert abs(f.mean()) < 1e-4 and f.std() == pytest.approx(1.0, abs=1e-3)

    def lag1(f):
        return np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1]

    assert lag1(coarse) > 0.9 > lag1(fine)
    # periodic: the wrap-around step is no larger than typical steps
    assert np.abs(coarse[:, 0] - coarse[:, -1]).mean() < 2 * np.abs(np.diff(coarse, axis=1)).mean()


def test_texture_bank_and_well_textures():
    bank = synth.texture_bank(synth.rng_from(1), 32, synth.CELL_DEFAULTS)
    assert bank.shape == (len(synth.TEXTURES), 64, 64)
    tex = synth.well_textures(synth.rng_from(2), bank)
    assert set(tex) == set(synth.TEXTURES) and tex["chrom"].shape == (64, 64)
    # a rolled/flipped copy: same values, different place
    assert np.allclose(np.sort(tex["chrom"].ravel()), np.sort(bank[1].ravel()))


# ------------------------------------------------------------------ cells and infection


def test_place_cells_spacing():
    yx = synth.place_cells(synth.rng_from(1), 150, 200.0, 10.0)
    assert yx.shape == (150, 2) and yx.min() >= 0 and yx.max() < 200
    d = np.sqrt(((yx[:, None] - yx[None]) ** 2).sum(-1)) + np.eye(150) * 1e9
    assert d.min() >= 10.0
    crowded = synth.place_cells(synth.rng_from(1), 500, 50.0, 10.0)
    assert len(crowded) < 500  # impossible packing: fewer cells, never overlapping ones


def test_site_of_and_field_sites_agree():
    s = 4
    field = np.arange(64).reshape(8, 8)
    sites = synth.field_sites(field)
    assert sites.shape == (4, 4, 4)
    assert sites[0][0, 0] == field[0, 0] and sites[1][0, 0] == field[0, 4]
    assert sites[2][0, 0] == field[4, 0] and sites[3][0, 0] == field[4, 4]
    pts = np.array([[1.0, 1.0], [1.0, 5.0], [5.0, 1.0], [5.0, 5.0]])
    assert list(synth.site_of(pts, s)) == [0, 1, 2, 3]
    stack = np.stack([field, -field])  # leading axes are kept
    assert synth.field_sites(stack).shape == (4, 2, 4, 4)


def test_make_cells_scales_with_site_size():
    cfg = synth.CELL_DEFAULTS
    small = synth.make_cells(synth.rng_from(1), 100, 128, cfg)
    big = synth.make_cells(synth.rng_from(1), 100, 1024, cfg)
    assert len(small["yx"]) == 100 and small["nucleoli"].shape == (100, 2, 2)
    assert np.median(big["r_cell"]) / np.median(small["r_cell"]) == pytest.approx(8.0, rel=0.1)
    assert np.median(np.sqrt(small["nuc_a"] * small["nuc_b"])) == pytest.approx(0.03 * 128, rel=0.1)
    assert (small["nuc_a"] >= small["nuc_b"]).all()


def test_foci_centres_cover_every_site():
    foci = synth.foci_centres(synth.rng_from(1), 100, 0.2)
    assert set(synth.site_of(foci, 100)) == {0, 1, 2, 3}


def test_choose_infected_is_clustered_and_binomial():
    rng = synth.rng_from(5)
    yx = synth.place_cells(rng, 400, 256, 8.0)
    site = synth.site_of(yx, 128)
    foci = synth.foci_centres(rng, 128, 2.0)
    inf = synth.choose_infected(rng, yx, site, 0.3, foci, 128)
    assert 0.2 < inf.mean() < 0.4
    d = np.sqrt(((yx[:, None] - foci[None]) ** 2).sum(-1)).min(1)
    assert np.median(d[inf]) < 0.6 * np.median(d[~inf])  # near the foci
    assert not synth.choose_infected(rng, yx, site, 0.0, foci, 128).any()


def test_foci_thin_with_the_share_of_moi_a_treatment_leaves():
    full = synth.foci_centres(synth.rng_from(3), 128, 2.0)
    assert np.array_equal(full, synth.foci_centres(synth.rng_from(3), 128, 2.0, keep=1.0))
    assert len(synth.foci_centres(synth.rng_from(3), 128, 2.0, keep=0.0)) == 0
    # The share of sites that keep a focus matches focus_site_probability.
    keep = 0.2
    has_focus = [
        np.isin(np.arange(4), synth.site_of(synth.foci_centres(synth.rng_from("thin", i), 128, 2.0, keep), 128))
        for i in range(500)
    ]
    assert np.mean(has_focus) == pytest.approx(synth.focus_site_probability(2.0, keep), abs=0.03)
    assert synth.focus_site_probability(2.0, 1.0) == 1.0 and synth.focus_site_probability(2.0, 0.0) == 0.0


def test_treated_wells_keep_their_infected_share_in_fewer_sites():
    """At a tenth of the MOI most sites are free of infection, and the well-level infected
    share is still about 1 - exp(-MOI_eff)."""
    cells_cfg, inf_cfg, _ = cfgs()
    moi_eff, keep = 0.04, 0.1
    shares, clean = [], []
    for i in range(150):
        rng = synth.rng_from("keep", i)
        c = synth.apply_fate(rng, synth.make_cells(rng, 180, 128, cells_cfg), 128, moi_eff, 0.0, inf_cfg, keep)
        shares.append(c["infected"].mean())
        clean += [not c["infected"][c["site"] == s].any() for s in range(4)]
    assert np.mean(shares) == pytest.approx(1 - np.exp(-moi_eff), rel=0.35)
    assert np.mean(clean) == pytest.approx(1 - synth.focus_site_probability(inf_cfg["foci_per_site"], keep), abs=0.06)
    # Without thinning, the same MOI leaves infected cells in most sites.
    stray = [synth.apply_fate(synth.rng_from("stray", i), synth.make_cells(synth.rng_from("c", i), 180, 128, cells_cfg), 128, moi_eff, 0.0, inf_cfg) for i in range(40)]
    assert np.mean([not c["infected"][c["site"] == s].any() for c in stray for s in range(4)]) < 0.5


def test_fuse_syncytia():
    yx = np.array([[0.0, 0.0], [0.0, 5.0], [0.0, 100.0], [0.0, 104.0], [50.0, 50.0]])
    cand = np.array([True, True, True, True, False])
    assert np.array_equal(synth.fuse_syncytia(synth.rng_from(1), yx, cand, 0.0, 10.0), np.arange(5))
    body = synth.fuse_syncytia(synth.rng_from(1), yx, cand, 1.0, 10.0)
    assert body[0] == body[1] and body[2] == body[3] and body[0] != body[2]
    assert body[4] not in body[:4]
    far = synth.fuse_syncytia(synth.rng_from(1), yx, cand, 1.0, 1.0)
    assert len(np.unique(far)) == 5


def test_apply_fate():
    _, healthy = well_cells(1, moi=0.0)
    assert not healthy["infected"].any() and not healthy["dead"].any()
    _, sick = well_cells(1, moi=0.4)
    p = 1 - np.exp(-0.4)
    assert sick["infected"].mean() == pytest.approx(p, abs=0.08)
    assert sick["dead"].sum() > 0 and (sick["dead"] <= sick["infected"]).all()
    assert not (sick["fragmented"] & ~sick["infected"]).any() and not (sick["debris"] & ~sick["dead"]).any()
    assert (sick["syncytial"] <= (sick["infected"] & ~sick["dead"])).all()
    _, poisoned = well_cells(1, moi=0.0, tox=1.0)
    assert poisoned["dead"].all()


def test_infected_wells_hold_fewer_nuclei():
    """Mann-Whitney over 60 wells per group, on the true nucleus counts."""
    cells_cfg, inf_cfg, _ = cfgs()

    def nuclei(i, moi):
        rng = synth.rng_from("mw", i, moi)
        n = rng.poisson(cells_cfg["per_site"] * 4 * np.exp(rng.normal(0, cells_cfg["density_sd"])))
        c = synth.apply_fate(rng, synth.make_cells(rng, n, 128, cells_cfg), 128, moi, 0.0, inf_cfg)
        return (~c["dead"]).sum()

    infected = [nuclei(i, 0.4) for i in range(60)]
    healthy = [nuclei(i, 0.0) for i in range(60)]
    assert np.median(infected) < np.median(healthy)
    assert stats.mannwhitneyu(infected, healthy).pvalue < 1e-3


# ------------------------------------------------------------------ rendering


@pytest.fixture(scope="module")
def rendered():
    rng, cells = well_cells(2, moi=0.4)
    raw, mask = synth.render_well(rng, cells, 128)
    return cells, raw, mask


def test_render_well_shapes_and_mask(rendered):
    cells, raw, mask = rendered
    assert raw.shape == (5, 256, 256) and raw.dtype == np.float32 and mask.shape == (256, 256)
    assert np.isfinite(raw).all() and raw.min() >= 0
    living_infected = cells["infected"] & ~cells["dead"]
    pix = np.rint(np.clip(cells["yx"], 0, 255)).astype(int)
    assert mask[pix[living_infected, 0], pix[living_infected, 1]].all()
    assert not mask[pix[~cells["infected"], 0], pix[~cells["infected"], 1]].any()
    empty = synth.make_cells(synth.rng_from(1), 0, 32, synth.CELL_DEFAULTS)
    empty = synth.apply_fate(synth.rng_from(1), empty, 32, 0.4, 0.0, synth.INFECTION_DEFAULTS)
    raw0, mask0 = synth.render_well(synth.rng_from(1), empty, 32)
    assert raw0.shape == (5, 64, 64) and not raw0.any() and not mask0.any()


def test_infected_cells_are_brighter_in_channels_2_to_5(rendered):
    _, raw, mask = rendered
    cell = raw[2] > 0.01  # every cell body has some actin
    ratio = [raw[c][mask].mean() / raw[c][cell & ~mask].mean() for c in range(5)]
    assert all(r > 1.4 for r in ratio[1:]), ratio


def test_nuclei_are_where_the_truth_says(rendered):
    cells, raw, _ = rendered
    alive = ~cells["dead"]
    pix = np.rint(np.clip(cells["yx"], 0, 255)).astype(int)
    centre = raw[0][pix[:, 0], pix[:, 1]]
    assert (centre[alive] > 0.1).all()
    assert np.median(centre[cells["dead"] & ~cells["debris"]]) < 0.05


def test_nucleus_counter_recovers_truth():
    """Otsu + watershed counts per stitched well within 10 % median error of the truth."""
    demo = dict(synth.DEFAULT_DEMO)
    lib = synth.make_library(demo)
    errors = []
    for i, (row, images, _, rows) in enumerate(synth.iter_plate(demo, "HRCE-1", 1, lib)):
        if i == 8:
            break
        well = np.block([[images[0, 0], images[1, 0]], [images[2, 0], images[3, 0]]])
        truth = sum(r["n_nuclei"] for r in rows)
        count = count_nuclei(well, 128)
        if truth == 0:
            assert count == 0
        else:
            errors.append(abs(count - truth) / truth)
    assert np.median(errors) < 0.10


def test_form_images():
    _, _, plate_cfg = cfgs()
    fx = synth.plate_effects(synth.rng_from(1), 16, plate_cfg)
    raw = np.zeros((5, 32, 32), np.float32)
    raw[:, :16, :16] = 0.5
    img = synth.form_images(synth.rng_from(2), raw, fx, plate_cfg, 16)
    assert img.shape == (4, 5, 16, 16) and img.dtype == np.uint8
    assert img[0].mean() > img[3].mean() + 50  # signal in site 1 only
    assert 0 < img[3].mean() < 30  # background: offset plus noise
    assert np.array_equal(img, synth.form_images(synth.rng_from(2), raw, fx, plate_cfg, 16))


def test_synth_well_failed_and_truth():
    demo = small_demo(site_size=64)
    _, _, plate_cfg = cfgs(demo)
    fx = synth.plate_effects(synth.rng_from(1), 64, plate_cfg)
    well = {"failed": True, "moi_effective": 0.4, "toxic_kill": 0.0}
    images, masks, counts = synth.synth_well(synth.rng_from(1), well, demo, fx)
    assert images.shape == (4, 5, 64, 64) and masks.shape == (4, 64, 64)
    assert counts["n_nuclei"].sum() == 0 and not masks.any()
    well["failed"] = False
    images, masks, counts = synth.synth_well(synth.rng_from(1), well, demo, fx)
    assert (counts["n_cells"] == counts["n_nuclei"] + counts["n_dead"]).all()
    assert counts["n_nuclei"].sum() > 100 and counts["n_infected"].sum() > 0 and masks.any()
    rows = synth.truth_rows({"well": "B02", "disease_condition": synth.INFECTED, "treatment": None, "treatment_conc": np.nan, **well}, counts, "HRCE-1", 2)
    assert [r["site_id"] for r in rows] == [f"HRCE-1_2_B02_{s}" for s in (1, 2, 3, 4)]
    assert set(rows[0]) == set(synth.TRUTH_COLUMNS)
    assert rows[0]["infected_fraction"] == pytest.approx(counts["n_infected"][0] / counts["n_nuclei"][0])


def test_iter_plate_is_deterministic_and_plate_count_free():
    demo = small_demo()
    lib = synth.make_library(demo)

    def first(d, plate):
        row, images, masks, rows = next(synth.iter_plate(d, "HRCE-1", plate, lib))
        return images, masks, rows

    a = first(demo, 2)
    b = first({**demo, "plates": 10}, 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    c = first(demo, 1)
    assert not np.array_equal(a[0], c[0])


# ------------------------------------------------------------------ glue scripts


def test_glue_scripts(tmp_path):
    import synth_library
    import synth_plate

    demo = small_demo()
    lib_path = tmp_path / "truth" / "compounds.csv"
    synth_library.main({"demo": demo}, {}, {"library": str(lib_path)}, str(tmp_path / "lib.log"))
    lib = pd.read_csv(lib_path)
    assert list(lib.columns) == synth.LIBRARY_COLUMNS and len(lib) == 4

    out = {
        "images": str(tmp_path / "images" / "HRCE-1" / "Plate1"),
        "metadata": str(tmp_path / "parts" / "HRCE-1_1.csv"),
        "truth": str(tmp_path / "truth" / "sites" / "HRCE-1_1.parquet"),
        "masks": str(tmp_path / "truth" / "masks" / "HRCE-1_1.npz"),
    }
    log = tmp_path / "plate.log"
    synth_plate.main({"demo": demo}, {"experiment": "HRCE-1", "plate": "1"}, out, str(log), {"library": str(lib_path)})
    logging.shutdown()
    meta = pd.read_csv(out["metadata"])
    assert list(meta.columns) == synth.METADATA_COLUMNS and len(meta) == 14 * 4
    pngs = sorted(Path(out["images"]).iterdir())
    assert len(pngs) == 14 * 4 * 5 and not list(tmp_path.rglob("*.tmp"))
    well, site = meta.loc[0, "well"], meta.loc[0, "site"]
    img = Image.open(Path(out["images"]) / f"{well}_s{site}_w1.png")
    assert img.mode == "L" and img.size == (64, 64)
    truth = pd.read_parquet(out["truth"])
    assert list(truth["site_id"]) == list(meta["site_id"]) and truth["failed"].sum() == 4
    masks = np.load(out["masks"])
    assert masks["infected"].shape == (56, 64, 64) and masks["infected"].dtype == bool
    assert list(masks["site_id"]) == list(meta["site_id"])
    assert "14/14 wells" in log.read_text()
    # the library from the CSV and rebuilt from params give the same plate
    out2 = {k: v.replace(str(tmp_path), str(tmp_path / "again")) for k, v in out.items()}
    synth_plate.main({"demo": demo}, {"experiment": "HRCE-1", "plate": "1"}, out2, str(tmp_path / "again.log"))
    assert pd.read_parquet(out2["truth"]).equals(truth)
    a = Path(out["images"]) / f"{well}_s{site}_w2.png"
    b = Path(out2["images"]) / f"{well}_s{site}_w2.png"
    assert np.array_equal(np.array(Image.open(a)), np.array(Image.open(b)))


def test_nearest_focus_distance():
    cells = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 10.0]])
    foci = np.array([[0.0, 0.0], [10.0, 13.0]])
    assert np.allclose(synth.nearest_focus_distance(cells, foci), [0.0, 5.0, 3.0])
    assert np.array_equal(synth.nearest_focus_distance(cells, np.zeros((0, 2))), np.zeros(3))
    assert synth.nearest_focus_distance(np.zeros((0, 2)), foci).shape == (0,)
