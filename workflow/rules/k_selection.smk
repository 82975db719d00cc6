# Choice of k (docs/method.md §6), its own target: `snakemake --cores N k_selection`.
# M is trained once per k; on the validation sites, the infection-map area above eta is
# compared with the Poisson expectation 1 - exp(-MOI), and AP is reported per k.
# GPU rules (NETWORK_GPU, NETWORK_THREADS in common.smk; profiles/slurm asks for the GPU).


# train_k: the train rule for M at one k of the sweep, into k_selection/k{k}/.
use rule train as train_k with:
    output:
        model=f"{RESULTS}/k_selection/k{{k}}/model.pt",
        history=f"{RESULTS}/k_selection/k{{k}}/history.parquet",
        curves=f"{RESULTS}/k_selection/k{{k}}/training_curves.png",
    log:
        f"{LOGS}/k_selection/train_k{{k}}.log",
    benchmark:
        f"{BENCH}/k_selection/train_k{{k}}.tsv"
    priority: SCIENCE_PATH_PRIORITY
    params:  # merged with train's
        kind="M",
        train=k_train_params,


rule k_selection:
    input:
        models=expand(
            f"{RESULTS}/k_selection/k{{k}}/model.pt", k=config["k_selection"]["ks"]
        ),
        split=f"{RESULTS}/split/sites.parquet",
        stores=plate_stores,
    output:
        table=f"{RESULTS}/k_selection/k_selection.tsv",
        figure=report(
            f"{RESULTS}/k_selection/k_selection.png",
            caption="../report/k_selection.rst",
            category="Evaluation",
        ),
    log:
        f"{LOGS}/k_selection/k_selection.log",
    benchmark:
        f"{BENCH}/k_selection/k_selection.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: NETWORK_THREADS
    resources:
        gpu=NETWORK_GPU,
        mem_mb=8000,
        runtime=600,
    params:
        ks=config["k_selection"]["ks"],
        moi=config["k_selection"]["moi"],
        maps=config["maps"],
        device=TORCH_DEVICE,
    script:
        "../scripts/k_selection.py"
