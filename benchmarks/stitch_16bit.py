"""16-bit TIFF against 8-bit PNG on the same synthetic plate: file and store size, stitch
speed against the bare decode of the same files, and the nucleus count against the truth.

Usage: python benchmarks/stitch_16bit.py [--world foci|diffuse] [--threads N] [--repeats R]
Writes one plate of the Operetta-like example (tests/operetta_export.py: 18 wells of
3 x 3 fields of 128 px, 4 channels) twice into a temporary folder, as 16-bit TIFFs and
as the same fields' 8-bit grey levels in PNGs, and times (medians of interleaved repeats,
on N threads):
  decode  every file decoded (deemd.stitch.read_image), nothing else;
  stitch  the stitch step (decode, rescale, tiling, Blosc, zarr write) into
          - a uint8 store from the PNGs (stored as read, as the demo),
          - a uint8 store from the TIFFs (the plate's rescale rule: the workflow's choice),
          - a uint16 store from the TIFFs (kept as read: the alternative).
Then counts nuclei in every stitched well of each store as the nuclei rule does (diameter
estimated from the untreated wells; on the uint16 store min_contrast is scaled by the
Hoechst rule's (high - low) / 255, the same contrast in 16-bit units) and prints the
error against the synthetic truth.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "tests"))
from deemd.metadata import build_sites_table, read_metadata_csv, well_table  # noqa: E402
from deemd.nuclei import count_nuclei, estimate_diameter, estimate_wells, params_from_diameter  # noqa: E402
from deemd.stitch import read_image, site_paths_by_well, stitch_plate  # noqa: E402
from deemd.store import create_plate_store  # noqa: E402
from deemd.validate import fill_defaults, load_schema  # noqa: E402
from operetta_export import BARCODES, CONFIG, write_operetta_export  # noqa: E402


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def nuclei_error(store, wells: pd.DataFrame, truth: pd.DataFrame, min_contrast: float) -> tuple[float, float, int, int]:
    """Median and largest absolute relative error of the well counts, and the totals."""
    images = store.read_wells(channel=0)
    untreated = wells["treatment"].isna().to_numpy()
    diameter = estimate_diameter([images[i] for i in estimate_wells(untreated)], min_contrast)
    params = params_from_diameter(diameter, min_contrast)
    counts = np.array([count_nuclei(image, params) for image in images])
    expected = truth.set_index("well").loc[store.wells, "n_nuclei"].to_numpy()
    has = expected > 0
    relative = np.abs(counts - expected)[has] / expected[has]
    return float(np.median(relative)), float(relative.max()), int(counts.sum()), int(expected.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--world", choices=["foci", "diffuse"], default="diffuse", help="the demo world the cells come from")
    args = parser.parse_args()
    config = fill_defaults(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    dataset = dict(config["dataset"], **yaml.safe_load(CONFIG.read_text())["dataset"])
    store_cfg = config["store"]
    tmp = Path(tempfile.mkdtemp(prefix="deemd-bench16-"))
    truth = write_operetta_export(tmp / "tiff", bits=16, barcodes=BARCODES[:1], world=args.world)
    write_operetta_export(tmp / "png", bits=8, barcodes=BARCODES[:1], world=args.world)
    raw = read_metadata_csv(str(tmp / "tiff" / dataset["metadata"]))
    sites = build_sites_table(raw, load_schema(REPO / "workflow" / "schemas" / "metadata.schema.yaml"), "plate_map.csv",
                              dataset["columns"], dataset["values"], dataset["defaults"], site_layout=dataset["site_layout"])
    wells = well_table(sites)
    tiff = str(tmp / "tiff" / dataset["images"])
    png = str(tmp / "png" / dataset["images"]).removesuffix(".tiff") + ".png"
    variants = {"8-bit PNG -> uint8 store": (png, "uint8"), "16-bit TIFF -> uint8 store (rescaled)": (tiff, "uint8"),
                "16-bit TIFF -> uint16 store (kept)": (tiff, "uint16")}
    files = {pattern: [p for site_list in site_paths_by_well(sites, pattern, dataset["channels"]).values() for _, _, ps in site_list for p in ps]
             for pattern in (png, tiff)}
    stores = {}
    with ThreadPoolExecutor(args.threads) as pool:
        for paths in files.values():
            list(pool.map(read_image, paths))  # warm the page cache

        def decode(pattern):
            return lambda: list(pool.map(read_image, files[pattern]))

        def stitch(name, pattern, dtype):
            def run():
                path = tmp / f"store{list(variants).index(name)}.zarr"
                shutil.rmtree(path, ignore_errors=True)
                store = create_plate_store(path, wells["well"].tolist(), dataset["channel_names"], dataset["site_size"],
                                           dataset["site_layout"], store_cfg["codec"], store_cfg["clevel"], dtype=dtype,
                                           shuffle=store_cfg["shuffle"])
                stitch_plate(sites, store, pattern, dataset["channels"], "error", pool,
                             rescale=store_cfg["rescale"])
                stores[name] = (store, path)
            return run

        steps = [("decode PNG", decode(png)), ("decode TIFF", decode(tiff))]
        steps += [(name, stitch(name, *variant)) for name, variant in variants.items()]
        runs = [[timeit.timeit(step, number=1) for _, step in steps] for _ in range(args.repeats)]
    times = {name: statistics.median(r[i] for r in runs) for i, (name, _) in enumerate(steps)}
    n_sites = len(sites)
    print(f"world {args.world}: 1 plate, {len(wells)} wells, {n_sites} sites of {dataset['site_size']} px, {len(dataset['channels'])} channels, "
          f"{args.threads} threads, medians of {args.repeats}")
    print(f"files: PNG {tree_bytes(tmp / 'png') / 1e6:.1f} MB, TIFF {tree_bytes(tmp / 'tiff') / 1e6:.1f} MB")
    for kind in ("PNG", "TIFF"):
        print(f"bare decode {kind:4s}  {n_sites / times['decode ' + kind]:8.1f} sites/s")
    rescaled = stores["16-bit TIFF -> uint8 store (rescaled)"][0].group.attrs["intensity"]
    scale16 = (rescaled["high"][0] - rescaled["low"][0]) / 255.0
    png_store_bytes = tree_bytes(stores["8-bit PNG -> uint8 store"][1])
    for name, (pattern, dtype) in variants.items():
        store, path = stores[name]
        decode_time = times["decode PNG" if pattern == png else "decode TIFF"]
        contrast = config["nuclei"]["min_contrast"] * (scale16 if dtype == "uint16" else 1.0)
        median, largest, found, expected = nuclei_error(store, wells, truth, contrast)
        print(f"{name:38s} stitch {n_sites / times[name]:7.1f} sites/s, ratio to its bare decode {decode_time / times[name]:.2f}; "
              f"store {tree_bytes(path) / 1e6:6.2f} MB ({tree_bytes(path) / png_store_bytes:.2f} x the PNG store); "
              f"nuclei {found} of {expected}, median error {median:.3f}, largest {largest:.3f}")
    print(f"intensity rule of the rescaled store: low {rescaled['low']}, high {rescaled['high']}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
