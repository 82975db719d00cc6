# The report's interactive hit table and its run metadata (dataset, config digest,
# software versions, date).
import hashlib
import json

# What the run's config was, as one digest (after the schema's defaults).
CONFIG_DIGEST = hashlib.sha256(
    json.dumps(config, sort_keys=True, default=str).encode("utf-8")
).hexdigest()


rule hit_table:
    input:
        split=f"{RESULTS}/split/sites.parquet",
        shards=inference_shards,
        doses=f"{RESULTS}/efficacy/{{model}}/doses.parquet",
        treatments=f"{RESULTS}/efficacy/{{model}}/treatments.parquet",
        wells=f"{RESULTS}/efficacy/{{model}}/wells.parquet",
        plate_qc=f"{RESULTS}/efficacy/{{model}}/plate_qc.parquet",
        stores=plate_stores,
    output:
        report(
            f"{RESULTS}/figures/hit_table/{{model}}.html",
            caption="../report/hit_table.rst",
            category="Efficacy",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "hit table"},
        ),
    log:
        f"{LOGS}/figures/hit_table_{{model}}.log",
    benchmark:
        f"{BENCH}/figures/hit_table_{{model}}.tsv"
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        maps=config["maps"],
        grid=PATCH_GRID,
        zeta=config["efficacy"]["zeta"],
        bar=config["efficacy"]["inhibition_bar"],
        readout=efficacy_readout,
        with_maps=lambda wildcards: wildcards.model in MAP_MODELS,
    script:
        "../scripts/figures_hit_table.py"


rule versions_torch:
    output:
        f"{RESULTS}/report/versions_torch.json",
    log:
        f"{LOGS}/report/versions_torch.log",
    benchmark:
        f"{BENCH}/report/versions_torch.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        python=["torch", "torchvision", "numpy", "itables"],
        r=[],
    script:
        "../scripts/software_versions.py"


rule versions_r:
    output:
        f"{RESULTS}/report/versions_r.json",
    log:
        f"{LOGS}/report/versions_r.log",
    benchmark:
        f"{BENCH}/report/versions_r.tsv"
    conda:
        "../../envs/r.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        python=["rpy2"],
        r=["rstatix"],
    script:
        "../scripts/software_versions.py"


rule report_metadata:
    input:
        f"{RESULTS}/report/versions_torch.json",
        f"{RESULTS}/report/versions_r.json",
    output:
        yaml=f"{RESULTS}/report/metadata.yaml",
        table=report(
            f"{RESULTS}/report/run_metadata.tsv",
            caption="../report/run_metadata.rst",
            category="About this run",
            labels={"figure": "run metadata"},
        ),
    log:
        f"{LOGS}/report/metadata.log",
    benchmark:
        f"{BENCH}/report/metadata.tsv"
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        dataset=DATASET,
        source=SOURCE,
        digest=CONFIG_DIGEST,
    script:
        "../scripts/report_metadata.py"
