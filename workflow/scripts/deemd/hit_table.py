"""The interactive hit table of the report: one self-contained HTML page per model, one
row per treatment, sortable and filterable (itables' DataTables bundle, inlined, so the
page opens offline).

Each row has DEEMD's e(t) and call (docs/method.md §9), the inhibition estimates, EC50,
q-value and hit call (§10), the toxic doses, the QC of the plates the treatment is on, a
small dose-response plot and a thumbnail of a typical treated site (figures.
select_treated_sites) beside its infection map (§8).
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from itables import options as itables_options  # noqa: E402
from itables import to_html_datatable  # noqa: E402
from itables.javascript import generate_init_offline_itables_html  # noqa: E402

from deemd.stains import channel_color  # noqa: E402
from deemd.inhibition_plots import fitted_inhibition  # noqa: E402
from deemd.plots import stretch_contrast  # noqa: E402

# Shown columns: header -> treatments.parquet column (the order of the table).
NUMBER_COLUMNS = {
    "rank": "rank",
    "treatment": "treatment",
    "hit": "hit",
    "inhibition_max": "inhibition_max",
    "EC50 (µM)": "inhibition_ec50_um",
    # "=": inside the tested doses; ">" or "<": extrapolated beyond the highest or lowest.
    "EC50 vs doses": "inhibition_ec50_qualifier",
    "q": "hit_q_value",
    "DEEMD e(t)": "e_t",
    "DEEMD effective": "effective",
    "DEEMD rank": "deemd_rank",
    "toxic doses": "n_toxic_doses",
    "CC50 (µM)": "viability_cc50_um",
    "selectivity CC50/EC50": "selectivity_index",
}


def treatment_plate_qc(wells: pd.DataFrame, plate_qc: pd.DataFrame, readout: str) -> pd.DataFrame:
    """Per treatment, the QC of the plates its treated wells are on (efficacy wells.parquet
    and plate_qc.parquet, rows of ``readout``): ``plates`` (their names), ``plates_passing``
    ("k/n", plates with passes True) and ``min_zprime`` (the lowest robust Z')."""
    qc = plate_qc[plate_qc["readout"] == readout].set_index("plate_id")
    if qc.empty:
        raise ValueError(f"plate QC has no rows for readout {readout!r}; it has {sorted(plate_qc['readout'].unique())}")
    treated = wells[wells["treatment"].notna()].drop_duplicates(["treatment", "plate_id"])
    rows = []
    for treatment, group in treated.groupby("treatment", sort=True):
        plates = sorted(group["plate_id"])
        known = [p for p in plates if p in qc.index]
        passing = int(qc.loc[known, "passes"].astype(bool).sum()) if known else 0
        zprime = qc.loc[known, "zprime"].astype(float) if known else pd.Series(dtype=float)
        rows.append({"treatment": treatment, "plates": ", ".join(plates), "plates_passing": f"{passing}/{len(plates)}",
                     "min_zprime": float(zprime.min()) if len(zprime) else np.nan})
    return pd.DataFrame(rows, columns=["treatment", "plates", "plates_passing", "min_zprime"])


def png_data_uri(figure, dpi: int = 72) -> str:
    """A matplotlib figure as a base64 PNG ``data:`` URI (and the figure closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def array_data_uri(rgb: np.ndarray, quality: int = 85) -> str:
    """An (h, w, 3) float [0, 1] or uint8 image as a base64 JPEG ``data:`` URI (a noisy
    micrograph is several times smaller as JPEG than as PNG)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        rgb = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    plt.imsave(buffer, rgb, format="jpeg", pil_kwargs={"quality": quality})
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def composite(image: np.ndarray, channel_names: list[str]) -> np.ndarray:
    """A (C, S, S) site as an (S, S, 3) float RGB composite: each stain stretched
    (plots.stretch_contrast) and added in its display colour (hcs.channel_color)."""
    image = np.asarray(image)
    rgb = np.zeros((*image.shape[1:], 3), dtype=np.float32)
    for index, (channel, name) in enumerate(zip(image, channel_names)):
        colour = np.array([int(channel_color(name, index)[i : i + 2], 16) / 255 for i in (0, 2, 4)], dtype=np.float32)
        rgb += stretch_contrast(channel)[..., None] * colour
    return np.clip(rgb, 0, 1)


def thumbnail(image: np.ndarray, channel_names: list[str], infection_map: np.ndarray | None, size: int = 96) -> np.ndarray:
    """A site's composite and, beside it, its infection map (turbo, 0..1) over the site in
    grey; the composite alone where there is no map (W). Each panel ``size`` px (nearest
    sampling), as (size, size or 2 size + 2, 3) uint8."""
    rgb = composite(image, channel_names)
    rows = (np.arange(size) * rgb.shape[0] / size).astype(int)
    columns = (np.arange(size) * rgb.shape[1] / size).astype(int)
    panels = [rgb[rows][:, columns]]
    if infection_map is not None:
        grey = rgb.mean(axis=2, keepdims=True)
        coloured = plt.get_cmap("turbo")(np.clip(np.asarray(infection_map), 0, 1))[..., :3]
        panels.append((0.55 * grey + 0.45 * coloured)[rows][:, columns])
    gap = np.ones((panels[0].shape[0], 2, 3), dtype=np.float32)
    joined = panels[0] if len(panels) == 1 else np.concatenate([panels[0], gap, panels[1]], axis=1)
    return (np.clip(joined, 0, 1) * 255).round().astype(np.uint8)


def dose_plot(treatment, doses: pd.DataFrame, bar: float, zeta: float):
    """A small dose-response figure of one treatment (a row of treatments.parquet) from its
    rows of doses.parquet: median well inhibition with its interval (blue), the fitted 4PL
    curve, and DEEMD's e(t,c) (orange squares); the hit bar and zeta dashed."""
    rows = doses.sort_values("treatment_conc")
    figure, ax = plt.subplots(figsize=(2.2, 1.1))
    figure.subplots_adjust(left=0.16, right=0.98, bottom=0.22, top=0.96)
    c = rows["treatment_conc"].to_numpy(dtype=float)
    if "median_inhibition" in rows:
        y = rows["median_inhibition"].to_numpy(dtype=float)
        low = y - rows.get("inhibition_ci_lower", pd.Series(y, index=rows.index)).to_numpy(dtype=float)
        high = rows.get("inhibition_ci_upper", pd.Series(y, index=rows.index)).to_numpy(dtype=float) - y
        ax.errorbar(c, y, yerr=np.abs(np.nan_to_num(np.vstack([low, high]))), fmt="o", ms=3, lw=0.8, color="#4C72B0")
    if len(c) and np.all(c > 0):
        grid = np.geomspace(c.min(), c.max(), 50)
        curve = fitted_inhibition(treatment, grid)
        if curve is not None:
            ax.plot(grid, curve, color="#4C72B0", lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.plot(c, rows["e_dose"].to_numpy(dtype=float), "s", ms=3, color="#DD8452")
    ax.axhline(bar, color="#4C72B0", ls="--", lw=0.6)
    ax.axhline(zeta, color="#DD8452", ls=":", lw=0.6)
    ax.set_ylim(-0.3, 1.3)
    ax.tick_params(labelsize=6, length=2, pad=1)
    ax.set_xlabel("µM", fontsize=6, labelpad=0)
    return figure


def hit_rows(treatments: pd.DataFrame, qc: pd.DataFrame, plots: dict[str, str], thumbs: dict[str, str]) -> pd.DataFrame:
    """The table: NUMBER_COLUMNS of ``treatments`` (that exist), the plates' QC
    (treatment_plate_qc), and the dose plot and thumbnail (``data:`` URIs by treatment)
    as <img> cells, ordered by rank. Every other cell is HTML-escaped text."""
    table = treatments.sort_values(["rank", "treatment"], kind="mergesort").reset_index(drop=True)
    shown = pd.DataFrame({header: table[column] for header, column in NUMBER_COLUMNS.items() if column in table.columns})
    merged = table[["treatment"]].merge(qc, on="treatment", how="left", validate="one_to_one")
    shown["plates passing QC"] = merged["plates_passing"].fillna("").to_numpy()
    shown["min Z'"] = merged["min_zprime"].to_numpy()
    # The pictures right after the treatment's name, so they are on screen without scrolling.
    shown.insert(2, "dose response", [_img(plots.get(t), "dose response of " + str(t)) for t in table["treatment"]])
    shown.insert(3, "typical site | infection map", [_img(thumbs.get(t), "typical site of " + str(t)) for t in table["treatment"]])
    numbers = shown.select_dtypes("number").columns.difference(["rank", "DEEMD rank", "toxic doses"])
    shown[numbers] = shown[numbers].apply(lambda column: column.map(_three_digits))
    for column in ("hit", "DEEMD effective"):
        if column in shown:
            shown[column] = shown[column].map({True: "yes", False: "no"}).fillna("")
    # The page is built with allow_html (for the <img> cells), so text such as a treatment
    # named 'A&B <10>' or the EC50 qualifier '<' must be escaped to show as written.
    pictures = ["dose response", "typical site | infection map"]
    for column in shown.columns.difference(pictures):
        shown[column] = shown[column].map(lambda v: html.escape(v) if isinstance(v, str) else v)
    return shown


def _three_digits(value) -> str:
    """A number to 3 significant digits; blank for a missing one."""
    return "" if pd.isna(value) else f"{value:.3g}"


def _img(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">' if uri else ""


def hit_table_html(rows: pd.DataFrame, title: str, notes: list[str]) -> str:
    """A complete HTML page: ``title``, ``notes`` (one paragraph each) and ``rows`` as a
    DataTables table with its JavaScript and CSS inlined (itables, connected=False), a
    search box and one filter box per column, every row on one page."""
    # connected=False: the table expects DataTables in the page, which the offline init
    # block inlines (itables' own bundle, base64), so no CDN is needed.
    bundle = generate_init_offline_itables_html(itables_options.dt_bundle)
    table = to_html_datatable(
        rows,
        connected=False,
        display_logo_when_loading=False,
        allow_html=True,
        showIndex=False,
        column_filters="footer",
        maxBytes=0,
        paging=False,
        classes="display compact cell-border",
        style="width:auto",
        layout={"topStart": None, "topEnd": "search", "bottomStart": "info", "bottomEnd": None},
        order=[],
    )
    paragraphs = "\n".join(f"<p>{html.escape(note)}</p>" for note in notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;font-size:13px;margin:1em} td img{display:block}</style>\n"
        f"</head>\n<body>\n{bundle}\n<h1>{html.escape(title)}</h1>\n{paragraphs}\n{table}\n</body>\n</html>\n"
    )
