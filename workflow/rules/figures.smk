# Figures and report (docs/method.md §11): ranked tables with dose-response fits, dose-response
# panels of the top treatments, infection maps, the models compared, the correlation with
# a reference score table, and (demo only) the scores against the hidden truth.


rule dose_response:
    input:
        doses=f"{RESULTS}/efficacy/{{model}}/doses.parquet",
        treatments=f"{RESULTS}/efficacy/{{model}}/treatments.parquet",
        wells=f"{RESULTS}/efficacy/{{model}}/wells.parquet",
    output:
        figure=report(
            f"{RESULTS}/figures/dose_response/{{model}}.png",
            caption="../report/dose_response.rst",
            category="Efficacy",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "dose response (e(t,c))"},
        ),
        inhibition=report(
            f"{RESULTS}/figures/inhibition/{{model}}.png",
            caption="../report/inhibition.rst",
            category="Efficacy",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "dose response (inhibition)"},
        ),
        table=report(
            f"{RESULTS}/figures/ranking/{{model}}.tsv",
            caption="../report/ranking.rst",
            category="Efficacy",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "ranking table"},
        ),
    log:
        f"{LOGS}/figures/dose_response_{{model}}.log",
    benchmark:
        f"{BENCH}/figures/dose_response_{{model}}.tsv"
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        zeta=config["efficacy"]["zeta"],
        bar=config["efficacy"]["inhibition_bar"],
        top=FIGURES["top_compounds"],
        columns=FIGURES["panel_columns"],
    script:
        "../scripts/figures_dose_response.py"


rule efficacy_calls:
    input:
        treatments=f"{RESULTS}/efficacy/{{model}}/treatments.parquet",
    output:
        hits=report(
            f"{RESULTS}/figures/hits/{{model}}.png",
            caption="../report/hits.rst",
            category="Efficacy",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "hit calls"},
        ),
        versus=report(
            f"{RESULTS}/figures/deemd_vs_inhibition/{{model}}.png",
            caption="../report/deemd_vs_inhibition.rst",
            category="Efficacy",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "e(t) vs inhibition"},
        ),
    log:
        f"{LOGS}/figures/efficacy_calls_{{model}}.log",
    benchmark:
        f"{BENCH}/figures/efficacy_calls_{{model}}.tsv"
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        zeta=config["efficacy"]["zeta"],
        bar=config["efficacy"]["inhibition_bar"],
        fdr=config["efficacy"]["fdr"],
        label_top=FIGURES["label_top"],
    script:
        "../scripts/figures_efficacy_calls.py"


rule plate_qc_figure:
    input:
        expand(f"{RESULTS}/efficacy/{{model}}/plate_qc.parquet", model=MODELS),
    output:
        report(
            f"{RESULTS}/figures/plate_qc.png",
            caption="../report/plate_qc.rst",
            category="Plate QC",
            labels={"figure": "plate QC (Z', SSMD)"},
        ),
    log:
        f"{LOGS}/figures/plate_qc.log",
    benchmark:
        f"{BENCH}/figures/plate_qc.tsv"
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        models=MODELS,
        min_zprime=config["qc"]["min_zprime"],
        map_readout=config["efficacy"]["map_readout"],
        whole_site_readout=config["efficacy"]["whole_site_readout"],
    script:
        "../scripts/figures_plate_qc.py"


rule plate_maps:
    input:
        nuclei=f"{RESULTS}/nuclei/wells.parquet",
        wells=f"{RESULTS}/efficacy/{{model}}/wells.parquet",
    output:
        report(
            f"{RESULTS}/figures/plate_maps/{{model}}.png",
            caption="../report/plate_maps.rst",
            category="Plate QC",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "plate maps"},
        ),
    log:
        f"{LOGS}/figures/plate_maps_{{model}}.log",
    benchmark:
        f"{BENCH}/figures/plate_maps_{{model}}.tsv"
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    script:
        "../scripts/figures_plate_maps.py"


rule infection_maps:
    input:
        split=f"{RESULTS}/split/sites.parquet",
        test_scores=f"{RESULTS}/evaluation/test_scores.parquet",
        shards=inference_shards,
        doses=f"{RESULTS}/efficacy/{{model}}/doses.parquet",
        treatments=f"{RESULTS}/efficacy/{{model}}/treatments.parquet",
        stores=plate_stores,
        masks=truth_masks,
    output:
        report(
            f"{RESULTS}/figures/infection_maps/{{model}}.png",
            caption="../report/infection_maps.rst",
            category="Infection maps",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "infection maps"},
        ),
    log:
        f"{LOGS}/figures/infection_maps_{{model}}.log",
    benchmark:
        f"{BENCH}/figures/infection_maps_{{model}}.tsv"
    wildcard_constraints:
        model="|".join(PATCH_MODELS),
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        maps=config["maps"],
        grid=PATCH_GRID,
        controls=FIGURES["map_control_sites"],
        treated=FIGURES["map_treated_sites"],
        overlay_alpha=FIGURES["map_overlay_alpha"],
    script:
        "../scripts/figures_infection_maps.py"


rule model_comparison:
    input:
        expand(f"{RESULTS}/efficacy/{{model}}/treatments.parquet", model=MODELS),
    output:
        figure=report(
            f"{RESULTS}/figures/model_comparison.png",
            caption="../report/model_comparison.rst",
            category="Efficacy",
            subcategory="Models compared",
            labels={"figure": "models compared"},
        ),
        table=f"{RESULTS}/figures/model_comparison.tsv",
    log:
        f"{LOGS}/figures/model_comparison.log",
    benchmark:
        f"{BENCH}/figures/model_comparison.tsv"
    conda:
        "../../envs/plots.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        models=MODELS,
        zeta=config["efficacy"]["zeta"],
        top=FIGURES["comparison_top"],
    script:
        "../scripts/figures_model_comparison.py"


if REFERENCE:

    rule reference_correlation:
        input:
            treatments=expand(
                f"{RESULTS}/efficacy/{{model}}/treatments.parquet", model=MODELS
            ),
            reference=REFERENCE["path"],
        output:
            figure=report(
                f"{RESULTS}/figures/reference_correlation.png",
                caption="../report/reference_correlation.rst",
                category="Efficacy",
                subcategory="Reference",
                labels={"figure": "reference correlation"},
            ),
            table=report(
                f"{RESULTS}/figures/reference_correlation.tsv",
                caption="../report/reference_correlation_table.rst",
                category="Efficacy",
                subcategory="Reference",
                labels={"figure": "reference correlation table"},
            ),
        log:
            f"{LOGS}/figures/reference_correlation.log",
        benchmark:
            f"{BENCH}/figures/reference_correlation.tsv"
        conda:
            "../../envs/plots.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=20,
        params:
            models=MODELS,
            reference=REFERENCE,
            zeta=config["efficacy"]["zeta"],
            label_top=FIGURES["label_top"],
        script:
            "../scripts/figures_reference_correlation.py"


if SOURCE == "synthetic":

    rule truth_scores:
        input:
            truth=f"{RESOURCES}/truth/compounds.csv",
            treatments=expand(
                f"{RESULTS}/efficacy/{{model}}/treatments.parquet", model=MODELS
            ),
            doses=expand(f"{RESULTS}/efficacy/{{model}}/doses.parquet", model=MODELS),
            test_scores=f"{RESULTS}/evaluation/test_scores.parquet",
            masks=truth_masks,
        output:
            report(
                f"{RESULTS}/figures/truth_scores.tsv",
                caption="../report/truth_scores.rst",
                category="Demo truth",
                labels={"figure": "scores against the truth"},
            ),
        log:
            f"{LOGS}/figures/truth_scores.log",
        benchmark:
            f"{BENCH}/figures/truth_scores.tsv"
        conda:
            "../../envs/plots.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            models=MODELS,
            threshold=FIGURES["truth_effective_threshold"],
            maps=config["maps"],
            grid=PATCH_GRID,
        script:
            "../scripts/figures_truth_scores.py"
