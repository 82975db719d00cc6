import copy
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit
from torch.utils.data import DataLoader

from deemd.inference import (
    forward_size,
    infer_patches,
    inference_patches_per_batch,
    inference_patches_per_forward,
    inference_sites_per_batch,
    inference_sites_per_forward,
    site_scores,
)
from deemd.grid import PatchGrid
from deemd.mil import TrainSetup, build_resnet34
from deemd.device import DevicePrecision, autocast_dtype, cpu_has_native_bf16, select_device
from deemd.train import fit, load_checkpoint, recalibrate_batchnorm, sites_per_step, steps_per_epoch, training_batches


class Sites(torch.utils.data.Dataset):
    """Tiny sites: infected ones hold one bright square in a random patch (a local focus)."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.label = (np.arange(n) % 2).astype(np.float32)
        self.images = rng.integers(0, 40, (n, 2, 32, 32)).astype(np.uint8)
        for i in np.flatnonzero(self.label):
            y, x = rng.integers(0, 24, 2)
            self.images[i, :, y : y + 8, x : x + 8] = 220

    def __len__(self):
        return len(self.label)

    def __getitem__(self, index):
        return torch.from_numpy(self.images[index]), torch.tensor(self.label[index]), index


def setup(kind, epochs=3, patience=5, augment=False, batchnorm_steps=2, intensity_jitter=0.0):
    return TrainSetup(kind=kind, k=2, eta=0.5, grid=PatchGrid(32, 16, 8), epochs=epochs, patience=patience, batch_size=8,
                      whole_batch_size=4, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, seed=3, in_channels=2,
                      augment=augment, batchnorm_steps=batchnorm_steps, intensity_jitter=intensity_jitter)


def loaders(dataset, batch_size, shuffle_seed):
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle_seed is not None, generator=generator)


CPU = DevicePrecision(torch.device("cpu"), np.array([30.0, 30.0]), np.array([40.0, 40.0]))


def test_batch_arithmetic():
    m, v, w = setup("M"), setup("V"), setup("W")
    assert m.train_k == 2 and v.train_k == 9
    assert sites_per_step(m) == 4 and sites_per_step(v) == 1 and sites_per_step(w) == 4
    assert steps_per_epoch(m, 10) == 3
    # Inference batches: at least 2**20 px (16 px patches: 4096, so 455 sites of 9), W at
    # least whole_batch_size sites; at RxRx19a's 256 px patches 4 training batches rule.
    assert inference_patches_per_batch(m) == 4096 and inference_sites_per_batch(m) == 455 and inference_sites_per_batch(w) == 1024
    # Forward passes: a GPU takes the whole batch, a CPU at most 2**21 px (which the
    # small sites' batches do not reach).
    assert inference_patches_per_forward(m, cuda=True) == inference_patches_per_forward(m, cuda=False) == 4096
    assert inference_sites_per_forward(w, cuda=True) == inference_sites_per_forward(w, cuda=False) == 1024
    big = TrainSetup(kind="M", k=2, eta=0.5, grid=PatchGrid(1024, 256, 128), epochs=1, patience=1, batch_size=128, whole_batch_size=16,
                     lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0, seed=1, in_channels=5)
    assert inference_patches_per_batch(big) == 512 and inference_sites_per_batch(big) == 10
    assert inference_patches_per_forward(big, cuda=True) == 512 and inference_patches_per_forward(big, cuda=False) == 32
    big_w = TrainSetup.from_dict({**big.to_dict(), "kind": "W"})
    assert inference_sites_per_batch(big_w) == 16
    assert inference_sites_per_forward(big_w, cuda=True) == 16 and inference_sites_per_forward(big_w, cuda=False) == 2
    # An input larger than the CPU's pixels still runs, one a pass.
    assert forward_size(10, 4096 * 4096, cuda=False) == 1 and forward_size(10, 4096 * 4096, cuda=True) == 10


def test_inference_layout_and_batch_change_only_rounding():
    """Channels-last and the batch size change an eval-mode network's outputs by rounding
    only (why inference batches are large, and channels-last on a CPU too)."""
    network = build_resnet34(2).eval()
    sites = torch.randn(12, 2, 32, 32)
    with torch.inference_mode():
        reference = torch.cat([network(sites[i : i + 3]) for i in range(0, 12, 3)])
        fast = CPU.place(copy.deepcopy(network), inference=True)(CPU.layout(sites, inference=True))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    assert not torch.equal(network(sites[:1]), -network(sites[:1]))  # the network computes something
    assert CPU.layout(sites).is_contiguous() and CPU.layout(sites, inference=True).is_contiguous(memory_format=torch.channels_last)


def test_select_device():
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA"):
            select_device("cuda")


def test_autocast_dtype_follows_precision_and_hardware():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cpu, "auto") is (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(ValueError, match="'fp16'"):
        autocast_dtype(cpu, "fp16")


def test_bf16_runtime_autocasts_and_scores_close_to_fp32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    images = torch.randn(3, 2, 8, 8)
    model(images)
    bf16 = DevicePrecision(torch.device("cpu"), np.zeros(2), np.ones(2), "bf16")
    fp32 = DevicePrecision(torch.device("cpu"), np.zeros(2), np.ones(2), "fp32")
    assert (bf16.precision, fp32.precision) == ("bf16", "fp32")
    with torch.inference_mode():
        with bf16.autocast():
            low = model(images)
        with fp32.autocast():
            full = model(images)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert torch.allclose(low.float(), full, atol=0.05, rtol=0.05)


def test_sites_per_step_in_whole_sites_holds_whatever_k():
    from dataclasses import replace

    for k in (1, 2, 9):
        m = replace(setup("M"), k=k, sites_per_step=4)
        assert sites_per_step(m) == 4 and m.train_k == k  # 4 k patches a step
    assert sites_per_step(replace(setup("M"), k=9)) == 1  # batch 8 // 9 patches: one site, one class


@pytest.mark.parametrize("kind", ["M", "V", "W"])
def test_fit_runs_checkpoints_and_scores(kind, tmp_path):
    torch.set_num_threads(1)
    result = fit(setup(kind, epochs=2), Sites(12, 0), Sites(8, 1), loaders, CPU, tmp_path / "last.pt", "d", log=lambda *_: None)
    assert result["finished"] and [row["epoch"] for row in result["history"]] == [1, 2]
    assert (tmp_path / "last.pt").exists() and result["best_state"] is not None
    scores, labels, rows, patches, logits = site_scores(setup(kind), _model(kind, result["best_state"]), loaders(Sites(6, 2), 3, None), CPU)
    assert scores.shape == (6,) and ((scores >= 0) & (scores <= 1)).all()
    assert (patches is None) == (kind == "W") and (logits is None) == (kind != "W")
    if kind == "W":  # the probability is the logit's sigmoid
        np.testing.assert_allclose(scores, expit(logits.astype(np.float64)), rtol=1e-6)


def _model(kind, state):
    from deemd.mil import build_resnet34

    model = build_resnet34(2)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("augment, jitter", [(False, 0.0), (True, 0.2)])
def test_resume_after_interruption_equals_uninterrupted_run(augment, jitter, tmp_path):
    torch.set_num_threads(1)
    train, val = Sites(12, 0), Sites(8, 1)
    run = setup("M", augment=augment, intensity_jitter=jitter)
    whole = fit(run, train, val, loaders, CPU, tmp_path / "a.pt", "d", log=lambda *_: None)
    cut = fit(run, train, val, loaders, CPU, tmp_path / "b.pt", "d", log=lambda *_: None, stop_after=1)
    assert not cut["finished"] and cut["epoch"] == 1
    messages = []
    resumed = fit(run, train, val, loaders, CPU, tmp_path / "b.pt", "d", log=messages.append)
    assert any("resumed" in m for m in messages)
    assert resumed["finished"] and resumed["epoch"] == whole["epoch"]
    for a, b in zip(whole["history"], resumed["history"]):
        assert a["train_loss"] == b["train_loss"] and a["val_ap"] == b["val_ap"]
    for name, tensor in whole["best_state"].items():
        assert torch.equal(tensor, resumed["best_state"][name]), name
    # A checkpoint of another config or data set is not resumed.
    messages = []
    fit(setup("M", epochs=1), train, val, loaders, CPU, tmp_path / "b.pt", "other", log=messages.append)
    assert any("starting afresh" in m for m in messages)


def test_augmentation_changes_what_the_model_is_trained_on(tmp_path):
    torch.set_num_threads(1)
    train, val = Sites(12, 0), Sites(8, 1)
    plain = fit(setup("M", epochs=1), train, val, loaders, CPU, tmp_path / "a.pt", "d", log=lambda *_: None)
    turned = fit(setup("M", epochs=1, augment=True), train, val, loaders, CPU, tmp_path / "b.pt", "d", log=lambda *_: None)
    assert plain["history"][0]["train_loss"] != turned["history"][0]["train_loss"]
    rescaled = fit(setup("M", epochs=1, intensity_jitter=0.2), train, val, loaders, CPU, tmp_path / "c.pt", "d", log=lambda *_: None)
    assert rescaled["history"][0]["train_loss"] not in (plain["history"][0]["train_loss"], turned["history"][0]["train_loss"])


def test_early_stopping_on_validation_ap(tmp_path):
    torch.set_num_threads(1)
    result = fit(setup("W", epochs=6, patience=1), Sites(8, 0), Sites(8, 1), loaders, CPU, tmp_path / "c.pt", "d", log=lambda *_: None)
    history = pd.DataFrame(result["history"])
    assert result["finished"]
    if len(history) < 6:
        assert not history["best"].iloc[-1]
    assert result["best_ap"] == history["val_ap"].max()
    assert history["val_loss"].notna().all()


@pytest.mark.parametrize("kind", ["W", "M"])
def test_recalibrate_batchnorm_takes_the_statistics_of_the_training_inputs(kind):
    sites = Sites(12, 0)
    run = setup(kind, batchnorm_steps=2)
    selected = np.tile([0, 4], (len(sites), 1))  # M: patches 0 and 4 of every site
    network = torch.nn.BatchNorm2d(2)
    network.running_mean.fill_(5.0)  # stale statistics
    recalibrate_batchnorm(run, network, loaders(sites, 4, None), selected, CPU)
    batches = [images for images, _ in training_batches(run, loaders(sites, 4, None), selected, CPU)][:2]
    assert [len(b) for b in batches] == ([4, 4] if kind == "W" else [8, 8])  # 4 sites a step, or their 2 patches each
    # The average of the two steps' batch statistics, as BatchNorm computes them in train mode.
    assert torch.allclose(network.running_mean, torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0), atol=1e-5)
    variances = torch.stack([b.transpose(0, 1).reshape(2, -1).var(dim=1) for b in batches]).mean(0)
    assert torch.allclose(network.running_var, variances, rtol=1e-4)
    assert network.momentum == 0.1 and torch.equal(network.weight, torch.ones(2))  # no weight changed
    # 0 steps keeps the running averages.
    network.running_mean.fill_(5.0)
    recalibrate_batchnorm(setup(kind, batchnorm_steps=0), network, loaders(sites, 4, None), selected, CPU)
    assert torch.equal(network.running_mean, torch.full((2,), 5.0))


def test_site_loss_and_tolerance_prefers_calibrated_epochs():
    from deemd.train import site_loss

    labels = np.array([0, 1])
    assert site_loss(labels, np.array([0.1, 0.9]), np.ones(2)) < site_loss(labels, np.array([0.45, 0.55]), np.ones(2))
    assert site_loss(labels, np.array([0.5, 0.5]), np.array([1.0, 3.0])) == pytest.approx(2 * np.log(2))


def test_infer_patches_probabilities_cover_every_patch():
    from deemd.mil import build_resnet34

    torch.manual_seed(0)
    probabilities, labels, rows = infer_patches(build_resnet34(2), loaders(Sites(5, 3), 2, None), PatchGrid(32, 16, 8), CPU, 7)
    assert probabilities.shape == (5, 9) and rows.tolist() == [0, 1, 2, 3, 4]
    assert labels.tolist() == [0, 1, 0, 1, 0]


@pytest.mark.parametrize("kind, keep", [("M", 2), ("V", 9), ("W", 0)])
def test_training_batches_are_the_normalised_patches_kept(kind, keep):
    """Each step's images are exactly the kept patches of the normalised sites, whether
    the sites (V keeps every patch) or the patches (M keeps 2 of 9) are normalised."""
    from deemd.mil import extract_patches, normalise

    run, sites = setup(kind), Sites(6, 4)
    selected = np.random.default_rng(0).permuted(np.tile(np.arange(9), (6, 1)), axis=1)[:, :keep] if keep else None
    batches = list(training_batches(run, loaders(sites, 4, None), selected, CPU))
    assert [len(targets) for _, targets in batches] == ([4 * keep, 2 * keep] if keep else [4, 2])
    for (images, targets), start in zip(batches, (0, 4)):
        whole = normalise(torch.from_numpy(sites.images[start : start + 4]), CPU.mean, CPU.std)
        labels = torch.from_numpy(sites.label[start : start + 4])
        if keep:
            patches = extract_patches(whole, run.grid)
            rows = torch.arange(len(whole))[:, None]
            whole = patches[rows, torch.from_numpy(selected[start : start + 4])].reshape(-1, *patches.shape[2:])
            labels = labels.repeat_interleave(keep)
        assert torch.equal(images, whole) and torch.equal(targets, labels)


def test_forward_passes_of_any_size_give_the_same_scores():
    """How many patches (M, V) or sites (W) a forward pass takes changes no score: the
    CPU's smaller passes (forward_size) and a GPU's whole batches agree."""
    from deemd.inference import forward_in_chunks, infer_sites
    from deemd.mil import build_resnet34

    torch.manual_seed(0)
    network, grid = build_resnet34(2).eval(), PatchGrid(32, 16, 8)
    per_patch = [infer_patches(network, loaders(Sites(5, 3), 5, None), grid, CPU, chunk)[0] for chunk in (1, 4, 45)]
    per_site = [infer_sites(network, loaders(Sites(5, 3), 5, None), CPU, chunk)[0] for chunk in (1, 2, 5)]
    for scores in (per_patch, per_site):
        np.testing.assert_allclose(scores[0], scores[-1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores[1], scores[-1], rtol=1e-5, atol=1e-6)
    assert per_patch[0].shape == (5, 9) and per_site[0].shape == (5,) and np.ptp(per_site[0]) > 0
    images = torch.randn(5, 2, 16, 16)
    with torch.inference_mode():
        whole = network(CPU.layout(images, inference=True)).float()
        for chunk in (1, 2, 5):
            torch.testing.assert_close(forward_in_chunks(network, images, CPU, chunk), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a checkpoint"])
def test_unreadable_checkpoint_is_set_aside_and_training_restarts(damage, tmp_path, caplog):
    torch.set_num_threads(1)
    train, val = Sites(12, 0), Sites(8, 1)
    checkpoint = tmp_path / "checkpoint" / "last.pt"
    checkpoint.parent.mkdir()
    cut = fit(setup("M", epochs=2), train, val, loaders, CPU, checkpoint, "d", log=lambda *_: None, stop_after=1)
    assert not cut["finished"]
    data = checkpoint.read_bytes()
    if damage == "truncated":
        checkpoint.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        checkpoint.write_bytes(b"")
    else:
        torch.save([1, 2, 3], checkpoint)
    messages = []
    with caplog.at_level(logging.WARNING, logger="deemd.train"):
        result = fit(setup("M", epochs=2), train, val, loaders, CPU, checkpoint, "d", log=messages.append, stop_after=1)
    assert [row["epoch"] for row in result["history"]] == [1]
    assert not any("resumed" in m for m in messages)
    aside = list(checkpoint.parent.glob("last.pt.corrupt-*"))
    assert len(aside) == 1 and not checkpoint.with_name("last.pt.tmp").exists()
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"checkpoint {checkpoint} is unreadable" in warning and aside[0].name in warning
    # The fresh run wrote a good checkpoint again.
    assert load_checkpoint(checkpoint, "cpu")["state"]["epoch"] == 1


@pytest.mark.parametrize("seconds, stop_after, saved", [(0.0, None, [1, 2]), (1e9, None, []), (1e9, 2, [2]), (0.0, 2, [1, 2])])
def test_checkpoints_follow_the_interval_and_a_cut_and_not_a_finished_run(seconds, stop_after, saved, tmp_path, monkeypatch):
    """A checkpoint ends an epoch once ``checkpoint_seconds`` have passed since the last
    (0: every epoch), and always ends a run cut short; a finished run writes none, as the
    caller writes the model next."""
    import deemd.train

    torch.set_num_threads(1)
    epochs = []
    write = deemd.train.save_checkpoint
    monkeypatch.setattr(deemd.train, "save_checkpoint", lambda *a: (epochs.append(a[5].epoch), write(*a)))
    result = fit(setup("W", epochs=3), Sites(8, 0), Sites(4, 1), loaders, CPU, tmp_path / "last.pt", "d", log=lambda *_: None,
                 stop_after=stop_after, checkpoint_seconds=seconds)
    assert epochs == saved and result["finished"] == (stop_after is None)
    assert (tmp_path / "last.pt").exists() == bool(saved)


def test_adam_one_cycle_warms_up_from_a_25th_to_the_peak_and_steps_as_plain_adam():
    """The schedule starts at lr / 25 and reaches lr after 30 % of the steps; the optimiser
    is torch's per-tensor Adam with the setup's betas, bit for bit (the documented models
    were trained with it)."""
    from deemd.mil import build_resnet34
    from deemd.train import adam_one_cycle

    torch.manual_seed(0)
    networks = [build_resnet34(2), build_resnet34(2)]
    networks[1].load_state_dict(networks[0].state_dict())
    optimizer, scheduler = adam_one_cycle(networks[0], setup("M"), 10)
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert lrs[0] == pytest.approx(setup("M").lr / 25) and max(lrs) == pytest.approx(setup("M").lr) and lrs.index(max(lrs)) == 2
    optimizer, _ = adam_one_cycle(networks[0], setup("M"), 10)
    plain = torch.optim.Adam(networks[1].parameters(), lr=optimizer.param_groups[0]["lr"], betas=setup("M").betas)
    assert not optimizer.defaults["fused"] and optimizer.defaults["betas"] == setup("M").betas
    images = torch.randn(4, 2, 32, 32)
    for network, step in zip(networks, (optimizer, plain)):
        network(images).sum().backward()
        step.step()
    for a, b in zip(networks[0].parameters(), networks[1].parameters()):
        assert torch.equal(a, b)
