# Nuclei: Otsu + watershed count per stitched well, QC flags, infected vs non-infected.


rule nuclei:
    input:
        sites=plate_sites_input,
        store=f"{RESULTS}/store/{{plate_id}}.zarr",
    output:
        f"{RESULTS}/nuclei/plates/{{plate_id}}.parquet",
    log:
        f"{LOGS}/nuclei/{{plate_id}}.log",
    benchmark:
        f"{BENCH}/nuclei/{{plate_id}}.tsv"
    priority: SCIENCE_PATH_PRIORITY
    conda:
        "../../envs/imaging.yaml"
    threads: PLATE_THREADS
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        dataset=NUCLEI_CHANNELS,
        nuclei=config["nuclei"],
        plate_digest=plate_digest,
    script:
        "../scripts/nuclei_plate.py"


rule nuclei_summary:
    input:
        lambda wildcards: expand(
            f"{RESULTS}/nuclei/plates/{{plate_id}}.parquet", plate_id=plate_ids()
        ),
    output:
        wells=f"{RESULTS}/nuclei/wells.parquet",
        test=f"{RESULTS}/nuclei/mann_whitney.parquet",
        figure=report(
            f"{RESULTS}/nuclei/nuclei_counts.png",
            caption="../report/nuclei_counts.rst",
            category="Quality control",
        ),
    log:
        f"{LOGS}/nuclei/summary.log",
    benchmark:
        f"{BENCH}/nuclei/summary.tsv"
    priority: SCIENCE_PATH_PRIORITY
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        toxicity=config["nuclei"]["toxicity"],
    script:
        "../scripts/nuclei_summary.py"
