# Infer (GPU rule): every treated site and every held-out control site scored with each
# trained model, one shard per job: a plate (or inference.shards_per_plate parts of one),
# or inference.plates_per_job plates (0: all) scored in one process. Every patch probability
# and (M, V) the map's infected share a_i is kept. A failed or killed shard reruns alone. A
# GPU rule (NETWORK_GPU, NETWORK_THREADS in common.smk; profiles/slurm asks for the GPU).


rule infer:
    input:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        split=f"{RESULTS}/split/sites.parquet",
        stores=batch_stores,
    output:
        f"{RESULTS}/inference/{{model}}/{{batch}}.parquet",
    log:
        f"{LOGS}/infer/{{model}}/{{batch}}.log",
    benchmark:
        f"{BENCH}/infer/{{model}}/{{batch}}.tsv"
    priority: SCIENCE_PATH_PRIORITY
    conda:
        "../../envs/torch.yaml"
    threads: NETWORK_THREADS
    resources:
        gpu=NETWORK_GPU,
        mem_mb=8000,
        runtime=240,
    params:
        shards=batch_shards,
        parts=config["inference"]["shards_per_plate"],
        device=TORCH_DEVICE,
        maps=config["maps"],
    script:
        "../scripts/infer_shard.py"
