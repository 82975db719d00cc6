"""Synthetic demo screen in the exact RxRx19a layout, with its hidden truth.

A seeded, deterministic world (docs/method.md §12): HRCE-like cells with five stains,
SARS-CoV-2 infection spreading in local foci with cytopathic effects, and a compound
library whose hidden dose-response (efficacy and toxicity) drives each treated well.

Geometry: the four sites of a well are rendered as one contiguous 2x2 field
(s1 s2 / s3 s4) and then cut, so nuclei on site borders are real shared objects (that is
what stitching is for). All lengths are fractions of the site size, so one config renders
at 128 px and at 1024 px.

Randomness: every plate draws from ``np.random.SeedSequence`` entropy built from
(seed, experiment, plate, library digest, config digest without ``plates``), every well
from that plus the well name, so adding a plate or changing the order of work never
changes another plate. Strings enter the entropy through ``zlib.crc32`` (Python's
``hash()`` is salted per process).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from deemd.metadata import COLUMNS

# The RxRx19a metadata.csv columns, in order.
METADATA_COLUMNS = COLUMNS
LIBRARY_COLUMNS = [
    "treatment",
    "SMILES",
    "kind",
    "ec50_um",
    "emax",
    "hill",
    "tox_ic50_um",
    "tox_max",
    "max_efficacy",
    "best_nontoxic_efficacy",
]
# The columns that fix a plate's content (library_digest): the derived truth columns are
# left out, so adding one never changes a plate.
DIGEST_COLUMNS = LIBRARY_COLUMNS[:9]
TRUTH_COLUMNS = [
    "site_id",
    "well_id",
    "plate",
    "well",
    "site",
    "disease_condition",
    "treatment",
    "treatment_conc",
    "failed",
    "n_cells",
    "n_nuclei",
    "n_infected",
    "n_dead",
    "infected_fraction",
    "moi_effective",
    "toxic_kill",
]
INFECTED = "Active SARS-CoV-2"
MOCK = "Mock"
UV = "UV Inactivated SARS-CoV-2"
CONDITIONS = (INFECTED, MOCK, UV)
CHANNELS = ("Hoechst", "ConA", "Phalloidin", "Syto14", "WGA")
SITES = 4
CELL_TYPE = "HRCE"
# Hill slope of toxicity (the library table has no column for it: one slope for all).
TOX_HILL = 2.0
# A dose is non-toxic when it kills less than this share of the cells; the truth column
# best_nontoxic_efficacy is the best share of infection removed over such doses (a dose
# that kills a third of the cells would not be given as an antiviral).
NONTOXIC_KILL = 0.3
# Keys of the demo config that do not shape a foci plate: the plate count (adding a plate
# must not change a plate), the world selector and the diffuse world's own section.
DIGEST_IGNORED = ("plates", "world", "diffuse")

# Defaults of the optional keys; the config may override any of them.
CELL_DEFAULTS = {
    "per_site": 45,
    "nucleus_radius": 0.03,  # fraction of the site size
    "cell_radius": 0.065,  # fraction of the site size
    "min_spacing": 3.2,  # nucleus centres at least this many nucleus radii apart
    "density_sd": 0.08,  # log-sd of the well-to-well seeding density
}
INFECTION_DEFAULTS = {
    "foci_per_site": 2.0,
    "death_rate": 0.35,
    "syncytia_rate": 0.2,
    "cpe_strength": 1.0,
    "fragmentation": 0.3,
    "debris": 0.5,  # share of dead cells that leave a small bright debris spot
}
PLATE_DEFAULTS = {
    "gain_sd": 0.15,
    "illumination": 0.25,  # vignetting: relative intensity loss in the site corners
    "noise": 0.02,  # read noise sd, fraction of full scale (shot noise grows with signal)
    "blur": 0.004,  # optical blur sigma, fraction of the site size
    "background": 0.04,  # mean background level, fraction of full scale
}

# The demo block of config/config.yaml (less demo.world), for tests and benchmarks that
# build a screen without the workflow; tests/test_synth.py keeps the two equal.
DEFAULT_DEMO = {
    "seed": 20211,
    "experiment": "HRCE-1",
    "plates": 3,
    "plate_rows": 16,
    "plate_columns": 24,
    "site_size": 128,
    "compounds": 24,
    "concentrations_um": [0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
    "replicates_per_plate": 1,
    "controls_per_plate": {MOCK: 8, UV: 8, INFECTED: 16},
    "failed_wells_per_plate": 1,
    "compound_classes": {"effective": 0.25, "partial": 0.15, "toxic": 0.15, "effective_toxic": 0.1, "inactive": 0.35},
    "moi": 0.4,
    "cells": {"per_site": 45, "nucleus_radius": 0.03, "cell_radius": 0.065},
    "infection": {"foci_per_site": 2.0, "death_rate": 0.35, "syncytia_rate": 0.2, "cpe_strength": 1.0, "fragmentation": 0.3},
    "plate_effects": {"gain_sd": 0.15, "illumination": 0.25, "noise": 0.02},
}


# --------------------------------------------------------------------------- seeding


def _entropy_word(part) -> int:
    """One non-negative int per part: ints as they are, anything else via crc32 of its text."""
    if isinstance(part, (bool, np.bool_)):
        return int(part)
    if isinstance(part, (int, np.integer)) and part >= 0:
        return int(part)
    return zlib.crc32(str(part).encode("utf-8"))


def rng_from(*parts) -> np.random.Generator:
    """Generator seeded by a SeedSequence over ``parts`` (ints or strings); stable across
    processes and Python versions."""
    return np.random.default_rng(np.random.SeedSequence([_entropy_word(p) for p in parts]))


def config_digest(demo: dict, ignored: tuple = DIGEST_IGNORED) -> int:
    """crc32 of the demo config without the ``ignored`` keys (by default the plate count,
    which must not change a plate, and the keys the foci world does not read)."""
    body = {k: v for k, v in demo.items() if k not in ignored}
    return zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode("utf-8"))


def library_digest(library: pd.DataFrame) -> int:
    """crc32 of the library's canonical CSV text: equal for a table and its CSV round trip
    (values are stored rounded to 6 significant digits)."""
    text = library[DIGEST_COLUMNS].to_csv(index=False, float_format="%.6g", lineterminator="\n")
    return zlib.crc32(text.encode("utf-8"))


def plate_entropy(demo: dict, experiment: str, plate: int, library: pd.DataFrame, digest: int | None = None) -> list[int]:
    """Entropy words that fix one plate's content; ``digest``: the config digest (default
    ``config_digest(demo)``; another world passes its own)."""
    return [
        _entropy_word(int(demo["seed"])),
        _entropy_word(str(experiment)),
        int(plate),
        library_digest(library),
        config_digest(demo) if digest is None else int(digest),
    ]


def config_section(demo: dict, key: str, defaults: dict) -> dict:
    """A config section with defaults filled in."""
    return {**defaults, **(demo.get(key) or {})}


# --------------------------------------------------------------------------- library


def hill(conc, top, ec50, slope) -> np.ndarray:
    """Hill curve top * c^h / (c^h + ec50^h); 0 where there is no curve (top 0 or ec50 NaN)."""
    c = np.asarray(conc, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # written as top / (1 + (ec50/c)^h): exact limits at c = 0 and c -> inf
        effect = np.asarray(top, dtype=float) / (1.0 + (np.asarray(ec50, dtype=float) / c) ** np.asarray(slope, dtype=float))
    return np.where(np.isfinite(effect), effect, 0.0)


def class_counts(n: int, fractions: dict) -> dict:
    """Split n items over classes by their fractions (largest remainder; ties by order)."""
    names = list(fractions)
    share = np.array([float(fractions[k]) for k in names])
    if share.sum() <= 0:
        raise ValueError("compound_classes: fractions must sum to more than 0")
    exact = share / share.sum() * n
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, counts.tolist()))


_RINGS = ["c1ccccc1", "c1ccncc1", "c1ccc2ccccc2c1", "C1CCNCC1", "C1CCOCC1", "c1ccsc1", "c1cn[nH]c1", "C1CC1", "c1ccoc1"]
_LINKERS = ["C(=O)N", "NC(=O)", "CC", "O", "N", "S(=O)(=O)N", "C(=O)O", "CN", "OC", "C=C", "CC(C)"]
# Caps start the string, so their last atom must have a free valence for the next fragment.
_CAPS = ["C", "F", "Cl", "CO", "FC(F)(F)", "N", "O", "N#C", "CC", "Br"]


def random_smiles(rng: np.random.Generator) -> str:
    """A plausible drug-like SMILES: 2-3 rings joined by linkers, capped by a substituent.
    Every fragment closes its own rings, so the concatenation is valid SMILES."""
    n_rings = int(rng.integers(2, 4))
    parts = []
    for i in range(n_rings):
        parts.append(str(rng.choice(_RINGS)))
        if i < n_rings - 1:
            parts.append(str(rng.choice(_LINKERS)))
    return str(rng.choice(_CAPS)) + "".join(parts)


def _r6(x) -> np.ndarray:
    """Round to 6 significant digits so the CSV round trip is exact."""
    return np.array([float(f"{v:.6g}") if np.isfinite(v) else np.nan for v in np.asarray(x, float)])


def make_library(demo: dict) -> pd.DataFrame:
    """Compound library with hidden truth, one row per compound (LIBRARY_COLUMNS).

    Kinds: effective (emax 0.9-1), partial (0.35-0.65), toxic (no antiviral effect; kills
    cells with tox_ic50 1-8 uM), effective_toxic (effective, toxic at 3-20 uM), inactive.
    EC50s sit inside the tested range so curves are visible. max_efficacy is the largest
    antiviral effect over the tested concentrations (the ranking truth)."""
    concs = np.asarray(demo["concentrations_um"], dtype=float)
    n = int(demo["compounds"])
    counts = class_counts(n, demo["compound_classes"])
    rng = rng_from(demo["seed"], "library", n, json.dumps(demo["compound_classes"], sort_keys=True), json.dumps(list(map(float, concs))))
    kinds = np.array([k for k, c in counts.items() for _ in range(c)], dtype=object)
    kinds = kinds[rng.permutation(n)]
    lo, hi = np.log10(concs.min()), np.log10(concs.max())
    rows = []
    for i, kind in enumerate(kinds):
        u = rng.random(6)  # fixed draws per compound: kinds do not shift each other's values
        ec50 = emax = slope = tox_ic50 = np.nan
        tox_max = 0.0
        if kind in ("effective", "partial", "effective_toxic"):
            # EC50 log-uniform over the lower 3/4 of the tested range
            ec50 = 10 ** (lo + 0.3 + u[0] * 0.7 * (hi - lo))
            # Effective: near-complete rescue at a saturating dose (as remdesivir in
            # RxRx19a); partial: a third to two thirds of the infection removed.
            emax = 0.9 + 0.1 * u[1] if kind != "partial" else 0.35 + 0.3 * u[1]
            slope = 1.0 + 1.5 * u[2]
        else:
            emax = 0.0
        if kind == "toxic":
            tox_ic50 = 10 ** (np.log10(1.0) + u[3] * np.log10(8.0))
            tox_max = 0.7 + 0.25 * u[4]
        elif kind == "effective_toxic":
            tox_ic50 = 10 ** (np.log10(3.0) + u[3] * np.log10(20.0 / 3.0))
            tox_max = 0.6 + 0.3 * u[4]
        rows.append(compound_row(i, random_smiles(rng), kind, ec50, emax, slope, tox_ic50, tox_max))
    return library_table(rows, concs, float(demo["moi"]))


def compound_row(index: int, smiles: str, kind, ec50, emax, slope, tox_ic50, tox_max) -> dict:
    """One compound of either world's library: its name DEMO-<index + 1>, SMILES, kind,
    antiviral 4PL (ec50_um, emax, hill) and toxicity (tox_ic50_um, tox_max)."""
    return {"treatment": f"DEMO-{index + 1:03d}", "SMILES": smiles, "kind": str(kind), "ec50_um": ec50, "emax": emax,
            "hill": slope, "tox_ic50_um": tox_ic50, "tox_max": tox_max}


def library_table(rows: list[dict], concs: np.ndarray, moi: float) -> pd.DataFrame:
    """The library of either world from its per-compound draws (treatment, SMILES, kind,
    ec50_um, emax, hill, tox_ic50_um, tox_max): values rounded to 6 digits, and the truth
    columns max_efficacy and best_nontoxic_efficacy over the tested concentrations."""
    lib = pd.DataFrame(rows)
    for col in ("ec50_um", "emax", "hill", "tox_ic50_um", "tox_max"):
        lib[col] = _r6(lib[col])
    effects = hill(concs[None, :], lib["emax"].to_numpy()[:, None], lib["ec50_um"].to_numpy()[:, None], lib["hill"].to_numpy()[:, None])
    lib["max_efficacy"] = _r6(effects.max(axis=1))
    lib["best_nontoxic_efficacy"] = best_nontoxic_efficacy(lib, concs, moi)
    return lib[LIBRARY_COLUMNS]


def share_removed(effect, moi: float) -> np.ndarray:
    """True share of infection a dose removes, 1 - P(infected | dose) / P(infected | none),
    where a cell is infected with probability 1 - exp(-MOI (1 - effect)) (both worlds keep
    that share per well). ``effect``: the Hill effect on the MOI, 0-1 (array of any shape)."""
    e = np.clip(np.asarray(effect, dtype=float), 0.0, 1.0)
    return 1.0 - (-np.expm1(-moi * (1.0 - e))) / (-np.expm1(-moi))


def best_nontoxic_efficacy(library: pd.DataFrame, concs, moi: float) -> np.ndarray:
    """Per compound (float, length of ``library``): the largest true share of infection
    removed (``share_removed``) over the tested doses ``concs`` (uM) at which it kills less
    than NONTOXIC_KILL of the cells; 0 when every dose kills more. Rounded to 6 digits."""
    c = np.asarray(concs, dtype=float)[None, :]
    col = lambda name: library[name].to_numpy(dtype=float)[:, None]  # noqa: E731
    effect = hill(c, col("emax"), col("ec50_um"), col("hill"))
    kill = hill(c, col("tox_max"), col("tox_ic50_um"), TOX_HILL)
    removed = np.where(kill < NONTOXIC_KILL, share_removed(effect, moi), 0.0)
    return _r6(np.clip(removed.max(axis=1, initial=0.0), 0.0, 1.0))


# --------------------------------------------------------------------------- plate layout


def well_names(rows: int, columns: int) -> list[str]:
    """Well names in plate order: A01, A02, ..., P24 (row letters, 2-digit columns)."""
    letters = [chr(ord("A") + r) if r < 26 else "A" + chr(ord("A") + r - 26) for r in range(rows)]
    return [f"{letters[r]}{c + 1:02d}" for r in range(rows) for c in range(columns)]


def well_effects(library: pd.DataFrame, treatment, conc, moi: float) -> tuple[np.ndarray, np.ndarray]:
    """Effective MOI and toxic kill fraction of treated wells (treatment names, uM)."""
    lib = library.set_index("treatment")
    rows = lib.loc[list(treatment)]
    c = np.asarray(conc, dtype=float)
    effect = hill(c, rows["emax"].to_numpy(), rows["ec50_um"].to_numpy(), rows["hill"].to_numpy())
    tox = hill(c, rows["tox_max"].to_numpy(), rows["tox_ic50_um"].to_numpy(), TOX_HILL)
    return moi * (1.0 - effect), tox


def plate_layout(
    library: pd.DataFrame,
    demo: dict,
    experiment: str,
    plate: int,
    replicates: dict | None = None,
    entropy: list | None = None,
) -> pd.DataFrame:
    """One row per used well of a plate, in plate order: well, disease_condition,
    treatment, treatment_conc, SMILES, and the hidden failed, moi_effective, toxic_kill.

    Each plate holds every control and every (compound, concentration) x replicates at
    random positions; ``failed_wells_per_plate`` wells get no cells. ``replicates``: wells
    per concentration of each treatment on this plate (default ``replicates_per_plate``
    for all); ``entropy``: the plate's entropy words (default ``plate_entropy``)."""
    if entropy is None:
        entropy = plate_entropy(demo, experiment, plate, library)
    rng = rng_from(*entropy, "layout")
    wells = well_names(int(demo["plate_rows"]), int(demo["plate_columns"]))
    entries = []
    for condition, n in demo["controls_per_plate"].items():
        if condition not in CONDITIONS:
            raise ValueError(f"controls_per_plate: unknown disease_condition {condition!r}")
        entries += [(condition, None, np.nan, None)] * int(n)
    if replicates is None:
        replicates = dict.fromkeys(library["treatment"], int(demo["replicates_per_plate"]))
    for r in range(max(replicates.values(), default=0)):
        for name, smiles in zip(library["treatment"], library["SMILES"]):
            if r < replicates[name]:
                for c in demo["concentrations_um"]:
                    entries.append((INFECTED, name, float(c), smiles))
    if len(entries) > len(wells):
        raise ValueError(f"plate needs {len(entries)} wells but has {len(wells)}")
    position = np.sort(rng.permutation(len(wells))[: len(entries)])
    order = rng.permutation(len(entries))  # random assignment of entries to the used wells
    layout = pd.DataFrame([entries[i] for i in order], columns=["disease_condition", "treatment", "treatment_conc", "SMILES"])
    layout.insert(0, "well", [wells[p] for p in position])
    layout["treatment_conc"] = layout["treatment_conc"].astype(float)
    n_failed = min(int(demo.get("failed_wells_per_plate", 0)), len(layout))
    failed = np.zeros(len(layout), dtype=bool)
    failed[rng.choice(len(layout), n_failed, replace=False)] = True
    layout["failed"] = failed
    moi = float(demo["moi"])
    layout["moi_effective"] = np.where(layout["disease_condition"] == INFECTED, moi, 0.0)
    layout["toxic_kill"] = 0.0
    treated = layout["treatment"].notna().to_numpy()
    if treated.any():
        m, t = well_effects(library, layout.loc[treated, "treatment"], layout.loc[treated, "treatment_conc"], moi)
        layout.loc[treated, "moi_effective"] = m
        layout.loc[treated, "toxic_kill"] = t
    return layout


def metadata_table(layout: pd.DataFrame, experiment: str, plate: int, sites: int = SITES) -> pd.DataFrame:
    """RxRx19a metadata rows (METADATA_COLUMNS) for every site of the plate's wells;
    the hidden truth columns are not part of it."""
    rep = layout.loc[layout.index.repeat(sites)].reset_index(drop=True)
    site = np.tile(np.arange(1, sites + 1), len(layout))
    well_id = [f"{experiment}_{plate}_{w}" for w in rep["well"]]
    meta = pd.DataFrame(
        {
            "site_id": [f"{wid}_{s}" for wid, s in zip(well_id, site)],
            "well_id": well_id,
            "cell_type": CELL_TYPE,
            "experiment": experiment,
            "plate": int(plate),
            "well": rep["well"].to_numpy(),
            "site": site,
            "disease_condition": rep["disease_condition"].to_numpy(),
            "treatment": rep["treatment"].to_numpy(),
            "treatment_conc": rep["treatment_conc"].to_numpy(dtype=float),
            "SMILES": rep["SMILES"].to_numpy(),
        }
    )
    return meta[METADATA_COLUMNS]


# --------------------------------------------------------------------------- optics


def plate_effects(rng: np.random.Generator, site_size: int, plate_cfg: dict) -> dict:
    """A plate's optics and staining: per-channel ``gain`` and ``offset`` (fractions of full
    scale) and ``illumination`` (5, S, S), a smooth vignetting field per channel whose
    centre drifts from plate to plate, reaching 1 - illumination in the corners."""
    s = int(site_size)
    gain = np.exp(rng.normal(0.0, plate_cfg["gain_sd"], 5))
    offset = plate_cfg["background"] * np.exp(rng.normal(0.0, 0.25, 5))
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s - 0.5
    fields = []
    for _ in range(5):
        cy, cx = rng.normal(0.0, 0.08, 2)
        strength = plate_cfg["illumination"] * rng.uniform(0.8, 1.2)
        r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5
        fields.append(np.clip(1.0 - strength * r2, 0.05, None))
    return {"gain": gain.astype(np.float32), "offset": offset.astype(np.float32), "illumination": np.stack(fields).astype(np.float32)}


def smooth_noise(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Periodic zero-mean, unit-sd random field (n, n) with features of about ``scale`` px.
    White noise is blurred on a grid coarsened by a power of two ~scale/2 and upsampled,
    so the cost stays low at 1024 px; periodic so that rolled copies have no seam."""
    step = 1
    while step * 2 <= max(scale / 2.0, 1.0) and n % (step * 2) == 0:
        step *= 2
    g = ndi.gaussian_filter(rng.standard_normal((n // step, n // step), dtype=np.float32), sigma=max(scale / step, 0.5), mode="wrap")
    if step > 1:
        g = ndi.zoom(g, step, order=1, mode="grid-wrap", grid_mode=True)
    return ((g - g.mean()) / (g.std() + 1e-12)).astype(np.float32)


TEXTURES = ("shape", "chrom", "ret", "punct", "fib", "amp")


def texture_bank(rng: np.random.Generator, site_size: int, cells_cfg: dict) -> np.ndarray:
    """Textures (6, 2S, 2S) of a plate, in TEXTURES order: cell outline raggedness,
    chromatin, ER reticulum, puncta, fibre waviness, fibre strength. Wells use randomly rolled and flipped
    copies (see ``well_textures``): generating fresh noise per well would cost more than
    rendering the cells."""
    s = int(site_size)
    rn, rc = cells_cfg["nucleus_radius"] * s, cells_cfg["cell_radius"] * s
    scales = {"shape": 0.6 * rc, "chrom": 0.2 * rn, "ret": 0.3 * rn, "punct": 0.2 * rn, "fib": 1.0 * rn, "amp": 0.5 * rc}
    return np.stack([smooth_noise(rng, 2 * s, scales[k]) for k in TEXTURES])


def well_textures(rng: np.random.Generator, bank: np.ndarray) -> dict:
    """A well's textures: the plate bank rolled by a random offset and randomly flipped."""
    f = bank.shape[-1]
    t = np.roll(bank, tuple(rng.integers(0, f, 2)), axis=(1, 2))
    if rng.random() < 0.5:
        t = t[:, ::-1]
    if rng.random() < 0.5:
        t = t[:, :, ::-1]
    return dict(zip(TEXTURES, t))


# --------------------------------------------------------------------------- cells


def place_cells(rng: np.random.Generator, n: int, extent: float, min_dist: float, rounds: int = 50) -> np.ndarray:
    """Up to n cell centres (y, x) in [0, extent)^2, no two closer than ``min_dist``.

    Random sequential adsorption done in vectorised rounds: a batch of uniform candidates,
    minus those near accepted centres, minus those near a batch rival with a smaller random
    mark. Unlike pushing points apart, this leaves no chains or rings. A field too crowded
    for n cells gets fewer."""
    yx = np.zeros((0, 2))
    for _ in range(rounds):
        need = n - len(yx)
        if need <= 0:
            break
        cand = rng.random((2 * need + 16, 2)) * extent
        if len(yx):
            d, _ = cKDTree(yx).query(cand, distance_upper_bound=min_dist)
            cand = cand[~np.isfinite(d)]
        if len(cand) > 1:
            mark = rng.random(len(cand))
            pairs = cKDTree(cand).query_pairs(min_dist, output_type="ndarray")
            lose = np.where(mark[pairs[:, 0]] > mark[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
            cand = np.delete(cand, np.unique(lose), axis=0)
        yx = np.concatenate([yx, cand[:need]])
    return yx


def site_of(yx: np.ndarray, site_size: int) -> np.ndarray:
    """Site index 0..3 of points in a 2x2 well field (s1 s2 / s3 s4)."""
    return (yx[:, 0] >= site_size).astype(int) * 2 + (yx[:, 1] >= site_size).astype(int)


def make_cells(rng: np.random.Generator, n: int, site_size: int, cells_cfg: dict) -> dict:
    """Per-cell parameters for n cells in a 2x2 well field: positions (px), radii (px),
    nucleus ellipse, nucleoli, Golgi and fibre directions, per-channel brightness.
    Cells whose centres round to the same pixel are dropped (one seed per pixel)."""
    s = int(site_size)
    rn = cells_cfg["nucleus_radius"] * s
    yx = place_cells(rng, n, 2 * s, cells_cfg["min_spacing"] * rn)
    pix = np.rint(np.clip(yx, 0, 2 * s - 1)).astype(int)
    _, first = np.unique(pix[:, 0] * (2 * s) + pix[:, 1], return_index=True)
    yx = yx[np.sort(first)]
    n = len(yx)
    size = np.exp(rng.normal(0.0, 0.1, n))
    aspect = 1.0 + rng.uniform(0.0, 0.35, n)
    return {
        "yx": yx,
        "site": site_of(yx, s),
        "r_cell": cells_cfg["cell_radius"] * s * np.exp(rng.normal(0.0, 0.12, n)),
        "nuc_a": rn * size * np.sqrt(aspect),  # semi-axes with area of a circle of radius rn*size
        "nuc_b": rn * size / np.sqrt(aspect),
        "theta": rng.uniform(0.0, np.pi, n),
        "bright": np.exp(rng.normal(0.0, 0.18, (n, 5))),
        "nucleoli": rng.uniform(-0.45, 0.45, (n, 2, 2)),  # positions in unit-nucleus coords
        "nucleoli_int": rng.uniform(0.4, 1.0, (n, 2)) * (rng.random((n, 2)) < 0.85),
        "golgi_angle": rng.uniform(0.0, 2 * np.pi, n),
        "fibre_angle": rng.uniform(0.0, np.pi, n),
        "fibre_phase": rng.uniform(0.0, 2 * np.pi, n),
        "lobes": rng.normal(0.0, 1.0, (n, 3, 2)),  # directions of nuclear fragments
        "cpe": rng.uniform(0.6, 1.4, n),  # per-cell strength of cytopathic effects
        "infected": np.zeros(n, dtype=bool),
        "dead": np.zeros(n, dtype=bool),
        "syncytial": np.zeros(n, dtype=bool),
        "fragmented": np.zeros(n, dtype=bool),
        "debris": np.zeros(n, dtype=bool),
        "body": np.arange(n),
    }


def foci_centres(rng: np.random.Generator, site_size: int, foci_per_site: float, keep: float = 1.0) -> np.ndarray:
    """Infection foci (y, x): per site 1 + Poisson(foci_per_site - 1), uniform in the site,
    so every site of an untreated infected well has a focus to grow from. A treatment that
    lowers the MOI to a share ``keep`` of it lets each focus form with that probability:
    infection events, and so foci, scale with the MOI, which leaves sites of a well-treated
    well free of infection (as in a real screen) instead of holding a few stray cells."""
    s = int(site_size)
    out = []
    for k in range(SITES):
        m = 1 + rng.poisson(max(foci_per_site - 1.0, 0.0))
        if keep < 1.0:
            m = rng.binomial(m, max(keep, 0.0))
        oy, ox = (k // 2) * s, (k % 2) * s
        out.append(rng.random((m, 2)) * s + [oy, ox])
    return np.concatenate(out)


def focus_site_probability(foci_per_site: float, keep: float) -> float:
    """Probability that a site keeps at least one focus under foci_centres(keep=keep):
    1 - (1 - keep) exp(-(foci_per_site - 1) keep)."""
    keep = min(max(keep, 0.0), 1.0)
    return 1.0 - (1.0 - keep) * float(np.exp(-max(foci_per_site - 1.0, 0.0) * keep))


def nearest_focus_distance(yx: np.ndarray, foci: np.ndarray) -> np.ndarray:
    """Distance (px) from each cell position to its nearest infection focus; zeros when
    there are no foci."""
    if len(yx) == 0 or len(foci) == 0:
        return np.zeros(len(yx))
    return np.sqrt(((yx[:, None, :] - foci[None, :, :]) ** 2).sum(-1)).min(1)


def choose_infected(rng: np.random.Generator, yx: np.ndarray, site: np.ndarray, p_infected: float, foci: np.ndarray, site_size: int) -> np.ndarray:
    """Per site, Binomial(n_site, p) cells infected: those nearest to any focus (with a
    ragged, noisy distance) so infection forms local clusters. A site without a focus of
    its own stays free of infection."""
    n = len(yx)
    infected = np.zeros(n, dtype=bool)
    if n == 0 or p_infected <= 0 or len(foci) == 0:
        return infected
    d = nearest_focus_distance(yx, foci) * np.exp(rng.normal(0.0, 0.3, n))
    sites_with_focus = set(site_of(foci, site_size).tolist())
    for s in range(SITES):
        if s not in sites_with_focus:
            continue
        idx = np.flatnonzero(site == s)
        k = rng.binomial(len(idx), min(p_infected, 1.0))
        infected[idx[np.argsort(d[idx], kind="stable")[:k]]] = True
    return infected


def fuse_syncytia(rng: np.random.Generator, yx: np.ndarray, candidates: np.ndarray, rate: float, max_dist: float) -> np.ndarray:
    """Body label per cell: each candidate fuses with probability ``rate`` with its nearest
    candidate neighbour (if closer than max_dist); fused groups share one label."""
    n = len(yx)
    body = np.arange(n)
    idx = np.flatnonzero(candidates)
    if len(idx) < 2 or rate <= 0:
        return body
    p = yx[idx]
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(1)
    ok = (rng.random(len(idx)) < rate) & (d[np.arange(len(idx)), nn] < max_dist)
    graph = coo_matrix((np.ones(ok.sum()), (np.flatnonzero(ok), nn[ok])), shape=(len(idx), len(idx)))
    _, comp = connected_components(graph, directed=False)
    body[idx] = n + comp
    return np.unique(body, return_inverse=True)[1]


def apply_fate(rng: np.random.Generator, cells: dict, site_size: int, moi_effective: float, toxic_kill: float, infection_cfg: dict, focus_keep: float = 1.0) -> dict:
    """Infection (a 1 - exp(-MOI_eff) share of the well, in foci), death of infected cells
    (more at focus centres), toxic death of any cell, syncytia among surviving infected
    neighbours, fragmented nuclei and debris. ``focus_keep`` (MOI_eff / MOI of a treated
    well) thins the foci; the sites that keep one hold the well's infected share, so the
    well-level share stays 1 - exp(-MOI_eff). Returns a new cell dict."""
    c = dict(cells)
    n = len(c["yx"])
    foci_per_site = infection_cfg["foci_per_site"]
    foci = foci_centres(rng, site_size, foci_per_site, focus_keep)
    p_inf = 1.0 - np.exp(-max(moi_effective, 0.0))
    if focus_keep < 1.0 and len(foci):
        p_inf = min(1.0, p_inf / focus_site_probability(foci_per_site, focus_keep))
    infected = choose_infected(rng, c["yx"], c["site"], p_inf, foci, site_size)
    # Death probability falls from 2x death_rate at a focus centre to 0 at its rim.
    d = nearest_focus_distance(c["yx"], foci)
    q = np.zeros(n)
    if infected.any():
        q[infected] = (np.argsort(np.argsort(d[infected])) + 0.5) / infected.sum()
    dies = infected & (rng.random(n) < np.clip(infection_cfg["death_rate"] * 2.0 * (1.0 - q), 0.0, 1.0))
    toxic = rng.random(n) < toxic_kill
    dead = dies | toxic
    alive_inf = infected & ~dead
    c["infected"] = infected
    c["dead"] = dead
    c["body"] = fuse_syncytia(rng, c["yx"], alive_inf, infection_cfg["syncytia_rate"], 2.4 * np.median(c["r_cell"]) if n else 0.0)
    syncytial = np.bincount(c["body"], minlength=n)[c["body"]] > 1 if n else np.zeros(0, bool)
    c["syncytial"] = syncytial & alive_inf
    c["fragmented"] = alive_inf & (rng.random(n) < infection_cfg["fragmentation"])
    c["debris"] = dead & (rng.random(n) < infection_cfg.get("debris", 0.5))
    return c


# --------------------------------------------------------------------------- rendering


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label image (0 = background) that touch a different label."""
    e = np.zeros(labels.shape, dtype=bool)
    dv = labels[1:, :] != labels[:-1, :]
    dh = labels[:, 1:] != labels[:, :-1]
    e[1:, :] |= dv
    e[:-1, :] |= dv
    e[:, 1:] |= dh
    e[:, :-1] |= dh
    return e & (labels > 0)


@dataclass
class _WellPixels:
    """Per-pixel layers of a well field (2S, 2S), float32 unless said otherwise.

    ``owner`` (int) indexes the living cell whose territory (nearest seed) holds the pixel;
    ``dist`` and ``dy``, ``dx`` are the pixel's distance and offsets from that seed;
    ``u``, ``v`` its coordinates in the unit frame of the owner's nuclear ellipse. The
    layers in [0, 1]: ``body`` (soft cell body), ``nucleus``, ``cytoplasm``, ``perinuclear``
    (falls off outside the nucleus), ``membrane`` (body edges); ``cpe`` the CPE strength
    (``cpe_capped`` at most 1), ``puncta`` sparse bright spots, ``textures`` the well's
    texture fields (well_textures)."""

    owner: np.ndarray
    dist: np.ndarray
    dy: np.ndarray
    dx: np.ndarray
    textures: dict
    u: np.ndarray | None = None
    v: np.ndarray | None = None
    body: np.ndarray | None = None
    nucleus: np.ndarray | None = None
    cytoplasm: np.ndarray | None = None
    perinuclear: np.ndarray | None = None
    membrane: np.ndarray | None = None
    cpe: np.ndarray | None = None
    cpe_capped: np.ndarray | None = None
    puncta: np.ndarray | None = None


def _territories(seeds_yx: np.ndarray, field_size: int, textures: dict) -> _WellPixels:
    """Nearest-seed territories (distance transform with indices) of seeds (n, 2) px."""
    pix = np.rint(np.clip(seeds_yx, 0, field_size - 1)).astype(int)
    markers = np.zeros((field_size, field_size), dtype=np.int32)
    markers[pix[:, 0], pix[:, 1]] = np.arange(1, len(seeds_yx) + 1)
    dist, (ny, nx) = ndi.distance_transform_edt(markers == 0, return_indices=True)
    owner = markers[ny, nx] - 1
    dy = (np.arange(field_size, dtype=np.float32)[:, None] - ny).astype(np.float32)
    dx = (np.arange(field_size, dtype=np.float32)[None, :] - nx).astype(np.float32)
    return _WellPixels(owner=owner, dist=dist.astype(np.float32), dy=dy, dx=dx, textures=textures)


def _cell_bodies(living: dict, px: _WellPixels, toxic_kill: float, soft: float) -> np.ndarray:
    """Soft cell bodies in ``px.body``: a ragged radius; infected cells round up and shrink,
    syncytia spread, toxicity shrinks all. Returns the per-cell radius (n,) float32."""
    f32 = np.float32
    infected, syncytial = living["infected"], living["syncytial"]
    r_cell = (living["r_cell"] * np.where(infected, np.where(syncytial, 1.2, 0.75), 1.0) * (1.0 - 0.15 * toxic_kill)).astype(f32)
    ragged = np.where(infected & ~syncytial, 0.05, 0.18).astype(f32)
    own = px.owner
    px.body = np.clip((r_cell[own] * (1.0 + ragged[own] * px.textures["shape"]) - px.dist) * f32(1.0 / soft) + 0.5, 0.0, 1.0)
    return r_cell


def _nuclei(living: dict, px: _WellPixels, soft: float) -> np.ndarray:
    """Nuclei in ``px.nucleus`` (and the ellipse frame ``px.u``, ``px.v``): a rotated
    ellipse in the owner's frame, condensed (smaller) when infected; fragmented nuclei are
    three overlapping lobes, still one blob after smoothing. Returns the per-pixel minor
    semi-axis (2S, 2S) float32."""
    f32 = np.float32
    own = px.owner
    shrink = np.where(living["infected"], 0.85, 1.0).astype(f32)
    minor_per_cell = living["nuc_b"] * shrink
    major = (living["nuc_a"] * shrink)[own]
    minor = minor_per_cell[own]
    cos_t, sin_t = np.cos(living["theta"])[own], np.sin(living["theta"])[own]
    u = (px.dx * cos_t + px.dy * sin_t) / major
    v = (-px.dx * sin_t + px.dy * cos_t) / minor
    rho = np.sqrt(u * u + v * v)
    nucleus = np.clip((1.0 - rho) * minor * f32(1.0 / soft) + 0.5, 0.0, 1.0)
    lobed = np.flatnonzero((living["fragmented"][own] & (rho < 1.6)).ravel())
    if lobed.size:
        cell = own.ravel()[lobed]
        lobes = living["lobes"][cell]  # (m, 3, 2)
        lobes = 0.42 * lobes / np.maximum(np.linalg.norm(lobes, axis=-1, keepdims=True), 1e-6)
        lobe_radius = 0.6
        d_lobe = np.sqrt((u.ravel()[lobed, None] - lobes[..., 0]) ** 2 + (v.ravel()[lobed, None] - lobes[..., 1]) ** 2) / lobe_radius
        nucleus.ravel()[lobed] = np.clip((1.0 - d_lobe) * lobe_radius * minor_per_cell[cell][:, None] / soft + 0.5, 0.0, 1.0).max(1)
    nucleus *= px.body > 0  # a nucleus never leaves its cell (seeds are its centre)
    px.u, px.v, px.nucleus = u, v, nucleus
    return minor


def _membranes(body_labels: np.ndarray, px: _WellPixels, nucleus_radius: float) -> None:
    """``px.membrane``: edges of the body label image (fused syncytia share a label),
    blurred to a width of about 0.08 nucleus radii."""
    f32 = np.float32
    labels = np.where(px.body > 0.5, (body_labels + 1).astype(np.int32)[px.owner], 0)
    edge = _edges(labels).astype(f32)
    sigma = 0.08 * nucleus_radius
    if sigma >= 0.5:
        edge = np.clip(ndi.gaussian_filter(edge, sigma) * (sigma * 2.0), 0.0, 1.0)
    px.membrane = edge * px.body


def _hoechst(living: dict, px: _WellPixels, infected: np.ndarray, toxic_kill: float) -> np.ndarray:
    """w1 Hoechst: chromatin-textured nuclei, brighter and smoother when condensed."""
    own = px.owner
    gain = 0.45 * living["bright"][:, 0] * (1.0 + 0.35 * infected) * (1.0 - 0.15 * toxic_kill)
    chromatin_contrast = 0.3 * (1.0 - 0.5 * infected)
    return gain[own] * px.nucleus * (1.0 + chromatin_contrast[own] * np.clip(px.textures["chrom"], -2.0, 2.0))


def _cona(living: dict, px: _WellPixels, dim: np.float32) -> np.ndarray:
    """w2 ConA: perinuclear ER reticulum; infected: brighter, spread, with puncta."""
    cp, tex = px.cpe, px.textures
    er = px.cytoplasm * (px.perinuclear * (1.0 + 0.5 * cp) + 0.25 * cp) * (0.6 + 0.4 * np.clip(tex["ret"], -1.5, 1.5)) + 0.08 * px.body + 0.3 * cp * px.puncta
    return (0.30 * living["bright"][:, 1] * dim)[px.owner] * er


def _phalloidin(living: dict, px: _WellPixels, nucleus_radius: float, dim: np.float32) -> np.ndarray:
    """w3 Phalloidin: cortex + stress fibres; infected cells round: fibres fade, cortex up."""
    own, cp, tex = px.owner, px.cpe, px.textures
    fibre_sin, fibre_cos = np.sin(living["fibre_angle"]), np.cos(living["fibre_angle"])
    wavenumber = np.float32(2 * np.pi / (0.6 * nucleus_radius))
    phase = (-px.dx * (wavenumber * fibre_sin)[own] + px.dy * (wavenumber * fibre_cos)[own]) + living["fibre_phase"][own] + 2.0 * tex["fib"]
    fibres = (0.5 + 0.5 * np.cos(phase)) ** 6 * np.clip(0.4 + 0.6 * tex["amp"], 0.0, 1.5)  # thin, patchy bundles
    actin = 0.8 * px.membrane * (1.0 + 0.8 * cp) + 0.6 * fibres * px.cytoplasm * (1.0 - 0.7 * px.cpe_capped) + 0.1 * px.body * (1.0 + 1.5 * cp)
    return (0.32 * living["bright"][:, 2] * dim)[own] * actin


def _syto14(living: dict, px: _WellPixels, dim: np.float32) -> np.ndarray:
    """w4 Syto14: nucleoli + faint nucleoplasm + cytoplasmic RNA; viral RNA when infected."""
    spots = np.zeros(px.owner.shape, dtype=np.float32)
    inside = np.flatnonzero(px.nucleus.ravel() > 0)  # nucleoli only matter inside nuclei
    cell = px.owner.ravel()[inside]
    nucleoli = living["nucleoli"][cell]  # (m, 2, 2) unit-nucleus coordinates
    d2 = (px.u.ravel()[inside, None] - nucleoli[..., 0]) ** 2 + (px.v.ravel()[inside, None] - nucleoli[..., 1]) ** 2
    spots.ravel()[inside] = (living["nucleoli_int"][cell] * np.exp(d2 * np.float32(-1.0 / (2 * 0.2**2)))).sum(-1)
    rna = px.cytoplasm * (px.perinuclear * (1.0 + 2.5 * px.cpe) + 0.6 * px.cpe * px.puncta)
    return (0.30 * living["bright"][:, 3] * dim)[px.owner] * (px.nucleus * (0.25 + 0.9 * spots) + 0.2 * rna)


def _wga(living: dict, px: _WellPixels, nucleus_radius: float, cpe_capped: np.ndarray, dim: np.float32) -> np.ndarray:
    """w5 WGA: Golgi beside the nucleus + membrane; infected: Golgi disperses, membrane up.
    ``cpe_capped``: the per-cell CPE strength, at most 1."""
    own, cp = px.owner, px.cpe
    golgi_distance = 1.3 * np.sqrt(living["nuc_a"] * living["nuc_b"])
    golgi_y, golgi_x = golgi_distance * np.sin(living["golgi_angle"]), golgi_distance * np.cos(living["golgi_angle"])
    golgi_falloff = (-1.0 / (2 * (0.45 * nucleus_radius * (1.0 + 0.8 * cpe_capped)) ** 2)).astype(np.float32)
    golgi = np.exp(((px.dy - golgi_y[own]) ** 2 + (px.dx - golgi_x[own]) ** 2) * golgi_falloff[own]) * (0.7 + 0.3 * np.clip(-px.textures["ret"], -1, 1))
    wga = golgi * px.body * (1.0 - 0.5 * px.cpe_capped) + 0.55 * px.membrane * (1.0 + 0.7 * cp) + 0.07 * px.body * (1.0 + 2.0 * cp)
    return (0.34 * living["bright"][:, 4] * dim)[own] * wga


def _stamp_debris(raw: np.ndarray, debris_yx: np.ndarray, nucleus_radius: float) -> None:
    """Debris of dead cells added to ``raw`` (5, 2S, 2S): tiny bright spots, much smaller
    than a nucleus; stamped one by one (a handful per well, far cheaper than filtering
    the field)."""
    field_size = raw.shape[-1]
    sigma = max(0.5, 0.18 * nucleus_radius)
    h = int(np.ceil(3 * sigma))
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    for y, x in debris_yx:
        cy, cx = int(round(y)), int(round(x))
        patch = np.exp(-((yy + cy - y) ** 2 + (xx + cx - x) ** 2) / (2 * sigma**2)).astype(np.float32)
        y0, y1, x0, x1 = max(cy - h, 0), min(cy + h + 1, field_size), max(cx - h, 0), min(cx + h + 1, field_size)
        p = patch[y0 - cy + h : y1 - cy + h, x0 - cx + h : x1 - cx + h]
        raw[:, y0:y1, x0:x1] += p * np.array([0.35, 0.0, 0.0, 0.15, 0.25], np.float32)[:, None, None]


def render_well(
    rng: np.random.Generator,
    cells: dict,
    site_size: int,
    cpe_strength: float = 1.0,
    toxic_kill: float = 0.0,
    bank: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free stain intensities (5, 2S, 2S) float32 of a well field, and the mask of
    living infected cell bodies (2S, 2S) bool.

    Territories are nearest-seed regions (distance transform with indices) bounded by each
    cell's ragged radius; per-pixel quantities come from the owning cell's parameters,
    gathered by the index image, so there is no per-pixel or per-cell Python loop.
    ``bank``: the plate's texture bank (made from ``rng`` when not given)."""
    site_size = int(site_size)
    field_size = 2 * site_size
    raw = np.zeros((5, field_size, field_size), dtype=np.float32)
    mask = np.zeros((field_size, field_size), dtype=bool)
    nucleus_radius = float(np.median(np.sqrt(cells["nuc_a"] * cells["nuc_b"]))) if len(cells["yx"]) else 1.0
    soft = max(0.6, 0.12 * nucleus_radius)  # edge softness of nuclei and cells, px
    alive = np.flatnonzero(~cells["dead"])
    if alive.size:
        # per-cell parameters of the living cells, float32 so per-pixel maths stays float32
        living = {k: np.asarray(v)[alive] for k, v in cells.items() if k not in ("yx", "site", "body")}
        living = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in living.items()}
        if bank is None:
            cells_cfg = {"nucleus_radius": nucleus_radius / site_size, "cell_radius": float(np.median(cells["r_cell"])) / site_size}
            bank = texture_bank(rng, site_size, cells_cfg)
        px = _territories(cells["yx"][alive], field_size, well_textures(rng, bank))
        own = px.owner
        # Per-cell coefficients first (cheap), then one gather each into the pixel grid.
        infected = living["infected"].astype(np.float32)
        cpe = (cpe_strength * living["cpe"] * infected).astype(np.float32)
        cpe_capped = np.minimum(cpe, 1.0)
        dim = np.float32(1.0 - 0.5 * toxic_kill)  # toxicity: surviving cells lose signal
        r_cell = _cell_bodies(living, px, toxic_kill, soft)
        minor = _nuclei(living, px, soft)
        px.cytoplasm = px.body * (1.0 - px.nucleus)
        px.perinuclear = np.exp(-np.clip(px.dist - minor, 0.0, None) * (np.float32(1.0) / (0.45 * r_cell))[own])
        _membranes(cells["body"][alive], px, nucleus_radius)
        px.cpe, px.cpe_capped = cpe[own] * px.body, cpe_capped[own] * px.body
        px.puncta = np.clip(px.textures["punct"] - 1.0, 0.0, None)  # sparse bright puncta (replication sites)
        raw[0] = _hoechst(living, px, infected, toxic_kill)
        raw[1] = _cona(living, px, dim)
        raw[2] = _phalloidin(living, px, nucleus_radius, dim)
        raw[3] = _syto14(living, px, dim)
        raw[4] = _wga(living, px, nucleus_radius, cpe_capped, dim)
        mask = (px.body > 0.5) & living["infected"][own]
    debris = np.flatnonzero(cells["debris"])
    if debris.size:
        _stamp_debris(raw, cells["yx"][debris], nucleus_radius)
    return raw, mask


def field_sites(field: np.ndarray) -> np.ndarray:
    """Cut a 2x2 well field (..., 2S, 2S) into sites (4, ..., S, S), order s1 s2 / s3 s4."""
    *lead, h, w = field.shape
    s = h // 2
    x = field.reshape(*lead, 2, s, 2, s)
    x = np.moveaxis(x, (-4, -2), (0, 1))  # (2, 2, ..., s, s)
    return x.reshape(4, *lead, s, s)


def form_images(rng: np.random.Generator, raw: np.ndarray, optics: dict, plate_cfg: dict, site_size: int) -> np.ndarray:
    """Microscope: optical blur of the well field, then per site (field of view) the plate's
    vignetting, gain and offset, shot and read noise, and 8-bit quantisation.
    Returns uint8 (4, 5, S, S)."""
    sig = plate_cfg["blur"] * site_size
    if sig >= 0.3:
        raw = ndi.gaussian_filter(raw, (0, sig, sig))
    sites = field_sites(raw)  # (4, 5, S, S)
    well_gain = np.exp(rng.normal(0.0, 0.04, 5)).astype(np.float32)  # well-to-well staining
    img = optics["offset"][:, None, None] + (optics["gain"] * well_gain)[:, None, None] * optics["illumination"] * sites
    noise = plate_cfg["noise"]
    sd = noise * np.sqrt(1.0 + 12.0 * np.clip(img, 0.0, None))
    img += sd * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- wells


def synth_well(rng: np.random.Generator, well: dict, demo: dict, optics: dict, bank: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One well: images uint8 (4, 5, S, S), infected masks bool (4, S, S), and per-site
    truth counts (arrays of length 4: n_cells, n_nuclei, n_infected, n_dead).
    ``well`` needs failed, moi_effective, toxic_kill; ``optics`` from ``plate_effects``,
    ``bank`` from ``texture_bank``."""
    s = int(demo["site_size"])
    cells_cfg = config_section(demo, "cells", CELL_DEFAULTS)
    inf_cfg = config_section(demo, "infection", INFECTION_DEFAULTS)
    plate_cfg = config_section(demo, "plate_effects", PLATE_DEFAULTS)
    density = np.exp(rng.normal(0.0, cells_cfg["density_sd"]))
    n = 0 if well["failed"] else int(rng.poisson(cells_cfg["per_site"] * SITES * density))
    cells = make_cells(rng, n, s, cells_cfg)
    moi = float(demo["moi"])
    focus_keep = float(well["moi_effective"]) / moi if moi > 0 else 1.0
    cells = apply_fate(rng, cells, s, float(well["moi_effective"]), float(well["toxic_kill"]), inf_cfg, focus_keep)
    if bank is None:
        bank = texture_bank(rng, s, cells_cfg)
    raw, mask = render_well(rng, cells, s, inf_cfg["cpe_strength"], float(well["toxic_kill"]), bank)
    images = form_images(rng, raw, optics, plate_cfg, s)
    site = cells["site"]
    alive = ~cells["dead"]
    counts = {
        "n_cells": np.bincount(site, minlength=SITES),
        "n_nuclei": np.bincount(site[alive], minlength=SITES),
        "n_infected": np.bincount(site[alive & cells["infected"]], minlength=SITES),
        "n_dead": np.bincount(site[cells["dead"]], minlength=SITES),
    }
    return images, field_sites(mask), counts


def truth_rows(layout_row: dict, counts: dict, experiment: str, plate: int) -> list[dict]:
    """Per-site truth rows (TRUTH_COLUMNS) of one well."""
    rows = []
    for k in range(SITES):
        well_id = f"{experiment}_{plate}_{layout_row['well']}"
        nn = int(counts["n_nuclei"][k])
        ni = int(counts["n_infected"][k])
        rows.append(
            {
                "site_id": f"{well_id}_{k + 1}",
                "well_id": well_id,
                "plate": int(plate),
                "well": layout_row["well"],
                "site": k + 1,
                "disease_condition": layout_row["disease_condition"],
                "treatment": layout_row["treatment"],
                "treatment_conc": layout_row["treatment_conc"],
                "failed": bool(layout_row["failed"]),
                "n_cells": int(counts["n_cells"][k]),
                "n_nuclei": nn,
                "n_infected": ni,
                "n_dead": int(counts["n_dead"][k]),
                "infected_fraction": ni / nn if nn else 0.0,
                "moi_effective": float(layout_row["moi_effective"]),
                "toxic_kill": float(layout_row["toxic_kill"]),
            }
        )
    return rows


def iter_plate(demo: dict, experiment: str, plate: int, library: pd.DataFrame):
    """Yield (layout_row, images, masks, truth rows) for every well of a plate, in plate
    order. Each well has its own generator, so wells are independent of each other."""
    entropy = plate_entropy(demo, experiment, plate, library)
    layout = plate_layout(library, demo, experiment, plate)
    plate_cfg = config_section(demo, "plate_effects", PLATE_DEFAULTS)
    optics = plate_effects(rng_from(*entropy, "optics"), int(demo["site_size"]), plate_cfg)
    bank = texture_bank(rng_from(*entropy, "textures"), int(demo["site_size"]), config_section(demo, "cells", CELL_DEFAULTS))
    for row in layout.to_dict("records"):
        images, masks, counts = synth_well(rng_from(*entropy, "well", row["well"]), row, demo, optics, bank)
        yield row, images, masks, truth_rows(row, counts, experiment, plate)
