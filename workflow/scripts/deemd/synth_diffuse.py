"""Second synthetic world, "diffuse" (``demo.world: diffuse``): an antiviral lowers each
cell's chance of infection, so infected cells stay spread over the site.

The demo's world ("foci", deemd.synth) grows infection in foci and lets a treatment remove
whole foci, so a well-treated site is wholly free of infection. Here nothing is spatial
about the drug: each cell is infected with probability

    p(c) = 1 - exp(-MOI_eff),   MOI_eff = MOI * (1 - effect(c)),

``effect`` the compound's Hill curve (emax, ec50_um, hill). At 87 % inhibition most sites
still hold a few infected cells. The true share of infection a dose removes is therefore
exactly ``1 - p(c) / p(0)`` (``synth.share_removed``); ``best_nontoxic_efficacy`` in
truth/compounds.csv is its maximum over the tested doses that kill less than
``synth.NONTOXIC_KILL`` of the cells.

Weak clustering without changing p: each cell has a latent susceptibility z ~ N(0, 1),
correlated between neighbours (a Gaussian kernel over ``cluster_radius``, a share
``clustering`` of its variance), and is infected iff Phi(z) < p. Every cell's marginal
probability stays exactly p, and a lower dose infects a superset of the cells a higher
dose infects (one latent per cell).

Also its own: cell sizes and densities (nucleus radius 2-5 % of the site edge, 20-150
cells per site, density varying by plate and by well), 1-``max`` replicate wells per dose
drawn per compound and plate, a CPE strength drawn per plate from a range, death of
infected cells, and toxicity that kills cells without dimming the survivors. It reuses
the generic parts of deemd.synth: seeding, cell placement and parameters, plate layout,
metadata table, rendering of the stains, optics and truth rows, so its files have exactly
the demo's form (RxRx19a metadata.csv, PNG paths, truth tables and masks).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy.special import ndtr

from deemd import synth

WORLD = "diffuse"
# Demo keys the diffuse world does not read (the foci world's own sections and the plate
# count), left out of its config digest.
DIGEST_IGNORED = ("plates", "cells", "infection", "replicates_per_plate")

# Defaults of demo.diffuse; lengths are fractions of the site edge.
DEFAULTS = {
    "cells": {
        "per_site": 70,  # mean cells seeded per site
        "nucleus_radius": 0.035,
        "cell_radius": 0.075,  # reach of a cell body from its nucleus centre
        "min_spacing": 2.3,  # nucleus centres at least this many nucleus radii apart
        "plate_density_sd": 0.15,  # log-sd of a plate's seeding density
        "well_density_sd": 0.1,  # log-sd of a well's density around its plate's
    },
    "replicates_per_plate": {"min": 1, "max": 2},  # wells per dose, drawn per compound and plate
    "infection": {
        "clustering": 0.3,  # share of the latent susceptibility shared with neighbours
        "cluster_radius": 0.08,  # length of that sharing
        "death_rate": 0.2,  # share of infected cells dead (detached) at imaging
        "fragmentation": 0.15,  # share of living infected cells with fragmented nuclei
        "debris": 0.4,  # share of dead cells that leave a bright debris spot
        "cpe_strength": {"min": 0.6, "max": 1.2},  # per-plate strength of the CPE phenotype
    },
}


def _filled(default, given):
    """``given`` with the missing keys of ``default`` filled in, at every depth."""
    if not isinstance(default, dict):
        return default if given is None else given
    given = given or {}
    return {**given, **{key: _filled(value, given.get(key)) for key, value in default.items()}}


def diffuse_config(demo: dict) -> dict:
    """demo.diffuse with every default filled in."""
    return _filled(DEFAULTS, demo.get(WORLD))


def plate_entropy(demo: dict, experiment: str, plate: int, library: pd.DataFrame) -> list[int]:
    """Entropy words of one diffuse plate: as the demo's, with this world's config digest."""
    return synth.plate_entropy(demo, experiment, plate, library, digest=synth.config_digest(demo, DIGEST_IGNORED))


# --------------------------------------------------------------------------- library


def make_library(demo: dict) -> pd.DataFrame:
    """Compound library with hidden truth (synth.LIBRARY_COLUMNS), one row per compound.

    Kinds (shares from ``compound_classes``): effective (emax 0.93-1), partial (0.3-0.75),
    toxic (no antiviral effect; tox_ic50 0.3-10 uM, kills 60-98 % at saturation),
    effective_toxic (effective, tox_ic50 2-30 uM, kills 50-95 %), inactive. EC50s are
    log-uniform from 0.25 log below the lowest tested dose to 0.1 log above the highest
    (so most lie inside the tested range), Hill slopes 0.8-2.5. max_efficacy: the largest
    Hill effect over the tested doses (as in the demo); best_nontoxic_efficacy: see the
    module docstring."""
    concs = np.asarray(demo["concentrations_um"], dtype=float)
    n = int(demo["compounds"])
    counts = synth.class_counts(n, demo["compound_classes"])
    rng = synth.rng_from(demo["seed"], "diffuse library", n, json.dumps(demo["compound_classes"], sort_keys=True), json.dumps(list(map(float, concs))))
    kinds = np.array([k for k, c in counts.items() for _ in range(c)], dtype=object)
    kinds = kinds[rng.permutation(n)]
    lo, hi = np.log10(concs.min()), np.log10(concs.max())
    rows = []
    for i, kind in enumerate(kinds):
        u = rng.random(6)  # fixed draws per compound: kinds do not shift each other's values
        ec50 = slope = tox_ic50 = np.nan
        emax = tox_max = 0.0
        if kind in ("effective", "partial", "effective_toxic"):
            ec50 = 10 ** (lo - 0.25 + u[0] * (hi - lo + 0.35))
            emax = 0.3 + 0.45 * u[1] if kind == "partial" else 0.93 + 0.07 * u[1]
            slope = 0.8 + 1.7 * u[2]
        if kind == "toxic":
            tox_ic50 = 10 ** (np.log10(0.3) + u[3] * np.log10(10.0 / 0.3))
            tox_max = 0.6 + 0.38 * u[4]
        elif kind == "effective_toxic":
            tox_ic50 = 10 ** (np.log10(2.0) + u[3] * np.log10(30.0 / 2.0))
            tox_max = 0.5 + 0.45 * u[4]
        rows.append(synth.compound_row(i, synth.random_smiles(rng), kind, ec50, emax, slope, tox_ic50, tox_max))
    return synth.library_table(rows, concs, float(demo["moi"]))


# --------------------------------------------------------------------------- plate layout


def plate_replicates(demo: dict, library: pd.DataFrame, entropy: list[int]) -> dict:
    """Wells per dose of each treatment on one plate: uniform integers in
    [min, max] of ``replicates_per_plate``, drawn per compound from the plate's entropy."""
    reps = diffuse_config(demo)["replicates_per_plate"]
    lo, hi = int(reps["min"]), int(reps["max"])
    if not 1 <= lo <= hi:
        raise ValueError(f"config key demo.diffuse.replicates_per_plate: need 1 <= min <= max, got {reps}")
    drawn = synth.rng_from(*entropy, "replicates").integers(lo, hi + 1, len(library))
    return dict(zip(library["treatment"], drawn.tolist()))


def plate_layout(library: pd.DataFrame, demo: dict, experiment: str, plate: int) -> pd.DataFrame:
    """One row per used well of a diffuse plate (columns of ``synth.plate_layout``), with
    this plate's replicate counts."""
    entropy = plate_entropy(demo, experiment, plate, library)
    return synth.plate_layout(library, demo, experiment, plate, replicates=plate_replicates(demo, library, entropy), entropy=entropy)


def plate_state(rng: np.random.Generator, demo: dict) -> dict:
    """A plate's seeding density factor (lognormal around 1) and CPE strength (uniform in
    the configured range)."""
    cfg = diffuse_config(demo)
    cpe = cfg["infection"]["cpe_strength"]
    if cpe["min"] > cpe["max"]:
        raise ValueError(f"config key demo.diffuse.infection.cpe_strength: min {cpe['min']} > max {cpe['max']}")
    return {
        "density": float(np.exp(rng.normal(0.0, cfg["cells"]["plate_density_sd"]))),
        "cpe_strength": float(rng.uniform(cpe["min"], cpe["max"])),
    }


# --------------------------------------------------------------------------- infection


def infection_probability(moi_effective) -> np.ndarray:
    """Per-cell infection probability 1 - exp(-MOI_eff) (Poisson infection events)."""
    return -np.expm1(-np.clip(np.asarray(moi_effective, dtype=float), 0.0, None))


def susceptibility(rng: np.random.Generator, yx: np.ndarray, clustering: float, radius_px: float) -> np.ndarray:
    """Latent susceptibility (n,) float of cells at ``yx`` (n, 2) px: exactly N(0, 1) per
    cell, with covariance ``clustering * exp(-d^2 / (2 radius^2))`` between cells at
    distance d (and 1 on the diagonal). The matrix is clustering * K + (1 - clustering) * I
    with K positive semi-definite, so its Cholesky factor exists for clustering < 1."""
    n = len(yx)
    z = rng.standard_normal(n)
    if n < 2 or clustering <= 0 or radius_px <= 0:
        return z
    d2 = ((yx[:, None, :] - yx[None, :, :]) ** 2).sum(-1)
    cov = clustering * np.exp(-d2 / (2.0 * radius_px**2))
    cov[np.diag_indices(n)] = 1.0
    return np.linalg.cholesky(cov) @ z


def apply_fate(rng: np.random.Generator, cells: dict, site_size: int, moi_effective: float, toxic_kill: float, infection_cfg: dict) -> dict:
    """Diffuse infection (each cell with probability ``infection_probability``, weakly
    clustered by ``susceptibility``), death of infected cells (``death_rate``), toxic death
    of any cell (``toxic_kill``, independent of infection), fragmented nuclei among living
    infected cells, debris of dead cells. No syncytia. Returns a new cell dict."""
    c = dict(cells)
    n = len(c["yx"])
    z = susceptibility(rng, c["yx"], float(infection_cfg["clustering"]), float(infection_cfg["cluster_radius"]) * site_size)
    infected = ndtr(z) < infection_probability(moi_effective)
    dies = infected & (rng.random(n) < infection_cfg["death_rate"])
    toxic = rng.random(n) < toxic_kill
    dead = dies | toxic
    alive_inf = infected & ~dead
    c["infected"] = infected
    c["dead"] = dead
    c["syncytial"] = np.zeros(n, dtype=bool)
    c["body"] = np.arange(n)
    c["fragmented"] = alive_inf & (rng.random(n) < infection_cfg["fragmentation"])
    c["debris"] = dead & (rng.random(n) < infection_cfg["debris"])
    return c


# --------------------------------------------------------------------------- wells


def cells_config(demo: dict) -> dict:
    """The cells section in the form synth.make_cells and synth.texture_bank read."""
    return dict(diffuse_config(demo)["cells"])


def synth_well(rng: np.random.Generator, well: dict, demo: dict, optics: dict, bank: np.ndarray, state: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """One well: images uint8 (4, 5, S, S), infected masks bool (4, S, S), per-site truth
    counts (length-4 arrays n_cells, n_nuclei, n_infected, n_dead). ``well`` needs failed,
    moi_effective, toxic_kill; ``state`` from ``plate_state``. Toxicity only removes
    cells: the survivors are rendered as untreated cells (no dimming, no shrinking)."""
    s = int(demo["site_size"])
    cfg = diffuse_config(demo)
    cells_cfg = cfg["cells"]
    density = state["density"] * np.exp(rng.normal(0.0, cells_cfg["well_density_sd"]))
    n = 0 if well["failed"] else int(rng.poisson(cells_cfg["per_site"] * synth.SITES * density))
    cells = synth.make_cells(rng, n, s, cells_cfg)
    cells = apply_fate(rng, cells, s, float(well["moi_effective"]), float(well["toxic_kill"]), cfg["infection"])
    raw, mask = synth.render_well(rng, cells, s, state["cpe_strength"], 0.0, bank)
    images = synth.form_images(rng, raw, optics, synth.config_section(demo, "plate_effects", synth.PLATE_DEFAULTS), s)
    site = cells["site"]
    alive = ~cells["dead"]
    counts = {
        "n_cells": np.bincount(site, minlength=synth.SITES),
        "n_nuclei": np.bincount(site[alive], minlength=synth.SITES),
        "n_infected": np.bincount(site[alive & cells["infected"]], minlength=synth.SITES),
        "n_dead": np.bincount(site[cells["dead"]], minlength=synth.SITES),
    }
    return images, synth.field_sites(mask), counts


def iter_plate(demo: dict, experiment: str, plate: int, library: pd.DataFrame):
    """Yield (layout_row, images, masks, truth rows) for every well of a diffuse plate, in
    plate order (as ``synth.iter_plate``); each well has its own generator."""
    entropy = plate_entropy(demo, experiment, plate, library)
    layout = plate_layout(library, demo, experiment, plate)
    s = int(demo["site_size"])
    plate_cfg = synth.config_section(demo, "plate_effects", synth.PLATE_DEFAULTS)
    optics = synth.plate_effects(synth.rng_from(*entropy, "optics"), s, plate_cfg)
    bank = synth.texture_bank(synth.rng_from(*entropy, "textures"), s, cells_config(demo))
    state = plate_state(synth.rng_from(*entropy, "plate state"), demo)
    for row in layout.to_dict("records"):
        images, masks, counts = synth_well(synth.rng_from(*entropy, "well", row["well"]), row, demo, optics, bank, state)
        yield row, images, masks, synth.truth_rows(row, counts, experiment, plate)
