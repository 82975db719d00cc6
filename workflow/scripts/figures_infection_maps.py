"""Snakemake glue: infection maps of one patch model (M or V) overlaid on each stain, for
typical untreated control test sites (Mock, Active untreated) and one typical site of each
top-ranked treatment at its most effective dose."""

import logging

import numpy as np
import pandas as pd
from deemd.figures import read_site_images, select_control_sites, select_treated_sites, store_channel_names
from deemd.grid import PatchGrid
from deemd.logs import start_rule_log
from deemd.maps import site_maps
from deemd.plots import infection_map_figure, save_figure_atomic
from deemd.store import store_paths_by_plate
from deemd.truth import load_masks


def main(inputs, output, model, maps_cfg, grid, n_controls, n_treated, overlay_alpha, store_paths, mask_paths, log):
    start_rule_log(log)
    split = pd.read_parquet(inputs["split"])
    locations = split[["site_id", "plate_id", "well_index", "site", "disease_condition"]]
    test = pd.read_parquet(inputs["test_scores"])
    test = test[test["model"] == model].merge(locations, on="site_id", how="inner", validate="one_to_one")
    treated = pd.concat([pd.read_parquet(path) for path in inputs["shards"]], ignore_index=True)
    treated = treated[treated["role"] == "treated"]  # shards also hold held-out control sites
    treated = treated.drop(columns=["plate_id", "site"]).merge(locations.drop(columns="disease_condition"), on="site_id", how="inner")
    controls = select_control_sites(test, n_controls)
    top = select_treated_sites(treated, pd.read_parquet(inputs["doses"]), pd.read_parquet(inputs["treatments"]), n_treated)
    columns = ["site_id", "plate_id", "well_index", "site", "group", "patch_probabilities"]
    shown = pd.concat([controls.assign(value=controls["score"], what="score"), top.assign(value=top["z"], what="z")], ignore_index=True)
    if shown["patch_probabilities"].isna().any():
        raise ValueError(f"model {model}: sites without patch probabilities (is it the whole-site model W?)")
    logging.info("model %s: %d control and %d treated sites: %s", model, len(controls), len(top), shown["site_id"].tolist())
    images = read_site_images(shown[columns], store_paths)
    maps = site_maps(np.stack(list(shown["patch_probabilities"])), PatchGrid(**grid), maps_cfg["alpha"], maps_cfg["sigma"], maps_cfg["reference_site_size"])
    masks = load_masks(mask_paths, shown["site_id"]) if mask_paths else None
    labels = [f"{row.group}\n{row.site_id}\n{row.what} = {row.value:.2f}" for row in shown.itertuples()]
    channel_names = store_channel_names(store_paths)
    if len(images) and len(channel_names) != images.shape[1]:
        channel_names = [f"channel {c + 1}" for c in range(images.shape[1])]
    title = f"model {model}: infection maps (alpha {maps_cfg['alpha']:g}, sigma {maps_cfg['sigma']:g} px at {maps_cfg['reference_site_size']} px)"
    if masks is not None:
        title += "; white: true infected cells"
    figure = infection_map_figure(images, maps, channel_names, labels, masks=masks, overlay_alpha=overlay_alpha, title=title)
    save_figure_atomic(figure, output[0], dpi=110)


if "snakemake" in globals():
    main(
        snakemake.input,
        snakemake.output,
        snakemake.wildcards.model,
        snakemake.params.maps,
        snakemake.params.grid,
        snakemake.params.controls,
        snakemake.params.treated,
        snakemake.params.overlay_alpha,
        store_paths_by_plate(snakemake.input.stores),
        list(snakemake.input.masks),
        snakemake.log[0],
    )
