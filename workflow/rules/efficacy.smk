# Efficacy: per-dose sign-test interval of the median site score (R, rstatix), per-treatment
# score, effective set and ranking, for one model.


rule efficacy:
    input:
        inference_shards,
    output:
        doses=f"{RESULTS}/efficacy/{{model}}/doses.parquet",
        treatments=f"{RESULTS}/efficacy/{{model}}/treatments.parquet",
    log:
        f"{LOGS}/efficacy/{{model}}.log",
    benchmark:
        f"{BENCH}/efficacy/{{model}}.tsv"
    conda:
        "../../envs/r.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        efficacy=config["efficacy"],
    script:
        "../scripts/efficacy.py"
