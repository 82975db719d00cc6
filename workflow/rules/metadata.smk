# The sites table: metadata.csv validated against workflow/schemas/metadata.schema.yaml,
# mapped to the RxRx19a columns and filtered. Plates are known only once it exists,
# hence a checkpoint.


checkpoint sites_table:
    input:
        metadata=raw_metadata(),
        schema=SCHEMAS / "metadata.schema.yaml",
    output:
        f"{RESULTS}/metadata/sites.parquet",
    log:
        f"{LOGS}/metadata/sites_table.log",
    benchmark:
        f"{BENCH}/metadata/sites_table.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        dataset=SITES_PARAMS,
    script:
        "../scripts/sites_table.py"
