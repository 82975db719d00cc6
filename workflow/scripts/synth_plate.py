"""Snakemake glue: synthesise one demo plate: PNGs in the RxRx19a path pattern, the
plate's metadata.csv part, and the hidden truth (per-site table, infected-cell masks)."""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from deemd import synth
from deemd.io import atomic_directory, write_atomic, write_csv_atomic, write_parquet_atomic
from deemd.logs import start_rule_log
from deemd.worlds import world_module, world_name

PNG_LEVEL = 1  # zlib level: fast to write; the PNGs are read many times but written once


def _write_png(path: str, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_LEVEL)


def _save_npz(tmp: Path, **arrays) -> None:
    with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(fh, **arrays)


def main(params: dict, wildcards: dict, output: dict, log: str, input: dict | None = None) -> None:
    """``input["library"]``: the library CSV; without it the library is rebuilt from
    ``params["demo"]`` (the same table: it is deterministic)."""
    start_rule_log(log)
    demo = params["demo"]
    experiment, plate = str(wildcards["experiment"]), int(wildcards["plate"])
    world = world_module(demo)
    library = pd.read_csv(input["library"]) if input and input.get("library") else world.make_library(demo)
    layout = world.plate_layout(library, demo, experiment, plate)
    n_wells = len(layout)
    logging.info("%s plate %d (world %s): %d wells x %d sites, %d px", experiment, plate, world_name(demo), n_wells, synth.SITES, demo["site_size"])

    size = int(demo["site_size"])
    truth = []
    infected = np.zeros((n_wells * synth.SITES, size, size), dtype=bool)  # filled in place: no copy
    every = max(1, n_wells // 10)
    # PNG encoding releases the GIL: two threads overlap it with rendering.
    with atomic_directory(output["images"]) as tmp_dir, ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for i, (row, images, site_masks, rows) in enumerate(world.iter_plate(demo, experiment, plate, library)):
            for s in range(synth.SITES):
                for c in range(images.shape[1]):
                    name = f"{row['well']}_s{s + 1}_w{c + 1}.png"
                    pending.append(pool.submit(_write_png, str(tmp_dir / name), images[s, c]))
            infected[i * synth.SITES : (i + 1) * synth.SITES] = site_masks
            truth += rows
            if (i + 1) % every == 0 or i + 1 == n_wells:
                logging.info("%d/%d wells", i + 1, n_wells)
            if len(pending) > 100:  # bound memory and surface errors early
                for job in pending:
                    job.result()
                pending = []
        for job in pending:
            job.result()

    meta = synth.metadata_table(layout, experiment, plate)
    write_csv_atomic(meta, output["metadata"])
    table = pd.DataFrame(truth, columns=synth.TRUTH_COLUMNS)
    write_parquet_atomic(table, output["truth"])
    site_ids = table["site_id"].to_numpy().astype(str)
    write_atomic(output["masks"], lambda tmp: _save_npz(tmp, site_id=site_ids, infected=infected))
    logging.info(
        "done: %d sites, %d nuclei, infected fraction %.3f in untreated infected wells",
        len(table),
        table["n_nuclei"].sum(),
        table.loc[(table["disease_condition"] == synth.INFECTED) & table["treatment"].isna(), "infected_fraction"].mean(),
    )


if "snakemake" in globals():
    main(
        dict(snakemake.params.items()),
        dict(snakemake.wildcards.items()),
        dict(snakemake.output.items()),
        snakemake.log[0],
        dict(snakemake.input.items()),
    )
