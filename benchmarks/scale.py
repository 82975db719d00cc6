"""Real scale: an RxRx19a-sized plate, every stage timed against its physical floor, and a
projection of an RxRx19a HRCE run (issue 12).

Usage: python benchmarks/scale.py [--quick] [--threads N] [--repeats R] [--json PATH] [--keep]

With no arguments (meant to take under 15 minutes on 2 idle cores):
1. synthesises one plate with the demo generator (the synth_plate rule's own script, foci
   world): 24 wells x 4 sites of 1024 px, 5 channels, HRCE-like at 0.65 um per pixel
   (about 300 cells a site, nuclei 11 um = 17 px across, cells 34 um = 52 px);
2. runs each stage in a fresh process (so that its peak RSS can be compared with the rule's
   mem_mb), on the same N threads, as medians of interleaved repeats against its floor:
     stitch     deemd.stitch.stitch_plate into a fresh store  vs  the bare PNG decode (read_image);
                also timed: writing files of the store's chunk sizes (no codec), this file
                system's cost of taking in the store's bytes, which the stitch must pay:
                into the page cache its last repeat freed (as the stitch, whose last store
                is removed first) and into a new folder each repeat (memory never used
                for files before, which a virtual machine may first have to get from its host);
                and the user and system CPU seconds of each, so that the stitch's time over
                the decode splits into its own work (user) and the kernel's (system)
     nuclei     the nuclei rule's diameter estimate and count_nuclei per stitched well; on
                4 wells also the count as issue 12 found it (full resolution,
                peaks per component: nuclei_scale.filed_count_nuclei), its "before"
     read       PlateStore.read_wells, batch_wells at a time  vs  the bare PNG decode
     infer      deemd.inference.site_scores of model M (49 patches of 256 px a site, the
                infer rule's batches, precision and layout)  vs  the bare ResNet34 forward
                on random patches of the same batch shapes, dtype and layout
     train      deemd.train.train_one_epoch of M (store reads, patch cut, augmentation,
                forward, backward, Adam)  vs  forward + backward + Adam on random patches
     export     the export_hcs rule's write_hcs_plate (OME-NGFF HCS copy, opt-in for
                RxRx19a) on one thread, as the rule runs  vs  the bare PNG decode on one thread
     efficacy   the efficacy rule's main (model M) on a scored screen shaped like RxRx19a
                HRCE's (6 half-log doses x 6 replicate wells a compound, 1536-well plates),
                41 treatments (a plate): seconds a treatment, R's start, the rstatix sign tests and
                the 4PL fits among them (no floor: R's and scipy's own work)
     gpu        where CUDA is present, infer and train at full size with bf16, channels-last,
                DataLoader workers and pinned memory, and the data pipeline in GB/s; without
                CUDA the same code path runs on the CPU at a tiny size (GPU figures
                "unmeasured");
3. prints the rates, the store size against the PNG size, peak memory against mem_mb and
   the RxRx19a HRCE projection: this machine (its N cores), 16 cores (the per-core rate
   times 16, linear) and the GPU. Every figure is marked [m] measured or [p] projected.

The training values are those the workflow gives model M with config/rxrx19a.yaml merged
over config/config.yaml (snakemake's merge; deemd's model_train_params). --quick: a 6-well
plate of 256 px sites, 2 repeats (about a minute of CPU), for tests.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
# The other benchmarks (nuclei_scale), however this file is loaded.
sys.path.insert(1, str(REPO / "benchmarks"))
from deemd import synth  # noqa: E402
from deemd.hardware import with_malloc_settings  # noqa: E402
from deemd.metadata import build_sites_table, read_metadata_csv, well_table  # noqa: E402
from deemd.split import well_indices, well_labels  # noqa: E402
from deemd.stitch import read_image, site_paths_by_well, stitch_plate  # noqa: E402
from deemd.store import create_plate_store, open_plate_store  # noqa: E402
from deemd.validate import fill_defaults, load_schema  # noqa: E402

# HRCE in RxRx19a: 0.65 um per pixel; nuclei about 10-12 um, cells about 30-40 um across,
# a few hundred cells in a 1024 px site.
UM_PER_PX = 0.65
NUCLEUS_UM = 11.0
CELL_UM = 34.0
CELLS_PER_1024_SITE = 300
WELLS_PER_PLATE = 1536
# Seconds that the timed repeats of the inference and of the training stage may each take
# (interleaved's budget_s): the whole run then stays under 15 minutes on 2 cores without
# native bf16, where these stages run in fp32 at a fifth of the speed.
TORCH_BUDGET_S = 150.0
# Wells that the nuclei stage also counts with the code as issue 12 found it (its "before").
BEFORE_WELLS = 4
GIB = 1024**3
# RxRx19a HRCE's chemical screen: 1,672 compounds at six half-log doses, six replicate wells
# a dose, 4 sites a well. The efficacy stage scores EFFICACY_TREATMENTS of them.
SCREEN_DOSES_UM = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SCREEN_REPLICATES = 6
SCREEN_CONTROL_WELLS = 24  # held-out infected and as many non-infected control wells a plate
EFFICACY_TREATMENTS = 41  # a plate's worth; kept small so the benchmark stays under 15 minutes


@dataclass(frozen=True)
class Work:
    """An RxRx19a HRCE run: sites, wells and plates of the screen, and one MIL epoch's
    training and validation sites; the patch grid and M's training batches."""

    sites: int = 284_000
    wells: int = 71_000
    train_sites: int = 20_000
    val_sites: int = 5_000
    treated_sites: int = 250_000
    n_patches: int = 49
    train_k: int = 2
    sites_per_step: int = 16
    batchnorm_steps: int = 50
    site_bytes: int = 5 * 1024 * 1024
    treatments: int = 1672

    @property
    def plates(self) -> int:
        return math.ceil(self.wells / WELLS_PER_PLATE)

    @property
    def train_steps(self) -> int:
        return math.ceil(self.train_sites / self.sites_per_step)

    @property
    def epoch_read_sites(self) -> int:
        """Sites an epoch reads: each training site twice (its patches scored, then
        trained on), the validation sites once, and the BatchNorm recalibration's."""
        return 2 * self.train_sites + self.val_sites + self.batchnorm_steps * self.sites_per_step


@dataclass(frozen=True)
class Rates:
    """Measured throughputs of one machine; None where a stage was not measured there."""

    stitch_sites_s: float | None = None
    nuclei_wells_s: float | None = None
    estimate_s_plate: float | None = None
    read_sites_s: float | None = None
    infer_patches_s: float | None = None
    train_steps_s: float | None = None
    efficacy_s_treatment: float | None = None
    efficacy_start_s: float | None = None
    export_fields_s: float | None = None

    def scaled(self, factor: float) -> Rates:
        """Every rate times ``factor`` (per-plate seconds divided by it): linear scaling.
        The efficacy job is one single-threaded process per model, so more cores leave
        its seconds as they are."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not f.name.startswith("efficacy_"):
                value = value / factor if f.name == "estimate_s_plate" else value * factor
            values[f.name] = value
        return Rates(**values)


# --------------------------------------------------------------------------- pure helpers


def scale_demo(site_size: int = 1024, quick: bool = False) -> dict:
    """The demo config of the benchmark plate: HRCE geometry at UM_PER_PX whatever the site
    size (lengths are fractions of the site in deemd.synth), cells per site in proportion
    to the site's area; 24 wells (4 x 6) or, ``quick``, 6 (2 x 3). No failed well."""
    demo = json.loads(json.dumps(synth.DEFAULT_DEMO))
    cells = {
        "per_site": max(1, round(CELLS_PER_1024_SITE * (site_size / 1024) ** 2)),
        "nucleus_radius": NUCLEUS_UM / UM_PER_PX / 2 / site_size,
        "cell_radius": CELL_UM / UM_PER_PX / 2 / site_size,
    }
    demo.update(site_size=site_size, plates=1, cells=cells, failed_wells_per_plate=0)
    if quick:
        demo.update(plate_rows=2, plate_columns=3, compounds=1, concentrations_um=[1.0, 10.0],
                    controls_per_plate={synth.MOCK: 2, synth.INFECTED: 2})
    else:
        demo.update(plate_rows=4, plate_columns=6, compounds=2,
                    controls_per_plate={synth.MOCK: 4, synth.UV: 2, synth.INFECTED: 6})
    return demo


def nucleus_diameter_px(demo: dict) -> float:
    """The demo's nucleus diameter in px of a site."""
    return 2 * demo["cells"]["nucleus_radius"] * demo["site_size"]


def merged_config(overlay: Path | None = REPO / "config" / "rxrx19a.yaml") -> dict:
    """config/config.yaml with ``overlay`` merged over it as snakemake merges a
    --configfile, and the schema's defaults filled in."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if overlay is not None:
        update_config(config, yaml.safe_load(Path(overlay).read_text()))
    return fill_defaults(config, load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml"))


def model_train_values(train: dict, model: str) -> dict:
    """One model's training values, as workflow/rules/common.smk's model_train_params
    gives them: the shared ones with the model's by_model overrides."""
    values = {k: v for k, v in train.items() if k not in ("models", "by_model")}
    values.update((train.get("by_model") or {}).get(model) or {})
    return values


def rule_mem_mb(rules_dir: Path = REPO / "workflow" / "rules") -> dict[str, int]:
    """{rule: mem_mb} of every rule in ``rules_dir``/*.smk that sets resources.mem_mb."""
    found, rule = {}, None
    for path in sorted(Path(rules_dir).glob("*.smk")):
        for line in path.read_text().splitlines():
            header = re.match(r"\s*(?:rule|checkpoint)\s+(\w+)\s*:", line)
            if header:
                rule = header.group(1)
            mem = re.match(r"\s*mem_mb\s*=\s*(\d+)", line)
            if mem and rule:
                found[rule] = int(mem.group(1))
    return found


def batch_sizes(n: int, per_batch: int) -> list[int]:
    """Sizes of the in-order batches of ``n`` items, ``per_batch`` at a time."""
    return [min(per_batch, n - start) for start in range(0, n, per_batch)]


def forward_shapes(n_sites: int, sites_per_batch: int, n_patches: int, chunk: int) -> list[int]:
    """Patches per forward pass of deemd.inference.infer_patches over ``n_sites`` sites:
    per loader batch its sites' patches, ``chunk`` at a time."""
    return [size for sites in batch_sizes(n_sites, sites_per_batch) for size in batch_sizes(sites * n_patches, chunk)]


def stage_seconds(rates: Rates, work: Work) -> dict[str, float | None]:
    """Seconds of each stage of an RxRx19a run at ``rates`` (None where a rate is missing).
    The MIL epoch of M: (a) every patch of the training sites scored, (b) the training
    steps, (c) the BatchNorm recalibration (forwards, at the inference rate), (d) every
    patch of the validation sites scored."""

    def over(units, rate):
        return None if rate is None else units / rate

    seconds = {
        "stitch": over(work.sites, rates.stitch_sites_s),
        "nuclei": None,
        "store read": over(work.sites, rates.read_sites_s),
        "HCS export": over(work.sites, rates.export_fields_s),
        "epoch: patch scoring": over(work.train_sites * work.n_patches, rates.infer_patches_s),
        "epoch: training steps": over(work.train_steps, rates.train_steps_s),
        "epoch: batchnorm": over(work.batchnorm_steps * work.sites_per_step * work.train_k, rates.infer_patches_s),
        "epoch: validation": over(work.val_sites * work.n_patches, rates.infer_patches_s),
        "inference": over(work.treated_sites * work.n_patches, rates.infer_patches_s),
    }
    if rates.nuclei_wells_s is not None and rates.estimate_s_plate is not None:
        seconds["nuclei"] = work.wells / rates.nuclei_wells_s + work.plates * rates.estimate_s_plate
    seconds["efficacy"] = None
    if rates.efficacy_s_treatment is not None and rates.efficacy_start_s is not None:
        seconds["efficacy"] = rates.efficacy_start_s + work.treatments * rates.efficacy_s_treatment
    parts = [seconds[k] for k in seconds if k.startswith("epoch: ")]
    seconds["MIL epoch"] = None if None in parts else sum(parts)
    return seconds


def format_duration(seconds: float | None) -> str:
    """'12 s', '3.4 min', '5.1 h' or '2.3 d'; '-' for None."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2f} s"


def text_table(rows: list[list[str]], header: list[str]) -> str:
    """Rows of strings as a plain text table, columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def projection_rows(columns: dict[str, Rates | None], work: Work) -> list[list[str]]:
    """One row per stage of the RxRx19a projection: its work, then its time in each of
    ``columns`` ({title: rates}; None: unmeasured there), each marked [p] projected."""
    described = {
        "stitch": f"{work.sites:,} sites",
        "nuclei": f"{work.wells:,} wells, {work.plates} diameter estimates",
        "store read": f"{work.sites:,} sites read once",
        "HCS export": f"{work.sites:,} fields (opt-in: export.hcs, off for RxRx19a)",
        "MIL epoch": f"{work.train_sites:,} training + {work.val_sites:,} validation sites",
        "epoch: patch scoring": f"{work.train_sites * work.n_patches:,} patches",
        "epoch: training steps": f"{work.train_steps:,} steps of {work.sites_per_step * work.train_k} patches",
        "epoch: batchnorm": f"{work.batchnorm_steps} steps, forward only",
        "epoch: validation": f"{work.val_sites * work.n_patches:,} patches",
        "inference": f"{work.treated_sites:,} treated sites x {work.n_patches} patches, per model",
        "efficacy": f"{work.treatments:,} treatments x {len(SCREEN_DOSES_UM)} doses x {SCREEN_REPLICATES} wells, per model (1 process)",
    }
    times = {title: (None if rates is None else stage_seconds(rates, work)) for title, rates in columns.items()}
    rows = []
    for stage, what in described.items():
        cells = []
        for title in columns:
            value = None if times[title] is None else times[title][stage]
            cells.append("unmeasured" if times[title] is None else ("-" if value is None else f"{format_duration(value)} [p]"))
        rows.append([("  " + stage.removeprefix("epoch: ")) if stage.startswith("epoch: ") else stage, what, *cells])
    return rows


def median_times(times: dict[str, list[float]]) -> dict[str, float]:
    """Median seconds of each step's repeats."""
    return {f"{name}_s": statistics.median(values) for name, values in times.items()}


def interleaved(steps: dict, repeats: int, sync=None, warmup: bool = False, before: dict | None = None,
                budget_s: float | None = None) -> dict[str, list[float]]:
    """Wall seconds of each step (name -> callable), the steps taking turns ``repeats``
    times, so that a passing load on the machine hits all alike; ``sync`` (e.g. CUDA's)
    is called before every clock reading. ``warmup``: every step runs once untimed first
    (torch builds its kernels for each new shape on the first call). ``before`` (name ->
    callable) runs untimed before each repeat of that step (e.g. removing its output).
    ``budget_s`` (with ``warmup``): fewer repeats, down to 1, where the warm-up round shows
    that ``repeats`` rounds would take longer (a CPU without native bf16 runs the torch
    stages several times slower); how many ran is the length of each list."""
    times = {name: [] for name in steps}
    started = time.perf_counter()
    for step in steps.values() if warmup else ():
        step()
    if warmup and budget_s is not None:
        repeats = max(1, min(repeats, int(budget_s // max(time.perf_counter() - started, 1e-9))))
    for _ in range(repeats):
        for name, step in steps.items():
            if before and name in before:
                before[name]()
            if sync is not None:
                sync()
            started = time.perf_counter()
            step()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - started)
    return times


class BatchClock:
    """A progress callback (``progress(done, total)`` of site_scores and train_one_epoch)
    that notes when each batch is done, so that a pass's steady rate leaves out the
    DataLoader's start (its worker processes) and the first batch."""

    def __init__(self):
        self.marks: list[float] = []
        self.passes: list[float] = []

    def __call__(self, done=None, total=None) -> None:
        self.marks.append(time.perf_counter())

    def wrap(self, step):
        """``step`` (called with this clock), recording its steady seconds: from its first
        batch done to its last."""

        def run():
            self.marks = []
            step(self)
            if len(self.marks) > 1:
                self.passes.append(self.marks[-1] - self.marks[0])

        return run


def steady_rate(units: list[int], passes: list[float], whole_s: float) -> float:
    """Units per second after the first batch (``units``: per batch; ``passes``: steady
    seconds of each timed pass, warm-up first); the whole pass's rate where a pass
    has a single batch."""
    timed = passes[1:] if len(passes) > 1 else passes
    if len(units) < 2 or not timed:
        return sum(units) / whole_s
    return sum(units[1:]) / statistics.median(timed)


def tree_bytes(path: Path) -> int:
    """Bytes of all files below ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def peak_rss_mb() -> float:
    """This process's peak resident set size, MB: VmHWM of /proc/self/status (Linux), which
    starts afresh at exec; elsewhere ru_maxrss (which on Linux would also hold the parent's
    RSS at the fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / (1024 if sys.platform == "darwin" else 1)


def png_paths(sites: pd.DataFrame, pattern: str, channels: list[int]) -> list[str]:
    """Every image file of the sites, in plate order."""
    return [p for by_site in site_paths_by_well(sites, pattern, channels).values() for _, _, paths in by_site for p in paths]


def drain(iterable) -> None:
    """Consume an iterator without keeping what it yields."""
    collections.deque(iterable, maxlen=0)


# --------------------------------------------------------------------------- the plate


def synthesise(work: Path, demo: dict) -> dict:
    """One plate of ``demo`` written by the synth_plate rule's script (PNGs in the
    demo's path pattern, metadata.csv, truth); returns the paths."""
    import synth_plate

    out = {"images": str(work / "images" / demo["experiment"] / "Plate1"), "metadata": str(work / "metadata.csv"),
           "truth": str(work / "truth.parquet"), "masks": str(work / "masks.npz")}
    synth_plate.main({"demo": demo}, {"experiment": demo["experiment"], "plate": 1}, out, str(work / "logs" / "synth.log"))
    return dict(out, pattern=str(work / "images" / "{experiment}" / "Plate{plate}" / "{well}_s{site}_w{channel}.png"))


def sites_table(metadata: str, site_layout: list[list[int]]) -> pd.DataFrame:
    """The sites table (as the sites_table rule builds it) with each well's store row,
    label (untreated wells), and set: untreated sites "train", treated ones "treated"."""
    raw = read_metadata_csv(metadata)
    sites = build_sites_table(raw, load_schema(REPO / "workflow" / "schemas" / "metadata.schema.yaml"), metadata, site_layout=site_layout)
    wells = well_table(sites)
    labels = pd.Series(well_labels(wells).to_numpy(), index=wells["well_id"].to_numpy())
    return sites.assign(
        well_index=sites["well_id"].map(well_indices(sites)).astype(np.int64),
        label=sites["well_id"].map(labels).astype("Int64"),
        set=np.where(sites["treatment"].isna(), "train", "treated"),
    )


def write_model_file(path: Path, spec: dict) -> None:
    """A model file as the train rule writes it (random weights: timing does not depend
    on them), so that the inference stage loads it as the infer rule does."""
    import torch
    from deemd.mil import build_resnet34
    from train_model import make_setup

    channels = len(spec["dataset"]["channels"])
    setup = make_setup("M", spec["train"], spec["dataset"]["site_size"], channels)
    torch.manual_seed(0)
    saved = {"kind": "M", "state_dict": build_resnet34(channels).state_dict(), "setup": setup.to_dict(), "best_epoch": 0,
             "best_val_ap": float("nan"), "channel_names": spec["dataset"]["channel_names"], "mean": spec["stats"]["mean"],
             "std": spec["stats"]["std"]}
    torch.save(saved, path)


# --------------------------------------------------------------------------- stages


def cpu_seconds() -> tuple[float, float]:
    """This process's user and system CPU seconds so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def with_cpu_times(steps: dict, cpu: dict[str, list[tuple[float, float]]]) -> dict:
    """``steps`` (name -> callable), each noting in ``cpu[name]`` the (user, system) CPU
    seconds of every call: where a step's time over its floor goes, to the code's own work
    (user) or to the kernel's (system: taking in written bytes, page faults). The kernel's
    background writeback of dirty pages runs in threads of its own and is in neither."""

    def timed(name, step):
        def run():
            user, system = cpu_seconds()
            step()
            after = cpu_seconds()
            cpu.setdefault(name, []).append((after[0] - user, after[1] - system))

        return run

    return {name: timed(name, step) for name, step in steps.items()}


def median_cpu(cpu: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Median user and system CPU seconds of each step's repeats."""
    return {f"{name}_{part}_cpu_s": statistics.median(pair[i] for pair in pairs)
            for name, pairs in cpu.items() for i, part in enumerate(("user", "system"))}


def chunk_file_sizes(store_path: str) -> list[int]:
    """Bytes of each chunk file of a store's images."""
    return [f.stat().st_size for f in sorted((Path(store_path) / "images").glob("c.*"))]


def write_files(pool, folder: Path, sizes: list[int], payload: bytes) -> None:
    """Write one file a size (the first ``size`` bytes of ``payload``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)

    def write(item):
        with open(folder / f"f{item[0]}", "wb") as handle:
            handle.write(memoryview(payload)[: item[1]])

    drain(pool.map(write, enumerate(sizes)))


def stitch_stage(spec: dict) -> dict:
    """The stitch rule's work (stitch_plate into a fresh store, as stitch_plate.py calls
    it) against the bare decode of the same PNGs (read_image), on one thread pool; and,
    to show what the file system adds, the plain write of as many files of the same
    sizes as the store's chunks (random bytes: the kernel's cost does not depend on them),
    once where the last repeat's files were just removed and once into a new folder
    (kept until the end)."""
    sites, dataset, store_cfg = pd.read_parquet(spec["sites"]), spec["dataset"], spec["store"]
    paths = png_paths(sites, spec["pattern"], dataset["channels"])
    wells = well_table(sites)["well"].tolist()

    def stitch(pool):
        store = create_plate_store(spec["store_path"], wells, dataset["channel_names"], dataset["site_size"], dataset["site_layout"],
                                   codec=store_cfg["codec"], clevel=store_cfg["clevel"], attrs={"plate_id": spec["plate_id"]})
        stitch_plate(sites, store, spec["pattern"], dataset["channels"], "error", pool, None,
                     dataset["channel_axis"], store_cfg["rescale"])
        store.group.attrs["complete"] = True

    scratch = Path(spec["store_path"]).with_suffix(".writes")
    with ThreadPoolExecutor(spec["threads"]) as pool:
        drain(pool.map(read_image, paths))  # the page cache
        stitch(pool)  # untimed: the chunk sizes for the write step
        sizes = chunk_file_sizes(spec["store_path"])
        payload = np.random.default_rng(0).integers(0, 256, max(sizes), dtype=np.uint8).tobytes()
        # Each step writes into a fresh folder: removing the last repeat's is not its work.
        fresh = {"stitch": lambda: shutil.rmtree(spec["store_path"], ignore_errors=True),
                 "write": lambda: shutil.rmtree(scratch / "last", ignore_errors=True)}
        new_folders = (scratch / f"new{n}" for n in range(spec["repeats"]))
        cpu: dict[str, list[tuple[float, float]]] = {}
        steps = with_cpu_times({"decode": lambda: drain(pool.map(read_image, paths)), "stitch": lambda: stitch(pool),
                                "write": lambda: write_files(pool, scratch / "last", sizes, payload),
                                "write_new": lambda: write_files(pool, next(new_folders), sizes, payload)}, cpu)
        times = interleaved(steps, spec["repeats"], before=fresh)
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = sorted(d / s for d, s in zip(times["decode"], times["stitch"]))
    return {"sites": len(sites), "files": len(paths), "chunk_files": len(sizes), **median_times(times), **median_cpu(cpu),
            "ratio_range": [ratios[0], ratios[-1]], "repeats_s": times, "png_bytes": sum(os.path.getsize(p) for p in paths),
            "store_bytes": tree_bytes(Path(spec["store_path"]))}


def nuclei_stage(spec: dict) -> dict:
    """The nuclei rule's work on the stitched plate: the plate's diameter estimate
    (nuclei_plate.plate_diameter), then count_nuclei of every well on ``threads`` threads
    (its pool), repeated; the counts against the synthetic truth."""
    from deemd.nuclei import count_nuclei, nucleus_params, params_from_diameter, valid_pixels
    from nuclei_plate import plate_diameter
    from nuclei_scale import filed_count_nuclei

    store, cfg = open_plate_store(spec["store_path"]), spec["nuclei"]
    channel = spec["dataset"]["channels"].index(spec["dataset"]["nuclear_channel"])
    site_valid, layout, size, wells = store.site_valid, store.site_layout, store.site_size, store.wells
    table = well_table(pd.read_parquet(spec["sites"])).set_index("well").loc[wells].reset_index()
    read = lambda i: store.read_well(i, channel)  # noqa: E731
    valid = lambda i: valid_pixels(site_valid[i], layout, size)  # noqa: E731
    started = time.perf_counter()
    diameter, _ = plate_diameter(read, valid, table["treatment"].isna().to_numpy(), cfg, spec["plate_id"])
    estimate_s = time.perf_counter() - started
    params = nucleus_params(cfg, diameter)
    full = params_from_diameter(diameter, cfg["min_contrast"], None)
    sample = range(min(BEFORE_WELLS, len(wells)))
    counts, sample_counts = [], {}

    def count_sample(name, count):
        sample_counts[name] = list(pool.map(count, sample))

    with ThreadPoolExecutor(spec["threads"]) as pool:
        times = interleaved({"count": lambda: counts.append(list(pool.map(lambda i: count_nuclei(read(i), params, valid(i)), range(len(wells))))),
                             "sample_before": lambda: count_sample("before", lambda i: filed_count_nuclei(read(i), full)),
                             "sample_after": lambda: count_sample("after", lambda i: count_nuclei(read(i), params, valid(i)))},
                            min(3, spec["repeats"]))
    truth = pd.read_parquet(spec["truth"]).groupby("well")["n_nuclei"].sum().loc[wells]
    return {"wells": len(wells), "estimate_s": estimate_s, "estimate_wells": min(8, int(table["treatment"].isna().sum())),
            **median_times(times), "diameter_px": diameter, "downsample": params.downsample, "counted": int(sum(counts[-1])),
            "truth": int(truth.sum()), "sample_wells": len(sample), "sample_counted_before": int(sum(sample_counts["before"])),
            "sample_counted_after": int(sum(sample_counts["after"]))}


def read_stage(spec: dict) -> dict:
    """PlateStore.read_wells, batch_wells wells at a time as the later steps read, against
    the bare decode of the same PNGs."""
    sites, store = pd.read_parquet(spec["sites"]), open_plate_store(spec["store_path"])
    paths = png_paths(sites, spec["pattern"], spec["dataset"]["channels"])
    step = spec["store"]["batch_wells"]

    def read():
        for start in range(0, len(store.wells), step):
            store.read_wells(start, start + step)

    with ThreadPoolExecutor(spec["threads"]) as pool:
        drain(pool.map(read_image, paths))
        times = interleaved({"decode": lambda: drain(pool.map(read_image, paths)), "read": read}, spec["repeats"])
    return {"sites": len(sites), **median_times(times)}


def export_stage(spec: dict) -> dict:
    """The export_hcs rule's work (deemd.hcs.write_hcs_plate of the stitched store into a
    fresh folder, on one thread as the rule runs) against the bare decode of the same PNGs
    on one thread; the export's files and bytes against the store's."""
    from deemd.hcs import tree_size, write_hcs_plate

    sites, store = pd.read_parquet(spec["sites"]), open_plate_store(spec["store_path"])
    paths = png_paths(sites, spec["pattern"], spec["dataset"]["channels"])
    target = Path(spec["store_path"]).with_suffix(".ome.zarr")
    written = {}

    def export():
        written.update(write_hcs_plate(store, target, spec["plate_id"], spec["export"]["hcs_min_level_size"]))

    drain(map(read_image, paths))  # the page cache
    # Two repeats: the export is single-threaded, so each costs twice a stitch's time.
    times = interleaved({"decode": lambda: drain(map(read_image, paths)), "export": export}, min(2, spec["repeats"]),
                        before={"export": lambda: shutil.rmtree(target, ignore_errors=True)})
    files, size = tree_size(target)
    shutil.rmtree(target, ignore_errors=True)
    # One thread a job, so Snakemake runs as many plates' exports at once as it has cores.
    return {"sites": len(sites), "fields": written["fields"], "levels": written["levels"], **median_times(times),
            "parallel_jobs": spec["threads"], "export_files": files, "export_bytes": size, "store_bytes": tree_bytes(Path(spec["store_path"]))}


def torch_setup(spec: dict):
    """torch threads as the torch rules set them; returns the torch module."""
    import torch

    torch.set_num_threads(max(1, spec["threads"]))
    return torch


def cuda_sync(device_precision):
    """A clock barrier for ``interleaved``: CUDA's synchronize, None on a CPU."""
    import torch

    return torch.cuda.synchronize if device_precision.cuda else None


def random_patches(device_precision, n: int, channels: int, patch_size: int, inference: bool):
    """n random float patches on the device, laid out as the network's inputs are."""
    import torch

    batch = torch.randn(n, channels, patch_size, patch_size, device=device_precision.device)
    return device_precision.layout(batch, inference=inference)


def bare_forward(network, device_precision, shapes: list[int], batch) -> None:
    """The floor of inference: the network's forward alone, autocast as infer_patches
    does, on ``batch`` (random_patches) cut to each of ``shapes`` patches."""
    import torch

    with torch.inference_mode():
        for n in shapes:
            with device_precision.autocast():
                network(batch[:n]).float()


def bare_steps(network, device_precision, shapes: list[int], images, optimizer, weights) -> None:
    """The floor of training: forward, class-weighted BCE, backward and Adam on ``images``
    (random_patches) cut to each step's patches (``shapes``), autocast as train_one_epoch."""
    import torch
    from deemd.mil import weighted_bce

    network.train()
    targets = (torch.arange(len(images), device=device_precision.device) % 2).float()
    for n in shapes:
        with device_precision.autocast():
            logits = network(images[:n]).float().view(-1)
        loss = weighted_bce(logits, targets[:n], weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def infer_sites(spec: dict, setup) -> pd.DataFrame:
    """The treated sites the inference stage scores: a whole number of inference batches,
    at least ``spec['infer_sites']`` where the plate has them."""
    from deemd.inference import inference_sites_per_batch

    treated = pd.read_parquet(spec["sites"]).query("set == 'treated'").reset_index(drop=True)
    per_batch = inference_sites_per_batch(setup)
    n = min(len(treated), max(per_batch, math.ceil(spec["infer_sites"] / per_batch) * per_batch))
    return repeated(treated.head(n), spec.get("site_repeat", 1))


def repeated(sites: pd.DataFrame, times: int) -> pd.DataFrame:
    """The rows ``times`` over (a longer pass over the same sites: on a GPU, so that the
    DataLoader workers' start at every pass does not dominate a short one)."""
    return pd.concat([sites] * max(1, int(times)), ignore_index=True)


def infer_stage(spec: dict, device_name: str = "cpu", precision: str | None = None, workers: int | None = None,
                max_sites: int | None = None) -> dict:
    """Model M's site scores as the infer rule computes them (the model file loaded by
    load_trained, the rule's loader batches, site_scores) against the bare forward;
    ``max_sites``: fewer sites than a loader batch (the GPU path's exercise on a CPU)."""
    torch = torch_setup(spec)
    from deemd.data import SiteDataset, site_loader
    from deemd.inference import (
        inference_patches_per_forward,
        inference_sites_per_batch,
        load_trained,
        site_scores,
    )

    network, setup, dp = load_trained(spec["model"], torch.device(device_name), precision or spec["train"]["precision"])
    sites = infer_sites(spec, setup)
    sites = sites if max_sites is None else sites.head(max_sites)
    loader = site_loader(SiteDataset(sites, {spec["plate_id"]: spec["store_path"]}), inference_sites_per_batch(setup),
                         spec["workers"] if workers is None else workers, None, pin_memory=dp.cuda)
    shapes = forward_shapes(len(sites), inference_sites_per_batch(setup), setup.grid.n_patches, inference_patches_per_forward(setup, dp.cuda))
    batch = random_patches(dp, max(shapes), len(spec["dataset"]["channels"]), setup.grid.patch_size, inference=True)
    clock = BatchClock()
    times = interleaved({"infer": clock.wrap(lambda progress: site_scores(setup, network, loader, dp, progress)),
                         "bare": lambda: bare_forward(network, dp, shapes, batch)},
                        spec["torch_repeats"], cuda_sync(dp), warmup=True, budget_s=spec.get("torch_budget_s"))
    per_batch = [n * setup.grid.n_patches for n in batch_sizes(len(sites), inference_sites_per_batch(setup))]
    return {"sites": len(sites), "patches": sum(shapes), "forwards": len(shapes), "patch_size": setup.grid.patch_size,
            "precision": dp.precision, "channels_last": dp.channels_last(True), "repeats": len(times["infer"]), **median_times(times),
            "patches_s": steady_rate(per_batch, clock.passes, statistics.median(times["infer"])),
            "bare_patches_s": sum(shapes) / statistics.median(times["bare"])}


def training_objects(setup, device_precision, labels):
    """Network, class weights, Adam and the one-cycle schedule as deemd.train.fit makes
    them (the schedule long enough for any number of timed steps)."""
    import torch
    from deemd.mil import build_resnet34, class_weights
    from deemd.train import adam_one_cycle

    torch.manual_seed(setup.seed)
    network = device_precision.place(build_resnet34(setup.in_channels))
    weights = torch.as_tensor(class_weights(labels), dtype=torch.float32, device=device_precision.device)
    optimizer, scheduler = adam_one_cycle(network, setup, 100_000)
    return network, weights, optimizer, scheduler


def train_stage(spec: dict, device_precision=None, workers: int | None = None, max_sites: int | None = None) -> dict:
    """Model M's training steps (train_one_epoch over the plate's untreated sites, a
    random k patches of each selected: the epoch's patch scoring is the inference stage)
    against forward + backward + Adam on random patches of the same step shapes."""
    torch = torch_setup(spec)
    from deemd.data import SiteDataset, site_loader
    from deemd.device import DevicePrecision
    from deemd.train import sites_per_step, train_one_epoch
    from train_model import make_setup

    channels = len(spec["dataset"]["channels"])
    setup = make_setup("M", spec["train"], spec["dataset"]["site_size"], channels)
    dp = device_precision or DevicePrecision(torch.device("cpu"), spec["stats"]["mean"], spec["stats"]["std"], spec["train"]["precision"])
    torch.use_deterministic_algorithms(dp.device.type == "cpu", warn_only=True)
    train = pd.read_parquet(spec["sites"]).query("set == 'train'").reset_index(drop=True)
    train = repeated(balanced_head(train, max_sites), spec.get("site_repeat", 1))
    data = SiteDataset(train, {spec["plate_id"]: spec["store_path"]})
    network, weights, optimizer, scheduler = training_objects(setup, dp, data.label)
    rng = np.random.default_rng(0)
    selected = np.stack([rng.choice(setup.grid.n_patches, setup.train_k, replace=False) for _ in range(len(data))])
    per_step = sites_per_step(setup)
    shapes = [n * setup.train_k for n in batch_sizes(len(data), per_step)]
    loader = site_loader(data, per_step, spec["workers"] if workers is None else workers, 1, pin_memory=dp.cuda)
    images = random_patches(dp, max(shapes), channels, setup.grid.patch_size, inference=False)
    clock = BatchClock()
    times = interleaved({"train": clock.wrap(lambda progress: train_one_epoch(setup, network, loader, selected, dp, weights, optimizer,
                                                                                scheduler, progress, augment_seed=1)),
                         "bare": lambda: bare_steps(network, dp, shapes, images, optimizer, weights)},
                        spec["torch_repeats"], cuda_sync(dp), warmup=True, budget_s=spec.get("torch_budget_s"))
    return {"sites": len(data), "steps": len(shapes), "patches": sum(shapes), "step_patches": per_step * setup.train_k,
            "patch_size": setup.grid.patch_size, "precision": dp.precision, "channels_last": dp.channels_last(False), "repeats": len(times["train"]),
            **median_times(times),
            "steps_s": steady_rate([1] * len(shapes), clock.passes, statistics.median(times["train"])),
            "bare_steps_s": len(shapes) / statistics.median(times["bare"])}


def balanced_head(sites: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """Up to ``n`` sites, half of each label (all where ``n`` is None)."""
    if n is None:
        return sites
    return pd.concat([rows.head(max(1, n // 2)) for _, rows in sites.groupby("label")]).reset_index(drop=True)


def pipeline_stage(spec: dict, device, workers: int, sites_per_batch: int, max_sites: int | None = None) -> dict:
    """The data pipeline alone: every site (up to ``max_sites``) read by the DataLoader's
    workers into pinned memory and copied to ``device``; GB/s of uint8 pixels delivered
    (median of repeats)."""
    import torch
    from deemd.data import SiteDataset, site_loader

    sites = pd.read_parquet(spec["sites"])
    sites = repeated(sites if max_sites is None else sites.head(max_sites), spec.get("site_repeat", 1))
    loader = site_loader(SiteDataset(sites, {spec["plate_id"]: spec["store_path"]}), sites_per_batch, workers, None, pin_memory=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(clock):
        for batch, _, _ in loader:
            batch.to(device, non_blocking=True)
            sync()
            clock()

    clock = BatchClock()
    times = interleaved({"pipeline": clock.wrap(run)}, max(2, spec["torch_repeats"]), None, warmup=True)
    site_bytes = len(spec["dataset"]["channels"]) * spec["dataset"]["site_size"] ** 2
    per_batch = [n * site_bytes for n in batch_sizes(len(sites), sites_per_batch)]
    return {"sites": len(sites), "workers": workers, **median_times(times),
            "gb_s": steady_rate(per_batch, clock.passes, statistics.median(times["pipeline"])) / 1e9}


def gpu_stage(spec: dict) -> dict:
    """The GPU path: bf16 autocast, channels-last, DataLoader workers and pinned memory.
    With CUDA: the data pipeline, inference and training at full size on the GPU. Without:
    the same calls on the CPU at a tiny size (2 DataLoader workers, pinning a no-op, bf16
    where the CPU has it natively, else fp32, and channels-last in training too), to show
    that the path runs; no GPU figure."""
    torch = torch_setup(spec)
    from deemd.device import DevicePrecision, cpu_has_native_bf16

    class GpuLayoutOnCpu(DevicePrecision):
        """A CUDA run's layout on a CPU: channels-last in training as well."""

        def channels_last(self, inference: bool) -> bool:
            return True

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    workers = spec["gpu_workers"] if cuda else 2
    mean, std = spec["stats"]["mean"], spec["stats"]["std"]
    # On a CPU, bf16 where it is native; emulated it would take this tiny exercise past the
    # benchmark's 15 minutes (measured: over 15 min on a 2-core CPU without AVX512-BF16).
    cpu_precision = "bf16" if cpu_has_native_bf16() else "fp32"
    dp = DevicePrecision(device, mean, std, "auto") if cuda else GpuLayoutOnCpu(device, mean, std, cpu_precision)
    # CUDA: every site of the plate, 10 times over; CPU: 2 sites (4 for the pipeline), once.
    sized = {"infer_sites": 10**6, "site_repeat": 10} if cuda else {"infer_sites": 1, "torch_repeats": 1}
    result = {"cuda": cuda, "device": torch.cuda.get_device_name() if cuda else "cpu (tiny exercise)", "workers": workers}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        result["pipeline"] = pipeline_stage(dict(spec, **sized), device, workers, 10 if cuda else 2, None if cuda else 4)
        result["infer"] = infer_stage(dict(spec, **sized), device.type, "auto" if cuda else cpu_precision, workers, None if cuda else 2)
        result["train"] = train_stage(dict(spec, **sized), dp, workers, None if cuda else 2)
    if cuda:
        result["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / GIB
    return result


def efficacy_screen(n_treatments: int, seed: int = 0, sites_per_well: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A scored screen shaped like RxRx19a HRCE's, as the efficacy rule reads it: the
    inference shards' sites (role, plate_id, well, well_id, treatment, treatment_conc and
    the readouts z and map_mean, at levels like the demo's M) and the nuclei rule's well
    table. ``n_treatments`` compounds at SCREEN_DOSES_UM, SCREEN_REPLICATES wells a dose,
    on plates of WELLS_PER_PLATE wells with SCREEN_CONTROL_WELLS held-out controls of each
    kind. One compound in six is antiviral (a 4PL inhibition, Emax 0.5-1), one in ten
    costs cells at its top doses; well and site noise as replicate wells show. Sites also
    carry the truth: ``true_active`` per treatment (in the sites table)."""
    from deemd.doseresponse import logistic4
    from deemd.inhibition import INFECTED_CONTROL, NONINFECTED_CONTROL, TREATED

    rng = np.random.default_rng(seed)
    # (z, map_mean) of infected and of clean wells; a treated well lies between them.
    infected, clean = np.array([0.95, 0.28]), np.array([0.03, 0.01])
    wells_per_treatment = len(SCREEN_DOSES_UM) * SCREEN_REPLICATES
    per_plate = (WELLS_PER_PLATE - 2 * SCREEN_CONTROL_WELLS) // wells_per_treatment
    log_doses = np.log10(SCREEN_DOSES_UM)
    wells = []
    for t in range(n_treatments):
        plate = f"HRCE-1_{t // per_plate + 1}"
        active = rng.random() < 1 / 6
        emax, log_ec50 = rng.uniform(0.5, 1.0), rng.uniform(log_doses[0], log_doses[-1])
        toxic_from = log_doses[-1] - rng.uniform(0.0, 1.0) if rng.random() < 0.1 else np.inf
        for dose, log_dose in zip(SCREEN_DOSES_UM, log_doses):
            effect = logistic4(log_dose, 0.0, emax, log_ec50, 1.5) if active else 0.0
            viability = 0.3 if log_dose >= toxic_from else 1.0
            for _ in range(SCREEN_REPLICATES):
                wells.append((plate, TREATED, f"CPD-{t + 1:04d}", dose, float(effect), viability, active))
    for p in range(math.ceil(n_treatments / per_plate)):
        for role, inhibited in ((INFECTED_CONTROL, 0.0), (NONINFECTED_CONTROL, 1.0)):
            wells += [(f"HRCE-1_{p + 1}", role, None, np.nan, inhibited, 1.0, False)] * SCREEN_CONTROL_WELLS
    table = pd.DataFrame(wells, columns=["plate_id", "role", "treatment", "treatment_conc", "inhibited", "viability", "true_active"])
    table["well"] = [f"W{i + 1:04d}" for i in table.groupby("plate_id").cumcount()]
    table["well_id"] = table["plate_id"] + "_" + table["well"]
    level = infected + np.outer(table["inhibited"].clip(0, 1) + rng.normal(0, 0.06, len(table)), clean - infected)
    site_level = np.repeat(level, sites_per_well, axis=0) + rng.normal(0, 0.04, (len(table) * sites_per_well, 2)) * (infected - clean)
    sites = table.loc[table.index.repeat(sites_per_well)].reset_index(drop=True)
    sites["site"] = np.tile(np.arange(1, sites_per_well + 1), len(table))
    sites["site_id"] = sites["well_id"] + "_" + sites["site"].astype(str)
    sites["z"], sites["map_mean"] = np.clip(site_level[:, 0], 0, 1), np.clip(site_level[:, 1], 0, None)
    cells = 40.0 * table["viability"] * rng.normal(1.0, 0.05, len(table))
    nuclei = table[["plate_id", "well", "treatment", "treatment_conc"]].assign(
        toxic=table["viability"] < 0.5, no_nuclei=False, nuclei_per_site=cells, infected_control_median=40.0)
    return sites.drop(columns=["inhibited", "viability"]), nuclei


def efficacy_stage(spec: dict) -> dict:
    """The efficacy rule's work for model M (workflow/scripts/efficacy.py's main, readout
    map_mean, config/rxrx19a.yaml's efficacy and qc values) on ``efficacy_treatments``
    treatments of efficacy_screen, once: its seconds, and of them R's start (rpy2 and
    rstatix, paid once a job), the sign tests (the rstatix call in R, for e(t,c) and for
    the per-dose inhibition intervals) and the 4PL fits (viability and inhibition curves). Also the
    hits against the screen's truth."""
    import efficacy as script  # the rule's script (workflow/scripts/ is on the path), as synthesise imports synth_plate
    from deemd import efficacy as deemd_efficacy
    from deemd import inhibition

    config, folder = merged_config(), Path(spec["efficacy_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    sites, nuclei = efficacy_screen(spec["efficacy_treatments"])
    shard, nuclei_path = folder / "shard.parquet", folder / "nuclei_wells.parquet"
    sites.drop(columns=["true_active"]).to_parquet(shard)
    nuclei.to_parquet(nuclei_path)
    started = time.perf_counter()
    r_sign_test = deemd_efficacy._r_sign_test()
    r_start_s = time.perf_counter() - started
    seconds, calls, groups = collections.Counter(), collections.Counter(), collections.Counter()

    def timed(name, function):
        def run(*args, **kwargs):
            begun = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - begun
                calls[name] += 1
                if name == "sign_test":
                    groups[name] += len(set(args[0]))
        return run

    # Both of main's sign-test calls (e(t,c), and the per-dose inhibition intervals) run
    # the R function that deemd.efficacy._r_sign_test returns.
    fit_logistic, cached = inhibition.fit_logistic, deemd_efficacy._r_sign_test
    timed_r = timed("sign_test", r_sign_test)
    inhibition.fit_logistic, deemd_efficacy._r_sign_test = timed("fits", fit_logistic), lambda: timed_r
    outputs = {name: str(folder / f"{name}.parquet") for name in ("doses", "treatments", "wells", "plate_qc")}
    try:
        started = time.perf_counter()
        script.main([str(shard)], str(nuclei_path), outputs, str(folder / "efficacy.log"), config["efficacy"], config["qc"],
                    config["efficacy"]["map_readout"], "M")
        efficacy_s = time.perf_counter() - started
    finally:
        inhibition.fit_logistic, deemd_efficacy._r_sign_test = fit_logistic, cached
    truth = sites.drop_duplicates("treatment").dropna(subset=["treatment"]).set_index("treatment")["true_active"]
    hits = pd.read_parquet(outputs["treatments"]).set_index("treatment")["hit"].astype(bool)
    return {"treatments": int(spec["efficacy_treatments"]), "sites": len(sites), "wells": int(sites["well_id"].nunique()),
            "efficacy_s": efficacy_s, "r_start_s": r_start_s, "sign_test_s": seconds["sign_test"],
            "sign_test_groups": groups["sign_test"], "fits_s": seconds["fits"], "fits": calls["fits"],
            "true_active": int(truth.sum()), "hits": int(hits.sum()), "true_hits": int((hits & truth.reindex(hits.index)).sum())}


STAGES = {"stitch": stitch_stage, "nuclei": nuclei_stage, "read": read_stage, "infer": infer_stage, "train": train_stage, "gpu": gpu_stage,
          "efficacy": efficacy_stage, "export": export_stage}
# The rule whose mem_mb a stage's peak memory is held against (store reads happen inside
# the torch rules).
STAGE_RULES = {"stitch": "stitch", "nuclei": "nuclei", "read": None, "infer": "infer", "train": "train", "gpu": "train", "efficacy": "efficacy",
               "export": "export_hcs"}


def run_stage(name: str, spec: dict, work: Path) -> dict:
    """Stage ``name`` in a fresh Python process (this file, --stage), so that its peak
    RSS is its own; its result dict, or {"failed": why} when the process failed."""
    spec_path, out = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_path.write_text(json.dumps(dict(spec, out=str(out))))
    # As the workflow's jobs run: its malloc settings, and the stage's threads.
    env = dict(with_malloc_settings(os.environ), OMP_NUM_THREADS=str(spec["threads"]))
    started = time.perf_counter()
    process = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--stage", name, "--spec", str(spec_path)], check=False, env=env)
    if process.returncode or not out.exists():
        return {"failed": f"exit status {process.returncode}", "wall_s": time.perf_counter() - started}
    return dict(json.loads(out.read_text()), wall_s=time.perf_counter() - started)


def stage_main(name: str, spec_path: str) -> None:
    """The child side of run_stage: run the stage, add its peak RSS, write the result."""
    spec = json.loads(Path(spec_path).read_text())
    result = STAGES[name](spec)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(spec["out"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the run


def prepare(args, work: Path) -> dict:
    """Synthesise the plate, build its sites table and return the stages' common spec."""
    config = merged_config()
    demo = scale_demo(256 if args.quick else 1024, args.quick)
    started = time.perf_counter()
    files = synthesise(work, demo)
    print(f"synthesised {len(pd.read_parquet(files['truth']))} sites in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    dataset = dict(config["dataset"], site_size=demo["site_size"])
    sites = sites_table(files["metadata"], dataset["site_layout"])
    sites.to_parquet(work / "sites.parquet")
    return {
        "threads": args.threads, "repeats": args.repeats, "torch_repeats": args.torch_repeats, "torch_budget_s": args.torch_budget,
        "workers": args.workers,
        "gpu_workers": max(1, min(int(config["train"]["workers"]), os.cpu_count() or 1)),
        "infer_sites": 4 if args.quick else 8, "plate_id": sites["plate_id"].iloc[0], "sites": str(work / "sites.parquet"),
        "truth": files["truth"], "pattern": files["pattern"], "store_path": str(work / "store.zarr"), "model": str(work / "model.pt"),
        "dataset": {k: dataset[k] for k in ("site_size", "site_layout", "channels", "channel_names", "nuclear_channel", "channel_axis")},
        "store": config["store"], "nuclei": config["nuclei"], "export": config["export"], "train": model_train_values(config["train"], "M"), "demo": demo,
        "by_model_M": {key: value for key, value in ((config["train"].get("by_model") or {}).get("M") or {}).items()
                       if config["train"].get(key) != value},
        "quick": args.quick, "efficacy_treatments": 4 if args.quick else EFFICACY_TREATMENTS, "efficacy_dir": str(work / "efficacy"),
    }


def channel_stats(spec: dict) -> dict:
    """The training sites' channel statistics (the split rule's deemd.channel_stats)."""
    from deemd.channel_stats import training_channel_stats

    store = open_plate_store(spec["store_path"])
    return training_channel_stats(pd.read_parquet(spec["sites"]), {spec["plate_id"]: store})


def run_all(args, work: Path) -> dict:
    """Every stage in turn (stitch first: the others read its store); the results."""
    spec = prepare(args, work)
    print("stage stitch", file=sys.stderr, flush=True)
    results = {"stitch": run_stage("stitch", spec, work)}
    if "failed" in results["stitch"]:
        return {"spec": spec, "results": results}
    spec["stats"] = channel_stats(spec)
    write_model_file(Path(spec["model"]), spec)
    for name in ("nuclei", "read", "export", "infer", "train", "gpu", "efficacy"):
        print(f"stage {name}", file=sys.stderr, flush=True)
        results[name] = run_stage(name, spec, work)
    return {"spec": spec, "results": results}


def ok(result: dict | None) -> bool:
    """Whether a stage ran and gave its figures."""
    return bool(result) and "failed" not in result


def measured_rates(results: dict) -> Rates:
    """The CPU stages' rates on this machine."""
    s, n, r, i, t, e = (results.get(k, {}) for k in ("stitch", "nuclei", "read", "infer", "train", "efficacy"))
    x = results.get("export", {})
    return Rates(
        stitch_sites_s=s["sites"] / s["stitch_s"] if ok(s) else None,
        nuclei_wells_s=n["wells"] / n["count_s"] if ok(n) else None,
        estimate_s_plate=n["estimate_s"] if ok(n) else None,
        read_sites_s=r["sites"] / r["read_s"] if ok(r) else None,
        infer_patches_s=i["patches_s"] if ok(i) else None,
        train_steps_s=t["steps_s"] if ok(t) else None,
        efficacy_s_treatment=e["efficacy_s"] / e["treatments"] if ok(e) else None,
        efficacy_start_s=e["r_start_s"] if ok(e) else None,
        export_fields_s=x["parallel_jobs"] * x["fields"] / x["export_s"] if ok(x) else None,
    )


def gpu_rates(gpu: dict) -> Rates | None:
    """The GPU's inference and training rates; None where no CUDA device ran."""
    if not ok(gpu) or not gpu["cuda"]:
        return None
    return Rates(infer_patches_s=gpu["infer"]["patches_s"], train_steps_s=gpu["train"]["steps_s"])


def work_for(spec: dict, results: dict) -> Work:
    """The RxRx19a run with M's training batches of this config."""
    t = results.get("train", {})
    k = int(spec["train"]["k"])
    per_step = t["step_patches"] // k if ok(t) else max(1, int(spec["train"]["batch_size"]) // k)
    return Work(train_k=k, sites_per_step=per_step, batchnorm_steps=int(spec["train"]["batchnorm_steps"]))


# --------------------------------------------------------------------------- the report


def describe_failure(result: dict) -> str:
    return f"failed ({result.get('failed', 'not run')})"


def system_cpu(result: dict, step: str) -> str:
    """", system CPU X s" of a step, where the stage noted it."""
    key = f"{step}_system_cpu_s"
    return f", system CPU {result[key]:.2f} s" if key in result else ""


def rate_rows(results: dict, threads: int) -> list[list[str]]:
    """Each stage's measured rate, its floor and their ratio."""
    rows = []
    s, n, r, i, t, e = (results.get(k, {}) for k in ("stitch", "nuclei", "read", "infer", "train", "efficacy"))
    if ok(s):
        decode = s["sites"] / s["decode_s"]
        rows.append(["stitch", f"{s['sites'] / s['stitch_s']:.1f} sites/s [m]", f"{decode:.1f} sites/s [m] bare PNG decode",
                     f"{s['decode_s'] / s['stitch_s']:.2f} [m] (range {s['ratio_range'][0]:.2f}-{s['ratio_range'][1]:.2f})"])
        if "stitch_user_cpu_s" in s:
            rows.append(["  CPU (user + system)", f"{s['stitch_user_cpu_s']:.2f} + {s['stitch_system_cpu_s']:.2f} s [m]",
                         f"{s['decode_user_cpu_s']:.2f} + {s['decode_system_cpu_s']:.2f} s [m]",
                         f"user {s['decode_user_cpu_s'] / s['stitch_user_cpu_s']:.2f} [m]; system adds "
                         f"{(s['stitch_system_cpu_s'] - s['decode_system_cpu_s']) / s['decode_user_cpu_s']:.2f} of the decode's user [m]"])
        if "write_s" in s:
            rows.append(["  store's file writes", f"{s['chunk_files']} files, {s['store_bytes'] / 1e6:.0f} MB, no codec",
                         f"{s['write_s']:.2f} s [m] into freed page cache{system_cpu(s, 'write')}", f"{s['write_s'] / s['decode_s']:.2f} of the decode [m]"])
            rows.append(["", "", f"{s['write_new_s']:.2f} s [m] into a new folder{system_cpu(s, 'write_new')}",
                         f"{s['write_new_s'] / s['decode_s']:.2f} of the decode [m]"])
    if ok(n):
        rows.append(["nuclei", f"{n['count_s'] / n['wells']:.2f} s a well [m] ({threads} threads)", "-",
                     f"{n['counted']} nuclei of {n['truth']} true ({n['counted'] / max(n['truth'], 1) - 1:+.1%}) [m]"])
        rows.append(["  before (issue 12)", f"{n['sample_before_s'] / n['sample_wells']:.2f} s a well [m] (full resolution, per-component peaks)",
                     f"{n['sample_after_s'] / n['sample_wells']:.2f} s a well [m] today, same {n['sample_wells']} wells",
                     f"today/before {n['sample_after_s'] / n['sample_before_s']:.2f} [m]; {n['sample_counted_after']} against {n['sample_counted_before']} nuclei"])
        rows.append(["  diameter estimate", f"{n['estimate_s']:.2f} s a plate [m] ({n['estimate_wells']} wells)", "-",
                     f"{n['diameter_px']:.1f} px, counted at 1/{n['downsample']} [m]"])
    if ok(r):
        rows.append(["store read", f"{r['sites'] / r['read_s']:.1f} sites/s [m]", f"{r['sites'] / r['decode_s']:.1f} sites/s [m] bare PNG decode",
                     f"{r['decode_s'] / r['read_s']:.1f}x the decode [m]"])
    x = results.get("export", {})
    if ok(x):
        rows.append(["HCS export (1 thread)", f"{x['fields'] / x['export_s']:.1f} fields/s [m] a job, a job a core ({'/'.join(map(str, x['levels']))} px)",
                     f"{x['sites'] / x['decode_s']:.1f} sites/s [m] bare PNG decode, 1 thread",
                     f"{x['decode_s'] / x['export_s']:.2f} [m]; {x['export_bytes'] / x['store_bytes']:.2f}x the store's bytes, {x['export_files']:,} files [m]"])
    if ok(i):
        rows.append([f"inference (M, {i['precision']})", f"{i['patches_s']:.1f} patches/s [m] (whole pass {i['patches'] / i['infer_s']:.1f})",
                     f"{i['bare_patches_s']:.1f} patches/s [m] bare forward", f"{i['patches_s'] / i['bare_patches_s']:.2f} [m]"])
    if ok(t):
        rows.append([f"training (M, {t['precision']})", f"{t['steps_s']:.3f} steps/s [m] of {t['step_patches']} patches (whole pass {t['steps'] / t['train_s']:.3f})",
                     f"{t['bare_steps_s']:.3f} steps/s [m] bare fwd+bwd+Adam", f"{t['steps_s'] / t['bare_steps_s']:.2f} [m]"])
    if ok(e):
        rows.append(["efficacy (M, 1 process)", f"{e['efficacy_s'] / e['treatments']:.2f} s a treatment [m] ({e['treatments']} treatments, {e['sites']:,} sites)",
                     "-", f"sign tests {e['sign_test_s'] / e['treatments']:.2f} s, 4PL fits {e['fits_s'] / e['treatments']:.2f} s a treatment; "
                     f"R start {e['r_start_s']:.1f} s a job [m]"])
        rows.append(["  parts", f"{e['sign_test_groups']} sign tests (rstatix), {1000 * e['sign_test_s'] / max(e['sign_test_groups'], 1):.0f} ms each [m]",
                     f"{e['fits']} 4PL fits, {1000 * e['fits_s'] / max(e['fits'], 1):.0f} ms each [m]",
                     f"{e['hits']} hits, {e['true_hits']} of them among the {e['true_active']} antiviral treatments [m]"])
    for name in ("stitch", "nuclei", "read", "export", "infer", "train", "efficacy"):
        if not ok(results.get(name)):
            rows.append([name, describe_failure(results.get(name, {})), "", ""])
    return rows


def size_lines(stitch: dict, work: Work) -> list[str]:
    """Store size against the PNGs, on this plate and per RxRx19a site."""
    if not ok(stitch):
        return ["size: not measured (stitch failed)"]
    png, store, sites = stitch["png_bytes"], stitch["store_bytes"], stitch["sites"]
    per_site = work.sites / sites / 1e9
    return [f"size: PNGs {png / 1e6:.1f} MB, store {store / 1e6:.1f} MB: {store / png:.2f}x the PNGs [m]",
            f"      RxRx19a ({work.sites:,} sites at this plate's bytes a site): PNGs {png * per_site:.0f} GB, store {store * per_site:.0f} GB [p]"]


def memory_rows(results: dict, mem_mb: dict[str, int]) -> list[list[str]]:
    """Each stage's peak RSS against its rule's mem_mb."""
    rows = []
    for name, rule in STAGE_RULES.items():
        result = results.get(name, {})
        if not ok(result):
            continue
        limit = mem_mb.get(rule) if rule else None
        share = f"{result['peak_rss_mb'] / limit:.2f}" if limit else "-"
        rows.append([name, f"{result['peak_rss_mb']:.0f} MB [m]", rule or "(inside train/infer)", str(limit or "-"), share])
    return rows


def gpu_lines(gpu: dict, work: Work) -> list[str]:
    """The GPU part: its measured figures, or why there are none and what ran instead."""
    if not ok(gpu):
        return [f"GPU part: {describe_failure(gpu)}"]
    p, i, t = gpu["pipeline"], gpu["infer"], gpu["train"]
    if not gpu["cuda"]:
        return ["GPU: unmeasured (no CUDA device: torch.cuda.is_available() is False). The GPU code path ran on the CPU at a tiny size:",
                f"  data pipeline: {p['sites']} sites through {p['workers']} DataLoader workers, pin_memory requested (a no-op without CUDA)",
                f"  inference: {i['patches']} patches, {i['precision']} autocast, channels-last {i['channels_last']}",
                f"  training: {t['steps']} step(s) of {t['step_patches']} patches, {t['precision']} autocast, channels-last {t['channels_last']}",
                "  (its speeds on the CPU are no GPU figure and are left out)"]
    epoch_gb = work.epoch_read_sites * work.site_bytes / 1e9
    epoch = stage_seconds(gpu_rates(gpu), work)["MIL epoch"]
    return [f"GPU {gpu['device']}: {gpu['workers']} DataLoader workers, pinned memory, {i['precision']}, channels-last",
            f"  data pipeline {p['gb_s']:.2f} GB/s [m]; an epoch reads {epoch_gb:.0f} GB: {format_duration(epoch_gb / p['gb_s'])} at that rate [p]",
            f"  inference {i['patches_s']:.0f} patches/s [m], bare forward {i['bare_patches_s']:.0f} [m], ratio {i['patches_s'] / i['bare_patches_s']:.2f}",
            (f"  training {t['steps_s']:.2f} steps/s [m] of {t['step_patches']} patches, bare {t['bare_steps_s']:.2f} [m], "
             f"ratio {t['steps_s'] / t['bare_steps_s']:.2f}"),
            f"  projected MIL epoch of M over {work.train_sites:,} sites: {format_duration(epoch)} [p] (target < 2 min on an H100-class GPU)",
            f"  peak GPU memory allocated {gpu['max_memory_allocated_gb']:.1f} GiB [m]"]


def header_notes(spec: dict) -> list[str]:
    """Caveats of the run: M's by_model values that differ from the shared ones, and
    --quick's small sites."""
    notes = []
    if spec.get("by_model_M"):
        notes.append(f"note: train.by_model.M {spec['by_model_M']} replaces train's shared values for M")
    if spec.get("quick"):
        notes.append(f"note: --quick: {spec['demo']['site_size']} px sites, patches of {spec['demo']['site_size'] // 4} px: the rates are not "
                     "those of 1024 px sites, and the projection below only shows its arithmetic")
    return notes


def report(run: dict, threads: int, target_cores: int = 16) -> str:
    """The whole plain text report."""
    spec, results = run["spec"], run["results"]
    demo, train, work = spec["demo"], spec["train"], work_for(spec, results)
    wells = demo["plate_rows"] * demo["plate_columns"]
    rates, gpu = measured_rates(results), results.get("gpu", {})
    gpu_title = f"GPU ({gpu['device']})" if ok(gpu) and gpu["cuda"] else "GPU"
    columns = {f"this machine ({threads} cores)": rates, f"{target_cores} cores (linear)": rates.scaled(target_cores / threads),
               gpu_title: gpu_rates(gpu)}
    lines = [
        (f"deemd scale benchmark: 1 plate, {wells} wells x 4 sites of {demo['site_size']} px, {len(spec['dataset']['channels'])} channels, "
         f"{demo['cells']['per_site']} cells a site, nuclei {nucleus_diameter_px(demo):.0f} px (HRCE-like at {UM_PER_PX} um/px)"),
        (f"{threads} threads a stage, medians of {spec['repeats']} (torch stages {torch_repeats_text(spec, results)}) interleaved repeats; "
         f"model M as config/rxrx19a.yaml over config/config.yaml trains it: k {train['k']}, batch_size {train['batch_size']}, "
         f"sites_per_step {train['sites_per_step']} (0: batch_size // k), precision {train['precision']}, {spec['workers']} CPU DataLoader workers"),
        *header_notes(spec),
        "[m] measured in this run on this machine; [p] projected from measured rates", "",
        text_table(rate_rows(results, threads), ["stage", "rate", "floor", "ratio"]),
        "(inference and training: the steady rate, from a pass's first batch done to its last; the whole pass adds the loader's start)", "",
        *size_lines(results.get("stitch", {}), work), "",
        text_table(memory_rows(results, rule_mem_mb()), ["stage", "peak RSS", "rule", "mem_mb", "peak/mem_mb"]),
        ("(peak RSS of a fresh process doing one plate's stage; the stages hold a batch of wells or sites, not a plate; "
         f"efficacy: {spec.get('efficacy_treatments', '?')} treatments' sites, where the job holds a model's)"), "",
        f"RxRx19a HRCE projection ({work.sites:,} sites of 1024 px, {work.wells:,} wells on ~{work.plates} plates of {WELLS_PER_PLATE})",
        text_table(projection_rows(columns, work), ["stage", "work", *columns]), "",
        *gpu_lines(gpu, work),
    ]
    return "\n".join(lines)


def torch_repeats_text(spec: dict, results: dict) -> str:
    """The torch stages' repeats: as asked, or as many as fitted in their time budget."""
    ran = {name: results[name]["repeats"] for name in ("infer", "train") if ok(results.get(name, {})) and "repeats" in results[name]}
    if all(n == spec["torch_repeats"] for n in ran.values()):
        return str(spec["torch_repeats"])
    fitted = ", ".join(f"{name} {n}" for name, n in ran.items())
    return f"{spec['torch_repeats']}, or as many as fit in {spec.get('torch_budget_s'):g} s: {fitted}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 6-well plate of 256 px sites, fewer repeats (for tests)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads a stage (default: this machine's cores)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the cheap stages (default 5; --quick 2)")
    parser.add_argument("--torch-repeats", type=int, default=None, help="repeats of inference and training (default 3; --quick 2)")
    parser.add_argument("--torch-budget", type=float, default=TORCH_BUDGET_S,
                        help=f"seconds that the timed repeats of inference, and of training, may take: fewer repeats (down to 1) where the warm-up shows more would not fit (default {TORCH_BUDGET_S:g})")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the CPU stages (default 0, as the demo)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--workdir", type=Path, default=None, help="where the plate is written (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the plate, store and results folder")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.torch_repeats = args.torch_repeats or (2 if args.quick else 3)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.stage:
        stage_main(args.stage, args.spec)
        return
    work = Path(tempfile.mkdtemp(prefix="deemd-scale-", dir=args.workdir))
    started = time.perf_counter()
    try:
        run = run_all(args, work)
        text = report(run, args.threads)
        print(text)
        print(f"\nwall time {format_duration(time.perf_counter() - started)} (plate in {work}{'' if args.keep else ', removed'})")
        if args.json:
            rates = measured_rates(run["results"])
            args.json.write_text(json.dumps({**run, "rates": asdict(rates), "work": asdict(work_for(run["spec"], run["results"])),
                                             "mem_mb": rule_mem_mb(), "report": text}, indent=1, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
