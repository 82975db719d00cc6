#!/usr/bin/env bash
# Install everything deemd needs on a Debian/Ubuntu machine: R and rstatix from apt (as
# root), the pinned Python packages from requirements.txt with pip. Idempotent.
# Not root (an HPC login node)? Skip this: install snakemake alone and let it build the
# per-rule conda envs (`snakemake --sdm conda`, see README "Running on a cluster").
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    if ! command -v Rscript >/dev/null || ! Rscript -e 'library(rstatix)' >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            r-base-core r-cran-rstatix >/dev/null
    fi
    # SLURM and munge, for the test that runs the workflow on a one-node SLURM cluster
    # (tests/test_slurm.py writes its own slurm.conf and starts and stops its own daemons).
    missing_slurm=0
    for tool in slurmctld slurmd sbatch munged; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null || missing_slurm=1
    done
    if [ "$missing_slurm" -eq 1 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            slurmctld slurmd slurm-client munge >/dev/null
    fi
    # Headless Chromium, for the test that renders the report's hit table in a real browser
    # (tests/test_hit_table.py; skipped without it).
    if ! command -v chromium >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
else
    echo "install.sh: not root or no apt-get: R (rstatix) is not installed here;" \
         "use the conda envs (snakemake --sdm conda) for the R rule." \
         "SLURM is not installed either: tests/test_slurm.py will be skipped;" \
         "nor chromium: the browser test of tests/test_hit_table.py will be skipped." >&2
fi

python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
