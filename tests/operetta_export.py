"""The Operetta-like example export of config/operetta.yaml, written from the demo's
synthetic world: each well's 2 x 2 field of 192 px sites is cut into 3 x 3 fields of
128 px (deemd.vendor_export.regrid_sites), four of its five stains are kept, and the
8-bit grey levels become 16-bit camera counts with a dark offset per plate and a gain per
channel (camera_counts). One TIFF per field and channel under the config's image
pattern, plates named by barcode, and a plate map with a facility's own column names
and vocabulary.

    python3 tests/operetta_export.py [DIRECTORY]   # the run directory (default: .)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from deemd import synth  # noqa: E402
from deemd.worlds import world_module  # noqa: E402
from deemd.stitch import image_path  # noqa: E402
from deemd.vendor_export import camera_counts, regrid_sites  # noqa: E402
from workflow_utils import TINY, deep_merge  # noqa: E402

CONFIG = REPO / "config" / "operetta.yaml"
# The tiny demo's plates (two of 4 x 6 wells), at 192 px sites: 3 x 3 fields of 128 px.
DEMO = deep_merge(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["demo"], dict(TINY["demo"], site_size=192))
# The second world (config/diffuse.yaml's demo keys) at the same size.
DEMOS = {"foci": DEMO, "diffuse": deep_merge(DEMO, yaml.safe_load((REPO / "config" / "diffuse.yaml").read_text())["demo"])}
BARCODES = ("BC24A017", "BC24A018")
OFFSETS = (100.0, 140.0)  # camera dark counts, per plate
GAINS = (160.0, 120.0, 200.0, 90.0)  # counts per 8-bit grey level, per channel
CONDITIONS = {synth.INFECTED: "infected", synth.MOCK: "mock", synth.UV: "uv"}


def write_operetta_export(directory: str | Path, config_path: Path = CONFIG, bits: int = 16, barcodes=BARCODES, world: str = "foci") -> pd.DataFrame:
    """Write the export into ``directory`` (the run directory: the config's paths are
    relative to it); returns the truth per well (plate barcode, well, n_nuclei: living
    cells' nuclei, as deemd.synth counts them), also written as truth_wells.csv beside
    the plate map. ``bits=8`` writes the same fields as the demo's 8-bit grey levels, in
    PNGs named as the TIFFs (benchmarks/stitch_16bit.py compares the two); ``world`` is
    the demo world the cells come from (foci or diffuse)."""
    if bits not in (8, 16):
        raise ValueError(f"bits is 8 or 16, not {bits}")
    directory = Path(directory)
    dataset = yaml.safe_load(Path(config_path).read_text())["dataset"]
    channels = dataset["channels"]
    demo = DEMOS[world]
    module = world_module(demo)
    library = module.make_library(demo)
    plate_map, truth = [], []
    for plate, (barcode, offset) in enumerate(zip(barcodes, OFFSETS), start=1):
        rng = np.random.default_rng([20261, plate])
        for row, images, _, rows in module.iter_plate(demo, demo["experiment"], plate, library):
            fields = regrid_sites(images[:, : len(channels)], dataset["site_layout"])
            for site, field in fields.items():
                counts = camera_counts(field, rng, offset, GAINS[: len(channels)]) if bits == 16 else field
                for pixels, channel in zip(counts, channels):
                    path = directory / image_path(dataset["images"], "", barcode, row["well"], site, channel)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if bits == 16:
                        tifffile.imwrite(path, pixels)
                    else:
                        Image.fromarray(pixels).save(path.with_suffix(".png"))
                plate_map.append({
                    "Barcode": barcode, "Well": row["well"], "Field": site,
                    "Condition": CONDITIONS[row["disease_condition"]], "Compound": row["treatment"],
                    "Concentration_uM": row["treatment_conc"],
                })
            truth.append({"plate": barcode, "well": row["well"], "n_nuclei": sum(r["n_nuclei"] for r in rows)})
    metadata = directory / dataset["metadata"]
    metadata.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(plate_map).to_csv(metadata, index=False)
    truth = pd.DataFrame(truth)
    truth.to_csv(metadata.parent / "truth_wells.csv", index=False)
    return truth


if __name__ == "__main__":
    write_operetta_export(sys.argv[1] if len(sys.argv) > 1 else ".")
