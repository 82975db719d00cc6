# Export for viewers: each plate's store as an OME-NGFF HCS plate (napari, Fiji, OMERO).


rule export_hcs:
    input:
        store=f"{RESULTS}/store/{{plate_id}}.zarr",
    output:
        directory(f"{RESULTS}/hcs/{{plate_id}}.ome.zarr"),
    log:
        f"{LOGS}/export/hcs_{{plate_id}}.log",
    benchmark:
        f"{BENCH}/export/hcs_{{plate_id}}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        min_level_size=config["export"]["hcs_min_level_size"],
    script:
        "../scripts/export_hcs.py"
