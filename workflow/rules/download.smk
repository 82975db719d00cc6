# Download and unpack the public dataset archives (docs/method.md §1).
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

import posixpath
import re
from pathlib import Path
from urllib.parse import quote

DOWNLOAD = config["download"]
DOWNLOAD_ARCHIVES = DOWNLOAD["archives"]
# Downloaded archive per config key (metadata, images, embeddings).
DOWNLOAD_PATHS = {
    key: f"{RESOURCES}/downloads/{spec['file']}"
    for key, spec in DOWNLOAD_ARCHIVES.items()
}
# Config entry per archive file name (the archive_file wildcard).
DOWNLOAD_SPECS = {spec["file"]: spec for spec in DOWNLOAD_ARCHIVES.values()}
# URL per archive file name: the entry's own `url` if given, else base_url + file.
DOWNLOAD_URLS = {
    file: spec.get("url") or posixpath.join(DOWNLOAD["base_url"], quote(file))
    for file, spec in DOWNLOAD_SPECS.items()
}
DOWNLOAD_EXPERIMENTS = DOWNLOAD.get("experiments") or ["HRCE-1", "HRCE-2"]
# What rule download_all asks for.
DOWNLOAD_ALL = (
    [f"{RESOURCES}/metadata.csv"]
    + expand(
        f"{RESOURCES}/unpacked/{{experiment}}.done", experiment=DOWNLOAD_EXPERIMENTS
    )
    + (
        [f"{RESOURCES}/embeddings/embeddings.done"]
        if "embeddings" in DOWNLOAD_ARCHIVES
        else []
    )
)


# Runs on the submitting host: on clusters, compute nodes often have no internet access
# while login / data-transfer nodes do, and the job is network-bound, not CPU-bound (it
# would only hold a compute slot while waiting for bytes). Interrupted transfers resume.
rule download_archive:
    output:
        f"{RESOURCES}/downloads/{{archive_file}}",
    log:
        f"{LOGS}/download_archive/{{archive_file}}.log",
    benchmark:
        f"{BENCH}/download_archive/{{archive_file}}.tsv"
    wildcard_constraints:
        archive_file="|".join(re.escape(f) for f in DOWNLOAD_SPECS),
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        downloads=1,
        mem_mb=512,
    params:
        url=lambda wildcards: DOWNLOAD_URLS[wildcards.archive_file],
        size=lambda wildcards: DOWNLOAD_SPECS[wildcards.archive_file].get("size"),
        md5=lambda wildcards: DOWNLOAD_SPECS[wildcards.archive_file].get("md5"),
        sha256=lambda wildcards: DOWNLOAD_SPECS[wildcards.archive_file].get("sha256"),
        retries=DOWNLOAD["retries"],
        timeout_s=DOWNLOAD["timeout_s"],
        chunk_mib=DOWNLOAD["chunk_mib"],
    script:
        "../scripts/download_archive.py"


# Tiny (one CSV out of a small zip): not worth a cluster job.
rule unpack_metadata:
    input:
        DOWNLOAD_PATHS["metadata"],
    output:
        f"{RESOURCES}/metadata.csv",
    log:
        f"{LOGS}/unpack_metadata.log",
    benchmark:
        f"{BENCH}/unpack_metadata.tsv"
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=512,
    params:
        member=DOWNLOAD["metadata_member"],
    script:
        "../scripts/unpack_metadata.py"


# Hours of disk I/O for an experiment of the 445 GB archive: a regular (cluster) job.
# The images are not declared outputs (1.5 M files); the flag file stands for them.
rule unpack_images:
    input:
        DOWNLOAD_PATHS["images"],
    output:
        f"{RESOURCES}/unpacked/{{experiment}}.done",
    log:
        f"{LOGS}/unpack_images/{{experiment}}.log",
    benchmark:
        f"{BENCH}/unpack_images/{{experiment}}.tsv"
    wildcard_constraints:
        experiment=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=24 * 60,
    params:
        # {RESOURCES}, derived from the output path (lint: no hard-coded prefixes)
        dest_root=lambda wildcards, output: str(Path(output[0]).parent.parent),
        experiment=lambda wildcards: wildcards.experiment,
    script:
        "../scripts/unpack_images.py"


# Only when config lists an embeddings archive.
if "embeddings" in DOWNLOAD_ARCHIVES:

    rule download_embeddings:
        input:
            DOWNLOAD_PATHS["embeddings"],
        output:
            f"{RESOURCES}/embeddings/embeddings.done",
        log:
            f"{LOGS}/download_embeddings.log",
        benchmark:
            f"{BENCH}/download_embeddings.tsv"
        conda:
            "../../envs/imaging.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=4 * 60,
        params:
            dest_root=lambda wildcards, output: str(Path(output[0]).parent),
            experiment=None,
        script:
            "../scripts/unpack_images.py"


# Pseudo-target: `snakemake download_all` fetches and unpacks everything configured.
rule download_all:
    input:
        DOWNLOAD_ALL,
    localrule: True
