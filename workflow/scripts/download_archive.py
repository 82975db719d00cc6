"""Snakemake glue: download one archive, resumably and verified (rule download_archive).

Everything happens in :func:`deemd.download.download`; this script maps the rule's
params/output/log onto it and logs progress lines into the rule's log.
"""

from deemd.download import MiB, download
from deemd.logs import start_rule_log


def main(
    url: str,
    output: str,
    log: str | None = None,
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    retries: int = 20,
    timeout_s: float = 60,
    chunk_mib: float = 8,
    progress_interval_s: float = 10.0,
) -> None:
    """Download ``url`` to ``output`` (via ``output.part``), logging into ``log``."""
    logger = start_rule_log(log)
    logger.info("downloading %s -> %s", url, output)
    download(
        url,
        output,
        expected_size=size,
        md5=md5,
        sha256=sha256,
        chunk_size=max(1, int(float(chunk_mib) * MiB)),
        retries=int(retries),
        timeout=float(timeout_s),
        progress=lambda p: logger.info("%s", p),
        progress_interval=progress_interval_s,
    )


if "snakemake" in globals():
    main(
        url=snakemake.params.url,
        output=snakemake.output[0],
        log=snakemake.log[0],
        size=snakemake.params.size,
        md5=snakemake.params.md5,
        sha256=snakemake.params.sha256,
        retries=snakemake.params.retries,
        timeout_s=snakemake.params.timeout_s,
        chunk_mib=snakemake.params.chunk_mib,
    )
