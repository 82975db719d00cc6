"""Snakemake glue: the report's run metadata, as the flat YAML that
``snakemake --report --report-metadata`` takes and as a table in the report itself."""

import json
from pathlib import Path

import pandas as pd
import yaml
from deemd.io import write_table_atomic, write_text_atomic
from deemd.logs import start_rule_log
from deemd.run_metadata import git_commit, metadata_record


def main(version_files, outputs, params, workflow_dir, log):
    logger = start_rule_log(log)
    versions = {}
    for path in version_files:
        versions.update(json.loads(Path(path).read_text()))
    record = metadata_record(params["dataset"], params["source"], params["digest"], git_commit(workflow_dir), versions)
    logger.info("run metadata: %s", record)
    write_text_atomic(outputs["yaml"], yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    write_table_atomic(pd.DataFrame({"what": list(record), "value": list(record.values())}), outputs["table"])


if "snakemake" in globals():
    # scriptdir: the workflow's own scripts folder (the script itself runs from a copy).
    main(list(snakemake.input), snakemake.output, dict(snakemake.params.items()), snakemake.scriptdir, snakemake.log[0])
