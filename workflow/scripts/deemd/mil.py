"""The models and the multiple-instance pieces of DEEMD (docs/method.md §5): patches cut on the
device, ResNet34 with a 5-channel input, top-k selection, class-weighted BCE, scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from deemd.grid import PatchGrid


@dataclass(frozen=True)
class TrainSetup:
    """What a training run needs besides the data; saved in model files as plain data
    (``to_dict``), so that they load with ``torch.load(..., weights_only=True)``."""

    kind: str  # "M", "V" or "W"
    k: int  # top-k of M, and the site rule of M and V
    eta: float
    grid: PatchGrid
    epochs: int
    patience: int
    batch_size: int  # patches per step (M, V)
    whole_batch_size: int  # sites per step (W)
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    seed: int
    in_channels: int
    pretrained_weights: str | None = None
    # Epochs whose validation AP is within this of the best one compete on validation
    # loss, so that of two equally ranking models the better calibrated one is kept.
    ap_tolerance: float = 0.0
    # Train on a random one of the 8 flips and quarter turns of every patch (or site).
    augment: bool = False
    # Training steps' worth of inputs over which BatchNorm statistics are recomputed after
    # every epoch (deemd.train.recalibrate_batchnorm); 0 keeps the running averages.
    batchnorm_steps: int = 0
    # Whole sites per step of M and V whatever k (0: batch_size // k, at least 1).
    sites_per_step: int = 0
    # Train on each patch (or site) with every channel's intensity multiplied by a random
    # gain in [1 / (1 + j), 1 + j] (0: off), so that brightness alone is not read as infection.
    intensity_jitter: float = 0.0

    @property
    def train_k(self) -> int:
        return self.grid.n_patches if self.kind == "V" else self.k

    def to_dict(self) -> dict:
        """Builtins only (the grid a nested dict, betas a list)."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainSetup:
        """The inverse of ``to_dict``."""
        return cls(**{**data, "grid": PatchGrid(**data["grid"]), "betas": tuple(data["betas"])})


def extract_patches(sites: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C, P, P), patches in row-major grid order, as views where
    possible (unfold): no Python loop over patches."""
    b, c = sites.shape[:2]
    p, s = grid.patch_size, grid.stride
    patches = sites.unfold(2, p, s).unfold(3, p, s)  # B, C, g, g, P, P
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(b, grid.n_patches, c, p, p)


def adapt_conv1_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """ImageNet conv1 (64, 3, k, k) -> (64, in_channels, k, k): the mean RGB filter for
    every channel, scaled by 3 / in_channels so activations keep their size."""
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


def build_resnet34(in_channels: int, pretrained_weights: str | None = None) -> nn.Module:
    """torchvision ResNet34 with an ``in_channels`` input layer and one logit out.

    ``pretrained_weights``: a local torchvision ResNet34 state_dict (ImageNet); conv1 is
    adapted to the channels and the classifier left fresh. Nothing is downloaded.
    """
    model = torchvision.models.resnet34(weights=None)
    if pretrained_weights:
        state = torch.load(pretrained_weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing = {"conv1.weight", "layer4.2.conv2.weight"} - set(state)
        if missing:
            raise ValueError(f"{pretrained_weights}: not a torchvision ResNet34 state_dict (missing {sorted(missing)})")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        state["conv1.weight"] = adapt_conv1_weight(state["conv1.weight"], in_channels)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Linear(model.fc.in_features, 1)
    if pretrained_weights:
        model.load_state_dict(state, strict=False)
    return model


def normalise(sites: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, per-channel standardised with the training statistics."""
    return (sites.float() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def topk_patch_indices(probabilities: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) patch probabilities -> (B, k) indices of the k most infected-looking patches."""
    return probabilities.topk(min(k, probabilities.shape[1]), dim=1).indices


def kth_largest(probabilities: torch.Tensor | np.ndarray, k: int):
    """Site score of the MIL rule: the k-th largest patch probability (y_hat = score >= eta)."""
    if isinstance(probabilities, np.ndarray):
        k = min(k, probabilities.shape[1])
        return np.sort(probabilities, axis=1)[:, -k]
    return probabilities.topk(min(k, probabilities.shape[1]), dim=1).values[:, -1]


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Weights (w0, w1) = n / (2 n_c): each class weighs the same in the loss."""
    labels = np.asarray(labels)
    counts = np.array([(labels == 0).sum(), (labels == 1).sum()], dtype=float)
    if (counts == 0).any():
        raise ValueError(f"training needs both classes; counts (non-infected, infected) = {counts.astype(int).tolist()}")
    return counts.sum() / (2 * counts)


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted binary cross entropy averaged over the patches (or sites) given."""
    per_item = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    item_weights = torch.where(targets > 0.5, weights[1], weights[0])
    return (per_item * item_weights).mean()


def dihedral_transform(images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) square images, each turned by one of the 8 symmetries of the square:
    ``codes[b]`` in 0..7, bit 2 a left-right flip, then (code % 4) quarter turns.

    A field of view has no up, down or handedness, so these are free extra training
    samples; code 0 is the identity.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral transforms need square images, got {tuple(images.shape[-2:])}")
    codes = torch.as_tensor(codes, device=images.device).view(-1)
    if codes.numel() != images.shape[0]:
        raise ValueError(f"{codes.numel()} transform codes for {images.shape[0]} images")
    out = images.clone()
    for code in codes.unique().tolist():
        rows = codes == code
        chosen = images[rows]
        if code >= 4:
            chosen = chosen.flip(-1)
        out[rows] = torch.rot90(chosen, code % 4, dims=(-2, -1))
    return out


def random_dihedral_codes(n: int, generator: torch.Generator) -> torch.Tensor:
    """n symmetry codes (0..7) for dihedral_transform, drawn from ``generator``."""
    return torch.randint(0, 8, (n,), generator=generator)


def random_intensity_gains(n: int, channels: int, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """(n, channels) gains, log-uniform in [1 / (1 + jitter), 1 + jitter], drawn from
    ``generator`` (float32, on the CPU); all 1 when ``jitter`` is 0."""
    if jitter < 0:
        raise ValueError(f"intensity jitter must be >= 0, got {jitter}")
    spread = float(np.log1p(jitter))
    return torch.exp((2.0 * torch.rand((n, channels), generator=generator) - 1.0) * spread)


def scale_intensities(images: torch.Tensor, gains: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardised images (B, C, H, W) as they would be had each image's raw channel
    intensities been multiplied by ``gains`` (B, C) before standardising with ``mean`` and
    ``std`` (C,): (g x - m) / s = g (x - m) / s + (g - 1) m / s.

    Stain intensity varies between wells and plates (exposure, dispensing, cell health)
    without any change in infection; training on rescaled copies keeps a model from
    reading a dimmer well as a less infected one."""
    if gains.shape != images.shape[:2]:
        raise ValueError(f"gains {tuple(gains.shape)} do not match images {tuple(images.shape[:2])}")
    gains = gains.to(images.device, images.dtype)
    offset = (gains - 1.0) * (mean / std).to(images.device, images.dtype)
    return images * gains[:, :, None, None] + offset[:, :, None, None]
