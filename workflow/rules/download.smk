# Download and unpack the public dataset archives (DESIGN.md 1.1).
#
# Needs, from common.smk: DATASET, RESOURCES, LOGS, BENCH, and config["download"].
# Targets:
#   {RESOURCES}/downloads/{archive_file}    one archive, resumable and verified
#   {RESOURCES}/metadata.csv                extracted from the metadata archive
#   {RESOURCES}/unpacked/{experiment}.done  images of one experiment unpacked to
#                                           {RESOURCES}/images/{experiment}/Plate{plate}/
#   {RESOURCES}/embeddings/embeddings.done  the embeddings archive unpacked
#   download_all                            all of the above for the configured experiments
#
# Limit parallel transfers with `--resources downloads=N`.
#
# Every value in params is a rerun trigger: changing e.g. `retries` or filling in an md5
# after the fact makes Snakemake redo that download (445 GB for the images). To keep a
# finished download, run with `--rerun-triggers mtime` once, or `--touch` the archive.

import re
import urllib.parse

DOWNLOAD = config["download"]
DOWNLOAD_ARCHIVES = DOWNLOAD["archives"]
# file name -> config key (metadata, images, embeddings)
DOWNLOAD_FILES = {spec["file"]: key for key, spec in DOWNLOAD_ARCHIVES.items()}
DOWNLOAD_EXPERIMENTS = DOWNLOAD.get("experiments") or ["HRCE-1", "HRCE-2"]


def download_archive_path(key):
    """Path of the downloaded archive that config calls `key` (metadata, images, ...)."""
    return f"{RESOURCES}/downloads/{DOWNLOAD_ARCHIVES[key]['file']}"


def download_spec(wildcards):
    """Config entry of the archive named by the archive_file wildcard."""
    return DOWNLOAD_ARCHIVES[DOWNLOAD_FILES[wildcards.archive_file]]


def download_url(wildcards):
    """URL of an archive: its own `url` if configured, else base_url/file."""
    spec = download_spec(wildcards)
    if spec.get("url"):
        return spec["url"]
    return f"{DOWNLOAD['base_url'].rstrip('/')}/{urllib.parse.quote(spec['file'])}"


def download_all_targets():
    """Everything rule download_all asks for."""
    targets = [f"{RESOURCES}/metadata.csv"]
    targets += expand(f"{RESOURCES}/unpacked/{{experiment}}.done", experiment=DOWNLOAD_EXPERIMENTS)
    if "embeddings" in DOWNLOAD_ARCHIVES:
        targets.append(f"{RESOURCES}/embeddings/embeddings.done")
    return targets


# Runs on the submitting host: on clusters, compute nodes often have no internet access
# while login / data-transfer nodes do, and the job is network-bound, not CPU-bound (it
# would only hold a compute slot while waiting for bytes). Interrupted transfers resume.
rule download_archive:
    output:
        f"{RESOURCES}/downloads/{{archive_file}}",
    params:
        url=download_url,
        size=lambda wildcards: download_spec(wildcards).get("size"),
        md5=lambda wildcards: download_spec(wildcards).get("md5"),
        sha256=lambda wildcards: download_spec(wildcards).get("sha256"),
        retries=DOWNLOAD.get("retries", 20),
        timeout_s=DOWNLOAD.get("timeout_s", 60),
        chunk_mib=DOWNLOAD.get("chunk_mib", 8),
    wildcard_constraints:
        archive_file="|".join(re.escape(f) for f in DOWNLOAD_FILES),
    log:
        f"{LOGS}/download_archive/{{archive_file}}.log",
    benchmark:
        f"{BENCH}/download_archive/{{archive_file}}.tsv"
    threads: 1
    resources:
        downloads=1,
        mem_mb=512,
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    script:
        "../scripts/download_archive.py"


# Tiny (one CSV out of a small zip): not worth a cluster job.
rule unpack_metadata:
    input:
        download_archive_path("metadata"),
    output:
        f"{RESOURCES}/metadata.csv",
    params:
        member=DOWNLOAD.get("metadata_member", "metadata.csv"),
    log:
        f"{LOGS}/unpack_metadata.log",
    benchmark:
        f"{BENCH}/unpack_metadata.tsv"
    threads: 1
    resources:
        mem_mb=512,
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    script:
        "../scripts/unpack_metadata.py"


# Hours of disk I/O for an experiment of the 445 GB archive: a regular (cluster) job.
# The images are not declared outputs (1.5 M files); the flag file stands for them.
rule unpack_images:
    input:
        download_archive_path("images"),
    output:
        f"{RESOURCES}/unpacked/{{experiment}}.done",
    params:
        dest_root=RESOURCES,
        experiment=lambda wildcards: wildcards.experiment,
    wildcard_constraints:
        experiment=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    log:
        f"{LOGS}/unpack_images/{{experiment}}.log",
    benchmark:
        f"{BENCH}/unpack_images/{{experiment}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=24 * 60,
    conda:
        "../../envs/imaging.yaml"
    script:
        "../scripts/unpack_images.py"


rule download_embeddings:
    input:
        download_archive_path("embeddings"),
    output:
        f"{RESOURCES}/embeddings/embeddings.done",
    params:
        dest_root=f"{RESOURCES}/embeddings",
        experiment=None,
    log:
        f"{LOGS}/download_embeddings.log",
    benchmark:
        f"{BENCH}/download_embeddings.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=4 * 60,
    conda:
        "../../envs/imaging.yaml"
    script:
        "../scripts/unpack_images.py"


# Pseudo-target: `snakemake download_all` fetches and unpacks everything configured.
rule download_all:
    input:
        download_all_targets(),
    localrule: True
