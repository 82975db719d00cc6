"""benchmarks/scale.py: its pure helpers (plate geometry, the RxRx19a projection, the
rules' mem_mb, the report's tables) and its CPU stages on a tiny plate. No timing is
asserted: the figures depend on the machine."""

import math

import numpy as np
import pandas as pd
import pytest

from workflow_utils import load_benchmark


@pytest.fixture(scope="module")
def scale():
    return load_benchmark("scale")


def test_plate_is_hrce_like_at_any_site_size(scale):
    full, quick = scale.scale_demo(1024), scale.scale_demo(256, quick=True)
    # 11 um nuclei at 0.65 um/px: about 17 px across whatever the site size.
    assert scale.nucleus_diameter_px(full) == pytest.approx(16.9, abs=0.1)
    assert scale.nucleus_diameter_px(quick) == pytest.approx(scale.nucleus_diameter_px(full))
    assert full["cells"]["per_site"] == 300 and quick["cells"]["per_site"] == round(300 / 16)
    assert full["plate_rows"] * full["plate_columns"] == 24 and quick["plate_rows"] * quick["plate_columns"] == 6
    # Every well of the plate is used: controls + compounds x concentrations.
    for demo in (full, quick):
        used = sum(demo["controls_per_plate"].values()) + demo["compounds"] * len(demo["concentrations_um"])
        assert used == demo["plate_rows"] * demo["plate_columns"]


def test_rates_scale_linearly(scale):
    rates = scale.Rates(stitch_sites_s=10.0, estimate_s_plate=4.0, infer_patches_s=30.0)
    eight = rates.scaled(8)
    assert eight.stitch_sites_s == 80.0 and eight.infer_patches_s == 240.0
    assert eight.estimate_s_plate == 0.5  # seconds, not a rate
    assert eight.train_steps_s is None
    # The efficacy job is one process: more cores leave its seconds alone.
    one_process = scale.Rates(efficacy_s_treatment=0.4, efficacy_start_s=1.0).scaled(8)
    assert one_process.efficacy_s_treatment == 0.4 and one_process.efficacy_start_s == 1.0


def test_stage_seconds_arithmetic(scale):
    work = scale.Work(sites=1000, wells=250, train_sites=100, val_sites=20, treated_sites=500, n_patches=49, train_k=2,
                      sites_per_step=16, batchnorm_steps=5)
    assert work.plates == 1 and work.train_steps == 7
    rates = scale.Rates(stitch_sites_s=10.0, nuclei_wells_s=5.0, estimate_s_plate=3.0, read_sites_s=100.0,
                        infer_patches_s=49.0, train_steps_s=0.5)
    seconds = scale.stage_seconds(rates, work)
    assert seconds["stitch"] == 100.0 and seconds["store read"] == 10.0 and seconds["HCS export"] is None
    assert seconds["nuclei"] == 250 / 5.0 + 1 * 3.0
    assert seconds["epoch: patch scoring"] == 100.0 and seconds["epoch: validation"] == 20.0
    assert seconds["epoch: training steps"] == 14.0
    assert seconds["epoch: batchnorm"] == pytest.approx(5 * 16 * 2 / 49.0)
    assert seconds["MIL epoch"] == pytest.approx(100.0 + 14.0 + 20.0 + 5 * 16 * 2 / 49.0)
    assert seconds["inference"] == 500.0
    missing = scale.stage_seconds(scale.Rates(infer_patches_s=49.0), work)
    assert missing["stitch"] is None and missing["nuclei"] is None and missing["MIL epoch"] is None
    assert missing["efficacy"] is None
    efficacy = scale.stage_seconds(scale.Rates(efficacy_s_treatment=0.5, efficacy_start_s=2.0), scale.Work(treatments=10))
    assert efficacy["efficacy"] == 2.0 + 10 * 0.5


def test_rxrx19a_work(scale):
    work = scale.Work()
    assert work.plates == math.ceil(71_000 / 1536)
    assert work.train_sites * work.n_patches == 980_000
    assert work.epoch_read_sites == 2 * 20_000 + 5_000 + 50 * 16


def test_batch_and_forward_shapes(scale):
    assert scale.batch_sizes(10, 4) == [4, 4, 2] and scale.batch_sizes(0, 4) == []
    # 5 sites, 2 a batch, 49 patches a site, forwards of at most 64 patches.
    assert scale.forward_shapes(5, 2, 49, 64) == [64, 34, 64, 34, 49]
    assert sum(scale.forward_shapes(7, 3, 49, 512)) == 7 * 49


def test_steady_rate_leaves_out_the_first_batch(scale):
    # 3 batches of 10, 2 and 2 units; steady passes: warm-up 9 s, then 1 s and 3 s.
    assert scale.steady_rate([10, 2, 2], [9.0, 1.0, 3.0], 100.0) == pytest.approx(4 / 2.0)
    assert scale.steady_rate([10], [], 5.0) == 2.0  # one batch: the whole pass
    clock = scale.BatchClock()
    run = clock.wrap(lambda progress: [progress(k, 3) for k in range(3)])
    run()
    run()
    assert len(clock.passes) == 2 and all(p >= 0 for p in clock.passes)
    clock.wrap(lambda progress: progress(1, 1))()
    assert len(clock.passes) == 2  # a single batch has no steady part


def test_format_duration(scale):
    assert scale.format_duration(None) == "-" and scale.format_duration(float("nan")) == "-"
    assert scale.format_duration(5) == "5.00 s" and scale.format_duration(90) == "90 s"
    assert scale.format_duration(600) == "10.0 min" and scale.format_duration(3 * 3600) == "3.0 h"
    assert scale.format_duration(5 * 86400) == "5.0 d"


def test_rule_mem_mb_reads_the_rules(scale, tmp_path):
    found = scale.rule_mem_mb()
    assert {"stitch", "nuclei", "infer", "train"} <= set(found)
    assert all(isinstance(v, int) and v > 0 for v in found.values())
    (tmp_path / "a.smk").write_text("rule one:\n    resources:\n        mem_mb=123,\n\n\ncheckpoint two:\n    threads: 1\n")
    assert scale.rule_mem_mb(tmp_path) == {"one": 123}


def test_model_train_values_apply_by_model(scale):
    train = {"k": 2, "batch_size": 128, "models": ["M", "W"], "by_model": {"M": {"batch_size": 32}}}
    assert scale.model_train_values(train, "M") == {"k": 2, "batch_size": 32}
    assert scale.model_train_values(train, "W") == {"k": 2, "batch_size": 128}


def test_projection_marks_every_figure(scale):
    work = scale.Work()
    rates = scale.Rates(stitch_sites_s=25.0, nuclei_wells_s=3.0, estimate_s_plate=2.0, read_sites_s=200.0,
                        infer_patches_s=30.0, train_steps_s=0.3, efficacy_s_treatment=0.4, efficacy_start_s=1.0,
                        export_fields_s=10.0)
    columns = {"this machine (2 cores)": rates, "16 cores (linear)": rates.scaled(8), "GPU": None}
    rows = scale.projection_rows(columns, work)
    assert [r[0] for r in rows][:3] == ["stitch", "nuclei", "store read"] and rows[-1][0] == "efficacy"
    assert rows[-1][2] == rows[-1][3] == "11.2 min [p]"  # 1 s + 1,672 x 0.4 s, on 2 cores as on 16
    for row in rows:
        assert row[2].endswith("[p]") and row[3].endswith("[p]") and row[4] == "unmeasured"
    text = scale.text_table(rows, ["stage", "work", *columns])
    assert "unmeasured" in text and "16 cores (linear)" in text
    gpu = scale.Rates(infer_patches_s=5000.0, train_steps_s=20.0)
    epoch = scale.stage_seconds(gpu, work)
    assert epoch["MIL epoch"] < scale.stage_seconds(rates, work)["MIL epoch"] and epoch["stitch"] is None


def test_stages_on_a_tiny_plate(scale, tmp_path):
    """Synthesis, sites table, stitch, nuclei and read stages in this process, on a 2 x 3
    plate of 64 px sites, one repeat; then the report's tables from their results."""
    demo = scale.scale_demo(64, quick=True)
    files = scale.synthesise(tmp_path, demo)
    config = scale.merged_config()
    dataset = dict(config["dataset"], site_size=64)
    sites = scale.sites_table(files["metadata"], dataset["site_layout"])
    assert len(sites) == 24 and set(sites["set"]) == {"train", "treated"}
    assert sites.loc[sites["set"] == "train", "label"].notna().all()
    sites.to_parquet(tmp_path / "sites.parquet")
    spec = {"threads": 1, "repeats": 1, "torch_repeats": 1, "plate_id": sites["plate_id"].iloc[0],
            "sites": str(tmp_path / "sites.parquet"), "truth": files["truth"], "pattern": files["pattern"],
            "store_path": str(tmp_path / "store.zarr"), "store": config["store"], "nuclei": config["nuclei"],
            "export": config["export"],
            "dataset": {k: dataset[k] for k in ("site_size", "site_layout", "channels", "channel_names", "nuclear_channel", "channel_axis")}}
    results = {"stitch": scale.stitch_stage(spec), "nuclei": scale.nuclei_stage(spec), "read": scale.read_stage(spec),
               "export": scale.export_stage(spec)}
    assert results["stitch"]["sites"] == 24 and results["stitch"]["files"] == 120
    assert results["stitch"]["png_bytes"] > 0 and results["stitch"]["store_bytes"] > 0
    assert results["stitch"]["chunk_files"] == 24 and results["stitch"]["write_s"] > 0  # a chunk a site
    assert not (tmp_path / "store.writes").exists()
    for step in ("decode", "stitch", "write", "write_new"):  # user and system CPU of each step
        assert results["stitch"][f"{step}_user_cpu_s"] >= 0 and results["stitch"][f"{step}_system_cpu_s"] >= 0
    assert results["nuclei"]["wells"] == 6 and results["nuclei"]["truth"] > 0 and results["nuclei"]["counted"] > 0
    assert results["nuclei"]["sample_wells"] == 4 and results["nuclei"]["sample_before_s"] > 0
    assert results["nuclei"]["sample_counted_after"] > 0 and results["nuclei"]["sample_counted_before"] > 0
    export = results["export"]
    assert export["fields"] == 24 and export["levels"] == [64] and export["export_files"] > 24 and export["export_bytes"] > 0
    assert export["export_s"] > 0 and export["decode_s"] > 0 and not (tmp_path / "store.ome.zarr").exists()
    assert export["parallel_jobs"] == 1  # one single-threaded job a core
    for result in results.values():
        result["peak_rss_mb"] = scale.peak_rss_mb()
    rates = scale.measured_rates(results)
    assert rates.stitch_sites_s > 0 and rates.read_sites_s > 0 and rates.export_fields_s > 0 and rates.infer_patches_s is None
    rows = scale.rate_rows(results, 1)
    assert any(r[0] == "stitch" and r[1].endswith("[m]") for r in rows)
    assert any(r[0] == "  store's file writes" and "24 files" in r[1] and "system CPU" in r[2] for r in rows)
    assert any(r[0] == "  CPU (user + system)" and r[3].startswith("user ") for r in rows)
    assert any(r[0] == "  before (issue 12)" and "today/before" in r[3] for r in rows)
    assert any(r[0] == "infer" and r[1].startswith("failed") for r in rows)
    assert any(r[0] == "HCS export (1 thread)" and "files [m]" in r[3] for r in rows)
    memory = scale.memory_rows(results, {"stitch": 4000, "nuclei": 4000, "export_hcs": 2000})
    assert [r[0] for r in memory] == ["stitch", "nuclei", "read", "export"]
    assert scale.size_lines(results["stitch"], scale.Work())[0].startswith("size: PNGs")
    assert scale.gpu_lines({}, scale.Work())[0].startswith("GPU part: failed")
    assert np.isfinite(pd.read_parquet(files["truth"])["n_nuclei"].sum())


def test_interleaved_takes_fewer_repeats_where_the_warmup_shows_they_would_not_fit(scale, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(scale.time, "perf_counter", lambda: clock[0])

    def step(seconds):
        def run():
            clock[0] += seconds
        return run

    slow = scale.interleaved({"a": step(40.0), "b": step(20.0)}, 3, warmup=True, budget_s=150)
    assert [len(v) for v in slow.values()] == [2, 2] and slow["a"] == [40.0, 40.0]
    assert [len(v) for v in scale.interleaved({"a": step(400.0)}, 3, warmup=True, budget_s=150).values()] == [1]
    assert [len(v) for v in scale.interleaved({"a": step(1.0)}, 3, warmup=True, budget_s=150).values()] == [3]
    assert [len(v) for v in scale.interleaved({"a": step(400.0)}, 3, warmup=True).values()] == [3]
    spec = {"torch_repeats": 3, "torch_budget_s": 150.0}
    assert scale.torch_repeats_text(spec, {"infer": {"repeats": 3}, "train": {"repeats": 3}}) == "3"
    assert scale.torch_repeats_text(spec, {"infer": {"repeats": 1}, "train": {"repeats": 2}}) == "3, or as many as fit in 150 s: infer 1, train 2"


def test_with_cpu_times_notes_each_call(scale):
    """Every call of a wrapped step notes its (user, system) CPU seconds; a step that
    computes shows user time; medians come out per step and part."""
    cpu = {}
    steps = scale.with_cpu_times({"busy": lambda: sum(i * i for i in range(300_000)), "idle": lambda: None}, cpu)
    for _ in range(3):
        steps["busy"]()
    steps["idle"]()
    assert len(cpu["busy"]) == 3 and len(cpu["idle"]) == 1
    assert all(user >= 0 and system >= 0 for user, system in cpu["busy"] + cpu["idle"])
    assert sum(user for user, _ in cpu["busy"]) > 0
    medians = scale.median_cpu(cpu)
    assert set(medians) == {"busy_user_cpu_s", "busy_system_cpu_s", "idle_user_cpu_s", "idle_system_cpu_s"}
    assert medians["busy_user_cpu_s"] == sorted(user for user, _ in cpu["busy"])[1]


def test_efficacy_screen_is_shaped_like_rxrx19a(scale):
    sites, nuclei = scale.efficacy_screen(50, seed=1)
    per_plate = (1536 - 2 * 24) // 36  # 41 compounds of 6 doses x 6 wells a plate
    treated = sites[sites["role"] == "treated"]
    assert treated["treatment"].nunique() == 50 and len(treated) == 50 * 36 * 4
    assert set(treated["treatment_conc"]) == set(scale.SCREEN_DOSES_UM)
    assert (treated.groupby(["treatment", "treatment_conc"])["well_id"].nunique() == 6).all()
    assert sites["plate_id"].nunique() == 2 and sites[sites["plate_id"] == "HRCE-1_1"]["treatment"].nunique() == per_plate
    controls = sites[sites["role"] != "treated"].groupby(["plate_id", "role"])["well_id"].nunique()
    assert (controls == 24).all() and len(controls) == 4
    assert sites["site_id"].is_unique and sites["z"].between(0, 1).all() and (sites["map_mean"] >= 0).all()
    assert (sites.groupby("well_id").size() == 4).all()
    # Antiviral compounds read cleaner than inactive ones at their top dose.
    top = treated[treated["treatment_conc"] == 10.0].groupby("true_active")["map_mean"].median()
    assert top[True] < top[False]
    assert len(nuclei) == sites["well_id"].nunique() and nuclei["toxic"].any() and not nuclei["toxic"].all()
    assert set(nuclei.columns) >= {"plate_id", "well", "treatment", "treatment_conc", "toxic", "no_nuclei", "nuclei_per_site",
                                   "infected_control_median"}


def test_efficacy_stage_runs_the_rule_on_a_small_screen(scale, tmp_path):
    """The efficacy rule's main, in R and scipy, on 3 treatments; then its report rows."""
    from deemd import efficacy as deemd_efficacy
    from deemd import inhibition

    fit_logistic, r_sign_test = inhibition.fit_logistic, deemd_efficacy._r_sign_test
    result = scale.efficacy_stage({"efficacy_treatments": 3, "efficacy_dir": str(tmp_path / "efficacy")})
    assert inhibition.fit_logistic is fit_logistic and deemd_efficacy._r_sign_test is r_sign_test  # put back
    assert result["treatments"] == 3 and result["sites"] == 3 * 36 * 4 + 2 * 24 * 4
    # One sign test per dose for e(t,c), one per dose with usable wells for inhibition.
    assert 3 * 6 < result["sign_test_groups"] <= 2 * 3 * 6 and result["sign_test_s"] > 0
    assert result["fits"] >= 3 and result["fits_s"] > 0 and result["efficacy_s"] >= result["fits_s"]
    assert 0 <= result["true_hits"] <= result["hits"] <= 3
    assert (tmp_path / "efficacy" / "treatments.parquet").exists()
    result["peak_rss_mb"] = scale.peak_rss_mb()
    rates = scale.measured_rates({"efficacy": result})
    assert rates.efficacy_s_treatment == result["efficacy_s"] / 3 and rates.efficacy_start_s == result["r_start_s"]
    rows = scale.rate_rows({"efficacy": result}, 1)
    assert rows[0][0] == "efficacy (M, 1 process)" and rows[0][1].endswith("sites)") and "R start" in rows[0][3]
    assert rows[1][0] == "  parts" and "sign tests (rstatix)" in rows[1][1] and "4PL fits" in rows[1][2]
    assert [r[0] for r in scale.memory_rows({"efficacy": result}, {"efficacy": 4000})] == ["efficacy"]
