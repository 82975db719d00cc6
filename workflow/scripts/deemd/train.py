"""Training loops of the three models (docs/method.md §5):

M  MIL top-k: each epoch (a) every patch of every training site inferred, (b) per site
   the k patches with the highest probability kept, (c) trained on with the site label;
V  the same with all N patches kept (k = N);
W  a whole-site classifier at full resolution.

Everything random in an epoch is drawn from generators seeded by (seed, epoch), and a
checkpoint is written at the end of an epoch (at most every ``train.checkpoint_minutes``),
so a killed run resumes and ends exactly as an uninterrupted one would (on CPU).
Inference (patch scores, site scores, AP) is in deemd.inference, the device and precision
in deemd.device.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from deemd.io import write_atomic
from deemd.evaluation import average_precision
from deemd.inference import infer_patches, inference_patches_per_forward, inference_sites_per_batch, site_scores
from deemd.mil import (
    TrainSetup,
    build_resnet34,
    class_weights,
    dihedral_transform,
    extract_patches,
    random_dihedral_codes,
    random_intensity_gains,
    scale_intensities,
    topk_patch_indices,
    weighted_bce,
)
from deemd.device import DevicePrecision


def steps_per_epoch(setup: TrainSetup, n_sites: int) -> int:
    return math.ceil(n_sites / sites_per_step(setup))


def sites_per_step(setup: TrainSetup) -> int:
    """Sites a training step holds: ``whole_batch_size`` for W; for M and V
    ``setup.sites_per_step`` where set, else as many whole sites as ``batch_size``
    patches make at train_k patches a site (at least one)."""
    if setup.kind == "W":
        return setup.whole_batch_size
    if setup.sites_per_step > 0:
        return setup.sites_per_step
    return max(1, setup.batch_size // setup.train_k)


def training_batches(setup: TrainSetup, loader, selected, device_precision: DevicePrecision):
    """(images, targets) of each training step, normalised on the device: whole sites
    for W; for M and V the patches ``selected`` (n_sites, k) keeps of each site (rows of
    the dataset), each labelled with its site's label.

    Normalising is per pixel, so it is done to whichever has fewer pixels, the sites or
    the patches kept of them, with the same result: at 1024 px M keeps 2 patches of
    256 px, an eighth of each site's pixels."""
    for sites, label, index in loader:
        images = device_precision.move(sites)
        targets = label.to(device_precision.device)
        if setup.kind == "W":
            yield device_precision.normalise(images), targets
            continue
        keep = torch.as_tensor(selected[index.numpy()], device=device_precision.device)
        patches_first = keep.shape[1] * setup.grid.patch_size**2 < setup.grid.site_size**2
        if not patches_first:
            images = device_precision.normalise(images)
        patches = extract_patches(images, setup.grid)
        chosen = patches[torch.arange(len(sites), device=device_precision.device)[:, None], keep].reshape(-1, *patches.shape[2:])
        yield (device_precision.normalise(chosen) if patches_first else chosen), targets.repeat_interleave(keep.shape[1])


def adam_one_cycle(network, setup: TrainSetup, total_steps: int):
    """Adam and its one-cycle cosine learning-rate schedule over ``total_steps`` steps; the
    betas stay as given (no momentum cycling). Adam is torch's per-tensor one: the fused
    kernel is 6x faster on a CPU but rounds differently, and every documented result was
    trained with this one (docs/tuning.md: fused Adam, tried and not adopted)."""
    optimizer = torch.optim.Adam(network.parameters(), lr=setup.lr, betas=setup.betas, weight_decay=setup.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=setup.lr, total_steps=total_steps, anneal_strategy="cos", cycle_momentum=False)
    return optimizer, scheduler


def train_one_epoch(setup, network, loader, selected, device_precision, weights, optimizer, scheduler, progress=None, augment_seed=None) -> float:
    """One pass over the training sites (``training_batches``).
    With ``setup.augment``, each training image is flipped or turned at random; with
    ``setup.intensity_jitter``, its channels are rescaled at random (scale_intensities).
    Both are drawn from a generator seeded with ``augment_seed`` (so a resumed epoch
    repeats exactly)."""
    network.train()
    jitter = setup.intensity_jitter
    generator = torch.Generator().manual_seed(int(augment_seed or 0)) if setup.augment or jitter > 0 else None
    losses, counts = 0.0, 0
    for step, (images, targets) in enumerate(training_batches(setup, loader, selected, device_precision)):
        if setup.augment:
            images = dihedral_transform(images, random_dihedral_codes(len(images), generator))
        if jitter > 0:
            gains = random_intensity_gains(len(images), images.shape[1], jitter, generator)
            images = scale_intensities(images, gains, device_precision.mean, device_precision.std)
        with device_precision.autocast():
            logits = network(device_precision.layout(images)).float().view(-1)
        loss = weighted_bce(logits, targets, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses += loss.item() * len(targets)
        counts += len(targets)
        if progress is not None:
            progress(step + 1, len(loader))
    return losses / max(counts, 1)


def recalibrate_batchnorm(setup: TrainSetup, network, loader, selected, device_precision: DevicePrecision) -> None:
    """Every BatchNorm layer's running mean and variance replaced by their averages over
    the first ``setup.batchnorm_steps`` batches of ``loader`` (training inputs as
    ``training_batches`` makes them), with the weights as they are now ("precise BN",
    torch.optim.swa_utils.update_bn). The running averages kept during training trail
    weights that change at every step; evaluated with them, a model can score every
    validation site wrong although it ranks the training sites well in train mode
    (docs/method.md §5). Changes no weight."""
    if setup.batchnorm_steps <= 0:
        return
    batches = itertools.islice(training_batches(setup, loader, selected, device_precision), setup.batchnorm_steps)
    with device_precision.autocast():
        torch.optim.swa_utils.update_bn((device_precision.layout(images) for images, _ in batches), network)


def site_loss(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """Class-weighted binary cross entropy of site scores taken as probabilities."""
    scores = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
    positive = np.asarray(labels) > 0.5
    losses = np.where(positive, -np.log(scores) * weights[1], -np.log(1 - scores) * weights[0])
    return float(losses.mean())


def load_checkpoint(path: Path, device) -> dict | None:
    """The saved training state at ``path``, or None where there is none. A checkpoint
    that cannot be read (truncated by a full disk or a kill during an older, non-atomic
    write; another torch's format) is set aside as ``last.pt.corrupt-<time>`` with a
    warning (in the rule's log), so training restarts instead of failing on every rerun."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(saved, dict):
            raise ValueError(f"holds a {type(saved).__name__}, not a checkpoint dict")
        return saved
    except Exception as error:  # noqa: BLE001 - unpickling fails in many ways; all mean unreadable
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        logging.getLogger("deemd.train").warning(
            "checkpoint %s is unreadable (%s: %s); moved to %s, training starts afresh", path, type(error).__name__, error, aside.name
        )
        return None


@dataclass
class TrainingState:
    """Where a run stands after ``epoch`` epochs: the history rows and the best epoch so
    far (early stopping). Checkpointed as a plain dict of these fields."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best_ap: float = -1.0
    best_loss: float = float("inf")
    max_ap: float = -1.0  # the highest validation AP seen, best or not
    best_epoch: int = 0
    best_state: dict | None = None  # the best epoch's weights, on the CPU
    bad_epochs: int = 0  # epochs since the last best one
    stopped: bool = False

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # no copy of the weights

    def done(self, setup: TrainSetup) -> bool:
        """Whether training is over: stopped early, or every epoch run."""
        return self.stopped or self.epoch >= setup.epochs

    def record(self, epoch: int, val_ap: float, val_loss: float, network, setup: TrainSetup) -> bool:
        """Count ``epoch`` in; whether it is the new best: the highest validation AP, or
        within ``setup.ap_tolerance`` of it, the lower loss. Stops after ``setup.patience``
        epochs without a new best."""
        improved = val_ap > self.max_ap or (val_ap >= self.max_ap - setup.ap_tolerance and val_loss < self.best_loss)
        self.max_ap = max(self.max_ap, val_ap)
        if improved:
            self.best_ap, self.best_loss, self.best_epoch, self.bad_epochs = val_ap, val_loss, epoch, 0
            self.best_state = copy.deepcopy({k: v.cpu() for k, v in network.state_dict().items()})
        else:
            self.bad_epochs += 1
        self.stopped = self.bad_epochs >= setup.patience
        self.epoch = epoch
        return improved


def resume(checkpoint: Path, digest: str, network, optimizer, scheduler, device, log) -> TrainingState:
    """Model, optimizer, scheduler and torch RNG restored from ``checkpoint`` when its
    ``digest`` (config + data) matches, and the state it reached; else a fresh state."""
    saved = load_checkpoint(checkpoint, device)
    if saved is None:
        return TrainingState()
    if saved.get("digest") != digest:
        log(f"{checkpoint} belongs to another config or data set; starting afresh")
        return TrainingState()
    network.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    state = TrainingState(**saved["state"])
    log(f"resumed from {checkpoint} after epoch {state.epoch}")
    return state


def save_checkpoint(checkpoint: Path, digest: str, network, optimizer, scheduler, state: TrainingState, setup: TrainSetup) -> None:
    """Everything ``resume`` needs, as tensors and builtins (loads with weights_only=True)."""
    saved = {
        "digest": digest,
        "model": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "state": state.to_dict(),
        "setup": setup.to_dict(),
    }
    write_atomic(checkpoint, lambda tmp: torch.save(saved, tmp))


def select_patches(setup: TrainSetup, network, train_data, loader_factory, device_precision: DevicePrecision) -> np.ndarray | None:
    """The patches to train on this epoch, (n_sites, k) int64 indices per dataset row: M
    infers every patch of every training site and keeps its top k; V keeps all N; W
    trains on whole sites (None)."""
    if setup.kind == "M":
        loader = loader_factory(train_data, inference_sites_per_batch(setup), None)
        scorer = device_precision.inference_copy(network)
        probabilities, _, rows = infer_patches(scorer, loader, setup.grid, device_precision,
                                               inference_patches_per_forward(setup, device_precision.cuda))
        selected = np.empty((len(train_data), setup.k), dtype=np.int64)
        selected[rows] = topk_patch_indices(torch.from_numpy(probabilities), setup.k).numpy()
        return selected
    if setup.kind == "V":
        return np.tile(np.arange(setup.grid.n_patches), (len(train_data), 1))
    return None


def evaluate(setup: TrainSetup, network, loader, device_precision: DevicePrecision, weights: torch.Tensor) -> dict:
    """Validation AP, class-weighted loss and accuracy at eta of the site scores."""
    scored = site_scores(setup, device_precision.inference_copy(network), loader, device_precision)
    scores, labels = scored.scores, scored.labels
    return {
        "val_ap": average_precision(labels, scores),
        "val_loss": site_loss(labels, scores, weights.cpu().numpy()),
        "val_accuracy": float(((scores >= setup.eta) == (labels > 0.5)).mean()),
    }


def fit(
    setup: TrainSetup, train_data, val_data, loader_factory, device_precision: DevicePrecision, checkpoint: Path, digest: str, log=print,
    stop_after=None, checkpoint_seconds: float = 0.0,
):
    """Train one model with early stopping on validation average precision.

    ``loader_factory(dataset, batch_size, shuffle_seed)`` makes DataLoaders. An epoch's
    full state is checkpointed to ``checkpoint`` at its end once ``checkpoint_seconds``
    have passed since the run started or last checkpointed (0: after every epoch), and
    always when ``stop_after`` ends the run, but not when training is done (the caller
    writes the model). It is resumed from when its ``digest`` (config + data) matches.
    ``stop_after`` ends the run after that many epochs of this call (tests use it to
    simulate a kill).
    Returns the final state (TrainingState.to_dict: history rows, best_state,
    best_epoch, best_ap, ...) and finished (False only when ``stop_after`` cut the run short).
    """
    torch.manual_seed(setup.seed)
    network = device_precision.place(build_resnet34(setup.in_channels, setup.pretrained_weights))
    weights = torch.as_tensor(class_weights(train_data.label), dtype=torch.float32, device=device_precision.device)
    optimizer, scheduler = adam_one_cycle(network, setup, setup.epochs * steps_per_epoch(setup, len(train_data)))
    state = resume(checkpoint, digest, network, optimizer, scheduler, device_precision.device, log)
    run_epochs, saved_at = 0, time.monotonic()
    while not state.done(setup) and (stop_after is None or run_epochs < stop_after):
        epoch = state.epoch + 1
        started = time.perf_counter()
        selected = select_patches(setup, network, train_data, loader_factory, device_precision)
        inference_seconds = time.perf_counter() - started
        shuffle_seed = setup.seed * 100_003 + epoch
        train_loss = train_one_epoch(
            setup, network, loader_factory(train_data, sites_per_step(setup), shuffle_seed), selected, device_precision, weights, optimizer, scheduler,
            augment_seed=shuffle_seed ^ 0x5EED,  # a stream apart from the shuffle
        )
        recalibrate_batchnorm(setup, network, loader_factory(train_data, sites_per_step(setup), shuffle_seed + 1), selected, device_precision)
        metrics = evaluate(setup, network, loader_factory(val_data, inference_sites_per_batch(setup), None), device_precision, weights)
        improved = state.record(epoch, metrics["val_ap"], metrics["val_loss"], network, setup)
        seconds = time.perf_counter() - started
        state.history.append(
            {"epoch": epoch, "train_loss": train_loss, **metrics, "lr": float(scheduler.get_last_lr()[0]), "best": improved,
             "seconds": seconds, "inference_seconds": inference_seconds}
        )
        log(
            f"epoch {epoch}/{setup.epochs}: loss {train_loss:.4f}, val AP {metrics['val_ap']:.4f}, val loss {metrics['val_loss']:.4f}"
            f"{' (best)' if improved else ''}, {seconds:.1f} s"
            + (" - early stop" if state.stopped else "")
        )
        run_epochs += 1
        cut = stop_after is not None and run_epochs >= stop_after
        if cut or (not state.done(setup) and time.monotonic() - saved_at >= checkpoint_seconds):
            save_checkpoint(checkpoint, digest, network, optimizer, scheduler, state, setup)
            saved_at = time.monotonic()
    return dict(state.to_dict(), finished=state.done(setup))
