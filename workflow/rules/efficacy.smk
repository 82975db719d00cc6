# Efficacy, for one model: DEEMD's per-dose sign-test interval of the median site score (R,
# rstatix), per-treatment score e(t) and effective set; beside it percent inhibition against
# held-out on-plate controls, plate QC (Z', SSMD), a 4PL per treatment and BH hit calls
# (docs/method.md §9-10).


rule efficacy:
    input:
        shards=inference_shards,
        nuclei=f"{RESULTS}/nuclei/wells.parquet",
    output:
        doses=f"{RESULTS}/efficacy/{{model}}/doses.parquet",
        treatments=f"{RESULTS}/efficacy/{{model}}/treatments.parquet",
        wells=f"{RESULTS}/efficacy/{{model}}/wells.parquet",
        plate_qc=f"{RESULTS}/efficacy/{{model}}/plate_qc.parquet",
    log:
        f"{LOGS}/efficacy/{{model}}.log",
    benchmark:
        f"{BENCH}/efficacy/{{model}}.tsv"
    priority: SCIENCE_PATH_PRIORITY
    conda:
        "../../envs/r.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        efficacy=config["efficacy"],
        qc=config["qc"],
        readout=efficacy_readout,
    script:
        "../scripts/efficacy.py"
