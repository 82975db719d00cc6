"""Nucleus counting against the synthetic truth at several nucleus sizes and densities,
with the plate's nucleus diameter estimated (nuclei.diameter: auto), and the time to count
one stitched 2048 x 2048 well.

Usage: python benchmarks/nuclei_scale.py   (no arguments; a few minutes on 2 cores)

Per case (world, nucleus radius as a fraction of the site, cells per site) and seed, one
small plate (4 x 6 wells, 128 px sites) is synthesised with the world's own library, the
diameter is estimated from its untreated wells as the nuclei rule does, and every well is
counted. Printed per case: the true diameter (2 x radius x site size; infected nuclei are
15 % smaller), the estimate per seed, and the median absolute relative count error per
well (wells with nuclei, pooled over seeds; worst seed in brackets), for auto and for the
former fixed parameters (lengths 8 / 700 / 40 px at 1024 px, scaled). The "diffuse" world
is measured when deemd.synth_diffuse exists.

Timing: one 2048 x 2048 well of the default demo at 1024 px sites and one of
benchmarks/scale.py's HRCE-like plate, counted by count_nuclei and by the code as issue
12 found it (filed_count_nuclei: full resolution, peaks searched component by component);
medians of interleaved repeats, with both counts. Then the counts at full and at reduced
resolution of a few such wells and of diffuse wells with large nuclei (512 px sites,
radius 0.05).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
from deemd import synth  # noqa: E402
from deemd.worlds import WORLDS  # noqa: E402
from deemd.nuclei import (  # noqa: E402
    NucleusParams,
    count_nuclei,
    estimate_diameter,
    estimate_wells,
    foreground_mask,
    params_from_diameter,
)
from scipy import ndimage as ndi  # noqa: E402
from skimage.feature import peak_local_max  # noqa: E402
from skimage.segmentation import watershed  # noqa: E402

SEEDS = (1, 2, 3)
MIN_CONTRAST = 12
SITE = 128
CASES = [(None, None)] + [(r, n) for r in (0.02, 0.035, 0.05) for n in (25, 110)]


def legacy_params(site_size: int) -> NucleusParams:
    """The former fixed config (sigma 8, min area 700, peak distance 40 px at 1024 px),
    scaled as before. The former code passed round(distance) to peak_local_max, today's
    passes int(distance) + 1, hence the - 1: the same min_distance as before."""
    r = site_size / 1024
    return NucleusParams(8.0 * r, 700 * r * r, max(1, round(max(1.0, 40 * r))) - 1.0, MIN_CONTRAST)


def filed_count_nuclei(nuclear: np.ndarray, params: NucleusParams) -> int:
    """count_nuclei as it was when issue 12 was filed, the "before" of its timing: at
    full resolution, the distance-transform peaks searched component by component
    (skimage's labels=, a Python loop over the components), then the watershed."""
    mask = foreground_mask(nuclear, params)
    if not mask.any():
        return 0
    distance = ndi.distance_transform_edt(mask)
    components, n = ndi.label(mask)
    peaks = peak_local_max(distance, min_distance=int(params.peak_min_distance) + 1, labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    unseeded = np.setdiff1d(np.arange(1, n + 1), components[tuple(peaks.T)])
    for offset, label in enumerate(unseeded, start=len(peaks) + 1):
        ys, xs = np.nonzero(components == label)
        markers[ys[len(ys) // 2], xs[len(xs) // 2]] = offset
    return int(watershed(-distance, markers, mask=mask).max())


def small_demo(world: str, seed: int, radius: float | None, per_site: int | None, site_size: int = SITE) -> dict:
    """The default demo of ``world`` on a 4 x 6 plate (8 untreated wells); its cells
    (demo.cells, or demo.diffuse.cells) changed when given, the cell radius in proportion."""
    demo = copy.deepcopy(synth.DEFAULT_DEMO)
    demo.update(
        world=world,
        seed=seed,
        site_size=site_size,
        plate_rows=4,
        plate_columns=6,
        compounds=4,
        concentrations_um=[0.1, 10.0],
        controls_per_plate={synth.MOCK: 2, synth.UV: 2, synth.INFECTED: 4},
        compound_classes={"effective": 0.5, "toxic": 0.25, "inactive": 0.25},
    )
    cells = true_cells(demo)
    if radius is not None:
        cells = dict(cells, per_site=per_site, nucleus_radius=radius, cell_radius=radius * cells["cell_radius"] / cells["nucleus_radius"])
        if world == "foci":
            demo["cells"] = cells
        else:
            demo[world] = {"cells": cells}
    return demo


def true_cells(demo: dict) -> dict:
    """The cells section the world reads, defaults filled in."""
    if demo["world"] == "foci":
        return synth.config_section(demo, "cells", synth.CELL_DEFAULTS)
    return WORLDS[demo["world"]].cells_config(demo)


def stitched_nuclear(sites: np.ndarray) -> np.ndarray:
    """A well's 2 x 2 sites (site, channel, y, x) stitched, nuclear channel (0) only."""
    return np.block([[sites[0, 0], sites[1, 0]], [sites[2, 0], sites[3, 0]]])


def plate_wells(demo: dict):
    """Stitched nuclear images (2S, 2S) uint8, true nucleus counts and untreated flags."""
    module = WORLDS[demo["world"]]
    library = module.make_library(demo)
    images, truth, untreated = [], [], []
    for row, sites, _, rows in module.iter_plate(demo, demo["experiment"], 1, library):
        images.append(stitched_nuclear(sites))
        truth.append(sum(r["n_nuclei"] for r in rows))
        untreated.append(not isinstance(row["treatment"], str))
    return images, np.array(truth), np.array(untreated)


def relative_errors(images, truth, params) -> np.ndarray:
    counts = np.array([count_nuclei(image, params) for image in images])
    has = truth > 0
    return np.abs(counts[has] - truth[has]) / truth[has]


def measure(world: str, radius: float | None, per_site: int | None, seed: int):
    """One plate: (estimated diameter, auto errors, former errors), errors per well."""
    demo = small_demo(world, seed, radius, per_site)
    images, truth, untreated = plate_wells(demo)
    chosen = estimate_wells(untreated)
    diameter = estimate_diameter([images[i] for i in chosen], MIN_CONTRAST)
    auto = relative_errors(images, truth, params_from_diameter(diameter, MIN_CONTRAST))
    return diameter, auto, relative_errors(images, truth, legacy_params(SITE))


def accuracy_table(world_names=tuple(WORLDS), workers: int = 2) -> None:
    print(f"{'world':8} {'radius':>7} {'cells':>5} {'true d':>6}  {'estimated d per seed':22} {'auto err (worst)':>17} {'former err (worst)':>19} {'wells':>5}")
    tasks = [(world, radius, per_site, seed) for world in world_names for radius, per_site in CASES for seed in SEEDS]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = dict(zip(tasks, pool.map(measure, *zip(*tasks))))
    for world in world_names:
        for radius, per_site in CASES:
            estimates, auto, former = zip(*(results[(world, radius, per_site, seed)] for seed in SEEDS))
            cells = true_cells(small_demo(world, SEEDS[0], radius, per_site))
            true_d = 2 * cells["nucleus_radius"] * SITE
            worst_auto = max(np.median(e) for e in auto)
            worst_former = max(np.median(e) for e in former)
            label = "default" if radius is None else f"{radius:g}"
            print(
                f"{world:8} {label:>7} {cells['per_site']:>5} {true_d:6.1f}  {' '.join(f'{e:5.1f}' for e in estimates):22}"
                f" {np.median(np.concatenate(auto)):8.1%} ({worst_auto:5.1%}) {np.median(np.concatenate(former)):9.1%} ({worst_former:5.1%})"
                f" {sum(len(e) for e in auto):5}",
                flush=True,
            )


def wells_with_nuclei(demo: dict, wells: int) -> tuple[list[np.ndarray], list[int]]:
    """The first ``wells`` stitched nuclear images with nuclei of ``demo``'s first plate,
    and their true counts."""
    module = WORLDS[demo.get("world", "foci")]
    images, truth = [], []
    for row, sites, _, rows in module.iter_plate(demo, demo["experiment"], 1, module.make_library(demo)):
        n = sum(r["n_nuclei"] for r in rows)
        if n:
            images.append(stitched_nuclear(sites))
            truth.append(n)
        if len(images) == wells:
            break
    return images, truth


def large_wells(world: str, radius: float | None, site_size: int, wells: int) -> list[np.ndarray]:
    """The first ``wells`` stitched nuclear images with nuclei of a plate at ``site_size``."""
    demo = small_demo(world, 1, radius, None if radius is None else true_cells(small_demo(world, 1, None, None))["per_site"], site_size)
    return wells_with_nuclei(demo, wells)[0]


def hrce_wells(wells: int) -> tuple[list[np.ndarray], list[int]]:
    """The first ``wells`` stitched nuclear images with nuclei of benchmarks/scale.py's
    HRCE-like plate (1024 px sites, about 300 cells a site, nuclei about 17 px), and their
    true counts."""
    from scale import scale_demo

    return wells_with_nuclei(scale_demo(1024), wells)


def timing(repeats: int = 5) -> None:
    """Seconds a 2048 x 2048 well: count_nuclei (at the working resolution) against the
    code as issue 12 found it (filed_count_nuclei, full resolution, same lengths), medians
    of interleaved repeats, with both counts and the truth."""
    cases = {"foci demo, 1024 px sites": (large_wells("foci", None, 1024, 3), None), "HRCE-like (benchmarks/scale.py)": hrce_wells(3)}
    for label, (images, truth) in cases.items():
        started = time.perf_counter()
        diameter = estimate_diameter(images, MIN_CONTRAST)
        estimate_s = (time.perf_counter() - started) / len(images)
        auto, full = params_from_diameter(diameter, MIN_CONTRAST), params_from_diameter(diameter, MIN_CONTRAST, None)
        times = {"before": [], "after": []}
        for _ in range(repeats):
            for key, count in (("before", lambda: filed_count_nuclei(images[0], full)), ("after", lambda: count_nuclei(images[0], auto))):
                started = time.perf_counter()
                count()
                times[key].append(time.perf_counter() - started)
        t_before, t_after = statistics.median(times["before"]), statistics.median(times["after"])
        counts = [(filed_count_nuclei(w, full), count_nuclei(w, auto)) for w in images]
        print(f"\n2048 x 2048 well, {label}: estimated d {diameter:.1f} px, counted at 1/{auto.downsample}")
        print(f"  count: before {t_before:.3f} s, after {t_after:.3f} s; ratio after/before {t_after / t_before:.2f}")
        print("  counts before -> after" + ("" if truth is None else " (truth)") + ": "
              + ", ".join(f"{b} -> {a} ({(a - b) / b:+.1%})" + ("" if truth is None else f" ({truth[i]})") for i, (b, a) in enumerate(counts)))
        print(f"  estimate: {estimate_s:.2f} s per untreated well read (up to 8 per plate)")
    print("counts at reduced resolution against full resolution (same diameter):")
    for label, wells in (("foci, 1024 px sites", cases["foci demo, 1024 px sites"][0]), ("diffuse, radius 0.05, 512 px sites", large_wells("diffuse", 0.05, 512, 3))):
        d = estimate_diameter(wells, MIN_CONTRAST)
        reduced, full = params_from_diameter(d, MIN_CONTRAST), params_from_diameter(d, MIN_CONTRAST, None)
        pairs = [(count_nuclei(w, full), count_nuclei(w, reduced)) for w in wells]
        print(f"  {label} (d {d:.1f} px, {reduced.downsample}x): " + ", ".join(f"{f} -> {r} ({(r - f) / f:+.1%})" for f, r in pairs))


if __name__ == "__main__":
    accuracy_table()
    timing()
