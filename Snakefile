# deemd: drug efficacy from cell morphology with deep multiple-instance learning.
# `snakemake --cores N` runs the demo screen; see README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


# Where the plates come from: synthesised, or downloaded (RxRx19a); local plates need neither.
if SOURCE == "synthetic":

    include: "workflow/rules/demo.smk"


if SOURCE == "rxrx19a":

    include: "workflow/rules/download.smk"


include: "workflow/rules/metadata.smk"
include: "workflow/rules/stitch.smk"
include: "workflow/rules/nuclei.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/k_selection.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/efficacy.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs,
