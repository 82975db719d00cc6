"""The interactive hit table (deemd/hit_table.py), and the page in a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from deemd.hit_table import (
    array_data_uri,
    composite,
    dose_plot,
    hit_rows,
    hit_table_html,
    png_data_uri,
    thumbnail,
    treatment_plate_qc,
)

CHANNELS = ["Hoechst", "ConA", "Phalloidin", "Syto14", "WGA"]


def tables():
    """A tiny screen: 3 treatments on 2 plates; plate P_2 fails QC."""
    treatments = pd.DataFrame({
        "treatment": ["T-b", "T-a", "T-c"], "rank": [2, 1, 3], "deemd_rank": [1, 2, 3], "e_t": [0.8, 0.4, np.nan],
        "effective": [True, False, False], "inhibition_max": [0.7, 0.93, np.nan], "inhibition_ec50_um": [1.2, 0.3, np.nan],
        "hit_q_value": [0.2, 0.01, np.nan], "hit": [False, True, False], "n_toxic_doses": [0, 1, 0],
        "inhibition_bottom": [0.0, 0.0, np.nan], "inhibition_emax": [0.8, 0.95, np.nan], "inhibition_hill": [1.0, 1.5, np.nan],
        "inhibition_status": ["ok", "ok", "no usable well"],
    })
    wells = pd.DataFrame({"plate_id": ["P_1", "P_2", "P_1", "P_2", "P_1"], "treatment": ["T-a", "T-a", "T-b", "T-c", None]})
    qc = pd.DataFrame({"plate_id": ["P_1", "P_2", "P_1", "P_2"], "readout": ["a", "a", "z", "z"],
                       "zprime": [0.4, -0.5, 0.1, 0.2], "passes": [True, False, True, True]})
    doses = pd.DataFrame({"treatment": ["T-a"] * 3, "treatment_conc": [0.1, 1.0, 10.0], "e_dose": [0.1, 0.5, 0.9],
                          "median_inhibition": [0.1, 0.6, 0.9], "inhibition_ci_lower": [0.0, 0.4, 0.8],
                          "inhibition_ci_upper": [0.2, 0.7, 1.0]})
    return treatments, wells, qc, doses


def test_plate_qc_per_treatment_uses_the_readout_and_its_plates():
    treatments, wells, qc, _ = tables()
    table = treatment_plate_qc(wells, qc, "a").set_index("treatment")
    assert table.loc["T-a", "plates_passing"] == "1/2" and table.loc["T-a", "min_zprime"] == -0.5
    assert table.loc["T-b", "plates_passing"] == "1/1" and table.loc["T-b", "plates"] == "P_1"
    assert treatment_plate_qc(wells, qc, "z").set_index("treatment").loc["T-a", "plates_passing"] == "2/2"
    with pytest.raises(ValueError, match="readout 'map_mean'"):
        treatment_plate_qc(wells, qc, "map_mean")


def test_thumbnail_puts_the_map_beside_the_composite():
    image = np.random.default_rng(1).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    rgb = composite(image, CHANNELS)
    assert rgb.shape == (64, 64, 3) and 0 <= rgb.min() and rgb.max() <= 1
    # Hoechst alone is blue
    only_blue = composite(np.stack([image[0]] + [np.zeros_like(image[0])] * 4), CHANNELS)
    assert only_blue[..., :2].max() == 0 and only_blue[..., 2].max() > 0
    assert thumbnail(image, CHANNELS, np.full((64, 64), 0.5), size=32).shape == (32, 66, 3)
    assert thumbnail(image, CHANNELS, None, size=32).shape == (32, 32, 3)
    assert array_data_uri(thumbnail(image, CHANNELS, None, size=32)).startswith("data:image/jpeg;base64,")


def page(tmp_path):
    treatments, wells, qc, doses = tables()
    plots = {t.treatment: png_data_uri(dose_plot(t, doses[doses["treatment"] == t.treatment], 0.5, 0.5)) for t in treatments.itertuples()}
    thumbs = {"T-a": array_data_uri(np.zeros((8, 8, 3), dtype=np.uint8))}
    rows = hit_rows(treatments, treatment_plate_qc(wells, qc, "a"), plots, thumbs)
    path = tmp_path / "hits.html"
    path.write_text(hit_table_html(rows, "hit table, model M", ["a note"]), encoding="utf-8")
    return rows, path


def test_rows_are_ranked_with_every_column_and_the_page_is_self_contained(tmp_path):
    rows, path = page(tmp_path)
    assert rows["treatment"].tolist() == ["T-a", "T-b", "T-c"]
    assert rows.columns[:4].tolist() == ["rank", "treatment", "dose response", "typical site | infection map"]
    for column in ("hit", "inhibition_max", "EC50 (µM)", "q", "DEEMD e(t)", "DEEMD effective", "toxic doses",
                   "plates passing QC", "min Z'"):
        assert column in rows.columns, column
    assert rows.loc[0, "hit"] == "yes" and rows.loc[0, "inhibition_max"] == "0.93" and rows.loc[2, "q"] == ""
    assert rows.loc[0, "typical site | infection map"].startswith("<img src=\"data:image/jpeg") and rows.loc[1, "typical site | infection map"] == ""
    text = path.read_text(encoding="utf-8")
    # offline: no script or stylesheet is loaded from anywhere
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']?https?:", text)
    # DataTables' bundle is inlined (base64, injected as a module) and the rows are there
    assert "injectModule(" in text and len(text) > 100_000 and "T-b" in text


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium: install Debian's `chromium` (install.sh does, as root) to render the hit table")


def test_chromium_renders_the_table_and_takes_a_screenshot(tmp_path):
    browser = chromium()
    _, path = page(tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # DataTables ran: it wraps the table and writes its info line and search box
    assert "dt-container" in dom.stdout or "dataTables_wrapper" in dom.stdout, dom.stdout[-2000:]
    body = dom.stdout.split("<tbody", 1)[1].split("</tbody>", 1)[0]
    assert len(re.findall(r"<tr", body)) == 3 and all(t in body for t in ("T-a", "T-b", "T-c"))
    assert "Showing 1 to 3 of 3" in dom.stdout
    shot = tmp_path / "hits.png"
    run = subprocess.run([browser, *flags, "--window-size=1400,700", f"--screenshot={shot}", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.stat().st_size > 5_000, run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_cells_are_escaped_in_the_page(tmp_path):
    """probe n1: the static copy of the table had <td>Cpd A&B <10> "x"</td>."""
    treatments, wells, qc, _ = tables()
    name = 'Cpd A&B <10> "x"'
    treatments["treatment"] = treatments["treatment"].replace("T-a", name)
    treatments["inhibition_ec50_qualifier"] = ["=", "<", ">"]
    wells["treatment"] = wells["treatment"].replace("T-a", name)
    plots = {name: array_data_uri(np.zeros((8, 8, 3), dtype=np.uint8))}
    rows = hit_rows(treatments, treatment_plate_qc(wells, qc, "a"), plots, {})
    assert rows.loc[0, "treatment"] == "Cpd A&amp;B &lt;10&gt; &quot;x&quot;"
    assert rows["EC50 vs doses"].tolist() == ["&lt;", "=", "&gt;"]
    assert rows.loc[0, "dose response"].startswith('<img src="data:image/jpeg') and 'alt="dose response of Cpd A&amp;B' in rows.loc[0, "dose response"]
    text = hit_table_html(rows, "t", []).replace("\\\"", '"')
    assert name not in text and "Cpd A&amp;B &lt;10&gt; &quot;x&quot;" in text
