# Train (GPU rule): the MIL model M and the baselines W and V, then their evaluation on
# the untreated test sites. GPU rules: on a machine with a GPU they take its one slot in
# turn; on the CPU alone they share the cores (NETWORK_GPU, NETWORK_THREADS in common.smk);
# profiles/slurm asks for a GPU per job.


rule train:
    input:
        split=f"{RESULTS}/split/sites.parquet",
        stats=f"{RESULTS}/split/channel_stats.json",
        stores=plate_stores,
    output:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        history=f"{RESULTS}/models/{{model}}/history.parquet",
        curves=report(
            f"{RESULTS}/models/{{model}}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            subcategory="{model}",
        ),
    log:
        f"{LOGS}/train/{{model}}.log",
    benchmark:
        f"{BENCH}/train/{{model}}.tsv"
    priority: train_priority
    conda:
        "../../envs/torch.yaml"
    threads: NETWORK_THREADS
    resources:
        gpu=NETWORK_GPU,
        mem_mb=16000,
        runtime=2880,
    params:
        train=train_params,
    script:
        "../scripts/train_model.py"


rule evaluate:
    input:
        shards=all_inference_shards,
        split=f"{RESULTS}/split/sites.parquet",
    output:
        scores=f"{RESULTS}/evaluation/test_scores.parquet",
        table=report(
            f"{RESULTS}/evaluation/average_precision.tsv",
            caption="../report/average_precision.rst",
            category="Evaluation",
        ),
        figure=report(
            f"{RESULTS}/evaluation/pr_curves.png",
            caption="../report/pr_curves.rst",
            category="Evaluation",
        ),
    log:
        f"{LOGS}/evaluate/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate/evaluate.tsv"
    priority: SCIENCE_PATH_PRIORITY
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        models=MODELS,
        eta=config["train"]["eta"],
    script:
        "../scripts/evaluate_models.py"
