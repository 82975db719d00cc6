"""What the machine offers the workflow, read without importing torch (the Snakefile calls
this at every start-up, where importing torch would cost seconds)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# The control device an NVIDIA driver creates once it is loaded.
NVIDIA_CONTROL_DEVICE = Path("/dev/nvidiactl")


def local_gpu_present(device: str, control_device: Path = NVIDIA_CONTROL_DEVICE) -> bool:
    """Whether the rules that run a network will find a GPU on this machine: an NVIDIA
    driver is loaded (its control device exists) and ``device`` (train.device) is not
    ``cpu``."""
    return device != "cpu" and Path(control_device).exists()


# glibc malloc settings the jobs' processes start with (read once, at a process's start).
# By default glibc maps every block above 32 MB afresh and returns it to the kernel when it
# is freed: a network's activations for each batch, and large arrays generally, are then
# faulted in page by page again at every batch. Keeping blocks below 256 MB in the heap,
# and up to 512 MB of freed heap untrimmed, took the demo from 6 min 10 s to 5 min 37 s
# on 2 cores (system time 67 s -> 46 s) with the same results; a job's peak memory
# grows by at most the untrimmed 512 MB.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": str(256 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(512 * 2**20)}


def with_malloc_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with MALLOC_SETTINGS added where it lacks them (a value the user set
    wins; glibc ignores them where it is not the C library)."""
    return {**MALLOC_SETTINGS, **environ}


def threads_beside_another(most: int | None, cores: int | None) -> int:
    """Threads for a job that should leave room for a second job beside it: half of
    ``cores`` (at least 1), at most ``most`` (None: no cap). Without ``cores`` (a cluster
    run, no --cores), ``most``. Why: on the demo's small inputs a job with 2 threads keeps
    only about 1.5 cores busy, and a job holding every core makes the rest of the DAG wait
    (on 2 cores the demo went from 7 min 34 s to 6 min 36 s)."""
    if not cores:
        return most or 1
    half = max(1, int(cores) // 2)
    return half if most is None else min(most, half)


def network_rule_threads(gpu: bool, cores: int | None, gpu_threads: int = 4) -> int:
    """Threads of each rule that runs a network (train, train_k, evaluate, k_selection,
    infer). With a GPU: ``gpu_threads``, the host side that feeds it (the one GPU makes
    them take turns). On the CPU alone: half of ``cores`` (:func:`threads_beside_another`),
    so that two of them run side by side; without ``cores``, ``gpu_threads``."""
    if gpu or not cores:
        return gpu_threads
    return threads_beside_another(None, cores)
