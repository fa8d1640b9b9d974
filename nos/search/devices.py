"""Which device a worker trains on, how many GPUs a local search has, and when a worker's
CUDA context is beyond repair.

A worker's device is a pure function of the GPUs Ray assigned to it and the config's
``[workers] num_gpus`` (:func:`worker_device`): the CPU when ``num_gpus`` is 0, whatever
GPUs the machine has, and the assigned GPU otherwise, a fractional share included (Ray
gives four workers with ``num_gpus = 0.25`` the same GPU id).  Ray makes the assigned
GPUs the only visible ones (``CUDA_VISIBLE_DEVICES``), so the device's index is the
assigned id's place in that list; where Ray was told not to set it, the id itself.

A local search tells Ray the GPUs this machine has (:func:`local_gpus`) instead of
declaring what the config asks for, and refuses a config that asks for GPUs on a
machine without one.  A CUDA error that poisons a process's context (an illegal memory
access, a device-side assert, a lost device) leaves every later evaluation in that
worker failing: :func:`poisoned` recognises one, and the driver retires that worker
and tries the evaluation again on a fresh one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Messages of CUDA errors after which a process's CUDA context cannot be used again.
POISONED = ("illegal memory access", "device-side assert", "unspecified launch failure",
            "cuda error: an illegal instruction", "misaligned address",
            "cudaerrorlaunchfailure", "uncorrectable ecc error", "device not ready",
            "cuda driver error", "cuda error: unknown error", "no cuda gpus are available",
            "cuda-capable device(s) is/are busy or unavailable", "cublas_status_not_initialized",
            "cudnn_status_internal_error", "nvml", "gpu is lost")


class DeviceError(ValueError):
    """A worker asked for GPUs that it was not given, or a machine without the GPUs asked."""


def worker_device(num_gpus: float, gpu_ids: Sequence[int | str],
                  visible: str | None = None) -> torch.device:
    """The device of a worker with ``num_gpus`` per worker, given Ray's ``gpu_ids`` for it
    and the ``CUDA_VISIBLE_DEVICES`` of its process (``visible``; None when unset)."""
    if not num_gpus:
        return torch.device("cpu")
    if not gpu_ids:
        raise DeviceError(f"the worker asked for {num_gpus:g} GPU but Ray assigned none")
    first = str(gpu_ids[0]).strip()
    if visible is not None and visible.strip():
        shown = [v.strip() for v in visible.split(",")]
        if first in shown:
            return torch.device("cuda", shown.index(first))
        raise DeviceError(f"GPU {first} assigned by Ray is not among the visible devices "
                          f"CUDA_VISIBLE_DEVICES={visible}")
    if not first.isdigit():
        raise DeviceError(f"GPU id {first!r} is not an index and CUDA_VISIBLE_DEVICES is unset")
    return torch.device("cuda", int(first))


def local_gpus(num_gpus: float, available: int | None = None) -> int:
    """The GPUs a local Ray is started with: those this machine has (``available``, by
    default ``torch.cuda.device_count()``).  DeviceError when a worker's ``num_gpus``
    needs more than the machine has (with fewer than the workers need in all, Ray
    starts those that fit and the others wait)."""
    have = torch.cuda.device_count() if available is None else available
    if num_gpus and not have:
        raise DeviceError(f"[workers] num_gpus = {num_gpus:g}, but this machine has no GPU "
                          "(torch sees none); set num_gpus = 0 or run on a GPU machine")
    if num_gpus and num_gpus > have:
        raise DeviceError(f"[workers] num_gpus = {num_gpus:g} per worker, but this machine "
                          f"has {have} GPU(s)")
    return have


def poisoned(error: str | None) -> bool:
    """True when ``error`` is a CUDA error after which the process must not go on."""
    text = (error or "").lower()
    return any(p in text for p in POISONED)
