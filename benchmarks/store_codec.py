"""The per-plate store's Blosc codec on RxRx19a-like sites: compressed size against the
PNGs of the same images, and the time to write (encode) and read (decode) the chunks of a
stitched well (one a site) against the bare PNG decode of its files, single-threaded, in
one run.

Usage: python benchmarks/store_codec.py [--wells N]   (about a minute on 2 cores)

The images: the first N wells of a foci-world plate at 1024 px sites, 5 channels, with
RxRx19a HRCE-like nuclei (about 18 px across, about 300 a site; 0.65 um a pixel). The
PNGs are written as the demo writes them (Pillow's defaults); a site is the store's chunk,
(5, 1024, 1024) uint8, four a well. Printed per codec: size / PNG size, encode / PNG decode, decode /
PNG decode (medians over the wells; each time the fastest of 3 calls). The PNG decode is
the stitch step's own (imagecodecs' libpng, as deemd.stitch.read_image).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import imagecodecs
import numcodecs.blosc
import numpy as np
from numcodecs import Blosc
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
from nuclei_scale import small_demo  # noqa: E402
from deemd.worlds import WORLDS  # noqa: E402

# HRCE-like nuclei on 1024 px sites: radius 9 px, ~300 cells a site.
NUCLEUS_RADIUS = 9 / 1024
CELLS_PER_SITE = 300
CODECS = [
    ("lz4", 5, "shuffle"), ("lz4", 1, "bitshuffle"), ("lz4", 3, "bitshuffle"), ("lz4", 5, "bitshuffle"),
    ("lz4", 9, "bitshuffle"), ("blosclz", 5, "bitshuffle"),
    ("zstd", 1, "shuffle"), ("zstd", 1, "bitshuffle"), ("zstd", 5, "bitshuffle"),
]
SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


def hrce_like_wells(n_wells: int) -> list[np.ndarray]:
    """Sites (4, C, 1024, 1024) uint8 of the first ``n_wells`` wells."""
    demo = small_demo("foci", 1, NUCLEUS_RADIUS, CELLS_PER_SITE, 1024)
    wells = []
    for _, sites, _, _ in WORLDS["foci"].iter_plate(demo, demo["experiment"], 1, WORLDS["foci"].make_library(demo)):
        wells.append(np.asarray(sites))
        if len(wells) == n_wells:
            break
    return wells


def png_files(sites: np.ndarray) -> list[bytes]:
    """One PNG per site and channel, as the demo writes them."""
    files = []
    for site in sites:
        for channel in site:
            buffer = io.BytesIO()
            Image.fromarray(channel).save(buffer, format="PNG")
            files.append(buffer.getvalue())
    return files


def site_chunks(sites: np.ndarray) -> list[np.ndarray]:
    """The store's chunks of a well: one (C, S, S) array a site."""
    return [np.ascontiguousarray(site) for site in sites]


def timed(function, *args, repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls, s (a passing load slows some, not all)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=3)
    args = parser.parse_args()
    numcodecs.blosc.set_nthreads(1)
    wells = hrce_like_wells(args.wells)
    pngs = [png_files(sites) for sites in wells]
    png_bytes = sum(len(f) for files in pngs for f in files)
    # The floor: the stitch step's own PNG decoder (imagecodecs' libpng, deemd.stitch.read_image).
    decode = [sum(timed(imagecodecs.png_decode, f) for f in files) for files in pngs]
    chunks = [site_chunks(sites) for sites in wells]
    raw = sum(c.nbytes for well in chunks for c in well)
    print(f"{len(wells)} wells of {len(chunks[0])} x {chunks[0][0].shape} uint8: raw {raw / 1e6:.1f} MB, PNG {png_bytes / 1e6:.1f} MB"
          f" ({png_bytes / raw:.2f} of raw); PNG decode {statistics.median(decode):.3f} s a well (1 thread)")
    print(f"{'codec':22} {'size / PNG':>10} {'write / decode':>15} {'read / decode':>14}")
    for cname, clevel, shuffle in CODECS:
        codec = Blosc(cname=cname, clevel=clevel, shuffle=SHUFFLE[shuffle])
        encoded = [[codec.encode(c) for c in well] for well in chunks]
        write = [sum(timed(codec.encode, c) for c in well) / d for well, d in zip(chunks, decode)]
        read = [sum(timed(codec.decode, e) for e in well) / d for well, d in zip(encoded, decode)]
        size = sum(len(e) for well in encoded for e in well) / png_bytes
        print(f"{f'{cname} {clevel} {shuffle}':22} {size:10.2f} {statistics.median(write):15.3f} {statistics.median(read):14.3f}")


if __name__ == "__main__":
    main()
