"""What a verified read costs against an unchecked one: one RxRx19a-sized well (5 x 2048 x
2048 uint8, four 1024 px sites) and one site read through zarr from a Blosc-only array of
the same chunks and codec (no checks) against the per-plate store (Blosc + crc32c), read
as every step reads it: PlateStore.read_wells and read_site, which decode the chunk files
themselves after checking that each exists and matches its checksum.

Usage: python benchmarks/store_read.py [--repeats N]
Prints medians of interleaved repeats (a passing load on the machine hits both alike).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
from deemd.store import create_plate_store, open_plate_store  # noqa: E402


def well_image(seed: int = 0) -> np.ndarray:
    """Microscopy-like: smooth blobs plus noise, so Blosc compresses it about 4x and the
    checksum has real bytes to cover."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random((5, 512, 512)), (0, 6, 6))
    tile = np.clip((base - base.min()) / np.ptp(base) * 200 + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return np.tile(tile, (1, 4, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()
    well, wells = well_image(), [f"A{i:02d}" for i in range(1, 9)]
    tmp = Path(tempfile.mkdtemp(prefix="deemd-bench-"))
    store = create_plate_store(tmp / "store.zarr", wells, list("abcde"), 1024, [[1, 2], [3, 4]])
    for i in range(len(wells)):
        store.images[i] = well
    store.group.attrs["complete"] = True
    store = open_plate_store(tmp / "store.zarr")
    plain = zarr.open_group(str(tmp / "plain.zarr"), mode="w").create_array(
        "images", shape=store.images.shape, chunks=store.images.chunks, dtype="uint8",
        compressors=zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "."}, config={"write_empty_chunks": True},
    )
    for i in range(len(wells)):
        plain[i] = well
    assert np.array_equal(store.images[3], plain[3])
    reads = {
        "well": (lambda i: plain[i % 8], lambda i: store.read_wells(i % 8, i % 8 + 1)),
        "site": (lambda i: plain[i % 8, :, 1024:, :1024], lambda i: store.read_site(i % 8, 3)),
    }
    stored = sum(f.stat().st_size for f in (tmp / "store.zarr" / "images").glob("c.*")) / len(wells)
    print(f"one well of 5 x 2048 x 2048 uint8 in {store.images.chunks} chunks, {stored / 1e6:.1f} MB stored, median of {args.repeats}:")
    for name, (unchecked, verified) in reads.items():
        runs = [(timeit.timeit(lambda: unchecked(i), number=1), timeit.timeit(lambda: verified(i), number=1)) for i in range(args.repeats)]
        before, after = (statistics.median(r[k] for r in runs) for k in range(2))
        print(f"{name}: Blosc only, unchecked read   {before * 1e3:8.2f} ms")
        print(f"{name}: Blosc + crc32c, verified read {after * 1e3:8.2f} ms   ratio {after / before:.3f}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
