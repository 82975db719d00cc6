# Split: untreated wells to train / val / untreated-test (whole wells, class-balanced,
# stratified by plate, seeded), treated infected wells to the treated set; per-channel
# mean and std from the training sites only.


rule split_sets:
    input:
        wells=f"{RESULTS}/nuclei/wells.parquet",
        sites=sites_table,
        qc=lambda wildcards: expand(
            f"{RESULTS}/store/{{plate_id}}.qc.parquet", plate_id=plate_ids()
        ),
    output:
        sites=f"{RESULTS}/split/sites.parquet",
        excluded=f"{RESULTS}/split/excluded.parquet",
        summary=f"{RESULTS}/split/summary.parquet",
    log:
        f"{LOGS}/split/split_sets.log",
    benchmark:
        f"{BENCH}/split/split_sets.tsv"
    priority: SCIENCE_PATH_PRIORITY
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        split=config["split"],
    script:
        "../scripts/split_sets.py"


rule channel_stats:
    input:
        split=f"{RESULTS}/split/sites.parquet",
        stores=plate_stores,
    output:
        f"{RESULTS}/split/channel_stats.json",
    log:
        f"{LOGS}/split/channel_stats.log",
    benchmark:
        f"{BENCH}/split/channel_stats.tsv"
    priority: SCIENCE_PATH_PRIORITY
    conda:
        "../../envs/imaging.yaml"
    threads: CHANNEL_STATS_THREADS
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        batch_wells=config["store"]["batch_wells"],
    script:
        "../scripts/channel_stats.py"
