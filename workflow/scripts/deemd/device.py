"""The device and numeric precision that training and inference run with: device choice,
bf16 autocast where the hardware does it natively, channels-last on CUDA and for
inference (DevicePrecision; the rules pass its settings as the ``device`` param)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from deemd.mil import normalise


def select_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device {name!r}: no CUDA device is available")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 autocast
    runs convolutions about twice as fast as fp32; elsewhere it is emulated and slower."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ('auto', 'bf16' or 'fp32') on ``device``; None
    for plain fp32. 'auto' takes bf16 where the hardware does it natively: CUDA with bf16
    support, CPUs with AVX512-BF16 or AMX."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision {precision!r}: expected 'auto', 'bf16' or 'fp32'")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


class DevicePrecision:
    """Where and how precisely networks run: the device, the autocast dtype (see
    autocast_dtype), channels-last on CUDA, and the training set's per-channel mean and
    std that sites are standardised with."""

    def __init__(self, device: torch.device, mean: np.ndarray, std: np.ndarray, precision: str = "fp32"):
        self.device = device
        self.cuda = device.type == "cuda"
        self.dtype = autocast_dtype(device, precision)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device)

    @property
    def precision(self) -> str:
        return "fp32" if self.dtype is None else "bf16"

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def move(self, sites: torch.Tensor) -> torch.Tensor:
        """uint8 sites (or patches) from the loader, onto the device as they are."""
        return sites.to(self.device, non_blocking=True)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images on the device -> float, standardised with the training statistics."""
        return normalise(images, self.mean, self.std)

    def prepare(self, sites: torch.Tensor) -> torch.Tensor:
        """uint8 sites from the loader -> normalised float on the device."""
        return self.normalise(self.move(sites))

    def channels_last(self, inference: bool) -> bool:
        """Whether tensors are laid out channels-last: always on CUDA; on a CPU only for
        inference, where it is 10-30 % faster and changes the outputs by rounding at most
        (with bf16 on the CPU the bits were the same). In training rounding differences
        grow over the steps, so CPU training keeps the layout it has always had."""
        return self.cuda or inference

    def layout(self, images: torch.Tensor, inference: bool = False) -> torch.Tensor:
        if self.channels_last(inference):
            return images.contiguous(memory_format=torch.channels_last)
        return images.contiguous()

    def place(self, network: torch.nn.Module, inference: bool = False) -> torch.nn.Module:
        """``network`` moved to the device, laid out as ``channels_last`` says."""
        network = network.to(self.device)
        return network.to(memory_format=torch.channels_last) if self.channels_last(inference) else network

    def inference_copy(self, network: torch.nn.Module) -> torch.nn.Module:
        """An eval-mode copy of the network being trained, laid out for inference (the
        epoch's patch selection and validation), leaving the training weights as they are."""
        if self.cuda:
            return network.eval()
        return self.place(copy.deepcopy(network), inference=True).eval()
