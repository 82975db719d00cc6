# The demo screen: a synthetic screen in exactly the RxRx19a layout, with its hidden
# truth written beside it (resources/{name}/truth).


rule demo_library:
    output:
        f"{RESOURCES}/truth/compounds.csv",
    log:
        f"{LOGS}/demo/library.log",
    benchmark:
        f"{BENCH}/demo/library.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        demo=DEMO_LIBRARY_PARAMS,
    script:
        "../scripts/synth_library.py"


# One core per plate: rendering holds the GIL, so plates run side by side instead.
rule demo_plate:
    input:
        library=f"{RESOURCES}/truth/compounds.csv",
    output:
        images=directory(f"{RESOURCES}/images/{{experiment}}/Plate{{plate}}"),
        metadata=f"{RESOURCES}/parts/{{experiment}}_{{plate}}.csv",
        truth=f"{RESOURCES}/truth/sites/{{experiment}}_{{plate}}.parquet",
        masks=f"{RESOURCES}/truth/masks/{{experiment}}_{{plate}}.npz",
    log:
        f"{LOGS}/demo/{{experiment}}_{{plate}}.log",
    benchmark:
        f"{BENCH}/demo/{{experiment}}_{{plate}}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        demo=DEMO_PLATE_PARAMS,
    script:
        "../scripts/synth_plate.py"


rule demo_metadata:
    input:
        expand(f"{RESOURCES}/parts/{{plate_id}}.csv", plate_id=demo_plate_ids()),
    output:
        f"{RESOURCES}/metadata.csv",
    log:
        f"{LOGS}/demo/metadata.log",
    benchmark:
        f"{BENCH}/demo/metadata.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/concat_csv.py"
