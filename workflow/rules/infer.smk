# Infer (GPU rule): every treated site and every held-out control site scored with each
# trained model, one shard per plate (or inference.shards_per_plate per plate), every patch
# probability and (M, V) the map's infected share a_i kept. A failed or killed shard reruns
# alone. A GPU rule (NETWORK_GPU, NETWORK_THREADS in common.smk; profiles/slurm asks for the
# GPU).


rule infer:
    input:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        split=f"{RESULTS}/split/sites.parquet",
        store=f"{RESULTS}/store/{{plate_id}}.zarr",
    output:
        f"{RESULTS}/inference/{{model}}/{{plate_id}}.part{{part}}.parquet",
    log:
        f"{LOGS}/infer/{{model}}/{{plate_id}}.part{{part}}.log",
    benchmark:
        f"{BENCH}/infer/{{model}}/{{plate_id}}.part{{part}}.tsv"
    priority: SCIENCE_PATH_PRIORITY
    conda:
        "../../envs/torch.yaml"
    threads: NETWORK_THREADS
    resources:
        gpu=NETWORK_GPU,
        mem_mb=8000,
        runtime=240,
    params:
        parts=config["inference"]["shards_per_plate"],
        device=TORCH_DEVICE,
        maps=config["maps"],
    script:
        "../scripts/infer_shard.py"
