# Stitch: the sites of each well tiled 2x2, one per-plate store per plate.


rule stitch:
    input:
        sites=plate_sites_input,
        images=plate_images,
        damaged=store_damage_marker,
    output:
        store=directory(f"{RESULTS}/store/{{plate_id}}.zarr"),
        qc=f"{RESULTS}/store/{{plate_id}}.qc.parquet",
    log:
        f"{LOGS}/stitch/{{plate_id}}.log",
    benchmark:
        f"{BENCH}/stitch/{{plate_id}}.tsv"
    priority: SCIENCE_PATH_PRIORITY
    conda:
        "../../envs/imaging.yaml"
    threads: PLATE_THREADS
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        dataset=STITCH_PARAMS,
        store=config["store"],
        store_digest=store_digest,
        image_manifest=plate_image_manifest,
    script:
        "../scripts/stitch_plate.py"
