"""The patch grid of a site (docs/method.md §5): patch size and stride in pixels, scaled
from the reference site size. Torch-free, so that the figure rules that only map patch
probabilities need not import torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PatchGrid:
    """Patch size P and stride S in pixels of a site, and the g x g grid they make."""

    site_size: int
    patch_size: int
    stride: int

    @property
    def grid(self) -> int:
        return (self.site_size - self.patch_size) // self.stride + 1

    @property
    def n_patches(self) -> int:
        return self.grid**2


def patch_grid(site_size: int, reference_site_size: int, patch_size: int, stride: int) -> PatchGrid:
    """Scale the patch size and stride given at ``reference_site_size`` to ``site_size``
    (RxRx19a: 256 / 128 at 1024 px, a 7 x 7 grid); the grid must tile the site exactly."""
    ratio = site_size / reference_site_size
    size, step = round(patch_size * ratio), round(stride * ratio)
    if size < 8 or step < 1 or size > site_size:
        raise ValueError(f"train.patch_size {patch_size} / stride {stride} scale to {size} / {step} px at a {site_size} px site")
    if (site_size - size) % step:
        raise ValueError(f"patches of {size} px at stride {step} do not tile a {site_size} px site")
    return PatchGrid(site_size, size, step)
