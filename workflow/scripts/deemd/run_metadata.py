"""What a report says about the run that made it: the dataset, a digest of the config,
the software versions (deemd's commit, torch, R's rstatix, ...) and the date; as a flat
dict, the form ``snakemake --report-metadata`` takes."""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path


def config_digest(config: dict) -> str:
    """SHA-256 of the config as canonical JSON (sorted keys), after the schema's defaults
    are filled in: two runs with the same digest ran with the same values."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def python_versions(packages: list[str]) -> dict[str, str]:
    """Installed version of each Python distribution, or "not installed"."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def r_versions(packages: list[str], rscript: str = "Rscript") -> dict[str, str]:
    """R's own version (key "R") and each R package's, from ``rscript``; "not installed"
    for a package R lacks, and for everything when there is no R."""
    code = "cat(paste0('R=', paste(R.version$major, R.version$minor, sep='.')), sep='\\n');" + "".join(
        f"cat(paste0('{name}=', tryCatch(as.character(packageVersion('{name}')), error=function(e) 'not installed')), sep='\\n');"
        for name in packages
    )
    try:
        result = subprocess.run([rscript, "-e", code], capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError):
        return {name: "not installed" for name in ["R", *packages]}
    pairs = (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def git_commit(path: str | Path) -> str:
    """The commit of the git checkout holding ``path`` (with "-dirty" when files differ),
    or "unknown" outside one (a deployed copy without its history)."""
    try:
        result = subprocess.run(["git", "-C", str(path), "describe", "--always", "--dirty", "--abbrev=12"],
                                capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def metadata_record(dataset: str, source: str, digest: str, deemd: str, versions: dict[str, str], date: datetime.date | None = None) -> dict:
    """The flat dict of the report's landing page: strings only, keys in reading order."""
    record = {"dataset": f"{dataset} ({source})", "config sha256": digest, "deemd": deemd}
    record.update({str(k): str(v) for k, v in versions.items()})
    record["date"] = (date or datetime.date.today()).isoformat()
    return record
