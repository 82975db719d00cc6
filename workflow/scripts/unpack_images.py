"""Snakemake glue: unpack one experiment of the images archive (rule unpack_images),
or a whole archive when no experiment is given (rule download_embeddings).

Images land at ``{dest_root}/images/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png``;
each file is written atomically and files already present with the right size are
skipped, so an interrupted unpack resumes. The flag file (the rule's output) is written
last, atomically, and lists the counts.
"""

from pathlib import Path

from deemd.download import unpack_archive, unpack_experiment, write_flag
from deemd.logs import start_rule_log


def main(
    archive: str,
    dest_root: str,
    flag: str,
    experiment: str | None = None,
    log: str | None = None,
    progress_interval_s: float = 10.0,
) -> None:
    """Unpack ``experiment`` (or everything if None) from ``archive`` under ``dest_root``."""
    logger = start_rule_log(log)
    what = f"images of {experiment}" if experiment else "all members"
    logger.info("unpacking %s from %s into %s", what, archive, dest_root)
    kwargs = dict(progress=logger.info, progress_interval=progress_interval_s)
    if experiment:
        result = unpack_experiment(archive, dest_root, experiment, **kwargs)
    else:
        result = unpack_archive(archive, dest_root, **kwargs)
    fields = {
        "archive": Path(archive).name,
        "experiment": experiment or "all",
        "destination": dest_root,
        "files": result.files,
        "extracted": result.extracted,
        "skipped": result.skipped,
        "bytes_extracted": result.bytes_extracted,
        ("plates" if experiment else "folders"): result.plates,
    }
    write_flag(flag, fields)
    logger.info("done: %s", ", ".join(f"{k}={v}" for k, v in fields.items()))


if "snakemake" in globals():
    main(
        archive=snakemake.input[0],
        dest_root=snakemake.params.dest_root,
        flag=snakemake.output[0],
        experiment=snakemake.params.experiment,
        log=snakemake.log[0],
    )
