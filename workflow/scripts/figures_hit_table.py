"""Snakemake glue: the interactive hit table of one model (deemd/hit_table.py), one
self-contained HTML page with a dose-response plot and a typical treated site per row."""

import logging

import numpy as np
import pandas as pd
from deemd.figures import read_site_images, select_treated_sites, store_channel_names
from deemd.grid import PatchGrid
from deemd.hit_table import array_data_uri, dose_plot, hit_rows, hit_table_html, png_data_uri, thumbnail, treatment_plate_qc
from deemd.io import write_text_atomic
from deemd.logs import start_rule_log
from deemd.maps import site_maps
from deemd.store import store_paths_by_plate


def typical_sites(inputs, treatments, doses):
    """One typical treated site per treatment (figures.select_treated_sites) with its
    location in the stores."""
    locations = pd.read_parquet(inputs["split"])[["site_id", "plate_id", "well_index", "site"]]
    treated = pd.concat([pd.read_parquet(path) for path in inputs["shards"]], ignore_index=True)
    treated = treated[treated["role"] == "treated"]
    treated = treated.drop(columns=["plate_id", "site"]).merge(locations, on="site_id", how="inner")
    return select_treated_sites(treated, doses, treatments, len(treatments))


def thumbnails(sites, store_paths, maps_cfg, grid, with_maps):
    """treatment -> data URI of its site's composite (and infection map, for M and V)."""
    if sites.empty:
        return {}
    images = read_site_images(sites[["plate_id", "well_index", "site"]], store_paths)
    names = store_channel_names(store_paths)
    if len(names) != images.shape[1]:
        names = [f"channel {c + 1}" for c in range(images.shape[1])]
    maps = [None] * len(sites)
    if with_maps and sites["patch_probabilities"].notna().all():
        maps = site_maps(np.stack(list(sites["patch_probabilities"])), PatchGrid(**grid), maps_cfg["alpha"], maps_cfg["sigma"],
                         maps_cfg["reference_site_size"])
    return {row.treatment: array_data_uri(thumbnail(image, names, m)) for row, image, m in zip(sites.itertuples(), images, maps)}


def main(inputs, output, model, params, store_paths, log):
    start_rule_log(log)
    treatments = pd.read_parquet(inputs["treatments"])
    doses = pd.read_parquet(inputs["doses"])
    qc = treatment_plate_qc(pd.read_parquet(inputs["wells"]), pd.read_parquet(inputs["plate_qc"]), params["readout"])
    plots = {row.treatment: png_data_uri(dose_plot(row, doses[doses["treatment"] == row.treatment], params["bar"], params["zeta"]))
             for row in treatments.itertuples()}
    sites = typical_sites(inputs, treatments, doses)
    thumbs = thumbnails(sites, store_paths, params["maps"], params["grid"], params["with_maps"])
    logging.info("model %s: %d treatments, %d with a typical site", model, len(treatments), len(thumbs))
    notes = [
        f"Model {model}, readout {params['readout']}. One row per treatment; sort by any column, search all, or filter by column "
        "(boxes under the table). Hit: inhibition_max above the bar with q <= the FDR (docs/method.md §10); "
        f"DEEMD effective: e(t) >= {params['zeta']:g} (§9). Plates passing QC: robust Z' >= qc.min_zprime.",
        f"Dose response: median well inhibition with its interval and the 4PL fit (blue), e(t,c) (orange squares); "
        f"dashed: the hit bar {params['bar']:g}, dotted: zeta. Typical site: at the treatment's most effective dose, "
        "the site whose z is nearest that dose's median"
        + (", beside its infection map (turbo, 0 to 1)." if params["with_maps"] else " (W has no infection map)."),
    ]
    page = hit_table_html(hit_rows(treatments, qc, plots, thumbs), f"deemd hit table, model {model}", notes)
    write_text_atomic(output[0], page)


if "snakemake" in globals():
    main(
        snakemake.input,
        snakemake.output,
        snakemake.wildcards.model,
        dict(snakemake.params.items()),
        store_paths_by_plate(snakemake.input.stores),
        snakemake.log[0],
    )
