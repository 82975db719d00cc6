# Shared set-up: config validation, paths, and input functions.
import functools
import os
import sys
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError

# The library lives beside the scripts; the Snakefile imports it for validation and
# the input functions below. WORKFLOW_DIR is this repository's workflow/ folder, found
# from this file rather than from workflow.basedir, which is the deploying workflow's
# folder when deemd runs as a module (snakedeploy deploy-workflow, README).
WORKFLOW_DIR = Path(workflow.current_basedir).parent
sys.path.insert(0, str(WORKFLOW_DIR / "scripts"))
from deemd.grid import patch_grid
from deemd.hardware import (
    local_gpu_present,
    network_rule_threads,
    threads_beside_another,
    with_malloc_settings,
)
from deemd.metadata import plate_digests, store_digests
from deemd.sharding import inference_batches
from deemd.stitch import image_manifest_digest
from deemd.store import damage_marker
from deemd.validate import (
    ConfigError,
    check_config,
    fill_defaults,
    load_schema,
    shared_image_errors,
)

# Every job's process inherits this environment: glibc's malloc settings for large arrays
# (deemd.hardware.MALLOC_SETTINGS says why).
os.environ.update(with_malloc_settings(os.environ))

SCHEMAS = WORKFLOW_DIR / "schemas"
CONFIG_SCHEMA = load_schema(SCHEMAS / "config.schema.yaml")
check_config(config, CONFIG_SCHEMA)
# Keys a config leaves out take the schema's defaults; nothing below repeats a default.
fill_defaults(config, CONFIG_SCHEMA)

DATASET = config["dataset"]["name"]
SOURCE = config["dataset"]["source"]
RESOURCES = f"resources/{DATASET}"
RESULTS = f"results/{DATASET}"
LOGS = f"logs/{DATASET}"
BENCH = f"benchmarks/results/{DATASET}"
# Jobs on the way to the hit calls (stitch to efficacy) go first when cores are short; the
# viewer export and the figures (Snakemake's default priority, 0) fill the cores they leave.
SCIENCE_PATH_PRIORITY = 1

# A synthetic screen is written where the dataset config says it is read from.
if SOURCE == "synthetic":
    for key, expected in (
        ("metadata", f"{RESOURCES}/metadata.csv"),
        (
            "images",
            f"{RESOURCES}/images/{{experiment}}/Plate{{plate}}/{{well}}_s{{site}}_w{{channel}}.png",
        ),
    ):
        if config["dataset"][key] != expected:
            raise ValueError(
                f"config key dataset.{key}: {config['dataset'][key]!r}; with dataset.source "
                f"'synthetic' it must be {expected!r}"
            )


wildcard_constraints:
    # experiment_plate; the plate a number or a barcode (letters, digits, dashes).
    plate_id=r"[A-Za-z0-9][A-Za-z0-9.-]*_[A-Za-z0-9][A-Za-z0-9-]*",
    experiment=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    plate=r"\d+",
    model=r"M|W|V",
    k=r"\d+",
    # An infer job's shard: {plate_id}.part{part}, all_plates or plates{N}.
    batch=r"[A-Za-z0-9][A-Za-z0-9._-]*",


# Config values handed to the jobs through params (so that changing one reruns exactly
# the jobs that use it).
STITCH_PARAMS = {
    key: config["dataset"][key]
    for key in (
        "images",
        "site_size",
        "site_layout",
        "channels",
        "channel_names",
        "channel_axis",
        "on_bad_image",
    )
}
NUCLEI_CHANNELS = {
    key: config["dataset"][key] for key in ("channels", "nuclear_channel")
}
SITES_PARAMS = {
    key: config["dataset"].get(key)
    for key in (
        "columns",
        "values",
        "defaults",
        "cell_types",
        "experiments",
        "site_layout",
    )
}


# The demo's plates must not change when plates are added, so the plate count is not a
# param of the per-plate job; the library depends only on its own keys (moi: its
# best_nontoxic_efficacy column). Both name the world, so changing it reruns them.
DEMO = config.get("demo") or {}
DEMO_WORLD = DEMO.get("world")
DEMO_PLATE_PARAMS = {
    **{key: value for key, value in DEMO.items() if key != "plates"},
    "world": DEMO_WORLD,
}
DEMO_LIBRARY_PARAMS = {
    **{
        key: DEMO.get(key)
        for key in ("seed", "compounds", "concentrations_um", "compound_classes", "moi")
    },
    "world": DEMO_WORLD,
}


MODELS = config["train"]["models"]
# Where and how the rules that score sites with a trained model run (train.* keys).
TORCH_DEVICE = {key: config["train"][key] for key in ("device", "workers", "precision")}


def snakemake_cores():
    """--cores of this run, or None where it has none (a cluster run, --lint)."""
    try:
        return workflow.cores
    except WorkflowError:
        return None


# The local GPU slot: the rules that run a network take the machine's one GPU in turn
# (profiles/default caps gpu at 1); without a GPU they take no slot and share the cores.
# profiles/slurm asks for a GPU per rule instead (set-resources), which overrides this.
NETWORK_GPU = int(local_gpu_present(TORCH_DEVICE["device"]))
CORES = snakemake_cores()
# Their threads; profiles/slurm sets its own (set-threads).
NETWORK_THREADS = network_rule_threads(bool(NETWORK_GPU), CORES)
# Threads of the per-plate image rules (stitch, nuclei) and of channel_stats: at most 2 and
# 4, and no more than half the cores, so that two plates go side by side.
PLATE_THREADS = threads_beside_another(2, CORES)
CHANNEL_STATS_THREADS = threads_beside_another(4, CORES)


# Figures and report (workflow/rules/figures.smk).
FIGURES = config["figures"]
# The patch grid the patch models are trained with (deemd.grid; train_model.py makes the
# same one), for the rules that only map patch probabilities: they need no model file,
# hence no torch.
PATCH_GRID = vars(
    patch_grid(
        config["dataset"]["site_size"],
        config["train"]["reference_site_size"],
        config["train"]["patch_size"],
        config["train"]["patch_stride"],
    )
)
# Models that keep patch probabilities, and so have infection maps (W has none); the one
# place that says which they are.
PATCH_MODELS = ("M", "V")
MAP_MODELS = [model for model in MODELS if model in PATCH_MODELS]


def train_priority(wildcards):
    """Every training starts before any job that waits on a trained model, and the patch
    models (M, V) before W: they score many patches per site and take several times
    longer, so with few cores the run ends sooner when they start first (on 2 cores W, V,
    then M was the order Snakemake took, and M's training, inference and figures came
    last); and W then takes the first free core, rather than the inference of M or V,
    which the figures of all three models can then share the cores with."""
    return SCIENCE_PATH_PRIORITY + 1 + int(wildcards.model in PATCH_MODELS)


# A reference score table to compare e(t) with, or None; {dataset} in its path stands
# for dataset.name (the demo compares with its own hidden truth).
REFERENCE = config.get("reference") or None
if REFERENCE:
    REFERENCE = dict(REFERENCE, path=REFERENCE["path"].replace("{dataset}", DATASET))


def efficacy_readout(wildcards):
    """The shard column inhibition is computed from: efficacy.map_readout for the models
    with maps, efficacy.whole_site_readout for the whole-site model (docs/method.md §10).
    """
    if wildcards.model in MAP_MODELS:
        return config["efficacy"]["map_readout"]
    return config["efficacy"]["whole_site_readout"]


def model_train_params(model):
    """One model's training values: the shared ones with its own `by_model` overrides, and
    not the list of models (adding a model, or changing another model's values, must not
    retrain this one)."""
    train = config["train"]
    values = {k: v for k, v in train.items() if k not in ("models", "by_model")}
    values.update((train.get("by_model") or {}).get(model) or {})
    return values


def train_params(wildcards):
    return model_train_params(wildcards.model)


def k_train_params(wildcards):
    """Training values of M for one k of the k sweep: whole sites per step, whatever k."""
    return dict(
        model_train_params("M"),
        k=int(wildcards.k),
        sites_per_step=config["k_selection"]["sites_per_step"],
    )


def raw_metadata():
    """The metadata CSV the sites table is built from."""
    return config["dataset"]["metadata"]


def sites_table(wildcards=None):
    """The validated sites table; a checkpoint, because plates are known only from it."""
    return checkpoints.sites_table.get().output[0]


@functools.cache
def _plate_digests(path, mtime):
    sites = pd.read_parquet(path)
    # Plates known only now: none may read another's images (no {experiment} in the pattern).
    plates = sites.drop_duplicates("plate_id")
    errors = shared_image_errors(config["dataset"]["images"], plates)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return plate_digests(sites), store_digests(sites)


def _digests_now():
    """(plate digests, store digests) of the sites table as it is now."""
    path = sites_table()
    return _plate_digests(path, Path(path).stat().st_mtime)


def plate_digests_now():
    return _digests_now()[0]


def plate_ids():
    """Every plate of the (filtered) sites table, e.g. 'HRCE-1_3'."""
    return sorted(plate_digests_now())


def plate_digest(wildcards):
    """Content hash of one plate's metadata rows: a per-plate job reruns when it changes."""
    return plate_digests_now()[wildcards.plate_id]


def store_digest(wildcards):
    """Content hash of what one plate's store depends on (deemd.metadata.store_digests)."""
    return _digests_now()[1][wildcards.plate_id]


def plate_sites_input(wildcards):
    # ancient: a new plate rewrites the sites table, but must not rerun the other plates'
    # jobs; those rerun through the plate_digest param only if their own rows change.
    return ancient(sites_table())


def plate_stores(wildcards):
    """Every plate's store, in plate_ids() order."""
    return expand(f"{RESULTS}/store/{{plate_id}}.zarr", plate_id=plate_ids())


def infer_jobs():
    """The infer jobs of a model: batch name -> its [plate_id, part] shards (deemd.sharding)."""
    return inference_batches(
        plate_ids(),
        config["inference"]["plates_per_job"],
        config["inference"]["shards_per_plate"],
    )


def batch_shards(wildcards):
    """The [plate_id, part] shards of one infer job."""
    batches = infer_jobs()
    if wildcards.batch not in batches:
        raise WorkflowError(
            f"no inference batch {wildcards.batch!r} with inference.plates_per_job "
            f"{config['inference']['plates_per_job']}; batches: {sorted(batches)}"
        )
    return batches[wildcards.batch]


def batch_stores(wildcards):
    """The stores of the plates one infer job scores."""
    plates = dict.fromkeys(plate for plate, _ in batch_shards(wildcards))
    return expand(f"{RESULTS}/store/{{plate_id}}.zarr", plate_id=plates)


def model_shards(model):
    """Every inference shard (one per infer job) of one model."""
    return expand(f"{RESULTS}/inference/{model}/{{batch}}.parquet", batch=infer_jobs())


def inference_shards(wildcards):
    return model_shards(wildcards.model)


def all_inference_shards(wildcards):
    """Every inference shard of every model, model by model."""
    return [path for model in MODELS for path in model_shards(model)]


def split_plate_id(plate_id):
    """(experiment, plate) of a plate_id; the plate an int, or a barcode str."""
    experiment, plate = plate_id.rsplit("_", 1)
    # A zero-padded plate ("01") is a barcode-like text plate (deemd.metadata.plates_are_numbers).
    return experiment, (
        int(plate) if plate.isdigit() and str(int(plate)) == plate else plate
    )


def plate_images(wildcards):
    """What must exist before a plate's images can be read."""
    experiment, plate = split_plate_id(wildcards.plate_id)
    if SOURCE == "synthetic":
        return f"{RESOURCES}/images/{experiment}/Plate{plate}"
    if SOURCE == "rxrx19a":
        return f"{RESOURCES}/unpacked/{experiment}.done"
    return []


@functools.cache
def _plate_sites(path, mtime):
    table = pd.read_parquet(
        path, columns=["plate_id", "experiment", "plate", "well", "site"]
    )
    return dict(tuple(table.groupby("plate_id", sort=False)))


@functools.cache
def _image_manifest(plate_id, path, mtime):
    return image_manifest_digest(
        _plate_sites(path, mtime)[plate_id],
        config["dataset"]["images"],
        config["dataset"]["channels"],
    )


def plate_image_manifest(wildcards):
    """With dataset.source local the images are no inputs (that would make the DAG O(sites)
    files): a hash of the sizes and mtimes of the plate's own images is a param instead,
    so a re-exported or repaired image reruns its plate (one os.stat per image)."""
    if SOURCE != "local" or not config["dataset"]["track_image_changes"]:
        return None
    path = sites_table()
    return _image_manifest(wildcards.plate_id, path, Path(path).stat().st_mtime)


def store_damage_marker(wildcards):
    """A reading job that finds the plate's store damaged marks it ({store}.damaged,
    deemd/store.py); once it exists it is an input of the stitch job, which then reruns
    (newer than the store), so rerunning the same command restitches the plate."""
    marker = damage_marker(f"{RESULTS}/store/{wildcards.plate_id}.zarr")
    return [str(marker)] if marker.exists() else []


def demo_plate_ids():
    demo = config["demo"]
    return [f"{demo['experiment']}_{plate}" for plate in range(1, demo["plates"] + 1)]


def truth_masks(wildcards):
    """The demo's true infected-cell masks of every plate (none for real data)."""
    if SOURCE != "synthetic":
        return []
    return expand(f"{RESOURCES}/truth/masks/{{plate_id}}.npz", plate_id=plate_ids())


def final_outputs(wildcards):
    return [
        f"{RESULTS}/nuclei/wells.parquet",
        f"{RESULTS}/nuclei/nuclei_counts.png",
        f"{RESULTS}/split/sites.parquet",
        f"{RESULTS}/split/channel_stats.json",
        f"{RESULTS}/evaluation/average_precision.tsv",
        f"{RESULTS}/evaluation/pr_curves.png",
        *expand(f"{RESULTS}/efficacy/{{model}}/treatments.parquet", model=MODELS),
        *expand(f"{RESULTS}/figures/dose_response/{{model}}.png", model=MODELS),
        *expand(f"{RESULTS}/figures/ranking/{{model}}.tsv", model=MODELS),
        *expand(
            f"{RESULTS}/figures/{{kind}}/{{model}}.png",
            kind=["inhibition", "hits", "deemd_vs_inhibition", "plate_maps"],
            model=MODELS,
        ),
        f"{RESULTS}/figures/plate_qc.png",
        *expand(f"{RESULTS}/figures/infection_maps/{{model}}.png", model=MAP_MODELS),
        f"{RESULTS}/figures/model_comparison.png",
        *([f"{RESULTS}/figures/reference_correlation.png"] if REFERENCE else []),
        *([f"{RESULTS}/figures/truth_scores.tsv"] if SOURCE == "synthetic" else []),
        *(hcs_plates() if config["export"]["hcs"] else []),
        *expand(f"{RESULTS}/figures/hit_table/{{model}}.html", model=MODELS),
        f"{RESULTS}/report/run_metadata.tsv",
    ]


def hcs_plates():
    """Every plate's OME-NGFF HCS export (export.hcs)."""
    return expand(f"{RESULTS}/hcs/{{plate_id}}.ome.zarr", plate_id=plate_ids())
