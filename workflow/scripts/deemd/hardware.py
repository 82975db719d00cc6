"""What the machine offers the workflow, read without importing torch (the Snakefile calls
this at every start-up, where importing torch would cost seconds)."""

from __future__ import annotations

from pathlib import Path

# The control device an NVIDIA driver creates once it is loaded.
NVIDIA_CONTROL_DEVICE = Path("/dev/nvidiactl")


def local_gpu_present(device: str, control_device: Path = NVIDIA_CONTROL_DEVICE) -> bool:
    """Whether the rules that run a network will find a GPU on this machine: an NVIDIA
    driver is loaded (its control device exists) and ``device`` (train.device) is not
    ``cpu``."""
    return device != "cpu" and Path(control_device).exists()


def network_rule_threads(gpu: bool, cores: int | None, gpu_threads: int = 4) -> int:
    """Threads of each rule that runs a network (train, train_k, evaluate, k_selection,
    infer). With a GPU: ``gpu_threads``, the host side that feeds it (the one GPU makes
    them take turns). On the CPU alone: half of ``cores`` (at least 1), so that two of them
    run side by side: torch keeps only about 1.5 of 2 threads busy on the demo's small
    batches, and one job holding every core left the rest of the DAG waiting. Without
    ``cores`` (a cluster run, no --cores), ``gpu_threads``."""
    if gpu or not cores:
        return gpu_threads
    return max(1, int(cores) // 2)
