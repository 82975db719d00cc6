"""Stitch step throughput against the bare PNG decode of the same files, and read
throughput of the per-plate store against decoding the PNGs.

Usage: python benchmarks/stitch.py [--configfile CONFIG] [--threads N] [--plates K]
Runs `snakemake --until sites_table` for the config first (on the demo that synthesises
the plates), then times, on the same N threads (medians of interleaved repeats):
  decode  every channel PNG of every site decoded (read_site, as the stitch step decodes), nothing else;
  stitch  the stitch step itself (decode into the well, Blosc compression, checksum, write);
  read    every well read back from the per-plate store.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
from deemd.metadata import well_table  # noqa: E402
from deemd.stitch import image_path, read_site, stitch_plate  # noqa: E402
from deemd.validate import fill_defaults, load_schema  # noqa: E402
from deemd.store import create_plate_store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plates", type=int, default=1, help="plates to time")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    command = ["snakemake", "--cores", str(args.threads), "--until", "sites_table", "--quiet"]
    if args.configfile:
        config.update(yaml.safe_load(Path(args.configfile).read_text()))
        command += ["--configfile", args.configfile]
    subprocess.run(command, cwd=REPO, check=True)
    config = fill_defaults(config, load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    dataset, store_cfg = config["dataset"], config["store"]
    sites = pd.read_parquet(REPO / "results" / dataset["name"] / "metadata" / "sites.parquet")
    plates = sorted(sites["plate_id"].unique())[: args.plates]
    sites = sites[sites["plate_id"].isin(plates)]
    pattern = dataset["images"] if Path(dataset["images"]).is_absolute() else str(REPO / dataset["images"])
    paths = [
        image_path(pattern, r.experiment, r.plate, r.well, r.site, channel)
        for r in sites.itertuples()
        for channel in dataset["channels"]
    ]
    size = dataset["site_size"]
    n_sites = len(sites)
    tmp = Path(tempfile.mkdtemp(prefix="deemd-bench-"))
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(lambda p: read_site([p], size), paths))  # warm the page cache
        stores = {}

        def decode_all():
            list(pool.map(lambda p: read_site([p], size), paths))

        def stitch_all():
            for plate in plates:
                plate_sites = sites[sites["plate_id"] == plate]
                wells = well_table(plate_sites)["well"].tolist()
                store = create_plate_store(tmp / f"{plate}.zarr", wells, dataset["channel_names"], size,
                                           dataset["site_layout"], store_cfg["codec"], store_cfg["clevel"],
                                           shuffle=store_cfg["shuffle"])
                stitch_plate(plate_sites, store, pattern, dataset["channels"], "error", pool)
                stores[plate] = store

        def read_all():
            # As the later steps read: a batch of wells at a time.
            step = store_cfg["batch_wells"]
            for store in stores.values():
                for start in range(0, len(store.wells), step):
                    store.read_wells(start, start + step)

        # Interleaved repeats, so that a passing load on the machine hits every step alike.
        runs = [(timeit.timeit(decode_all, number=1), timeit.timeit(stitch_all, number=1), timeit.timeit(read_all, number=1)) for _ in range(args.repeats)]
    decode, stitch, read = (statistics.median(r[i] for r in runs) for i in range(3))
    stitch_ratios = sorted(r[0] / r[1] for r in runs)
    png_bytes = sum(Path(p).stat().st_size for p in paths)
    store_bytes = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    shutil.rmtree(tmp)
    print(f"{len(plates)} plate(s), {n_sites} sites of {size} px, {len(paths)} PNGs, {args.threads} threads")
    print(f"bare PNG decode      {n_sites / decode:10.1f} sites/s")
    print(f"stitch step          {n_sites / stitch:10.1f} sites/s   ratio to bare decode {decode / stitch:.2f} "
          f"(median of {args.repeats}; range {stitch_ratios[0]:.2f}-{stitch_ratios[-1]:.2f}; target >= 0.7)")
    print(f"read per-plate store {n_sites / read:10.1f} sites/s   {decode / read:.1f}x faster than decoding the PNGs (target >= 5)")
    print(f"size: PNGs {png_bytes / 1e6:.1f} MB, store {store_bytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
